"""A small real HTTP server speaking the streaming OpenAI API, for the profiler's failure tests only.

It is not an engine: it exists to produce what real engines do when things go wrong (5xx, a stream that
stalls past the timeout, a process that dies mid-run, a stream that is not JSON) on demand. Measurements
are tested against the real vLLM engine (tests/e2e/test_profile_engine.py).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@dataclasses.dataclass
class Behaviour:
    """How the server answers: per-token delay, failures after N requests, etc."""

    token_delay_s: float = 0.002
    # Answer 503 to every request after this many (None: never).
    fail_after: int | None = None
    # Stall (sleep this long) before the first token.
    stall_s: float = 0.0
    # Close the listening socket and every stream after this many requests (the process "dies").
    die_after: int | None = None
    # Send a non-JSON data line instead of tokens.
    malformed: bool = False
    # /v1/models answers 404 (not an OpenAI server).
    no_models: bool = False
    requests: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    dead: threading.Event = dataclasses.field(default_factory=threading.Event)


def _handler(behaviour: Behaviour) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models" and not behaviour.no_models:
                self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
            elif self.path == "/version":
                self._json(200, {"version": "0.0-test"})
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with behaviour.lock:
                behaviour.requests += 1
                n = behaviour.requests
            if behaviour.dead.is_set():
                self.close_connection = True
                return
            if behaviour.fail_after is not None and n > behaviour.fail_after:
                self._json(503, {"error": {"message": "engine overloaded", "code": 503}})
                return
            prompt = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
            prompt_tokens = len(str(prompt).split())
            output_tokens = int(body.get("max_tokens", 16))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            time.sleep(behaviour.stall_s)
            if behaviour.malformed:
                self.wfile.write(b"data: {not json\n\n")
                return
            chat = "messages" in body
            for i in range(output_tokens):
                if behaviour.die_after is not None and n > behaviour.die_after and i == output_tokens // 2:
                    behaviour.dead.set()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                choice = (
                    {"index": 0, "delta": {"content": f" t{i}"}} if chat else {"index": 0, "text": f" t{i}"}
                )
                self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
                self.wfile.flush()
                time.sleep(behaviour.token_delay_s)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (the profiler's timeouts) are expected here, not worth a traceback."""


@contextmanager
def serve(behaviour: Behaviour) -> Iterator[str]:
    """Run the server on a free loopback port; yields its base URL; stops it (and its thread) after."""
    server = _Server(("127.0.0.1", 0), _handler(behaviour))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def watch_death() -> None:
        behaviour.dead.wait()
        server.shutdown()
        server.server_close()

    watcher = threading.Thread(target=watch_death, daemon=True)
    watcher.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        if not behaviour.dead.is_set():
            server.shutdown()
            server.server_close()
        behaviour.dead.set()
        thread.join(timeout=5)
