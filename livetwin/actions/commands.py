"""Commands and desired state: a twin's desired values, published to its device over MQTT.

`CommandService` stores desired values durably (its service database: `<data>/commands.sqlite`
or a PostgreSQL schema), publishes each change as a
JSON command on the type's `commands.topic`, and shows what is still pending until the device
reports the new value through any ingest path. See docs/commands.md.
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
import uuid
from typing import TYPE_CHECKING, Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from livetwin.engine.events import StateChanged
from livetwin.errors import InvalidInput
from livetwin.settings import MqttConnection
from livetwin.timefmt import format_ts

if TYPE_CHECKING:
    from livetwin.ports import Bus, Clock, OpenServiceDB
    from livetwin.query import Query

__all__ = ["CommandService"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS desired (
    twin TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, command TEXT NOT NULL,
    set_at INTEGER NOT NULL, reached_at INTEGER, PRIMARY KEY (twin, name));
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, twin TEXT NOT NULL, topic TEXT NOT NULL, qos INTEGER NOT NULL,
    payload BLOB NOT NULL, ts INTEGER NOT NULL, published_at INTEGER,
    n INTEGER NOT NULL);  -- the order commands were stored in (was SQLite's rowid)
CREATE INDEX IF NOT EXISTS commands_unsent ON commands (ts) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS commands_order ON commands (n);
"""


def migrate(conn: sqlite3.Connection) -> None:
    """A commands.sqlite from before the `n` column: number its commands in rowid order."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(commands)")]
    if columns and "n" not in columns:
        conn.execute("ALTER TABLE commands ADD COLUMN n INTEGER NOT NULL DEFAULT 0")
        conn.execute("UPDATE commands SET n = rowid")


class CommandService:
    """Desired state and MQTT commands for the twins of types with a `commands:` section.

    `reader` gives twins and their types; reported values are followed on `bus`. Thread-safe.
    A command that cannot be published (broker down) stays queued in the service database and
    is sent on the next connection; QoS 1 commands are retried by paho until the broker has them.
    """

    def __init__(
        self,
        connection: MqttConnection,
        *,
        clock: Clock,
        bus: Bus,
        reader: Query,
        open_db: OpenServiceDB,
        publish_timeout: float = 5.0,
    ) -> None:
        self.clock, self.bus, self.reader = clock, bus, reader
        self.connection = connection
        self.host, self.port = connection.host, connection.port
        # its own id beside the ingest session's (a broker drops one of two equal ids)
        base = connection.client_id or f"livetwin-{uuid.uuid4().hex[:8]}"
        self.client_id = f"{base}-commands"
        self.publish_timeout = publish_timeout
        self._db = open_db(
            "commands", SCHEMA, sqlite_migrate=migrate, sqlite_file="commands.sqlite"
        )
        self._lock = threading.Lock()  # desired values and `_waiting` change together
        self._waiting: frozenset[str] = frozenset()  # twins with desired values not yet reported
        self._reports: queue.Queue[set[str] | None] = queue.Queue()
        self._client: mqtt.Client | None = None
        self._worker: threading.Thread | None = None
        self._token: int | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> CommandService:
        """Connect to the broker (in the background) and follow reported values."""
        if self._client is not None:
            return self
        rows = self._db.read().execute("SELECT DISTINCT twin FROM desired WHERE reached_at IS NULL")
        self._waiting = frozenset(twin for (twin,) in rows)
        self._worker = threading.Thread(target=self._follow, name="commands", daemon=True)
        self._worker.start()
        self._token = self.bus.subscribe(self._on_event)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311
        )
        client.on_connect = self._on_connect
        if self.connection.username is not None:
            client.username_pw_set(self.connection.username, self.connection.password)
        tls = self.connection.ssl_context()
        if tls is not None:
            client.tls_set_context(tls)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        self._client = client
        self._reports.put(set(self._waiting))  # values may have arrived while we were down
        return self

    def stop(self) -> None:
        if self._token is not None:
            self.bus.unsubscribe(self._token)
            self._token = None
        if self._worker is not None:
            self._reports.put(None)
            self._worker.join(10)
            self._worker = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self._db.close()

    def __enter__(self) -> CommandService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- desired state ----------------------------------------------------------------------

    def set_desired(self, twin_id: str, values: Any) -> dict:
        """Store desired `values` of a twin and publish them as one command; the desired view."""
        ctype, section = self._commands_of(twin_id)
        checked = _check_values(values, ctype)
        now = self.clock()
        command_id = uuid.uuid4().hex
        topic = section.topic_for(twin_id, ctype.name)
        payload = orjson.dumps(
            {"twin": twin_id, "values": checked, "id": command_id, "ts": format_ts(now)}
        )
        with self._lock, self._db.write() as conn:
            conn.executemany(
                "INSERT INTO desired (twin, name, value, command, set_at, reached_at) "
                "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (twin, name) DO UPDATE SET "
                "value = excluded.value, command = excluded.command, set_at = excluded.set_at, "
                "reached_at = NULL",
                [(twin_id, name, value, command_id, now) for name, value in checked.items()],
            )
            conn.execute(
                "INSERT INTO commands (id, twin, topic, qos, payload, ts, n) VALUES "
                "(?, ?, ?, ?, ?, ?, (SELECT coalesce(max(n), 0) + 1 FROM commands))",
                (command_id, twin_id, topic, section.qos, payload, now),
            )
            self._waiting = self._waiting | {twin_id}
        self._publish(command_id, topic, payload, section.qos)
        self._reports.put({twin_id})  # the device may already report these values
        return self.desired(twin_id)

    def desired(self, twin_id: str) -> dict:
        """Desired next to reported values, the names still `pending`, and the last command."""
        twin, ctype = self._twin(twin_id)
        tolerance = ctype.spec.commands.tolerance if ctype.spec.commands else 0.0
        reported = {**twin.get("properties", {}), **twin.get("parameters", {})}
        read = self._db.read()
        rows = read.execute(
            "SELECT name, value, command, set_at, reached_at FROM desired WHERE twin = ? "
            "ORDER BY name",
            (twin_id,),
        ).fetchall()
        last = read.execute(
            "SELECT id, topic, ts, published_at FROM commands WHERE twin = ? "
            "ORDER BY ts DESC, n DESC LIMIT 1",
            (twin_id,),
        ).fetchone()
        desired = {name: value for name, value, *_ in rows}
        pending = [n for n, v in desired.items() if not _reached(reported.get(n), v, tolerance)]
        return {
            "twin": twin_id,
            "type": twin["type"],
            "desired": desired,
            "reported": {name: reported.get(name) for name in desired},
            "pending": pending,
            "since": {name: format_ts(set_at) for name, _, _, set_at, _ in rows},
            "reached": {
                name: format_ts(reached) for name, _, _, _, reached in rows if reached is not None
            },
            "command": None
            if last is None
            else {
                "id": last[0],
                "topic": last[1],
                "ts": format_ts(last[2]),
                "published": last[3] is not None,
            },
        }

    def _twin(self, twin_id: str) -> tuple[dict, Any]:
        """The twin's current values and its compiled type (NotFound, 404, when unknown)."""
        return self.reader.twin(twin_id), self.reader.type_of(twin_id)

    def _commands_of(self, twin_id: str):
        _, ctype = self._twin(twin_id)
        if ctype.spec.commands is None:
            raise InvalidInput(
                f"twin '{twin_id}' is a '{ctype.name}', whose type has no commands section",
                field="type",
                fix=f"add commands: {{topic: 'plant/{{twin}}/set'}} to type '{ctype.name}' "
                f"(PUT /api/types/{ctype.name})",
            )
        return ctype, ctype.spec.commands

    # ---- MQTT -------------------------------------------------------------------------------

    def _publish(self, command_id: str, topic: str, payload: bytes, qos: int) -> None:
        """Publish now when connected; otherwise `_on_connect` sends it later."""
        client = self._client
        if client is None or not client.is_connected():
            return
        info = client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return
        info.wait_for_publish(self.publish_timeout)
        if info.is_published():
            self._db.read().execute(
                "UPDATE commands SET published_at = ? WHERE id = ?", (self.clock(), command_id)
            )

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("command broker %s:%d refused: %s", self.host, self.port, reason_code)
            return
        unsent = (
            self._db.read()
            .execute(
                "SELECT id, topic, payload, qos FROM commands WHERE published_at IS NULL "
                "ORDER BY ts, n"
            )
            .fetchall()
        )
        if unsent:
            threading.Thread(target=self._resend, args=(unsent,), daemon=True).start()

    def _resend(self, unsent: list) -> None:
        for command_id, topic, payload, qos in unsent:
            self._publish(command_id, topic, payload, qos)

    # ---- reported values --------------------------------------------------------------------

    def _on_event(self, event: object) -> None:
        """Bus callback (writer thread): hand twins with pending desired values to the worker."""
        waiting = self._waiting
        if isinstance(event, StateChanged) and waiting:
            touched = waiting.intersection(event.applied.twins)
            if touched:
                self._reports.put(touched)

    def _follow(self) -> None:
        while True:
            twins = self._reports.get()
            if twins is None:
                return
            for twin_id in twins:
                try:
                    self._mark_reached(twin_id)
                except Exception:  # a deleted twin or a closed store must not stop the worker
                    log.exception("could not check reported values of %s", twin_id)

    def _mark_reached(self, twin_id: str) -> None:
        view = self.desired(twin_id)
        done = [n for n in view["desired"] if n not in view["pending"]]
        now = self.clock()
        with self._lock, self._db.write() as conn:
            conn.executemany(
                "UPDATE desired SET reached_at = ? WHERE twin = ? AND name = ? "
                "AND reached_at IS NULL",
                [(now, twin_id, name) for name in done],
            )
            if not view["pending"]:
                self._waiting = self._waiting - {twin_id}


def _reached(reported: Any, desired: float, tolerance: float) -> bool:
    return isinstance(reported, int | float) and abs(reported - desired) <= tolerance


def _check_values(values: Any, ctype: Any) -> dict[str, float]:
    """Desired values must name declared properties or parameters and respect their bounds."""
    example = '{"values": {"speed": 12.5}}'
    if not isinstance(values, dict) or not values:
        raise InvalidInput(
            "values must be a non-empty object of name -> number", field="values", fix=example
        )
    declared = {**ctype.spec.properties, **ctype.spec.parameters}
    checked: dict[str, float] = {}
    for name, value in values.items():
        field = f"values.{name}"
        if name not in declared:
            raise InvalidInput(
                f"'{name}' is not a property or parameter of type '{ctype.name}'",
                field=field,
                fix=f"set one of: {', '.join(declared)}",
            )
        if type(value) not in (int, float) or not math.isfinite(value):
            raise InvalidInput(
                f"desired {name} must be a finite number, not {value!r}",
                field=field,
                fix="send a JSON number",
            )
        spec = declared[name]
        if (spec.min is not None and value < spec.min) or (
            spec.max is not None and value > spec.max
        ):
            raise InvalidInput(
                f"desired {name} = {value} lies outside [{spec.min}, {spec.max}]",
                field=field,
                fix="send a value within the declared min and max",
            )
        checked[name] = float(value)
    return checked
