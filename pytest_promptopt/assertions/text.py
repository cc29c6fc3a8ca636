"""String assertions: equals, contains*, starts-with, regex (promptfoo's semantics)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from typing import Any

from .base import Assertion, AssertionConfigError, AssertionContext, Grade, register


def _scalar(assertion: Assertion) -> str:
    if isinstance(assertion.value, (dict, list)) or assertion.value is None:
        raise AssertionConfigError(
            f"{assertion.where or assertion.type}: '{assertion.type}' needs a string or number value"
        )
    return str(assertion.value)


def _listed(assertion: Assertion) -> list[str]:
    """A list value, or promptfoo's comma-separated string (with "quoted, items")."""
    value = assertion.value
    if isinstance(value, str):
        return [item.strip() for item in next(csv.reader([value], skipinitialspace=True)) if item.strip()]
    if isinstance(value, (list, tuple)) and value:
        return [str(item) for item in value]
    raise AssertionConfigError(
        f"{assertion.where or assertion.type}: '{assertion.type}' needs a list of strings "
        "(or one comma-separated string)"
    )


def _check_scalar(assertion: Assertion) -> None:
    _scalar(assertion)


def _check_listed(assertion: Assertion) -> None:
    _listed(assertion)


@register("equals")
def equals(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    expected: Any = assertion.value
    if isinstance(expected, (dict, list)):
        # An object value compares structurally with the output parsed as JSON.
        try:
            passed = json.loads(output) == expected
        except ValueError:
            passed = False
        return Grade.binary(passed, f"Expected output to equal {json.dumps(expected)}")
    return Grade.binary(output == str(expected), f'Expected output "{output}" to equal "{expected}"')


def _substring(name: str, fold: bool) -> Callable[[str, Assertion, AssertionContext], Grade]:
    @register(name, check=_check_scalar)
    def grade(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
        value = _scalar(assertion)
        haystack, needle = (output.lower(), value.lower()) if fold else (output, value)
        return Grade.binary(needle in haystack, f'Expected output to contain "{value}"')

    return grade


contains = _substring("contains", fold=False)
icontains = _substring("icontains", fold=True)


def _several(name: str, fold: bool, need_all: bool) -> Callable[[str, Assertion, AssertionContext], Grade]:
    @register(name, check=_check_listed)
    def grade(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
        values = _listed(assertion)
        haystack = output.lower() if fold else output
        found = [v for v in values if (v.lower() if fold else v) in haystack]
        if need_all:
            missing = [v for v in values if v not in found]
            return Grade.binary(
                not missing, f"Expected output to contain all of [{', '.join(values)}]; missing: [{', '.join(missing)}]"
            )
        return Grade.binary(bool(found), f"Expected output to contain one of [{', '.join(values)}]")

    return grade


contains_any = _several("contains-any", fold=False, need_all=False)
contains_all = _several("contains-all", fold=False, need_all=True)
icontains_any = _several("icontains-any", fold=True, need_all=False)
icontains_all = _several("icontains-all", fold=True, need_all=True)


@register("starts-with", check=_check_scalar)
def starts_with(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    value = _scalar(assertion)
    return Grade.binary(output.startswith(value), f'Expected output to start with "{value}"')


@register("regex", check=_check_scalar)
def regex(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    """A pattern that does not compile fails the check (promptfoo: "Invalid regex pattern"), with
    the place of the assertion in its reason; the case's other checks still run."""
    pattern = _scalar(assertion)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        where = f"{assertion.where}: " if assertion.where else ""
        return Grade(False, 0.0, f"Invalid regex pattern: {where}invalid regular expression {pattern!r}: {exc}")
    return Grade.binary(compiled.search(output) is not None, f'Expected output to match regex "{compiled.pattern}"')
