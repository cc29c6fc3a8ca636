"""Assertions: one grader per type, registered by name, the same names in YAML and Python.

Importing the package registers the built-in graders (each module's `@register`), so importing
any `pytest_promptopt.assertions.*` module fills the registry; `base` imports none of them. The
graders import their heavy dependencies (mlflow, rouge-score, jsonschema, ...) when they run.
"""

from . import (  # noqa: F401  (imported for their @register)
    measures,
    mlflow_scorers,
    model_graded,
    python_ref,
    reference,
    scoring,
    scripts,
    similarity,
    structured,
    text,
)
