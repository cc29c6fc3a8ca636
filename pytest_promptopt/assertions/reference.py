"""Reference metrics: ROUGE, BLEU, chrF and GLEU of the output against reference text(s).

Each is computed by a maintained library, not here: ROUGE by Google's `rouge-score` (a
reimplementation of ROUGE-1.5.5; promptfoo's `rouge-n` on NLTK's Treebank tokens, as promptfoo
tokenises), BLEU and chrF by `sacrebleu`, GLEU by NLTK. Every score is
in [0, 1] and passes at `threshold` (promptfoo's defaults: 0.75 for ROUGE, 0.5 for BLEU and
GLEU). `value` is the reference, or a list of references. The libraries load on first use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

from .base import Assertion, AssertionConfigError, AssertionContext, AssertionEvaluationError, Grade, register

__all__ = ["INSTALL_HINT", "references"]

INSTALL_HINT = "pip install 'pytest-promptopt[metrics]'"
ROUGE_DEFAULT_THRESHOLD = 0.75  # promptfoo's for rouge-n
OVERLAP_DEFAULT_THRESHOLD = 0.5  # promptfoo's for bleu and gleu
_MEASURES = {"recall": "recall", "precision": "precision", "f": "fmeasure", "fmeasure": "fmeasure", "f1": "fmeasure"}


def references(assertion: Assertion) -> list[str]:
    """`value` as a non-empty list of reference strings (one string, or a list of them)."""
    value = assertion.value
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) for item in items):
        raise AssertionConfigError(
            f"{assertion.where or assertion.type}: '{assertion.type}' needs a reference string "
            "or a non-empty list of them as its 'value'"
        )
    return items


def missing(module: str, what: str) -> AssertionEvaluationError:
    """The error for a metric whose optional library is not installed: one line, how to install it."""
    return AssertionEvaluationError(f"{what} needs the '{module}' package: {INSTALL_HINT}")


def _config(assertion: Assertion, allowed: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    config = dict(assertion.config or {})
    where = assertion.where or assertion.type
    for key, value in config.items():
        if key not in allowed:
            keys = ", ".join(allowed) or "none"
            raise AssertionConfigError(f"{where}: unknown config key '{key}' for '{assertion.type}' (allowed: {keys})")
        if isinstance(value, bool) and allowed[key] is not bool or not isinstance(value, allowed[key]):
            raise AssertionConfigError(f"{where}: config '{key}' has the wrong type ({type(value).__name__})")
    return config


def _threshold(assertion: Assertion, default: float) -> float:
    return float(assertion.threshold) if assertion.threshold is not None else default


def _graded(label: str, score: float, threshold: float) -> Grade:
    passed = score >= threshold
    relation = "is greater than or equal to" if passed else "is less than"
    return Grade(passed, score, f"{label} {score:.4f} {relation} threshold {threshold:g}")


# ----------------------------------------------------------------------------- ROUGE

# Our name -> rouge-score's; `rouge-n` (promptfoo's) takes `n` from its config.
_ROUGE = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l": "rougeL", "rouge-lsum": "rougeLsum"}


def _rouge_settings(assertion: Assertion) -> tuple[str, str, bool]:
    """(rouge-score type, measure attribute, stemmer) from the assertion and its config.

    `rouge-n` is promptfoo's (0.121.20, assertions/rouge.ts): the F-measure of clipped n-gram
    counts over js-rouge's Treebank tokens of the lowercased texts, so an answer longer than its
    reference scores below 1. The other ROUGE types are this plugin's, on ROUGE-1.5.5's tokens."""
    allowed: dict[str, type | tuple[type, ...]] = {"measure": str, "stemmer": bool}
    if assertion.type == "rouge-n":
        allowed["n"] = int
    config = _config(assertion, allowed)
    where = assertion.where or assertion.type
    if assertion.type == "rouge-n":
        n = config.get("n", 1)
        if not 1 <= n <= 9:
            raise AssertionConfigError(f"{where}: rouge-n's config 'n' must be between 1 and 9, got {n}")
        kind = f"rouge{n}"
    else:
        kind = _ROUGE[assertion.type]
    measure = str(config.get("measure", "f")).lower()
    if measure not in _MEASURES:
        raise AssertionConfigError(
            f"{where}: config 'measure' must be recall, precision or f, got {config['measure']!r}"
        )
    return kind, _MEASURES[measure], bool(config.get("stemmer", False))


def _check_rouge(assertion: Assertion) -> None:
    references(assertion)
    _rouge_settings(assertion)


class _TreebankTokens:
    """rouge-score's tokenizer interface over NLTK's Treebank tokenizer, which splits as js-rouge's
    `treeBankTokenize` (promptfoo's rouge-n tokens: punctuation and clitics are tokens of their
    own, so "Answer: hello" is three). Like js-rouge it first folds whitespace runs into one
    space; like promptfoo it lowercases; `stemmer` stems each token as rouge-score's own does."""

    def __init__(self, stemmer: bool) -> None:
        try:
            from nltk.stem import porter
            from nltk.tokenize import TreebankWordTokenizer
        except ImportError:
            raise missing("nltk", "ROUGE-N") from None
        self._split = TreebankWordTokenizer().tokenize
        self._stem = porter.PorterStemmer().stem if stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens = self._split(re.sub(r"[\s\u0085]+", " ", text).strip().lower())
        return [self._stem(token) for token in tokens] if self._stem else tokens


@functools.lru_cache(maxsize=32)
def _rouge_scorer(kind: str, stemmer: bool, treebank: bool) -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise missing("rouge-score", "ROUGE") from None
    tokenizer = _TreebankTokens(stemmer) if treebank else None
    return rouge_scorer.RougeScorer([kind], use_stemmer=stemmer, tokenizer=tokenizer)


def _rouge(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    kind, measure, stemmer = _rouge_settings(assertion)
    scorer = _rouge_scorer(kind, stemmer, assertion.type == "rouge-n")
    # rouge-score takes (target, prediction); with several references the best one counts.
    score = max(getattr(scorer.score(reference, output)[kind], measure) for reference in references(assertion))
    # `kind` is rouge-score's name (rouge2, rougeL, rougeLsum): ROUGE-2, ROUGE-L, ROUGE-LSUM
    label = f"ROUGE-{kind[5:].upper()} {'F-measure' if measure == 'fmeasure' else measure}"
    return _graded(label, float(score), _threshold(assertion, ROUGE_DEFAULT_THRESHOLD))


for _name in ("rouge-n", *_ROUGE):
    register(_name, check=_check_rouge)(_rouge)


# ----------------------------------------------------------------------------- BLEU, chrF, GLEU


def _lowercase(assertion: Assertion) -> bool:
    # Case-insensitive by default, as promptfoo's BLEU, GLEU and ROUGE are.
    return bool(_config(assertion, {"lowercase": bool}).get("lowercase", True))


def _check_overlap(assertion: Assertion) -> None:
    references(assertion)
    _lowercase(assertion)


@functools.lru_cache(maxsize=8)
def _sacrebleu_metric(name: str, lowercase: bool) -> Any:
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError:
        raise missing("sacrebleu", name.upper()) from None
    if name == "bleu":
        # sentence-level BLEU as sacrebleu.sentence_bleu computes it: 13a tokens, exponential smoothing
        return BLEU(lowercase=lowercase, effective_order=True)
    return CHRF(lowercase=lowercase)


def _sacrebleu_grader(name: str, label: str) -> Callable[[str, Assertion, AssertionContext], Grade]:
    def grade(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
        metric = _sacrebleu_metric(name, _lowercase(assertion))
        score = metric.sentence_score(output, references(assertion)).score / 100.0  # sacrebleu scores 0-100
        return _graded(label, min(1.0, max(0.0, score)), _threshold(assertion, OVERLAP_DEFAULT_THRESHOLD))

    grade.__name__ = name
    return grade


register("bleu", check=_check_overlap)(_sacrebleu_grader("bleu", "BLEU score"))
register("chrf", check=_check_overlap)(_sacrebleu_grader("chrf", "chrF score"))


@functools.lru_cache(maxsize=1)
def _gleu_parts() -> tuple[Any, Any]:
    try:
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    except ImportError:
        raise missing("sacrebleu", "GLEU") from None
    try:
        from nltk.translate.gleu_score import sentence_gleu
    except ImportError:
        raise missing("nltk", "GLEU") from None
    return Tokenizer13a(), sentence_gleu


@register("gleu", check=_check_overlap)
def gleu(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    # NLTK's sentence GLEU (1- to 4-grams; the best reference counts) on BLEU's 13a tokens, so
    # punctuation is a token of its own as in `bleu`.
    tokenize, sentence_gleu = _gleu_parts()
    lower = _lowercase(assertion)

    def tokens(text: str) -> list[str]:
        return tokenize(text.lower() if lower else text).split()

    score = sentence_gleu([tokens(r) for r in references(assertion)], tokens(output), min_len=1, max_len=4)
    return _graded("GLEU score", float(score), _threshold(assertion, OVERLAP_DEFAULT_THRESHOLD))
