"""What a repair's MLflow run holds (`--promptopt-repair`): its tags, description, params and
metrics, built from a `repair_result.RepairResult`. Its per-case traces (the proposal scored case
by case, held-out or in-sample, next to the original) are trace_build.py's; runs.py logs both.
"""

from __future__ import annotations

import json
from typing import Any

from .client import MAX_PARAM_VALUE, clean_tags, flag, safe_text, truncate
from .layout import KIND_TAG, LINKED_PROMPTS_TAG, RUN_TYPE, SessionMeta, display_metrics, source_tags
from .prompts import parse_uri

__all__ = ["DIFF_FILE", "repair_metrics", "repair_params", "repair_tags"]

# The proposal's diff; `.txt` so MLflow's artifact view shows it (it previews by extension, and
# `.diff` is not one it knows: server/js 930.*.js's text extensions).
DIFF_FILE = "repair/proposal.diff.txt"


def repair_tags(repair: Any, parent: str, registry_uri: str | None, meta: SessionMeta) -> dict[str, str]:
    tags = {
        "mlflow.parentRunId": parent,
        RUN_TYPE[0]: RUN_TYPE[1],
        KIND_TAG: "repair",
        # Not `promptopt.suite`: a baseline comparison reads the runs with that tag as suites.
        "promptopt.repair.suite": repair.suite_name,
        "promptopt.repair.suite_id": repair.suite,
        "promptopt.repair.status": repair.status,
        "mlflow.note.content": _repair_note(repair, registry_uri),
    }
    if registry_uri is not None:
        name, version, _ = parse_uri(registry_uri)
        tags["promptopt.repair.registry_uri"] = registry_uri
        tags[LINKED_PROMPTS_TAG] = json.dumps([{"name": name, "version": str(version)}])
    if repair.file:
        tags["promptopt.repair.file"] = repair.file
    return clean_tags({**tags, **source_tags(meta)})


def _repair_note(repair: Any, registry_uri: str | None) -> str:
    """A repair run's description: its verdict, the held-out pass rates and where the proposal is."""
    by = f" by {repair.optimizer}" if repair.optimizer else ""
    lines = [f"{repair.suite_name} prompt {repair.prompt_index}: {repair.status}{by}"]
    if repair.heldout_before is not None and repair.heldout_after is not None:
        lines.append(f"held-out {repair.heldout_before.describe()} -> {repair.heldout_after.describe()}")
    if repair.reason:
        lines.append(repair.reason)
    if repair.file:
        lines.append(f"proposal: {repair.file}" + (" (applied)" if repair.applied else ""))
    if registry_uri:
        lines.append(f"registered: {registry_uri} (alias candidate)")
    return "\n".join(lines)


def repair_params(repair: Any) -> dict[str, str]:
    params = {
        "suite": repair.suite_name,
        "suite_id": repair.suite,
        "prompt_index": repair.prompt_index,
        "model": repair.model,
        "optimizer": repair.optimizer,
        "seed": repair.seed,
        "budget": repair.budget,
        "status": repair.status,
        "reason": repair.reason,
        "weak_estimate": flag(repair.weak_estimate),
        "applied": flag(repair.applied),
        "heldout_cases": len(repair.heldout_cases),
        "insample_cases": len(repair.insample_cases),
    }
    return {k: truncate(safe_text(str(v)), MAX_PARAM_VALUE) for k, v in params.items() if v != ""}


def repair_metrics(repair: Any) -> dict[str, float | None]:
    def rate(score: Any) -> float | None:
        return None if score is None else score.pass_rate

    return display_metrics(
        {
            "heldout_before": rate(repair.heldout_before),
            "heldout_after": rate(repair.heldout_after),
            "insample_before": rate(repair.insample_before),
            "insample_after": rate(repair.insample_after),
            "calls_task": repair.calls.task_calls,
            "calls_proposer": repair.calls.proposer_calls,
            "calls_judge": repair.calls.judge_calls,
            "calls_projected": repair.projected.total,
            "tokens_task": repair.calls.task_tokens,
            "tokens_proposer": repair.calls.proposer_tokens,
            "tokens_judge": repair.calls.judge_tokens,
            "cache_hits": repair.calls.cache_hits,
            "duration_s": repair.duration_s,
        }
    )
