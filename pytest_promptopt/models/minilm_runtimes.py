"""The offline embedder's two runtimes: all-MiniLM-L6-v2 on CTranslate2 (when `ctranslate2` is
installed) or on torch + transformers (the fallback).

Both compute what sentence-transformers computes for this model (`modules.json`: Transformer,
mean Pooling, Normalize): the BERT encoder's last hidden states, averaged over the text's tokens,
L2-normalised. CTranslate2 loads in about 0.3 s against about 4.5 s for importing torch and
transformers, and its vectors equal torch's within 2e-7 (tests/test_metrics.py compares them).
The CTranslate2 copy is converted once, from the weights the package ships, into the plugin's
home (`PROMPTOPT_HOME`, like the bundled model's); the conversion is the only step that needs
torch.

`PROMPTOPT_LOCAL_RUNTIME` chooses for both offline models (auto, ctranslate2, transformers).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .base import announce
from .cpu import cpu_threads, model_threads, quiet_transformers
from .local_runtimes import chosen_runtime  # the bundled model's choice: one variable chooses for both
from .local_weights import ct2_folder_name, default_home
from .prepared_files import MARKER, locked, read_json_marker, replacing, write_json

__all__ = ["EmbeddingRuntime", "load_minilm", "minilm_ct2_copy"]

log = logging.getLogger("pytest_promptopt")

_BATCH = 32  # texts per forward pass


class EmbeddingRuntime(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


def load_minilm(
    folder: Path, max_length: int, identity: Mapping[str, Any], runtime: str | None = None
) -> EmbeddingRuntime:
    """all-MiniLM-L6-v2 from the package's `folder` (`identity`: the weights', names the
    CTranslate2 copy), on the runtime asked for (the argument, else PROMPTOPT_LOCAL_RUNTIME, else
    auto: CTranslate2 when installed). Raises ImportError when the chosen runtime's packages are
    missing, ValueError for an unknown runtime."""
    choice = chosen_runtime(runtime)
    if choice == "ctranslate2" or (choice == "auto" and importlib.util.find_spec("ctranslate2") is not None):
        return CTranslate2Embedder(folder, max_length, identity)
    return TorchEmbedder(folder, max_length)


class CTranslate2Embedder:
    name = "ctranslate2"

    def __init__(self, folder: Path, max_length: int, identity: Mapping[str, Any]) -> None:
        import ctranslate2
        import tokenizers

        copy, private = minilm_ct2_copy(folder, identity)
        self.tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        # transformers' `tokenizer(texts, truncation=True, max_length=...)` without padding: the
        # file's own padding (to 128) and truncation (128) are settings, not the model's.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        threads = model_threads()
        try:
            self.encoder = ctranslate2.Encoder(
                str(copy), device="cpu", compute_type="float32", intra_threads=1, inter_threads=threads
            )
        finally:
            if private is not None:  # the encoder holds the weights in memory: the files are not needed
                private.cleanup()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import numpy as np

        vectors: list[list[float]] = []
        for start in range(0, len(texts), _BATCH):
            encodings = self.tokenizer.encode_batch(list(texts[start : start + _BATCH]))
            lengths = np.array([len(e.ids) for e in encodings])
            hidden = np.asarray(self.encoder.forward_batch([e.tokens for e in encodings]).last_hidden_state)
            mask = (np.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(hidden.dtype)[..., None]
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)  # torch's normalize eps
            vectors.extend((pooled / norms).tolist())
        return vectors


class TorchEmbedder:
    name = "transformers"

    def __init__(self, folder: Path, max_length: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        threads = cpu_threads()  # the bundled model's rule: xdist workers split the cores
        if threads is not None:
            torch.set_num_threads(threads)
        with quiet_transformers():
            # local_files_only: nothing reaches the Hub (without changing the process's HF_* variables)
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.model.eval()
        self.max_length = max_length

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import torch

        vectors: list[list[float]] = []
        for start in range(0, len(texts), _BATCH):
            batch = self.tokenizer(
                list(texts[start : start + _BATCH]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                tokens = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors.extend(torch.nn.functional.normalize(pooled, p=2, dim=1).tolist())
        return vectors


def minilm_ct2_copy(
    folder: Path, weights: Mapping[str, Any], home: Path | None = None
) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """The CTranslate2 conversion of the package's weights in `folder`, made once in the plugin's
    home (concurrent processes convert once), rebuilt when `weights` (the package's identity) or
    the size of its weights change. If the home cannot be written, it is converted into a private
    temporary folder, returned second: the caller removes it (`cleanup()`) once the copy is loaded,
    so a process per run does not leave ~90 MB behind each time."""
    size = (folder / "model.safetensors").stat().st_size
    root = (home or default_home()) / f"all-minilm-l6-v2-{size}"
    target = root / ct2_folder_name()
    identity = {**json.loads(json.dumps(dict(weights), default=str)), "safetensors_size": size}
    if _ready(target, identity):
        return target, None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with locked(root.parent / f".{root.name}.lock"):
            if not _ready(target, identity):
                _convert(folder, target, identity)
        return target, None
    except OSError as error:  # a read-only home: convert for this process only
        log.warning("could not cache the CTranslate2 copy of all-MiniLM-L6-v2 in %s: %s", root, error)
        private = tempfile.TemporaryDirectory(prefix="pytest-promptopt-minilm-")
        try:
            _convert(folder, Path(private.name) / target.name, identity)
        except BaseException:
            private.cleanup()
            raise
        return Path(private.name) / target.name, private


def _ready(target: Path, identity: dict[str, Any]) -> bool:
    marker = read_json_marker(target)
    return marker is not None and marker.get("identity") == identity and (target / "model.bin").is_file()


def _convert(folder: Path, target: Path, identity: dict[str, Any]) -> None:
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    announce("preparing the offline embedding model (first run: converting its weights once, ~10 s)")
    with replacing(target) as tmp:  # a copy converted from other weights is replaced
        with quiet_transformers():
            TransformersConverter(str(folder)).convert(str(tmp), quantization="float32", force=True)
        write_json(tmp / MARKER, {"identity": identity, "ctranslate2": ctranslate2.__version__})
