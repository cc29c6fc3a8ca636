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
    upload = sub.add_parser("upload", help="send a run kept in a pending-upload file (or a JSON report) to MLflow")
    upload.add_argument("files", nargs="+", metavar="PATH", help="e.g. .promptopt/pending/<timestamp>.json")
    upload.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the URI the file records")
    upload.add_argument("--experiment", help="default: the experiment the file records")
    upload.add_argument("--keep", action="store_true", help="keep each file after it was sent (default: delete it)")
    args = parser.parse_args(argv)
    if args.command == "upload":
        return _upload(args)
    if args.command == "schema":
        from .suite.schema import suite_schema

        print(json.dumps(suite_schema(), indent=2))
        return 0
    from pathlib import Path

    from .mlflow.prompts import PromptResolver
    from .models.specs import BUNDLED, ModelSpec
    from .suite.loader import load_suite
    from .suite.model import SuiteError

    status = 0
    # Registry references resolve as a session's would: its pinning file when
    # $PYTEST_PROMPTOPT_REGISTRY names one, else $MLFLOW_TRACKING_URI's registry.
    resolver = PromptResolver.from_environment()
    for name in args.files:
        try:
            loaded = load_suite(Path(name), name, ModelSpec(BUNDLED), resolver.resolve)
        except SuiteError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        gates = ", ".join(g.describe() for g in loaded.info.gates) or "none"
        if loaded.dataset is not None:  # rows are read when it runs
            print(
                f"{name}: ok, dataset {loaded.dataset.source.describe()}, {len(loaded.dataset.slices)} item(s), gates: {gates}"
            )
        else:
            print(f"{name}: ok, {len(loaded.cases)} case{'' if len(loaded.cases) == 1 else 's'}, gates: {gates}")
    return status


def _upload(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .mlflow.upload import upload_pending

    status = 0
    for name in args.files:
        path = Path(name)
        try:
            logged = upload_pending(path, tracking_uri=args.tracking_uri, experiment=args.experiment)
        except Exception as exc:  # report every file, keep going
            print(f"{name}: not sent: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}", file=sys.stderr)
            status = 1
            continue
        for problem in logged.problems:
            print(f"{name}: warning: {problem}", file=sys.stderr)
        if not args.keep:
            path.unlink()
        print(f"{name}: sent; {logged.describe()}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
