"""The HTTP server's own limits: a request's head (URL and headers) is capped, and what the
server refuses before the app sees it is answered in JSON like every other error."""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together
LINGER_S = 2.0  # how long a refused connection is drained before it is closed


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over MAX_HEAD_BYTES (414 for a long
    URL, 431 for long headers) and answering malformed requests with a JSON error."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head, self._head_bytes, self._refused = True, 0, False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        while data:
            if not self._in_head:
                super().data_received(data)
                return
            room = MAX_HEAD_BYTES - self._head_bytes
            if room <= 0:
                self._refuse_head()
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self._refused or self.transport.is_closing():
                return

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_complete()

    def _refuse_head(self) -> None:
        headers_started = bool(getattr(self, "headers", None))
        status, what = (
            (431, "the request headers exceed") if headers_started else (414, "the URL exceeds")
        )
        self._send_error(
            status,
            f"{what} the limit of {MAX_HEAD_BYTES} bytes for a request's URL and headers",
            "send long input in a request body, not in the URL or headers",
        )

    def send_400_response(self, msg: str) -> None:
        self._send_error(400, "invalid HTTP request", "send a well-formed HTTP/1.1 request")

    def _send_error(self, status: int, message: str, fix: str) -> None:
        body = orjson.dumps({"error": {"code": "http_error", "message": message, "fix": fix}})
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        # Closing now, with the client still sending, would reset the connection and lose the
        # answer: stop writing, discard what still comes, and close after a moment.
        self._refused = True
        if self.cycle is not None:  # a pipelined request still running answers no one
            self.cycle.disconnected = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def server_options() -> dict[str, Any]:
    """uvicorn settings every livetwin server runs with (`livetwin serve` and the tests)."""
    return {"http": BoundedHttpProtocol}
