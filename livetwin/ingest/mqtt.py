"""MQTT ingest: subscribe to broker topics and feed each message through an extractor spec.

`MqttBridge` keeps named subscriptions (topic pattern -> extractor) in the twin store's config
records, acknowledges a QoS 1 message to the broker only once it is durable in the journal, and
never lets one bad message stop or delay the good ones. See docs/mqtt.md.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import yaml

from livetwin.errors import InvalidInput, LivetwinError, NotFound
from livetwin.ingest.extract import extract
from livetwin.ingest.mqtt_topics import (
    Subscription,
    device_of_topic,
    parse_address,
    topic_matches,
    validate_topic_filter,
)
from livetwin.ingest.mqtt_wire import Received, SubscriberSession
from livetwin.settings import MqttConnection
from livetwin.spec.extractor import ExtractorSpec

if TYPE_CHECKING:
    from livetwin.ports import Clock, DeviceTwins, Ingest

__all__ = [
    "MqttBridge",
    "Subscription",
    "load_mqtt_config",
    "parse_address",
    "topic_matches",
    "validate_topic_filter",
]

log = logging.getLogger(__name__)

CONFIG_KIND = "mqtt"
TOPIC_TWIN_KEY = "twin"  # key of the wrapper object used by `twin_from_topic`
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_FIELDS = ("topic", "extractor", "qos", "twin_from_topic")
COUNTERS = (
    "received",
    "ingested",
    "rejected",
    "malformed",
    "observations_accepted",
    "observations_rejected",
    "errors",
    "device_refused",
)


class ConfigRecords(Protocol):
    """Named JSON records by kind, kept with the twins (the store's config table)."""

    def configs(self, kind: str) -> dict[str, str]: ...

    def put_config(self, kind: str, name: str, spec: str, at: int) -> None: ...

    def delete_config(self, kind: str, name: str) -> bool: ...


class MqttBridge:
    """Subscribes to an MQTT broker and submits messages to `ingest`, each mapped by the
    extractor its subscription names (`extractor(name)` looks one up; NotFound if none).

    A message on a device topic `devices/<id>/...` is refused unless `device_twins(id)` (None:
    unknown or revoked) allows every twin it carries (docs/devices.md).

    The session thread hands every socket read to a bounded inbox (blocking when it is full, so
    the broker holds the rest in its inflight window); a worker drains the whole inbox, extracts
    it and submits it as one ingest batch; the batch's QoS 1 messages are acknowledged (one
    write) only once it is durable. Thread-safe.
    """

    def __init__(
        self,
        connection: MqttConnection,
        *,
        ingest: Ingest,
        extractor: Callable[[str], ExtractorSpec],
        configs: ConfigRecords,
        clock: Clock,
        device_twins: Callable[[str], DeviceTwins | None] | None = None,
        queue_size: int = 50_000,
        batch_max: int = 20_000,
        receive_maximum: int = 65_535,
        max_pending_batches: int = 4,
        keepalive: int = 30,
    ) -> None:
        self.ingest, self.extractor, self.configs, self.clock = ingest, extractor, configs, clock
        self.device_twins = device_twins
        self.host, self.port = connection.host, connection.port
        # A fixed client id keeps the broker session (and its queued QoS 1 messages) across
        # restarts; without one every start is a fresh session.
        self.client_id = connection.client_id or f"livetwin-{uuid.uuid4().hex[:12]}"
        self.share_group = connection.share_group
        self.queue_size, self.batch_max = queue_size, batch_max
        self._session_options = {
            "persistent": connection.client_id is not None,
            "session_expiry_s": connection.session_expiry_s,
            "receive_maximum": receive_maximum,
            "keepalive": keepalive,
            "username": connection.username,
            "password": connection.password,
            "tls": connection.ssl_context(),
        }
        self._tls = connection.uses_tls
        self._max_pending = max_pending_batches
        self._pending = threading.BoundedSemaphore(max_pending_batches)
        self._lock = threading.Lock()
        self._inbox_cond = threading.Condition()
        self._inbox: list[tuple[int, list[Received]]] = []
        self._queued = 0
        self._subs: dict[str, Subscription] = {}
        self._routes: dict[str, Subscription | None] = {}  # topic -> first matching subscription
        self._derived: dict[tuple[str, int], tuple[ExtractorSpec, ExtractorSpec]] = {}
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._connected = False
        self._last_error: str | None = None
        self._rejections = RejectionLog()
        self._session: SubscriberSession | None = None
        self._worker: threading.Thread | None = None
        self._running = False

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> MqttBridge:
        """Load persisted subscriptions, connect (in the background) and start the worker."""
        if self._running:
            return self
        loaded = {}
        for name, text in self.configs.configs(CONFIG_KIND).items():
            try:
                loaded[name] = self._validate(name, orjson.loads(text))
            except (LivetwinError, ValueError) as exc:
                log.error("MQTT subscription %r is invalid and was not loaded: %s", name, exc)
        with self._lock:
            self._subs = loaded
            self._routes.clear()
        self._running = True
        self._worker = threading.Thread(target=self._work, name="mqtt-ingest", daemon=True)
        self._worker.start()
        self._session = SubscriberSession(
            self.host,
            self.port,
            self.client_id,
            self._on_messages,
            subscriptions=self._topics,
            on_state=self._on_state,
            **self._session_options,
        ).start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, let the worker store and acknowledge what is queued, then disconnect."""
        if not self._running:
            return
        with self._inbox_cond:
            self._running = False
            self._inbox_cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        held = [self._pending.acquire(timeout=timeout) for _ in range(self._max_pending)]
        for got in held:  # every slot taken once: no batch is still being made durable
            if got:
                self._pending.release()
        if self._session is not None:
            self._session.stop()
        self._session = None
        self._connected = False
        with self._inbox_cond:
            self._inbox, self._queued = [], 0

    def __enter__(self) -> MqttBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Block until connected and subscribed (True) or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._connected:
                return True
            time.sleep(0.02)
        return self._connected

    # ---- subscriptions ----------------------------------------------------------------------

    def subscriptions(self) -> list[dict]:
        with self._lock:
            return [s.to_dict() for _, s in sorted(self._subs.items())]

    def subscription(self, name: str) -> dict:
        with self._lock:
            sub = self._subs.get(name)
        if sub is None:
            raise NotFound(
                f"no MQTT subscription '{name}'",
                field="name",
                fix=f"create it with PUT /api/mqtt/subscriptions/{name}",
            )
        return sub.to_dict()

    def put_subscription(self, name: str, body: Any) -> dict:
        """Validate, persist and (when connected) subscribe; replaces a same-named one."""
        sub = self._validate(name, body)
        stored = {k: v for k, v in sub.to_dict().items() if k != "name"}
        self.configs.put_config(CONFIG_KIND, name, orjson.dumps(stored).decode(), self.clock())
        with self._lock:
            old = self._subs.get(name)
            self._subs[name] = sub
            self._routes.clear()
            unused = old is not None and not any(s.topic == old.topic for s in self._subs.values())
        if self._session is not None:
            if unused:
                self._session.unsubscribe(self._filter(old.topic))
            self._session.subscribe({self._filter(sub.topic): sub.qos})
        return sub.to_dict()

    def delete_subscription(self, name: str) -> None:
        with self._lock:
            sub = self._subs.pop(name, None)
            self._routes.clear()
            unused = sub is not None and not any(s.topic == sub.topic for s in self._subs.values())
        deleted = self.configs.delete_config(CONFIG_KIND, name)
        if sub is None and not deleted:
            raise NotFound(f"no MQTT subscription '{name}'", field="name", fix="list them first")
        if unused and self._session is not None:
            self._session.unsubscribe(self._filter(sub.topic))

    def _filter(self, topic: str) -> str:
        """The filter subscribed at the broker: in a share group, `$share/<group>/<topic>`
        (each message goes to one member; it arrives on its own topic)."""
        return topic if self.share_group is None else f"$share/{self.share_group}/{topic}"

    def _topics(self) -> dict[str, int]:
        with self._lock:
            return {self._filter(s.topic): s.qos for s in self._subs.values()}

    def _route(self, topic: str) -> Subscription | None:
        """The first subscription (by name) whose filter matches `topic`; cached per topic."""
        try:
            return self._routes[topic]
        except KeyError:
            pass
        with self._lock:
            found = next(
                (s for _, s in sorted(self._subs.items()) if topic_matches(s.topic, topic)), None
            )
            if len(self._routes) >= 100_000:
                self._routes.clear()
            self._routes[topic] = found
        return found

    def _validate(self, name: str, body: Any) -> Subscription:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise InvalidInput(
                f"subscription name {name!r} is not allowed",
                field="name",
                fix="use 1-128 letters, digits, '_', '.', '-', starting with a letter or digit",
            )
        if not isinstance(body, Mapping):
            raise InvalidInput(
                "the subscription must be a JSON object",
                field="body",
                fix='send {"topic": "plant/+/telemetry", "extractor": "my-extractor", "qos": 1}',
            )
        unknown = sorted(set(body) - set(_FIELDS) - {"name"})
        if unknown:
            raise InvalidInput(
                f"unknown field(s): {', '.join(unknown)}",
                field=unknown[0],
                fix=f"allowed fields: {', '.join(_FIELDS)}",
            )
        topic = validate_topic_filter(body.get("topic"))
        extractor = body.get("extractor")
        if not isinstance(extractor, str) or not extractor:
            raise InvalidInput(
                "extractor must name an extractor", field="extractor", fix="e.g. pump-json"
            )
        try:
            spec = self.extractor(extractor)
        except NotFound:
            raise InvalidInput(
                f"no extractor '{extractor}'",
                field="extractor",
                fix=f"declare it first with PUT /api/extractors/{extractor}",
            ) from None
        qos = body.get("qos", 1)
        if type(qos) is not int or qos not in (0, 1):
            raise InvalidInput(
                f"qos must be 0 or 1, not {qos!r}",
                field="qos",
                fix="use 1 (at least once; acknowledged once durable) or 0 (at most once)",
            )
        n_plus = topic.split("/").count("+")
        index = body.get("twin_from_topic")
        if index is not None and (type(index) is not int or not 1 <= index <= n_plus):
            raise InvalidInput(
                f"twin_from_topic must be null or 1..{n_plus} (a '+' level of the topic), "
                f"not {index!r}",
                field="twin_from_topic",
                fix="count the '+' levels of topic from 1, or add a '+' level for the twin id",
            )
        missing = [v for v in spec.prefix_vars if not (v.isdigit() and 1 <= int(v) <= n_plus)]
        if missing:
            raise InvalidInput(
                f"extractor '{extractor}' has twin_prefix {spec.twin_prefix!r} needing "
                f"{{{missing[0]}}}, but topic {topic!r} has {n_plus} '+' level(s)",
                field="extractor",
                fix="use {1}, {2}... for the topic's '+' levels, or change the topic",
            )
        return Subscription(name, topic, extractor, qos, index)

    # ---- stats ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters since start, queue depth and connection state."""
        with self._lock:
            counts = dict(self._counts)
            n_subs = len(self._subs)
        return {
            "broker": f"{self.host}:{self.port}",
            "client_id": self.client_id,
            "share_group": self.share_group,
            "persistent_session": self._session_options["persistent"],
            "tls": self._tls,
            "connected": self._connected,
            "queue_depth": self._queued,
            "subscriptions": n_subs,
            **counts,
            "last_error": self._last_error,
            "last_rejected": self._rejections.last,
        }

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, delta in deltas.items():
                self._counts[key] += delta

    # ---- session callbacks (session thread) -------------------------------------------------

    def _on_state(self, connected: bool, error: str | None) -> None:
        self._connected = connected
        if connected:
            log.info("MQTT connected to %s:%d", self.host, self.port)
        elif self._running:
            self._last_error = error

    def _on_messages(self, generation: int, messages: list[Received]) -> None:
        """Queue one read's messages; blocks while the inbox is full (back-pressure)."""
        with self._inbox_cond:
            while self._running and self._queued >= self.queue_size:
                self._inbox_cond.wait(0.5)
            if not self._running:  # stopping: left unacknowledged, so the broker resends them
                return
            self._inbox.append((generation, messages))
            self._queued += len(messages)
            self._inbox_cond.notify_all()
        self._count(received=len(messages))

    # ---- worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._inbox_cond:
                while self._running and not self._inbox:
                    self._inbox_cond.wait(0.5)
                if not self._inbox:
                    return  # stopped and drained
                taken, size = 0, 0
                while taken < len(self._inbox) and (not taken or size < self.batch_max):
                    size += len(self._inbox[taken][1])
                    taken += 1
                chunks, self._inbox = self._inbox[:taken], self._inbox[taken:]
                self._queued -= size
                self._inbox_cond.notify_all()
            try:
                self._ingest(chunks)
            except Exception as exc:  # never let the worker die
                log.exception("MQTT batch of %d messages failed", size)
                self._last_error = f"ingest failed: {exc}"
                self._count(errors=size)

    def _device_refusal(self, topic: str, observations: list[dict]) -> str | None:
        """Why a message on a device topic may not be ingested (None: it may, or no device)."""
        device = device_of_topic(topic) if self.device_twins is not None else None
        if device is None:
            return None
        twins = self.device_twins(device)
        if twins is None:
            return f"device '{device}' is unknown or revoked; refused"
        for observation in observations:
            for field in ("twin", "parent"):
                twin = observation.get(field)
                if isinstance(twin, str) and not twins.allows(field, twin):
                    return (
                        f"device '{device}' may write twins '{twins.text}' only, "
                        f"not {field} '{twin}'; refused"
                    )
        return None

    def _spec(self, sub: Subscription) -> ExtractorSpec:
        """The extractor for `sub`; with twin_from_topic, a variant reading the wrapper object."""
        spec = self.extractor(sub.extractor)
        if sub.twin_from_topic is None:
            return spec
        key = (sub.extractor, sub.twin_from_topic)
        cached = self._derived.get(key)
        if cached is not None and cached[0] is spec:
            return cached[1]
        data = spec.model_dump(mode="json", exclude_defaults=True)
        for field, value in list(data.items()):
            if field in ("foreach", "type_path", "ts", "key", "parent"):
                data[field] = _rebase(value)
        data["values"] = {k: _rebase(v) for k, v in data["values"].items()}
        data["twin"] = f"$.{TOPIC_TWIN_KEY}"
        derived = ExtractorSpec.from_data(data, name=spec.name)
        self._derived[key] = (spec, derived)
        return derived

    def _ingest(self, chunks: list[tuple[int, list[Received]]]) -> None:
        """Extract every queued message, submit all observations as one batch, ack once durable.

        Messages that can never be ingested (no subscription, not JSON, rejected by the
        extractor) are acknowledged too, so the broker does not resend them.
        """
        observations: list[dict] = []
        owners: list[int] = []  # observation -> message number, to count rejected messages
        acks: dict[int, list[int]] = {}  # generation -> QoS 1 packet ids
        rejected: set[int] = set()
        malformed = unrouted = extraction_rejects = device_refused = number = 0
        specs: dict[str, ExtractorSpec] = {}
        for generation, messages in chunks:
            ids = acks.setdefault(generation, [])
            for topic, data, packet_id, qos in messages:
                number += 1
                if qos:
                    ids.append(packet_id)
                sub = self._route(topic)
                if sub is None:  # a subscription was just removed: nothing to map it with
                    unrouted += 1
                    continue
                try:
                    payload = orjson.loads(data)
                except orjson.JSONDecodeError:
                    malformed += 1
                    self._rejections.note(topic, "payload is not JSON; dropped")
                    continue
                try:
                    spec = specs.get(sub.name) or specs.setdefault(sub.name, self._spec(sub))
                    topic_vars = sub.topic_vars(topic)
                    if sub.twin_from_topic is not None:
                        twin = topic_vars[str(sub.twin_from_topic)]
                        payload = {"payload": payload, TOPIC_TWIN_KEY: twin}
                    result = extract(spec, payload, topic_vars=topic_vars)
                except LivetwinError as exc:
                    self._rejections.note(topic, str(exc))
                    extraction_rejects += 1
                    rejected.add(number)
                    continue
                refusal = self._device_refusal(topic, result.observations)
                if refusal is not None:
                    self._rejections.note(topic, refusal)
                    rejected.add(number)
                    device_refused += 1
                    extraction_rejects += len(result.observations) + len(result.errors)
                    continue
                if result.errors:
                    rejected.add(number)
                    extraction_rejects += len(result.errors)
                    self._rejections.note(topic, f"rejected: {result.errors[0]['error']}")
                observations.extend(result.observations)
                owners.extend([number] * len(result.observations))
        self._count(malformed=malformed, rejected=unrouted, device_refused=device_refused)

        def finish(result: Any) -> None:
            for r in result.rejected if result is not None else ():
                if r.index < len(owners):
                    rejected.add(owners[r.index])
            if result is not None and result.rejected:
                first = result.rejected[0]
                self._rejections.note("ingest", f"{first.field}: {first.error}")
            self._count(
                ingested=number - malformed - unrouted - len(rejected),
                rejected=len(rejected),
                observations_accepted=0 if result is None else result.accepted + result.duplicates,
                observations_rejected=extraction_rejects
                + (0 if result is None else len(result.rejected)),
            )
            session = self._session
            if session is not None:
                for generation, ids in acks.items():
                    session.ack(generation, ids)

        if not observations:
            finish(None)
            return
        self._pending.acquire()
        try:
            future = self.ingest.submit(observations)
        except Exception:
            self._pending.release()
            raise

        def durable(done: Future) -> None:
            try:
                error = done.exception()
                if error is not None:  # not durable: leave unacked, the broker will resend
                    self._last_error = f"ingest failed: {error}"
                    log.error("MQTT batch of %d messages not stored: %s", number, error)
                    self._count(errors=number)
                    return
                finish(done.result())
            finally:
                self._pending.release()

        future.add_done_callback(durable)


class RejectionLog:
    """Why messages were refused: the last reason (for the status) and a log line at most every
    `every_s` seconds with how many were refused since, so a flood of bad messages cannot flood
    the log."""

    def __init__(self, every_s: float = 10.0, what: str = "MQTT") -> None:
        self.every_s, self.what = every_s, what
        self.last: dict | None = None
        self._lock = threading.Lock()
        self._logged_at = -float("inf")
        self._since = 0

    def note(self, topic: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.last = {"topic": topic, "reason": reason, "at": time.time()}
            self._since += 1
            if now - self._logged_at < self.every_s:
                return
            count, self._since, self._logged_at = self._since, 0, now
        more = f" ({count - 1} more refused since the last report)" if count > 1 else ""
        log.warning("%s %s: %s%s", self.what, topic, reason, more)


def _rebase(path: str) -> str:
    """Point an absolute JSONPath at the original payload inside the twin_from_topic wrapper."""
    return "$.payload" + path.strip()[1:] if path.strip().startswith("$") else path


_CONNECTION_KEYS = {
    "client_id": str,
    "username": str,
    "password_file": str,
    "session_expiry": int,
    "share_group": str,
}
_TLS_KEYS = ("ca", "cert", "key")


def load_mqtt_config(path: str | Path) -> tuple[MqttConnection, dict[str, dict]]:
    """Read the `mqtt:` section of a YAML (or JSON) config file for `livetwin serve`.

    Returns the broker connection and the subscriptions by name; apply the subscriptions with
    `MqttBridge.put_subscription` (it validates each against the declared extractors).
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(
            f"cannot read the config file {path}: {exc}", field="config", fix="pass a YAML file"
        ) from None
    section = data.get("mqtt", data) if isinstance(data, dict) else None
    example = "mqtt: {host: 127.0.0.1, port: 1883, subscriptions: {lines: {topic: ..., ...}}}"
    if not isinstance(section, dict):
        raise InvalidInput(f"{path} has no mqtt: mapping", field="mqtt", fix=example)
    known = {"host", "port", "subscriptions", "tls", *_CONNECTION_KEYS}
    unknown = sorted(set(section) - known)
    if unknown:
        raise InvalidInput(
            f"unknown key mqtt.{unknown[0]}",
            field=f"mqtt.{unknown[0]}",
            fix=f"use {', '.join(sorted(known))}",
        )
    host, port = section.get("host", "127.0.0.1"), section.get("port", 1883)
    if not isinstance(host, str) or not host:
        raise InvalidInput("mqtt.host must be a host name", field="mqtt.host", fix=example)
    if type(port) is not int or not 0 < port < 65536:
        raise InvalidInput("mqtt.port must be 1-65535", field="mqtt.port", fix="e.g. port: 1883")
    options: dict[str, Any] = {}
    for key, kind in _CONNECTION_KEYS.items():
        value = section.get(key)
        if value is not None and type(value) is not kind:
            raise InvalidInput(
                f"mqtt.{key} must be a {kind.__name__}",
                field=f"mqtt.{key}",
                fix=f"e.g. {key}: {'livetwin-1' if kind is str else 604800}",
            )
        options[key] = value
    password_file = options.pop("password_file")
    if password_file is not None:
        try:  # relative to the config file; the password itself never sits in the config
            options["password"] = (Path(path).parent / password_file).read_text().strip()
        except OSError as exc:
            raise InvalidInput(
                f"cannot read mqtt.password_file {password_file}: {exc.strerror}",
                field="mqtt.password_file",
                fix="give a readable file holding the password",
            ) from None
    if options.pop("session_expiry") is not None:
        options["session_expiry_s"] = section["session_expiry"]
    options.update(_tls_options(section.get("tls"), Path(path).parent))
    connection = MqttConnection(host, port, **{k: v for k, v in options.items() if v is not None})
    subscriptions = section.get("subscriptions") or {}
    if not isinstance(subscriptions, dict) or not all(
        isinstance(v, dict) for v in subscriptions.values()
    ):
        raise InvalidInput(
            "mqtt.subscriptions must map names to {topic, extractor, qos, twin_from_topic}",
            field="mqtt.subscriptions",
            fix=example,
        )
    for name, body in subscriptions.items():
        validate_topic_filter(body.get("topic"), field=f"mqtt.subscriptions.{name}.topic")
    return connection, {str(k): dict(v) for k, v in subscriptions.items()}


def _tls_options(tls: Any, base: Path) -> dict[str, Any]:
    """`tls: true` (the system's CAs) or `tls: {ca, cert, key}` (files, relative to `base`) as
    MqttConnection fields."""
    if tls is None or tls is False:
        return {}
    if tls is True:
        return {"tls": True}
    if not isinstance(tls, dict) or set(tls) - set(_TLS_KEYS):
        raise InvalidInput(
            "mqtt.tls must be true or a mapping of ca, cert and key files",
            field="mqtt.tls",
            fix="e.g. tls: {ca: ca.pem} or tls: {ca: ca.pem, cert: client.pem, key: client.key}",
        )
    return {"tls": True, **{f"tls_{k}": str(base / str(v)) for k, v in tls.items()}}
