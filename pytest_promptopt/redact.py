"""Keep secrets out of logs, reports, cache keys and tracking params."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

# `token` only as a suffix, so `max_tokens` and `prompt_tokens` stay readable.
_SECRET_KEY = re.compile(r"(api[_-]?key|secret|passw(or)?d|authorization|credential|private[_-]?key|token$)", re.I)
_SECRET_ENV = re.compile(r"(KEY$|_KEY_|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.I)


@functools.lru_cache(maxsize=4096)  # a run's records repeat the same few keys thousands of times
def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    """A copy of `value` with secret-looking keys masked and secret env values scrubbed from strings."""
    return _redact(value, _env_secrets())  # the environment read once for the whole value


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret_key(str(k)) and v not in (None, "") else _redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, secrets) for v in value)
    if isinstance(value, str):
        return _scrub(value, secrets)
    return value


def without_secrets(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` minus every secret-looking key (for cache keys: a key change must not bust the cache)."""
    return {k: v for k, v in params.items() if not is_secret_key(str(k))}


def scrub(text: str, extra: tuple[str, ...] = ()) -> str:
    """Replace the value of every secret-looking environment variable (and `extra`) in `text`."""
    return _scrub(text, [*_env_secrets(), *extra])


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if len(secret) >= 8 and secret in text:
            text = text.replace(secret, REDACTED)
    return text


_env_cache: tuple[dict[Any, Any], list[str]] | None = None
# pytest rewrites this one around every test phase; it never holds a secret
_VOLATILE = (b"PYTEST_CURRENT_TEST", "PYTEST_CURRENT_TEST")


def _env_secrets() -> list[str]:
    """The secret-looking environment values. Scrubbing runs on every string of every case
    record, and scanning the environment with a regex each time was most of a Spark row's cost,
    so the list is kept until the environment changes (compared as a whole: a key set or
    changed at any time is seen at once)."""
    global _env_cache
    # One C-level copy: runner threads scrub while pytest's main thread sets and deletes
    # PYTEST_CURRENT_TEST, and iterating os.environ itself then raises KeyError.
    raw = dict(getattr(os.environ, "_data", None) or os.environ.copy())
    for name in _VOLATILE:
        raw.pop(name, None)
    cached = _env_cache
    if cached is not None and cached[0] == raw:
        return cached[1]
    decode = os.fsdecode if raw and isinstance(next(iter(raw)), bytes) else str
    secrets = [decode(v) for k, v in raw.items() if _SECRET_ENV.search(decode(k))]
    _env_cache = (raw, secrets)
    return secrets


# `key: value` in YAML or JSON text; a value opening a mapping or list is not consumed, so the
# keys inside it are examined too.
_KEY_VALUE = re.compile(
    r"""(?P<lead>["']?(?P<key>[A-Za-z_][\w-]*)["']?[ \t]*:[ \t]*)"""
    r"""(?P<value>"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s,{}\[\]#'"](?:[^,}\]\n#]*[^\s,}\]#])?)"""
)


# A URL's `user:password@`: everything up to the last `@` before the host (the authority ends at
# the first `/`), because MLflow and requests accept a password with an unencoded `@`
# (`http://carol:Pw@55@host` logs in as carol with `Pw@55`).
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)([^/\s]*)@", re.I)

# An Authorization header's value (`Authorization: Basic dXNlcjpwdw==`, `{'Authorization': 'Bearer x'}`),
# as a server that echoes the header it got quotes it in an error body: after a scheme, whatever
# follows; else a value of 8 characters or more (as `scrub`: shorter is prose, "authorization: the ...").
_AUTH_HEADER = re.compile(
    r"""(\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?)"""
    r"""(?:((?:basic|bearer|token|digest|negotiate)\s+)[^\s"',;)\]}]+|[^\s"',;)\]}]{8,})""",
    re.I,
)
# A Basic or Bearer credential anywhere else: a token of 8 characters or more holding a digit or
# one of `+/=` (base64, JWTs, API keys), so that prose ("basic questions") stays.
_AUTH_SCHEME = re.compile(r"\b((?:basic|bearer)\s+)(?=[\w.~+/-]*[\d+/=])[\w.~+/-]{8,}=*", re.I)


def mask_credentials(text: str) -> str:
    """`text` with URL credentials (`https://user:pw@host` -> `https://***@host`) and
    Authorization values (`Authorization: Basic ***`, `Bearer ***`) masked."""
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}{REDACTED}", text)
    text = _AUTH_SCHEME.sub(rf"\1{REDACTED}", text)
    return _USERINFO.sub(rf"\1{REDACTED}@", text)


def split_credentials(uri: str) -> tuple[str, str]:
    """(`uri` without its `user:password@`, that `user:password`, "" when it has none): by the
    rule `mask_credentials` masks."""
    match = _USERINFO.match(uri)
    if match is None:
        return uri, ""
    return match.group(1) + uri[match.end() :], match.group(2)


def with_credentials(uri: str, credentials: str) -> str:
    """`uri` with `credentials` (from `split_credentials`) put back."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{credentials}@{rest}" if credentials and sep else uri


def redact_text(text: str) -> str:
    """A YAML/JSON document's text (e.g. a suite file) with secret-looking keys' values masked
    and secret environment values scrubbed; comments and layout are kept."""

    def mask(match: re.Match[str]) -> str:
        return match.group("lead") + REDACTED if is_secret_key(match.group("key")) else match.group(0)

    return scrub(_KEY_VALUE.sub(mask, text))
