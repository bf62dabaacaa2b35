"""Device credentials: one per device, bound to a twin id or a twin-id pattern in one namespace.

Kept in the service database `auth` beside API tokens (docs/devices.md): the SHA-256 of the
secret for HTTP, and a Mosquitto `$7$` (PBKDF2-SHA512) hash of the whole credential, made when it
is issued, for the broker's password file (`export_mosquitto`). The plain credential is shown once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from livetwin import namespaces
from livetwin.auth.rules import Forbidden, Principal, Unauthorized
from livetwin.auth.store import AuthStore, digest
from livetwin.errors import InvalidInput, NotFound
from livetwin.namespaces import namespace_of
from livetwin.ports import DEVICE_TOPIC_ROOT
from livetwin.timefmt import format_ts

DEVICE_PREFIX = "ltd_"
DEVICE_RE = re.compile(r"^ltd_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
DEVICE_ID = re.compile(r"[0-9a-f]{12}")
MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's own default; the secret has 256 random bits
MAX_PATTERN = 512
SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, twins TEXT NOT NULL, namespace TEXT NOT NULL,
    hash BLOB NOT NULL, broker_hash TEXT NOT NULL, created INTEGER NOT NULL, revoked INTEGER);
"""


@dataclass(frozen=True)
class TwinPattern:
    """The twins a device may write: a twin id, or a pattern where `*` stands for any characters
    but '/', `**` for any characters, `?` for one character but '/'. Its namespace is fixed: the
    part before the first '/' has no wildcard (no '/' at all: `default`, and no `**`)."""

    text: str
    namespace: str
    regex: re.Pattern

    @classmethod
    def parse(cls, text: object, field: str = "twins") -> TwinPattern:
        example = "e.g. 'plant-a/pump-7', 'plant-a/pump-*' or 'plant-a/line-1/**'"
        if not isinstance(text, str) or not 0 < len(text) <= MAX_PATTERN or not text.isprintable():
            raise InvalidInput(
                f"{field} must be a twin id or pattern of 1-{MAX_PATTERN} printable characters",
                field=field,
                fix=example,
            )
        head, slash, _ = text.partition("/")
        if slash and head:
            if "*" in head or "?" in head:
                raise InvalidInput(
                    f"{field} '{text}' has a wildcard in its namespace '{head}'",
                    field=field,
                    fix="a device writes twins of one namespace: name it, " + example,
                )
            namespace = namespaces.check_namespace(head, field=field)
        elif "**" in text:
            raise InvalidInput(
                f"{field} '{text}' would reach every namespace",
                field=field,
                fix="start with the namespace, e.g. 'plant-a/**'",
            )
        else:
            namespace = namespaces.DEFAULT
        parts = re.split(r"(\*\*|\*|\?)", text)
        wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
        regex = "".join(wild.get(p) or re.escape(p) for p in parts)
        return cls(text, namespace, re.compile(regex, re.S))

    def matches(self, twin: str) -> bool:
        return namespace_of(twin) == self.namespace and self.regex.fullmatch(twin) is not None

    def allows(self, field: str, twin: str) -> bool:
        """Whether an observation's `twin` (field "twin") matches, or its `parent` (field
        "parent") lies in the namespace: a device links its twins to others of its namespace."""
        return namespace_of(twin) == self.namespace if field == "parent" else self.matches(twin)


@dataclass(frozen=True)
class DevicePrincipal(Principal):
    """A device: no grants (it can call no route), but it may send observations of its `twins`
    (POST /api/ingest; checked by `check_row`)."""

    twins: TwinPattern

    def check_row(self, field: str, twin: str) -> None:
        """Forbidden unless a row's `twin` matches (a `parent` must be in the namespace)."""
        if self.twins.allows(field, twin):
            return
        raise Forbidden(
            f"device {self.subject.partition(':')[2]} may write twins '{self.twins.text}' "
            f"only, not {field} '{twin}'",
            field="twin",
            fix="send this device's own twins, or issue a device credential for that twin "
            "(POST /api/devices)",
        )


def mosquitto_hash(password: str, *, salt: bytes | None = None) -> str:
    """`password` as mosquitto_passwd writes it: `$7$<iterations>$<salt>$<PBKDF2-SHA512>`."""
    salt = salt if salt is not None else os.urandom(12)
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_ITERATIONS)
    encode = base64.b64encode
    return f"$7${MOSQUITTO_ITERATIONS}${encode(salt).decode()}${encode(derived).decode()}"


class DeviceStore(AuthStore):
    """Device credentials: `create`, `list`, `get`, `revoke`, `authenticate` one (HTTP), `owner`
    of a device id (MQTT; cached for `cache_s` seconds, so a revocation reaches a running MQTT
    bridge within that time) and `export_mosquitto`.

    A credential reads `ltd_<12 hex id>_<43 url-safe chars>`; on MQTT the id is the user name and
    the whole credential the password.
    """

    SCHEMA = SCHEMA

    def __init__(self, *args, cache_s: float = 2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache_s = cache_s
        self._owners: dict[str, tuple[float, TwinPattern | None]] = {}
        self._owners_lock = threading.Lock()

    def create(self, *, name: object, twins: object, namespace: object = None) -> dict:
        """A new device credential; the result's `credential` is the only time it is shown."""
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise InvalidInput(
                "a device needs a name of 1-100 characters",
                field="name",
                fix="name it after the device, e.g. 'pump-7 gateway'",
            )
        pattern = TwinPattern.parse(twins)
        if namespace is not None and namespace != pattern.namespace:
            namespaces.check_namespace(namespace)
            raise InvalidInput(
                f"twins '{pattern.text}' lie in namespace '{pattern.namespace}', not '{namespace}'",
                field="namespace",
                fix=f"leave namespace out, or start twins with '{namespace}/'",
            )
        device_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        credential = f"{DEVICE_PREFIX}{device_id}_{secret}"
        self._write(
            "INSERT INTO devices VALUES (?,?,?,?,?,?,?,NULL)",
            (
                device_id,
                name.strip(),
                pattern.text,
                pattern.namespace,
                digest(secret),
                mosquitto_hash(credential),
                self.clock(),
            ),
        )
        return {**self.get(device_id), "credential": credential}

    def get(self, device_id: str) -> dict:
        rows = self._read("SELECT * FROM devices WHERE id = ?", (device_id,))
        if not rows:
            raise NotFound(
                f"no device '{device_id}'",
                field="id",
                fix="list devices with GET /api/devices or `livetwin devices list`",
            )
        return self._public(rows[0])

    def list(self) -> list[dict]:
        return [self._public(r) for r in self._read("SELECT * FROM devices ORDER BY created, id")]

    def revoke(self, device_id: str) -> dict:
        """Revoke a device from now on (kept in the list, marked revoked)."""
        self.get(device_id)
        self._write(
            "UPDATE devices SET revoked = ? WHERE id = ? AND revoked IS NULL",
            (self.clock(), device_id),
        )
        with self._owners_lock:
            self._owners.pop(device_id, None)
        return self.get(device_id)

    def authenticate(self, credential: str) -> DevicePrincipal:
        """The principal of a presented credential; Unauthorized when malformed, unknown or
        revoked. One indexed read: a revocation is refused at once."""
        match = DEVICE_RE.match(credential)
        if match is None:
            raise Unauthorized(
                "malformed device credential",
                field="authorization",
                fix="send 'Authorization: Bearer ltd_...' as issued by POST /api/devices",
            )
        device_id, secret = match.groups()
        rows = self._read("SELECT hash, twins, revoked FROM devices WHERE id = ?", (device_id,))
        stored, twins, revoked = rows[0] if rows else (b"\0" * 32, "", None)
        if not hmac.compare_digest(bytes(stored), digest(secret)) or not rows:
            raise Unauthorized(
                "unknown device credential",
                field="authorization",
                fix="issue one with POST /api/devices or `livetwin devices create`",
            )
        if revoked is not None:
            raise Unauthorized(
                f"device {device_id} was revoked at {format_ts(revoked)}",
                field="authorization",
                fix="issue the device a new credential (`livetwin devices create`)",
            )
        return DevicePrincipal(f"device:{device_id}", (), TwinPattern.parse(twins))

    def owner(self, device_id: str) -> TwinPattern | None:
        """The twins device `device_id` may write; None when unknown or revoked (cached)."""
        now = time.monotonic()
        with self._owners_lock:
            cached = self._owners.get(device_id)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        found = None
        if DEVICE_ID.fullmatch(device_id):
            rows = self._read(
                "SELECT twins FROM devices WHERE id = ? AND revoked IS NULL", (device_id,)
            )
            found = TwinPattern.parse(rows[0][0]) if rows else None
        with self._owners_lock:
            if len(self._owners) >= 10_000:
                self._owners.clear()
            self._owners[device_id] = (now, found)
        return found

    def export_mosquitto(
        self,
        passwords: Path,
        acl: Path,
        *,
        bridge_user: str | None = None,
        bridge_password: str | None = None,
    ) -> int:
        """Write a Mosquitto password file and ACL for the devices not revoked; how many.

        Each device may publish and subscribe under `devices/<id>/` only. `bridge_user` (with
        `bridge_password`) is livetwin's own broker user: it may read and write every topic.
        """
        rows = self._read(
            "SELECT id, name, twins, broker_hash FROM devices WHERE revoked IS NULL "
            "ORDER BY created, id"
        )
        users, rules = [], ["# livetwin devices: each may use devices/<its id>/ only"]
        if bridge_user is not None:
            if not bridge_user or ":" in bridge_user or not bridge_user.isprintable():
                raise InvalidInput(
                    f"bridge user {bridge_user!r} cannot be a Mosquitto user name",
                    field="bridge_user",
                    fix="use letters, digits and '-', e.g. livetwin",
                )
            if not bridge_password:
                raise InvalidInput(
                    "the bridge user needs a password",
                    field="bridge_password",
                    fix="give --bridge-password-file with the password livetwin serve uses",
                )
            users.append(f"{bridge_user}:{mosquitto_hash(bridge_password)}")
            rules += ["", f"user {bridge_user}", "topic readwrite #"]
        for device_id, name, twins, broker_hash in rows:
            users.append(f"{device_id}:{broker_hash}")
            rules += ["", f"# {_comment(name)}: twins {_comment(twins)}", f"user {device_id}"]
            rules.append(f"topic readwrite {DEVICE_TOPIC_ROOT}/{device_id}/#")
        _write_private(passwords, "\n".join(users) + "\n" if users else "")
        _write_private(acl, "\n".join(rules) + "\n")
        return len(rows)

    @staticmethod
    def _public(row: tuple) -> dict:
        device_id, name, twins, namespace, _, _, created, revoked = row
        return {
            "id": device_id,
            "name": name,
            "twins": twins,
            "namespace": namespace,
            "mqtt_username": device_id,
            "mqtt_topic": f"{DEVICE_TOPIC_ROOT}/{device_id}/",
            "created": format_ts(created),
            "revoked": format_ts(revoked) if revoked is not None else None,
        }


def _comment(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (the broker's user should own it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
