"""Counts in words, as the reports write them: `1 suite`, `2 suites`, `1 error`."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and `noun`, plural unless `n` is 1 (`plural`, or `noun` + s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
