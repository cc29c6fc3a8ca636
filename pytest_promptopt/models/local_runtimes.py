"""The bundled model's two runtimes: CTranslate2 (the fast default when `ctranslate2` is installed)
and transformers (the fallback, and always the sampler).

Both run the same float32 weights with the same chat template, greedy decoding, end token
(`<|im_end|>`), `max_tokens` (new tokens) and stop strings, and give the same greedy texts
(tests/test_bundled_model.py compares them on the example suites' prompts). CTranslate2 loads in
about 2 s without importing torch or transformers: it reads the tokenizer with the `tokenizers`
package and renders the chat template with Jinja2 as transformers does. Sampled requests
(temperature > 0) always go to transformers, so a seed draws the same text whichever runtime
runs the greedy ones.

CTranslate2 runs one replica of the model per core it was given (the weights are shared), each
on one thread, so as many batches generate at once (`parallel`); transformers serialises its
generation (one batch at a time uses every thread it was given).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import ModelError, is_answering_ahead
from .cpu import model_threads, quiet_transformers
from .local_weights import CHATML_TEMPLATE, MODEL_NAME, Prepared
from .replica_turns import ReplicaTurns

__all__ = ["RUNTIMES", "CTranslate2Runtime", "Generated", "TransformersRuntime", "chosen_runtime", "cut_at_stop"]

RUNTIMES = ("auto", "ctranslate2", "transformers")  # what a user may choose; auto picks one of the others


def chosen_runtime(given: Any = None) -> str:
    """The runtime asked for, for the bundled model and the offline embedder alike: `given`, else
    PROMPTOPT_LOCAL_RUNTIME, else auto. Raises ValueError naming the choices."""
    choice = given or os.environ.get("PROMPTOPT_LOCAL_RUNTIME", "").strip() or "auto"
    if not isinstance(choice, str) or choice.strip().lower() not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {choice!r}")
    return choice.strip().lower()


END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(frozen=True)
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int  # up to and including the end token


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def _finish(text: str, stop: Sequence[str]) -> str:
    return cut_at_stop(text, stop).strip()


def _length(row: Sequence[int], end_ids: tuple[int, ...]) -> int:
    """Tokens up to and including the first end token (the whole row if there is none)."""
    return next((k + 1 for k, t in enumerate(row) if t in end_ids), len(row))


# --------------------------------------------------------------------------------------------
# CTranslate2


class CTranslate2Runtime:
    """Greedy generation with CTranslate2 on the float32 conversion (`prepared.ct2_dir`)."""

    name = "ctranslate2"

    def __init__(self, prepared: Prepared, threads: int | None) -> None:
        _passive_openmp()
        import ctranslate2
        import tokenizers

        if prepared.ct2_dir is None:
            raise ModelError(f"{MODEL_NAME}: no CTranslate2 copy of the weights was prepared")
        started = time.perf_counter()
        folder = prepared.cache_dir
        self.tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = _read_json(folder / "tokenizer_config.json")
        self._template = _compile_template(_chat_template(folder, config))
        self._specials = {key: _token_text(config.get(key)) for key in _SPECIAL_KEYS if config.get(key)}
        unk = (
            self.tokenizer.token_to_id(self._specials.get("unk_token", "")) if self._specials.get("unk_token") else None
        )
        self.end_ids = tuple(
            i for i in (self.tokenizer.token_to_id(t) for t in END_TOKENS) if i is not None and i != unk
        )
        if not self.end_ids:
            raise ModelError(f"{MODEL_NAME}: tokenizer has none of the end tokens {END_TOKENS}")
        self._keep = prepared.keep
        threads = threads or model_threads()
        # One replica per core, one thread each, rather than one replica on every core: two
        # threads of one replica wait for each other at every step, and OpenMP's waiting either
        # spins (ruinous when other processes share the cores) or sleeps (then two threads decode
        # slower than one). Replicas share the weights and need no synchronisation; callers in
        # different threads get one each (docs/performance.md, "Bundled model runtimes").
        self._turns = ReplicaTurns(threads)
        self.generator = ctranslate2.Generator(
            str(prepared.ct2_dir), device="cpu", compute_type="float32", intra_threads=1, inter_threads=threads
        )
        self.info = {
            "runtime": self.name,
            "ct2_dir": str(prepared.ct2_dir),
            "threads": threads,
            "replicas": threads,
            "load_seconds": time.perf_counter() - started,
            "ctranslate2": ctranslate2.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        }

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The chat template applied as transformers' `apply_chat_template(messages, tokenize=False,
        add_generation_prompt=True)` does (same Jinja2 environment, same variables)."""
        return str(
            self._template.render(messages=[dict(m) for m in messages], add_generation_prompt=True, **self._specials)
        )

    def run(self, prompts: Sequence[str], p: Mapping[str, Any]) -> tuple[list[Generated], float]:
        """Generate for rendered prompts (a ragged batch: no padding); returns the rows and the seconds taken."""
        if p["temperature"] > 0:
            raise ModelError(f"{MODEL_NAME}: sampling runs on transformers")  # LocalModel routes it there
        stop = tuple(p["stop"])
        # No lock: CTranslate2 hands concurrent calls to free replicas (the Generator is thread-safe);
        # `_turns` only lets a call a test waits on go before the runner's look-ahead batches.
        # The template already holds the special tokens; the tokenizer must not add a BOS.
        encodings = self.tokenizer.encode_batch(list(prompts), add_special_tokens=False)
        options: dict[str, Any] = {
            "max_length": p["max_tokens"],  # new tokens only, as include_prompt_in_result=False
            "include_prompt_in_result": False,  # the prompt goes through the decoder at once (KV cache)
            "end_token": list(self.end_ids),
            "return_end_token": True,  # completion_tokens counts <|im_end|>, as on transformers
            "beam_size": 1,
            "sampling_topk": 1,  # greedy
        }
        if stop:
            options["callback"] = self._stopper(stop)
        tokens = [e.tokens for e in encodings]
        shared = _shared_prefix(tokens)
        if shared:
            # The rows' common beginning (the system prompt, a few-shot block) goes through
            # the decoder once for the batch instead of once per row; same answers.
            options.update(static_prompt=tokens[0][:shared], cache_static_prompt=False)
            tokens = [t[shared:] for t in tokens]
        with self._turns.turn(ahead=is_answering_ahead()):
            started = time.perf_counter()
            try:
                results = self.generator.generate_batch(tokens, **options)
            except Exception as error:
                raise ModelError(f"{MODEL_NAME}: generation failed: {type(error).__name__}: {error}") from error
            elapsed = time.perf_counter() - started
        out = []
        for encoding, result in zip(encodings, results):
            row = list(result.sequences_ids[0])
            length = _length(row, self.end_ids)
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            out.append(Generated(_finish(text, stop), len(encoding.ids), length))
        return out, elapsed

    def order_key(self, prompt: str) -> int:
        """Batches group prompts of similar token counts: a ragged batch forwards its shortest
        length at once and feeds the rest of longer prompts one decoding step at a time."""
        return len(self.tokenizer.encode(prompt, add_special_tokens=False).ids)

    def _stopper(self, stop: tuple[str, ...]) -> Any:
        """A step callback that ends a row once its text holds a stop string (transformers' stop_strings)."""
        rows: dict[int, list[int]] = {}

        def step(result: Any) -> bool:
            row = rows.setdefault(result.batch_id, [])
            row.append(result.token_id)
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            return any(s in text for s in stop)

        return step


def _passive_openmp() -> None:
    """Let CTranslate2's OpenMP threads sleep instead of spinning while they wait for each other.

    Spinning threads are what OpenMP does by default; on a busy machine (other processes on the
    same cores) two spinning threads spent 10x the CPU time and wall time of a passive pair in
    our measurements (docs/performance.md). Read once, when CTranslate2's own OpenMP library
    loads; a value the user set is kept."""
    if "ctranslate2" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _shared_prefix(rows: Sequence[Sequence[str]]) -> int:
    """How many leading tokens all rows share, leaving each row at least one (0 for a single row)."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    k = 0
    while k < limit and all(r[k] == first[k] for r in rows):
        k += 1
    return k


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str:
    return str(value.get("content", "")) if isinstance(value, Mapping) else str(value)


def _chat_template(folder: Path, config: Mapping[str, Any]) -> str:
    """The template transformers would use: chat_template.jinja, else tokenizer_config's, else ChatML."""
    path = folder / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = config.get("chat_template")
    return template if isinstance(template, str) and template else CHATML_TEMPLATE


def _compile_template(source: str) -> Any:
    """Compile as transformers does (utils/chat_template_utils.py): a sandbox with trim_blocks and
    lstrip_blocks, loop controls, `raise_exception` and a `tojson` that does not escape HTML."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


# --------------------------------------------------------------------------------------------
# transformers


class TransformersRuntime:
    """Generation with transformers on the float32 safetensors copy: left-padded greedy batches,
    and sampling (one request at a time, seeded on torch's RNG)."""

    name = "transformers"

    def __init__(self, prepared: Prepared, dtype: str, threads: int | None) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as error:
            from .local_weights import INSTALL_HINT

            raise ModelError(f"{INSTALL_HINT} ({error})") from error

        if threads is not None:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(prepared.cache_dir))
            model = AutoModelForCausalLM.from_pretrained(str(prepared.cache_dir), dtype=torch.float32)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = CHATML_TEMPLATE
        self.end_ids = tuple(
            i
            for i in (tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS)
            if isinstance(i, int) and i != tokenizer.unk_token_id
        )
        if not self.end_ids:
            raise ModelError(f"{MODEL_NAME}: tokenizer has none of the end tokens {END_TOKENS}")
        # Pad with <|im_end|> (the GGUF's pad id too): padding is on the left and masked out.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_ids[0]
        tokenizer.pad_token_id = self.pad_id
        tokenizer.padding_side = "left"
        if dtype != "float32":
            model.to(getattr(torch, dtype))
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        self._keep = prepared.keep
        self.lock = threading.Lock()  # generation is serialised: the sampling seed is set on torch's global RNG
        self.info = {
            "runtime": self.name,
            "torch_threads": torch.get_num_threads(),
            "threads": torch.get_num_threads(),
            "dtype": dtype,
            "load_seconds": time.perf_counter() - started,
        }

    def order_key(self, prompt: str) -> int:
        return len(prompt)  # characters: the left-padded batches the answers were first measured with

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        return str(self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))

    def _generation_config(self, p: Mapping[str, Any]) -> Any:
        from transformers import GenerationConfig

        # A complete config of our own, so the model's stored defaults can't add flags that
        # contradict do_sample (transformers warns about those on every call).
        settings: dict[str, Any] = {
            "max_new_tokens": p["max_tokens"],
            "eos_token_id": list(self.end_ids),
            "pad_token_id": self.pad_id,
            "bos_token_id": self.tokenizer.bos_token_id,
            "use_cache": True,
        }
        if p["temperature"] > 0:
            settings.update(do_sample=True, temperature=p["temperature"], top_p=p["top_p"], top_k=0)
        else:
            settings.update(do_sample=False)
        if p["stop"]:
            settings["stop_strings"] = list(p["stop"])
        return GenerationConfig(**settings)

    def run(self, prompts: Sequence[str], p: Mapping[str, Any]) -> tuple[list[Generated], float]:
        import torch

        config = self._generation_config(p)
        with self.lock:
            started = time.perf_counter()
            # The template already holds the special tokens; don't let the tokenizer add a BOS.
            inputs = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode(), _seeded(p["seed"] if p["temperature"] > 0 else None):
                try:
                    output = self.model.generate(
                        **inputs, generation_config=config, tokenizer=self.tokenizer if p["stop"] else None
                    )
                except Exception as error:
                    raise ModelError(f"{MODEL_NAME}: generation failed: {type(error).__name__}: {error}") from error
            elapsed = time.perf_counter() - started
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        out = []
        for row, prompt_tokens in zip(new_tokens.tolist(), prompt_lengths):
            # Finished rows are filled with pad (= <|im_end|>); count up to and including the end.
            length = _length(row, self.end_ids)
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            if p["stop"] and row[length - 1] in self.end_ids and any(s in text for s in p["stop"]):
                length -= 1  # the row stopped at a stop string: that "end" is the first pad, not generated
            out.append(Generated(_finish(text, p["stop"]), int(prompt_tokens), length))
        return out, elapsed


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
