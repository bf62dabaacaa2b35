"""Webhook test helpers: a receiving HTTP endpoint, a free port, waiting for a condition."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from livetwin.outbound import OutboundPolicy

# the receivers below listen on loopback, which the default outbound policy refuses
LOOPBACK = ("127.0.0.0/8",)
LOCAL_OUTBOUND = OutboundPolicy(LOOPBACK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A real HTTP endpoint on loopback: answers `status`; with `hang`, waits for `release`."""

    def __init__(self, port: int = 0, status: int = 200, hang: bool = False):
        self.status = status
        self.release = threading.Event()
        if not hang:
            self.release.set()
        self.received: list[dict] = []  # successful deliveries only
        self.attempts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.attempts += 1
                receiver.release.wait(60)
                status = receiver.status
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.received.append(
                            {
                                "id": self.headers["X-Livetwin-Delivery"],
                                "signature": self.headers["X-Livetwin-Signature"],
                                "body": body,
                            }
                        )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def ids(self) -> set[str]:
        with self.lock:
            return {r["id"] for r in self.received}

    def bodies(self) -> dict[str, dict]:
        """Delivery id -> parsed body; a repeated id must carry the very same bytes."""
        seen: dict[str, bytes] = {}
        with self.lock:
            for r in self.received:
                assert seen.setdefault(r["id"], r["body"]) == r["body"], r["id"]
        return {k: orjson.loads(v) for k, v in seen.items()}

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)
