"""`python -m pytest_promptopt serve` and `gateway register`: a model the plugin knows, served as
an OpenAI-compatible API (models/serve.py) and registered as an MLflow AI Gateway endpoint
(mlflow/gateway.py), so MLflow's Playground answers with it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .interrupts import interrupt_on_sigterm
from .models.base import Model, ModelError
from .models.serve import ModelServer, make_server
from .models.specs import ModelSpec, create_model, parse_model_spec, with_timeout

__all__ = ["build_model", "gateway_command", "serve_command"]

_TIMEOUT_S = 120.0  # a hosted model's call; the bundled model has no timeout


class _UsageError(Exception):
    pass


def build_model(spec_text: str, config: str | None = None) -> tuple[Model, ModelSpec]:
    """The adapter a suite naming `spec_text` (with `config`) would get, loaded and ready: the
    bundled model's weights are loaded now, so a missing install fails before serving; a hosted
    model gets the plugin's retries."""
    try:
        params = json.loads(config) if config else {}
    except ValueError as exc:
        raise _UsageError(f"--config is not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise _UsageError("--config must be a JSON object, e.g. '{\"max_tokens\": 64}'")
    try:
        spec = parse_model_spec({"id": spec_text, "config": params}, "--model")
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    model: Any = create_model(with_timeout(spec, _TIMEOUT_S))
    from .models.hosted import LiteLLMModel

    if isinstance(model, LiteLLMModel):
        from .runners.limits import DEFAULT_RETRIES, throttle

        model = throttle(model, DEFAULT_RETRIES)
    load = getattr(model, "load", None) or getattr(model, "warm_up", None)
    if callable(load):
        load()
    return model, spec


def _api_key(args: argparse.Namespace) -> str | None:
    if not args.api_key_env:
        return None
    key = os.environ.get(args.api_key_env)
    if not key:
        raise _UsageError(f"--api-key-env: environment variable {args.api_key_env} is not set")
    return key


def _start(args: argparse.Namespace, api_key: str | None) -> ModelServer:
    if args.port < 0 or args.port > 65535:
        raise _UsageError(f"--port must be in 0..65535, got {args.port}")
    if not args.quiet:
        print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    model, spec = build_model(args.model, args.config)
    name = args.name or spec.id
    try:
        server = make_server(model, name, args.host, args.port, api_key=api_key, log=None if args.quiet else sys.stderr)
    except OSError as exc:
        raise _UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(server.base_url, flush=True)  # the first line on stdout, for scripts
    print(f"serving '{name}' at {server.base_url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    return server


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    restore = interrupt_on_sigterm()
    try:
        yield
    finally:
        restore()


def _serve_until_stopped(server: ModelServer) -> None:
    with _stop_on_sigterm():
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    print("stopped", file=sys.stderr, flush=True)


def _fail(exc: BaseException, status: int) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return status


def serve_command(args: argparse.Namespace) -> int:
    try:
        server = _start(args, _api_key(args))
    except _UsageError as exc:
        return _fail(exc, 2)
    except ModelError as exc:
        return _fail(exc, 1)
    _serve_until_stopped(server)
    return 0


def gateway_command(args: argparse.Namespace) -> int:
    from .mlflow.gateway import GatewayError, chat, gateway_base, playground_url, register_endpoint, upstream_models

    tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    server: ModelServer | None = None
    try:
        api_key = _api_key(args)
        if args.serve == bool(args.api_base):
            raise _UsageError("give either --api-base (a running server) or --serve --model SPEC (serve one here)")
        if args.serve:
            if not args.model:
                raise _UsageError("--serve needs --model SPEC")
            server = _start(args, api_key)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
            host, port = server.server_address[:2]
            reachable = "127.0.0.1" if host in {"0.0.0.0", ""} else ("::1" if host == "::" else host)
            api_base = f"http://{f'[{reachable}]' if ':' in reachable else reachable}:{port}/v1"
            model_name = server.name
        else:
            api_base = args.api_base.rstrip("/")
            model_name = args.model or _only_model(upstream_models(api_base, api_key), api_base)
        registered = register_endpoint(
            tracking, args.endpoint, api_base, model_name, api_key=api_key, usage_tracking=args.usage_tracking
        )
        print(registered.describe())
        print(f"Playground: {playground_url(tracking)} (choose the endpoint '{args.endpoint}')")
        print(f"OpenAI clients: base URL {gateway_base(tracking)}, model '{args.endpoint}'")
        if args.check:
            answer = chat(tracking, args.endpoint, [{"role": "user", "content": "Say hello."}], max_tokens=16)
            text = answer.get("choices", [{}])[0].get("message", {}).get("content")
            print(f"check: the endpoint answered {json.dumps(text, ensure_ascii=False)}")
    except _UsageError as exc:
        status = _fail(exc, 2)
    except (GatewayError, ModelError) as exc:
        status = _fail(exc, 1)
    else:
        status = 0
    if server is None:
        return status
    if status != 0:
        server.shutdown()
        server.server_close()
        return status
    _serve_until_stopped_in_thread(server)
    return 0


def _serve_until_stopped_in_thread(server: ModelServer) -> None:
    """Wait for Ctrl-C or SIGTERM while a thread serves, then stop it."""
    with _stop_on_sigterm():
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()
    print("stopped", file=sys.stderr, flush=True)


def _only_model(ids: list[str], api_base: str) -> str:
    if len(ids) == 1:
        return ids[0]
    listed = ", ".join(ids) or "none"
    raise _UsageError(f"{api_base}/models lists {listed}; name the one to route to with --model")
