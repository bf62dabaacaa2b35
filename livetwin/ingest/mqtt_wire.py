"""A lean MQTT v5 subscriber session for high-rate ingest: parses every PUBLISH in a read at once.

paho-mqtt handles one packet per select() and builds a Properties object per message, which
caps it near 5,000 messages/s here; this session hands whole reads to the caller as one list and
sends many PUBACKs in one write. Publishing (commands) still uses paho.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["Received", "SubscriberSession"]

log = logging.getLogger(__name__)

Received = tuple[str, bytes, int, int]  # topic, payload, packet id (0 for QoS 0), qos

_CONNACK, _PUBLISH, _PUBACK, _SUBACK, _UNSUBACK, _PINGRESP, _DISCONNECT = 2, 3, 4, 9, 11, 13, 14


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


_CONNACK_REASONS = {
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized (check the user name and password, or the broker's ACL)",
    0x88: "server unavailable",
    0x8A: "banned",
    0x8C: "bad authentication method",
}


class ProtocolError(Exception):
    """The broker refused us or sent something this session cannot handle."""


class SubscriberSession:
    """One MQTT v5 connection, kept up by a thread that reconnects with exponential backoff.

    `on_messages(generation, messages)` gets every PUBLISH of one socket read (in order) on the
    session thread and may block (back-pressure: the thread stops reading, the broker holds
    the rest within its inflight window). QoS 1 messages are acknowledged only by `ack`, with
    the `generation` they arrived on: acks for an older connection are dropped, since the broker
    redelivers those messages after a reconnect.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        on_messages: Callable[[int, list[Received]], None],
        *,
        subscriptions: Callable[[], dict[str, int]],
        on_state: Callable[[bool, str | None], None] = lambda up, error: None,
        persistent: bool = False,
        session_expiry_s: int = 7 * 24 * 3600,
        receive_maximum: int = 65_535,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self._on_messages, self._subscriptions, self._on_state = (
            on_messages,
            subscriptions,
            on_state,
        )
        self.persistent, self.receive_maximum, self.keepalive = (
            persistent,
            receive_maximum,
            keepalive,
        )
        self.username, self.password, self.tls = username, password, tls
        self.session_expiry_s = session_expiry_s
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.generation = 0
        self.connected = False
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._last_send = 0.0
        self._next_id = 0
        self._leftover = bytearray()  # bytes after CONNACK, read with it
        self._running = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> SubscriberSession:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="mqtt-session", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._running = False
        sock = self._sock
        if sock is not None:
            try:
                self._send(_packet(0xE0, b"\x00\x00"))  # DISCONNECT, normal, no properties
            except OSError:
                pass
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- what callers send ------------------------------------------------------------------

    def ack(self, generation: int, packet_ids: Iterable[int]) -> None:
        """PUBACK the QoS 1 `packet_ids` received on connection `generation`, in one write."""
        if generation != self.generation or not self.connected:
            return
        data = b"".join(b"\x40\x02" + pid.to_bytes(2, "big") for pid in packet_ids)
        if data:
            try:
                self._send(data)
            except OSError as exc:
                log.warning("MQTT acks not sent (%s); the broker will redeliver", exc)

    def subscribe(self, topics: dict[str, int]) -> None:
        """SUBSCRIBE to `topics` (filter -> qos) now, if connected; `_connect` always does."""
        if self.connected and topics:
            try:
                self._send(self._subscribe_packet(topics))
            except OSError as exc:
                log.warning("MQTT subscribe not sent (%s); it is sent again on reconnect", exc)

    def unsubscribe(self, topic: str) -> None:
        if self.connected:
            body = struct.pack("!H", self._packet_id()) + b"\x00" + _utf8(topic)
            try:
                self._send(_packet(0xA2, body))
            except OSError:
                pass

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _subscribe_packet(self, topics: dict[str, int]) -> bytes:
        body = struct.pack("!H", self._packet_id()) + b"\x00"  # no properties
        for topic, qos in topics.items():
            body += _utf8(topic) + bytes([qos])
        return _packet(0x82, body)

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise OSError("not connected")
        with self._send_lock:
            sock.sendall(data)
            self._last_send = time.monotonic()

    # ---- session thread ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.min_backoff
        while self._running:
            try:
                self._connect()
                backoff = self.min_backoff
                self._read_loop()
                error = "connection closed"
            except (OSError, ProtocolError) as exc:
                error = str(exc) or type(exc).__name__
            finally:
                self._close()
            if not self._running:
                break
            self._on_state(False, error)
            delay = backoff * random.uniform(0.8, 1.2)
            log.warning(
                "MQTT %s:%d: %s; reconnecting in %.1f s", self.host, self.port, error, delay
            )
            deadline = time.monotonic() + delay
            while self._running and time.monotonic() < deadline:
                time.sleep(0.05)
            backoff = min(backoff * 2, self.max_backoff)

    def _close(self) -> None:
        self.connected = False
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except ssl.SSLError as exc:
                sock.close()
                raise ProtocolError(f"TLS handshake with the broker failed: {exc}") from None
        self._sock = sock
        flags = 0x00 if self.persistent else 0x02  # clean start unless the session is kept
        props = b"\x21" + struct.pack("!H", min(self.receive_maximum, 65535))  # Receive Maximum
        if self.persistent:  # Session Expiry Interval: how long the broker keeps our messages
            props += b"\x11" + struct.pack("!I", self.session_expiry_s)
        payload = _utf8(self.client_id)
        if self.username is not None:
            flags |= 0x80
            payload += _utf8(self.username)
        if self.password is not None:
            flags |= 0x40
            payload += _utf8(self.password)
        header = _utf8("MQTT") + bytes([5, flags]) + struct.pack("!H", self.keepalive)
        self._send(_packet(0x10, header + _varint(len(props)) + props + payload))
        buffer = bytearray()
        while True:  # CONNACK alone: what follows it in the same read is kept for the read loop
            packets, used = _split(buffer, limit=1)
            if packets:
                break
            chunk = sock.recv(4096)
            if not chunk:
                raise ProtocolError("the broker closed the connection before CONNACK")
            buffer += chunk
        first, body = packets[0]
        if first >> 4 != _CONNACK or len(body) < 2:
            raise ProtocolError("the broker did not answer CONNECT with CONNACK")
        if body[1] >= 0x80:
            reason = _CONNACK_REASONS.get(body[1], "refused")
            raise ProtocolError(f"the broker refused the connection: {reason} ({body[1]:#x})")
        del buffer[:used]
        self._leftover = buffer
        self.generation += 1
        self.connected = True
        topics = self._subscriptions()
        if topics:
            self._send(self._subscribe_packet(topics))
        self._on_state(True, None)

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        sock.settimeout(max(1.0, self.keepalive / 4))
        buffer = self._leftover
        messages = self._handle(buffer)  # a persistent session's queue may follow CONNACK at once
        if messages:
            self._on_messages(self.generation, messages)
        last_heard = time.monotonic()
        while self._running:
            try:
                chunk = sock.recv(262_144)
            except TimeoutError:
                chunk = None
            now = time.monotonic()
            if chunk == b"":
                return
            if now - self._last_send > self.keepalive / 2:
                self._send(b"\xc0\x00")  # PINGREQ
            if chunk is None:
                if now - last_heard > self.keepalive * 1.5:
                    raise ProtocolError("the broker stopped answering (keepalive)")
                continue
            last_heard = now
            buffer += chunk
            messages = self._handle(buffer)
            if messages:
                self._on_messages(self.generation, messages)

    def _handle(self, buffer: bytearray) -> list[Received]:
        """Parse and remove the complete packets in `buffer`; the PUBLISHes among them."""
        packets, used = _split(buffer)
        del buffer[:used]
        messages: list[Received] = []
        for first, body in packets:
            kind = first >> 4
            if kind == _PUBLISH:
                messages.append(_publish(first, body))
            elif kind == _SUBACK:
                refused = [code for code in body[3:] if code >= 0x80]
                if refused:
                    log.error("MQTT broker refused a subscription (reason %#x)", refused[0])
            elif kind == _DISCONNECT:
                reason = body[0] if body else 0
                raise ProtocolError(f"the broker disconnected us (reason code {reason:#x})")
            elif kind not in (_PUBACK, _UNSUBACK, _PINGRESP):
                raise ProtocolError(f"unexpected MQTT packet type {kind}")
        return messages


def _split(buffer: bytearray, limit: int | None = None) -> tuple[list[tuple[int, bytes]], int]:
    """The complete packets at the start of `buffer` (at most `limit`) as (first byte, body),
    and the bytes they used."""
    packets: list[tuple[int, bytes]] = []
    pos, size = 0, len(buffer)
    while size - pos >= 2 and (limit is None or len(packets) < limit):
        length, multiplier, i = 0, 1, pos + 1
        while True:
            if i >= size:
                return packets, pos
            byte = buffer[i]
            length += (byte & 0x7F) * multiplier
            i += 1
            if byte < 0x80:
                break
            multiplier *= 128
            if multiplier > 128**3:
                raise ProtocolError("malformed remaining length")
        end = i + length
        if end > size:
            break
        packets.append((buffer[pos], bytes(buffer[i:end])))
        pos = end
    return packets, pos


def _publish(first: int, body: bytes) -> Received:
    qos = (first >> 1) & 3
    topic_end = 2 + ((body[0] << 8) | body[1])
    topic = body[2:topic_end].decode("utf-8", "replace")
    pos, packet_id = topic_end, 0
    if qos:
        packet_id = (body[pos] << 8) | body[pos + 1]
        pos += 2
    props, shift = 0, 0  # property length: skip the properties
    while True:
        byte = body[pos]
        pos += 1
        props |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return topic, body[pos + props :], packet_id, qos
