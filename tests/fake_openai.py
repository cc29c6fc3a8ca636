"""A tiny OpenAI-compatible chat and embeddings server on loopback, for testing hosted models offline.

In a test: `with FakeOpenAI(answer) as server: ... server.base_url`. As a process (benchmarks,
subprocess pytest runs): `python tests/fake_openai.py --delay 0.2` prints its base URL and serves
`Echo: <last user message>` after the delay, until killed. `/v1/embeddings` answers with
`letter_counts` vectors (how often each of a-z occurs), so similarities are known in advance.

Faults are programmed by answering with a `Reply` instead of a tuple (tests/test_faults.py): a
reply without choices, a body that is not JSON, a connection closed without an answer, an
answer that hangs, a 5xx, or an answer that reflects the request's headers (its
Authorization header included) as some debugging proxies do.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union


@dataclass
class Reply:
    """A programmed answer: an ordinary completion of `text` with `status`, or a fault.

    `choices`: the completion's choices as sent (`[]` for a reply without any); `body`: raw bytes
    sent instead of JSON (malformed JSON); `drop`: the connection is closed without an answer;
    `hang_s`: seconds to wait first (longer than the client's timeout: a hang); `reflect_headers`:
    the request's headers are appended to `text`, as a provider that echoes the request would."""

    status: int = 200
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    choices: list[Any] | None = None
    body: bytes | None = None
    drop: bool = False
    hang_s: float = 0.0
    reflect_headers: bool = False


# `answer(body)` returns (status, text), (status, text, extra response headers) or a `Reply`.
Answer = Callable[[dict[str, Any]], Union[tuple[int, str], tuple[int, str, dict[str, str]], Reply]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a benchmark opens many connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a call timed out on a hanging reply) is gone when the answer is
        # written. Expected here; printed, the traceback would land in whatever test captures
        # this process's stderr at that moment (a later in-process pytester run).
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def letter_counts(text: str) -> list[float]:
    """The fake embedding of `text`: counts of the letters a-z, case ignored."""
    lower = text.lower()
    return [float(lower.count(chr(c))) for c in range(ord("a"), ord("z") + 1)]


class FakeOpenAI:
    """Answers `/v1/chat/completions` with `answer(body)` and `/v1/embeddings` with `embed(text)`
    for each input, after `delay_s`; records requests and the largest number of requests it had
    in flight at once (`max_in_flight`)."""

    def __init__(
        self, answer: Answer, delay_s: float = 0.0, embed: Callable[[str], list[float]] = letter_counts
    ) -> None:
        self.answer = answer
        self.embed = embed
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real providers do
            disable_nagle_algorithm = True  # else each kept-alive answer waits ~40 ms for an ACK

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    if outer.delay_s:
                        time.sleep(outer.delay_s)
                    if self.path.rstrip("/").endswith("/embeddings"):
                        answered: Any = Reply(200, "")
                    else:
                        answered = outer.answer(body)
                    reply = answered if isinstance(answered, Reply) else Reply(*answered)
                    if reply.hang_s:
                        time.sleep(reply.hang_s)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)  # socket.SHUT_RDWR: the client reads nothing
                    return
                text = reply.text
                if reply.reflect_headers:
                    text += " " + " ".join(f"{k}: {v}" for k, v in self.headers.items())
                if reply.body is not None:
                    data = reply.body
                else:
                    data = json.dumps(outer._payload(self.path, body, reply.status, text, reply.choices)).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _payload(
        self, path: str, body: dict[str, Any], status: int, text: str, choices: list[Any] | None
    ) -> dict[str, Any]:
        if path.rstrip("/").endswith("/embeddings"):
            return self._embeddings(body)
        if status != 200:
            return {"error": {"message": text, "type": "server_error"}}
        if choices is None:
            choices = [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": choices,
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": len(text.split()),
                "total_tokens": 7 + len(text.split()),
            },
        }

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for index, text in enumerate(texts):
            vector = self.embed(text)
            if body.get("encoding_format") == "base64":  # the OpenAI SDK asks for packed float32
                encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(t.split()) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def echo_last_user_message(body: dict[str, Any]) -> tuple[int, str]:
    users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    return 200, f"Echo: {users[-1] if users else ''}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    server = FakeOpenAI(echo_last_user_message, delay_s=args.delay)
    with server:
        print(server.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    sys.exit(0)


if __name__ == "__main__":
    main()
