"""`python -m pytest_promptopt`: small command-line helpers around the plugin."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_promptopt")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="validate suite files against the schema and print their cases")
    check.add_argument("files", nargs="+")
    sub.add_parser("schema", help="print the suite file JSON Schema")
    args = parser.parse_args(argv)
    if args.command == "schema":
        from .suite.loader import suite_schema

        print(json.dumps(suite_schema(), indent=2))
        return 0
    from pathlib import Path

    from .models.registry import BUNDLED, ModelSpec
    from .suite.loader import load_suite
    from .suite.model import SuiteError

    status = 0
    for name in args.files:
        try:
            loaded = load_suite(Path(name), name, ModelSpec(BUNDLED))
        except SuiteError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        print(f"{name}: ok, {len(loaded.cases)} cases, gates: {', '.join(g.describe() for g in loaded.info.gates) or 'none'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
