"""Python functions named by reference (`module:function`, `file://path.py:function`) and what
they return, for checks that run in this process: `mlflow:` scorers and functions given in Python
tests. Suite files' `python` checks run in the sandbox (scripts.py)."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .base import AssertionConfigError, AssertionEvaluationError, Grade
from .dspy_metrics import call_metric, is_dspy_metric

DEFAULT_FUNCTION = "get_assert"  # promptfoo's name when a file:// reference names no function


def split_reference(reference: str, where: str) -> tuple[str, str]:
    body = reference[len("file://") :] if reference.startswith("file://") else reference
    target, sep, function = body.rpartition(":")
    if not sep or not target:
        if reference.startswith("file://"):
            return body, DEFAULT_FUNCTION
        raise AssertionConfigError(
            f"{where}: python assertion value {reference!r} must be 'module:function' or 'file://path.py:function'"
        )
    if not function.isidentifier():
        raise AssertionConfigError(f"{where}: {function!r} in {reference!r} is not a function name")
    return target, function


@functools.lru_cache(maxsize=256)
def _module_from_file(path: str, mtime_ns: int) -> Any:
    name = "_promptopt_check_" + hashlib.sha1(f"{path}:{mtime_ns}".encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AssertionConfigError(f"cannot load Python file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def resolve_function(reference: str, base_dir: Path, where: str = "") -> Callable[..., Any]:
    """Import the function a `python` assertion names (relative files resolve from the suite's folder)."""
    target, function = split_reference(reference.strip(), where)
    if reference.strip().startswith("file://") or target.endswith(".py"):
        path = (base_dir / target).resolve()
        if not path.is_file():
            raise AssertionConfigError(f"{where}: Python file not found: {path}")
        try:
            module = _module_from_file(str(path), path.stat().st_mtime_ns)
        except AssertionConfigError:
            raise
        except Exception as exc:
            raise AssertionConfigError(f"{where}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise AssertionConfigError(f"{where}: cannot import module {target!r}: {exc}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise AssertionConfigError(f"{where}: {target} has no function {function!r}")
    return fn


def grade_from_result(result: Any, threshold: float | None, origin: str) -> Grade:
    """Read what a user function returned: bool, a score in [0, 1], or a result with a reason."""
    if isinstance(result, Grade):
        return result
    if isinstance(result, bool):
        return Grade(result, 1.0 if result else 0.0, "Assertion passed" if result else f"{origin} returned False")
    if isinstance(result, (int, float)):
        score = float(result)
        if math.isnan(score):
            raise AssertionEvaluationError(f"{origin} returned NaN")
        passed = score >= threshold if threshold is not None else score > 0
        reason = (
            "Assertion passed"
            if passed
            else f"{origin} returned score {score:g}"
            + (f" below threshold {threshold:g}" if threshold is not None else "")
        )
        return Grade(passed, score, reason)
    if isinstance(result, Mapping):
        data = dict(result)
    elif hasattr(result, "score") or hasattr(result, "passed") or hasattr(result, "pass_"):
        # a dspy.Prediction(score=..., feedback=...) from a GEPA-style metric reads the same way
        data = {k: getattr(result, k) for k in ("pass_", "passed", "score", "reason", "feedback") if hasattr(result, k)}
    else:
        raise AssertionEvaluationError(
            f"{origin} returned {type(result).__name__}; return a bool, a number in [0, 1], "
            "or {'pass': bool, 'score': float, 'reason': str}"
        )
    passed = data.get("pass", data.get("pass_", data.get("passed")))
    score = data.get("score")
    if passed is None and score is None:
        raise AssertionEvaluationError(f"{origin} returned a result with neither 'pass' nor 'score'")
    if score is None:
        score = 1.0 if passed else 0.0
    if passed is None:
        passed = float(score) >= threshold if threshold is not None else float(score) > 0
    elif threshold is not None and float(score) < threshold:
        passed = False  # promptfoo: a threshold on the assertion overrides the returned pass
    reason = data.get("reason") or data.get("feedback")
    return Grade(bool(passed), float(score), str(reason or ("Assertion passed" if passed else f"{origin} failed")))


def call_function(fn: Callable[..., Any], output: str, context: dict[str, Any]) -> Any:
    """Call a check function: a DSPy-style metric, `fn(output)` or `fn(output, context)`."""
    if is_dspy_metric(fn):
        return call_metric(fn, output, context["vars"])
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(output, context)
    if len(params) == 1:
        return fn(output)
    return fn(output, context)
