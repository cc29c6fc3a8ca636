"""What a repair reports: plain data that the terminal, JSON, HTML and MLflow writers read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Calls", "RepairResult", "Score"]


@dataclass
class Calls:
    """Model calls (cache misses) and tokens of one repair, by role. `judge_calls` are the calls
    of the suite's model-graded assertions while the optimiser scores candidates (when the
    original and the proposal are scored, their judges' calls count in `task_calls`, as the
    cases' calls do in a run)."""

    task_calls: int = 0
    proposer_calls: int = 0
    task_tokens: int = 0
    proposer_tokens: int = 0
    cache_hits: int = 0
    judge_calls: int = 0
    judge_tokens: int = 0

    @property
    def total(self) -> int:
        return self.task_calls + self.proposer_calls + self.judge_calls

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Calls:
        return cls(**{k: int(v) for k, v in (data or {}).items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Score:
    """A pass rate over some cases, with its 95% Wilson interval, and the metric means."""

    pass_rate: float | None
    passed: int
    cases: int
    low: float | None = None
    high: float | None = None
    errors: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass_rate": self.pass_rate,
            "passed": self.passed,
            "cases": self.cases,
            "interval": [self.low, self.high],
            "errors": self.errors,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Score | None:
        if data is None:
            return None
        low, high = (list(data.get("interval") or []) + [None, None])[:2]
        return cls(
            data.get("pass_rate"),
            int(data.get("passed", 0)),
            int(data.get("cases", 0)),
            low,
            high,
            int(data.get("errors", 0)),
            dict(data.get("metrics") or {}),
        )

    def describe(self) -> str:
        if self.pass_rate is None:
            return "n/a"
        text = f"{self.pass_rate:.0%} ({self.passed}/{self.cases})"
        if self.low is not None and self.high is not None:
            text += f" [95% CI {self.low:.0%}-{self.high:.0%}]"
        return text


@dataclass
class RepairResult:
    """One repaired prompt of one suite (for one model).

    `status`: "repaired" (a proposal beat the original on held-out cases; `file` is set unless
    writing failed), "no repair found" (it did not), "skipped" / "refused" / "error" (with `reason`).
    """

    suite: str
    suite_name: str
    status: str
    optimizer: str = ""
    model: str = ""
    prompt_index: int = 0
    prompt_label: str = ""
    reason: str = ""
    heldout_before: Score | None = None
    heldout_after: Score | None = None
    insample_before: Score | None = None
    insample_after: Score | None = None
    heldout_cases: list[str] = field(default_factory=list)
    insample_cases: list[str] = field(default_factory=list)
    weak_estimate: bool = False  # too few held-out cases for the numbers to mean much
    calls: Calls = field(default_factory=Calls)
    projected: Calls = field(default_factory=Calls)
    budget: int = 0
    seed: int = 0
    original: str = ""  # the template before
    prompt: str | None = None  # the proposed template (None when nothing was proposed)
    demos: list[dict[str, Any]] = field(default_factory=list)
    file: str | None = (
        None  # the proposal written beside the suite (or the user's prompt, with --promptopt-repair-apply)
    )
    diff_file: str | None = None
    diff: str = ""
    applied: bool = False
    duration_s: float = 0.0
    tried: list[dict[str, Any]] = field(default_factory=list)  # every optimiser tried: name, in-sample pass rate, calls
    started_at: float | None = None  # when the repair began (Unix time, seconds)
    # The proposal scored case by case (when one was scored): each case's id, name, vars, part
    # ("held-out" or "in-sample") and the original's and the proposal's answer and verdict.
    cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return self.status == "repaired"

    def to_dict(self) -> dict[str, Any]:
        def rate(score: Score | None) -> float | None:
            return None if score is None else score.pass_rate

        return {
            "suite": self.suite,
            "suite_name": self.suite_name,
            "status": self.status,
            "reason": self.reason,
            "optimizer": self.optimizer,
            "model": self.model,
            "prompt_index": self.prompt_index,
            "prompt_label": self.prompt_label,
            "heldout_before": rate(self.heldout_before),
            "heldout_after": rate(self.heldout_after),
            "insample_before": rate(self.insample_before),
            "insample_after": rate(self.insample_after),
            "scores": {
                k: None if v is None else v.to_dict()
                for k, v in (
                    ("heldout_before", self.heldout_before),
                    ("heldout_after", self.heldout_after),
                    ("insample_before", self.insample_before),
                    ("insample_after", self.insample_after),
                )
            },
            "heldout_cases": list(self.heldout_cases),
            "insample_cases": list(self.insample_cases),
            "weak_estimate": self.weak_estimate,
            "calls": self.calls.to_dict(),
            "projected_calls": self.projected.to_dict(),
            "budget": self.budget,
            "seed": self.seed,
            "original": self.original,
            "prompt": self.prompt,
            "demos": list(self.demos),
            "file": self.file,
            "diff_file": self.diff_file,
            "diff": self.diff,
            "applied": self.applied,
            "duration_s": round(self.duration_s, 3),
            "tried": list(self.tried),
            "started_at": self.started_at,
            "cases": list(self.cases),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RepairResult:
        """The result a report's `repairs` entry was written from (`to_dict`), e.g. for a pending upload."""
        scores = data.get("scores") or {}
        plain = {
            k: v
            for k, v in data.items()
            if k in cls.__dataclass_fields__
            and k not in ("calls", "projected")
            and not k.startswith(("heldout_", "insample_"))
        }
        return cls(
            **plain,
            calls=Calls.from_dict(data.get("calls")),
            projected=Calls.from_dict(data.get("projected_calls")),
            heldout_before=Score.from_dict(scores.get("heldout_before")),
            heldout_after=Score.from_dict(scores.get("heldout_after")),
            insample_before=Score.from_dict(scores.get("insample_before")),
            insample_after=Score.from_dict(scores.get("insample_after")),
            heldout_cases=list(data.get("heldout_cases") or []),
            insample_cases=list(data.get("insample_cases") or []),
        )
