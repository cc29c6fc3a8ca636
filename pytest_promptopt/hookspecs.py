"""Hooks a `conftest.py` can implement to customise pytest-promptopt."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_promptopt_make_model(spec: Any) -> Any:
    """Return a model adapter for `spec` (a `ModelSpec`), or None to let the plugin build it.

    Use it to plug in an in-house client without writing a litellm provider::

        # conftest.py
        from myco.llm import InternalModel   # any object with name, cache_identity, generate()

        def pytest_promptopt_make_model(spec):
            if spec.id.startswith("myco/"):
                return InternalModel(spec.id.split("/", 1)[1], **spec.params)
    """
