"""Which prompts and providers a test's filters name (`tests[].prompts`, `tests[].providers`), and
promptfoo's refusal of a filter that names none.

promptfoo 0.121.20 checks these names when it reads a config (`validateTestPromptReferences`,
`validateTestProviderReferences`) and stops: "Test #4 references prompt "nope" which does not
exist". A test whose filter matched nothing would otherwise run nothing, silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .document import Context
from .sources import TestEntry

__all__ = ["check_test_references", "known_names", "ref_matches"]


def ref_matches(ref: str, *names: str) -> bool:
    """promptfoo's `doesPromptRefMatch` / `doesProviderRefMatch` on a prompt's label or a
    provider's id and label: equal, `ref*` as a prefix, or `ref` for `ref:...`."""
    return any(
        name == ref or (ref.endswith("*") and name.startswith(ref[:-1])) or name.startswith(f"{ref}:")
        for name in names
        if name
    )


def known_names(names: Sequence[tuple[str, ...]]) -> str:
    """The first names of a suite's prompts or providers, for a message about a filter."""
    return ", ".join(repr(n[0][:60] + ("..." if len(n[0]) > 60 else "")) for n in names[:10])


def check_test_references(
    defaults: Mapping[str, Any],
    tests: Sequence[TestEntry],
    prompt_names: Sequence[tuple[str, ...]],
    provider_names: Sequence[tuple[str, ...]],
    ctx: Context,
) -> None:
    """Refuse, as promptfoo does, a `prompts` or `providers` filter of defaultTest or of a test that
    names no prompt / provider of the suite. promptfoo does not check the prompt filters of the
    tests `scenarios` make (their cases vanish; the loader names them in a warning)."""
    _check(defaults.get("prompts"), prompt_names, ("defaultTest", "prompts"), "prompt", ctx)
    _check(defaults.get("providers"), provider_names, ("defaultTest", "providers"), "provider", ctx)
    for test in tests:
        if not (test.path and test.path[0] == "scenarios"):
            _check(test.data.get("prompts"), prompt_names, test.path + ("prompts",), "prompt", ctx, test.origin)
        _check(test.data.get("providers"), provider_names, test.path + ("providers",), "provider", ctx, test.origin)


def _check(
    refs: Any, names: Sequence[tuple[str, ...]], path: tuple[Any, ...], what: str, ctx: Context, origin: str = ""
) -> None:
    if not isinstance(refs, list):
        return
    for ref in refs:
        if not any(ref_matches(str(ref), *own) for own in names):
            raise ctx.error(
                path,
                (f"({origin}) " if origin else "")
                + f"{ref!r} names no {what} of this suite (they are {known_names(names)}); promptfoo refuses the config "
                f'("references {what} "{ref}" which does not exist"): name one by its label or id',
            )
