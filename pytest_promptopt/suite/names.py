"""Which files are suite files, by name only: what pytest's collection asks of every file of a
project, with or without --promptopt, so it imports nothing else."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PROMPTFOO_NAMES", "SUITE_SUFFIXES", "is_suite_file"]

SUITE_SUFFIXES = (".promptopt.yaml", ".promptopt.yml", ".promptopt.json")
PROMPTFOO_NAMES = ("promptfooconfig.yaml", "promptfooconfig.yml", "promptfooconfig.json")


def is_suite_file(path: Path) -> bool:
    """Whether pytest collects `path` as a suite file (by its name only: nothing is read)."""
    return path.name.endswith(SUITE_SUFFIXES) or path.name in PROMPTFOO_NAMES
