"""`python -m pytest_promptopt`: small command-line helpers around the plugin (validate, schema, upload,
serve, gateway register)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_promptopt")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="validate suite files against the schema and print their cases")
    check.add_argument("files", nargs="+")
    check.add_argument(
        "--backend",
        "--promptopt-backend",
        dest="backend",
        choices=("local", "spark"),
        default="local",
        help="load as a run with this --promptopt-backend does (default: local; validate reads no pytest ini): "
        "a Spark table dataset needs spark",
    )
    sub.add_parser("schema", help="print the suite file JSON Schema")
    upload = sub.add_parser("upload", help="send a run kept in a pending-upload file (or a JSON report) to MLflow")
    upload.add_argument("files", nargs="+", metavar="PATH", help="e.g. .promptopt/pending/<timestamp>.json")
    upload.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the URI the file records")
    upload.add_argument("--experiment", help="default: the experiment the file records")
    upload.add_argument("--keep", action="store_true", help="keep each file after it was sent (default: delete it)")
    _add_serve(sub)
    args = parser.parse_args(argv)
    if args.command == "upload":
        return _upload(args)
    if args.command == "serve":
        from .serving import serve_command

        return serve_command(args)
    if args.command == "gateway":
        from .serving import gateway_command

        return gateway_command(args)
    if args.command == "schema":
        from .suite.schema import suite_schema

        print(json.dumps(suite_schema(), indent=2))
        return 0
    from pathlib import Path

    from .mlflow.prompts import PromptResolver
    from .models.specs import BUNDLED, ModelSpec
    from .suite.loader import load_suite
    from .suite.model import SuiteError, SuiteLimits
    from .wording import counted

    status = 0
    limits = SuiteLimits(root=Path.cwd())  # files outside the folder validate runs in are refused, as in a run
    # Registry references resolve as a session's would: its pinning file when
    # $PYTEST_PROMPTOPT_REGISTRY names one, else $MLFLOW_TRACKING_URI's registry.
    resolver = PromptResolver.from_environment()
    for name in args.files:
        try:
            loaded = load_suite(
                Path(name), name, ModelSpec(BUNDLED), resolver.resolve, backend=args.backend, limits=limits
            )
        except SuiteError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        for warning in loaded.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        gates = ", ".join(g.describe() for g in loaded.info.gates) or "none"
        if loaded.dataset is not None:  # rows are read when it runs
            print(
                f"{name}: ok, dataset {loaded.dataset.source.describe()}, {len(loaded.dataset.slices)} item(s), gates: {gates}"
            )
        else:
            failing = [case for case in loaded.cases if case.error]
            for case in failing:  # a case that cannot run: the suite loads, that case will be an error
                print(f"error: {case.name}: {case.error}", file=sys.stderr)
            status = 1 if failing else status
            errors = f", {len(failing)} with errors" if failing else ""
            print(
                f"{name}: {'ok' if not failing else 'loads'}, {counted(len(loaded.cases), 'case')}{errors}, gates: {gates}"
            )
    return status


def _add_serve(sub: argparse._SubParsersAction) -> None:
    def model_options(parser: argparse.ArgumentParser, required: bool, model_help: str = "") -> None:
        parser.add_argument(
            "--model",
            required=required,
            metavar="SPEC",
            help=model_help
            or "a model the plugin knows: smollm2 (the bundled model), echo, fake, or a litellm id such as "
            "openai/gpt-4o-mini",
        )
        parser.add_argument("--config", metavar="JSON", help="the model's provider config, e.g. '{\"max_tokens\": 64}'")
        parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
        parser.add_argument("--port", type=int, default=8000, help="default: 8000; 0 picks a free port")
        parser.add_argument("--name", help="the model id the API serves (default: the model spec)")
        parser.add_argument(
            "--api-key-env",
            metavar="VAR",
            help="an API key, read from this environment variable: the served model requires it from clients, "
            "and the gateway endpoint sends it upstream",
        )
        parser.add_argument("--quiet", action="store_true", help="no request log on stderr")

    serve = sub.add_parser(
        "serve",
        help="serve a model as an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions)",
        description="Serve a model as an OpenAI-compatible API. The first line on stdout is the base URL "
        "(e.g. http://127.0.0.1:8000/v1). Ctrl-C or SIGTERM stops it.",
    )
    model_options(serve, required=True)
    gateway = sub.add_parser("gateway", help="MLflow AI Gateway endpoints (the Playground's models)")
    actions = gateway.add_subparsers(dest="action", required=True)
    register = actions.add_parser(
        "register",
        help="register an OpenAI-compatible server (or one --serve starts) as a gateway endpoint; "
        "running it again updates the endpoint",
        description="Register an OpenAI-compatible server as an endpoint of MLflow's AI Gateway. The `mlflow "
        "server` process needs MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES=http,https and "
        "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS=true for a loopback upstream (see docs/mlflow.md).",
    )
    register.add_argument(
        "--tracking-uri", help="the MLflow server, e.g. http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI)"
    )
    register.add_argument("--endpoint", required=True, help="the endpoint's name in the gateway and the Playground")
    register.add_argument("--api-base", help="the upstream's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    register.add_argument("--serve", action="store_true", help="also serve --model here and register that server")
    register.add_argument(
        "--usage-tracking",
        action="store_true",
        help="let the gateway log a trace per call (in experiment gateway/<endpoint>)",
    )
    register.add_argument("--check", action="store_true", help="send one chat message through the endpoint afterwards")
    model_options(
        register,
        required=False,
        model_help="with --serve: the model to serve (as for `serve`); with --api-base: the model id the upstream "
        "serves (default: the one its /models lists)",
    )


def _upload(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .mlflow.client import one_line
    from .mlflow.upload import upload_pending

    status = 0
    for name in args.files:
        path = Path(name)
        try:
            logged = upload_pending(path, tracking_uri=args.tracking_uri, experiment=args.experiment)
        except Exception as exc:  # report every file, keep going
            print(f"{name}: not sent: {one_line(exc)}", file=sys.stderr)
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
