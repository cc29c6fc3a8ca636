"""pytest-promptopt: prompt regression testing for pytest.

Public API (everything else is private). Names load lazily, so the pytest plugin, which imports
this package, costs nothing until a prompt test runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Prompt": ".prompt",
    "TemplateError": ".prompt",
    "Model": ".models.base",
    "ModelError": ".models.base",
    "Request": ".models.base",
    "Response": ".models.base",
    "EchoModel": ".models.fakes",
    "FakeModel": ".models.fakes",
    "LiteLLMModel": ".models.hosted",
    "LocalModel": ".models.local",
    "ModelSpec": ".models.specs",
    "create_model": ".models.specs",
    "Assertion": ".assertions.base",
    "Grade": ".assertions.base",
    "CaseGrade": ".assertions.scoring",
    "grade_case": ".assertions.scoring",
    "CheckFailed": ".python_tests",
    "SuiteError": ".suite.model",
    "load_suite": ".suite.loader",
    "assertion": ".assertions.builders",
    "not_": ".assertions.builders",
    "equals": ".assertions.builders",
    "contains": ".assertions.builders",
    "icontains": ".assertions.builders",
    "contains_any": ".assertions.builders",
    "contains_all": ".assertions.builders",
    "icontains_any": ".assertions.builders",
    "icontains_all": ".assertions.builders",
    "starts_with": ".assertions.builders",
    "regex": ".assertions.builders",
    "is_json": ".assertions.builders",
    "contains_json": ".assertions.builders",
    "levenshtein": ".assertions.builders",
    "word_count": ".assertions.builders",
    "length": ".assertions.builders",
    "latency": ".assertions.builders",
    "cost": ".assertions.builders",
    "python": ".assertions.builders",
    "llm_rubric": ".assertions.builders",
    "g_eval": ".assertions.builders",
    "factuality": ".assertions.builders",
    "answer_relevance": ".assertions.builders",
    "closed_qa": ".assertions.builders",
    "mlflow_scorer": ".assertions.builders",
    "similar": ".assertions.builders",
    "rouge_n": ".assertions.builders",
    "rouge_1": ".assertions.builders",
    "rouge_2": ".assertions.builders",
    "rouge_l": ".assertions.builders",
    "bleu": ".assertions.builders",
    "chrf": ".assertions.builders",
    "gleu": ".assertions.builders",
    "DemoRepairOptimizer": ".repair.mlflow_optimizer",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_promptopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
