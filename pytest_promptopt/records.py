"""The record of one case: what crosses from a worker (xdist, Spark) to the controller as JSON.

A dataset suite's items send a `case_stats.DatasetPart` instead (their rows' tallies and the path
of their per-case table), so the controller never holds the rows themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CaseResult"]


@dataclass
class CaseResult:
    """What happened to one case: its output, verdict, scores, or the error that stopped it."""

    case_id: str
    name: str
    nodeid: str = ""
    vars: Mapping[str, Any] = field(default_factory=dict)
    prompt: str = ""
    output: str | None = None
    passed: bool = False
    error: str | None = None
    score: float | None = None
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    named_scores: dict[str, float] = field(default_factory=dict)
    # The weight behind each named score (promptfoo's namedScoreWeights; absent: 1): a metric on
    # two checks of a case, or with weight 2, counts twice in promptfoo's derivedMetrics sums.
    named_weights: dict[str, float] = field(default_factory=dict)
    assertions: list[dict[str, Any]] = field(default_factory=list)
    prompt_index: int | None = None
    test_index: int | None = None
    position: int | None = None  # order of the case in its suite file (None for Python tests)
    model: str = ""
    template: str | None = None  # the prompt template before rendering (suite-file cases)
    registry_prompts: list[str] = field(default_factory=list)  # `prompts:/name/<version>` of registered prompts used
    model_params: dict[str, Any] = field(default_factory=dict)  # redacted: records travel and get logged
    # The provider's `transform` run on the answer before the test's (suite cases), as written
    provider_transform: str | None = None
    latency_ms: float | None = None
    # How many requests shared the model call `latency_ms` was measured on (a batching model such
    # as the bundled one answers a batch at once); None: the case's call was its own.
    latency_batch: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    calls: int = 0
    cache_hits: int = 0
    duration_s: float = 0.0
    started_at: float | None = None  # when the case began (Unix time, seconds)
    # Repeats (--promptopt-repeat N): `passed` means every repeat passed, and the fields above
    # describe the case over its samples (`merge_samples`); `samples` holds each one compactly.
    repeats: int = 1
    repeat_passed: int | None = None  # None: one sample, read `passed`
    samples: list[dict[str, Any]] = field(default_factory=list)  # only with repeats > 1

    @property
    def status(self) -> str:
        return "error" if self.error else ("passed" if self.passed else "failed")

    @property
    def samples_passed(self) -> int:
        """How many of the case's samples passed (0 or 1 without repeats)."""
        if self.repeat_passed is not None:
            return self.repeat_passed
        return int(self.passed and not self.error)

    @property
    def pass_rate(self) -> float | None:
        """The case's pass rate over its repeats; None for an error."""
        return None if self.error else self.samples_passed / max(1, self.repeats)

    @property
    def flaky(self) -> bool:
        """Some repeats passed and some failed: the case neither always passes nor always fails."""
        return not self.error and 0 < self.samples_passed < self.repeats

    def sample_values(self) -> list[dict[str, Any]]:
        """The case's samples as `samples` holds them; a case without repeats is its own one sample."""
        if self.samples:
            return self.samples
        return [
            {
                "passed": self.passed,
                "score": self.score,
                "named_scores": self.named_scores,
                "named_weights": self.named_weights,
                "latency_ms": self.latency_ms,
            }
        ]

    def to_dict(self) -> dict[str, Any]:
        # Shallow: every record is encoded once per case, and `asdict`'s deep copy was a fifth of
        # the plugin's cost per case; readers serialise or `redact` (which copies) it. The derived
        # values are written for readers of the report; `from_dict` recomputes them.
        data = {name: getattr(self, name) for name in _CASE_FIELDS}
        data.update(repeat_passed=self.samples_passed, pass_rate=self.pass_rate, flaky=self.flaky)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_CASE_FIELDS = tuple(CaseResult.__dataclass_fields__)
