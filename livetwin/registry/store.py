"""Model registry metadata in `<data>/registry.db` or PostgreSQL (store/servicedb.py): immutable
versions, their artifacts' hashes, the archived flag and the alias history, per (namespace, name).
Nothing here deletes a version.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.namespaces import DEFAULT, check_namespace
from livetwin.store.servicedb import service_db_opener
from livetwin.timefmt import format_ts, parse_ts

if TYPE_CHECKING:
    from livetwin.ports import OpenServiceDB

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # starts with a letter: never a version
FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
KINDS = ("deductive", "inductive", "hybrid")

DEFAULT_NAMESPACE = DEFAULT
ALL_NAMESPACES = "*"

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    namespace TEXT NOT NULL DEFAULT 'default', name TEXT NOT NULL, version INTEGER NOT NULL,
    created INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (namespace, name, version));
CREATE TABLE IF NOT EXISTS artifacts (
    namespace TEXT NOT NULL DEFAULT 'default', name TEXT NOT NULL, version INTEGER NOT NULL,
    filename TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, uploaded INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, version, filename));
-- the archived flag is the one mutable thing about a version; every change is kept
CREATE TABLE IF NOT EXISTS archive_log (
    n INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
    archived INTEGER NOT NULL, at INTEGER NOT NULL, namespace TEXT NOT NULL DEFAULT 'default');
CREATE INDEX IF NOT EXISTS archive_log_version ON archive_log (namespace, name, version, n);
-- moving an alias adds a record; the newest record per (namespace, name, alias) is current
CREATE TABLE IF NOT EXISTS aliases (
    n INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER NOT NULL, at INTEGER NOT NULL, author TEXT,
    namespace TEXT NOT NULL DEFAULT 'default');
CREATE INDEX IF NOT EXISTS aliases_name ON aliases (namespace, name, alias, n);
"""

# registry.db files from before namespaces: tables whose key becomes (namespace, ...), rebuilt
# with every row copied into namespace 'default'; the log tables just gain the column
_REKEYED = {
    "versions": "name, version, created, body",
    "artifacts": "name, version, filename, sha256, size, uploaded",
}
_EXTENDED = ("archive_log", "aliases")


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a registry.db from before namespaces up to date, in place and in one transaction
    (run before SCHEMA, which creates the new indexes)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    old = [t for t in (*_REKEYED, *_EXTENDED) if t in tables and not _has_namespace(conn, t)]
    if not old:
        return
    create = {
        table: statement
        for statement in SCHEMA.split(";")
        for table in _REKEYED
        if f"CREATE TABLE IF NOT EXISTS {table} (" in statement
    }
    for table in old:
        if table in _REKEYED:
            columns = _REKEYED[table]
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_before_namespaces")
            conn.execute(create[table])
            conn.execute(
                f"INSERT INTO {table} (namespace, {columns})"
                f" SELECT 'default', {columns} FROM {table}_before_namespaces"
            )
            conn.execute(f"DROP TABLE {table}_before_namespaces")
        else:
            conn.execute(
                f"ALTER TABLE {table} ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default'"
            )
    conn.execute("DROP INDEX IF EXISTS archive_log_version")  # re-created with the namespace
    conn.execute("DROP INDEX IF EXISTS aliases_name")


def _has_namespace(conn: sqlite3.Connection, table: str) -> bool:
    return any(row[1] == "namespace" for row in conn.execute(f"PRAGMA table_info({table})"))


def in_namespace(namespace: str) -> str:
    """The query string that names a non-default namespace in a route (for fixes)."""
    return "" if namespace == DEFAULT_NAMESPACE else f"?namespace={namespace}"


def of(name: str, namespace: str) -> str:
    """A model as messages name it: 'name', or 'name' in namespace 'ns'."""
    return f"'{name}'" if namespace == DEFAULT_NAMESPACE else f"'{name}' (namespace '{namespace}')"


def check_name(value: str, field: str, pattern: re.Pattern = NAME) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        what = {NAME: "a model name", ALIAS: "an alias", FILENAME: "a file name"}[pattern]
        raise InvalidInput(
            f"'{str(value)[:80]}' is not {what}",
            field=field,
            fix={
                NAME: "start with a letter; use letters, digits, _ . - (at most 64)",
                ALIAS: "start with a letter; letters, digits, _ - (at most 64), e.g. production",
                FILENAME: "use letters, digits, _ . - (at most 128), not starting with . or -",
            }[pattern],
        )
    return value


class ParentRef(BaseModel):
    """A version this one derives from; `namespace` defaults to the new version's own."""

    model_config = ConfigDict(extra="forbid")
    name: str
    version: int = Field(ge=1)
    namespace: str | None = None


class TrainingPeriod(BaseModel):
    """The period of the data a model was fitted or calibrated on."""

    model_config = ConfigDict(extra="forbid")
    start: int | str
    end: int | str
    description: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _ts(cls, value: int | str) -> int:
        return parse_ts(value)


class VersionSpec(BaseModel):
    """What `POST /api/models/{name}/versions` accepts."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["deductive", "inductive", "hybrid"]
    flavor: str | None = Field(
        None, description="how to load it for serving: python, linear, ... (default: python)"
    )
    ref: str | None = Field(None, description="'module:function' or 'fmu:path' of the model")
    description: str = ""
    author: str | None = None
    training: TrainingPeriod | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    parents: list[ParentRef] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    artifacts: list[str] = Field(default_factory=list, description="file names to upload")
    version: int | None = Field(None, ge=1, description="the version you expect to create")


def parse_version_spec(body: Any) -> VersionSpec:
    """A VersionSpec, or InvalidInput naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidInput(
            "the body must be a JSON object", field="body", fix='send {"kind": "deductive", ...}'
        )
    try:
        spec = VersionSpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(
            f"{field}: {first['msg']}", field=field, fix="see docs/registry.md for the fields"
        ) from None
    if spec.flavor is not None:
        check_name(spec.flavor, "flavor")
    for i, filename in enumerate(spec.artifacts):
        check_name(filename, f"artifacts.{i}", FILENAME)
    for i, parent in enumerate(spec.parents):
        if parent.namespace is not None:
            check_namespace(parent.namespace, f"parents.{i}.namespace")
    if len(set(spec.artifacts)) != len(spec.artifacts):
        raise InvalidInput("artifact names repeat", field="artifacts", fix="list each file once")
    if spec.training and spec.training.end < spec.training.start:
        raise InvalidInput(
            "training.end is before training.start", field="training.end", fix="swap them"
        )
    return spec


class RegistryStore:
    """Versions, artifacts, archive flags and aliases in the service database `registry`
    (`<data>/registry.db` or its PostgreSQL schema), each keyed by (namespace, name); a file
    from before namespaces is migrated in place when opened.

    `storage` opens the database (an `OpenServiceDB`), or is a data directory (then
    `database_url`, None reading LIVETWIN_DATABASE_URL, chooses the backend)."""

    def __init__(self, storage: OpenServiceDB | str | Path, *, database_url: str | None = None):
        open_db = storage if callable(storage) else service_db_opener(storage, database_url)
        self.db = open_db("registry", SCHEMA, sqlite_migrate=migrate)

    def close(self) -> None:
        self.db.close()

    # ---- writes ------------------------------------------------------------------------------

    def add_version(
        self, name: str, spec: VersionSpec, extra: dict, at: int, namespace: str = "default"
    ) -> int:
        """Store a new version (the next number); Conflict if `spec.version` is taken."""
        body = spec.model_dump(mode="json", exclude={"version", "artifacts", "parents"})
        body["parents"] = [p.model_dump(exclude_none=True) for p in spec.parents]
        body.update(extra)
        with self.db.write() as conn:
            latest = conn.execute(
                "SELECT max(version) FROM versions WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()[0]
            number = (latest or 0) + 1
            if spec.version is not None and spec.version != number:
                if spec.version < number:
                    raise immutable(name, spec.version, number, namespace)
                raise Conflict(
                    f"model {of(name, namespace)} would get version {number}, not {spec.version}",
                    field="version",
                    fix=f"versions are numbered 1, 2, ...: leave version out or send {number}",
                )
            for p in spec.parents:
                if not self._has(conn, p.namespace or namespace, p.name, p.version):
                    raise NotFound(
                        f"parent version {p.name}/{p.version} of namespace "
                        f"'{p.namespace or namespace}' does not exist",
                        field="parents",
                        fix="name registered versions as parents (give namespace for one in "
                        "another namespace)",
                    )
            conn.execute(
                "INSERT INTO versions (namespace, name, version, created, body) VALUES (?,?,?,?,?)",
                (namespace, name, number, at, orjson.dumps(body).decode()),
            )
            conn.executemany(
                "INSERT INTO artifacts (namespace, name, version, filename, sha256, size, uploaded)"
                " VALUES (?,?,?,?,'',0,0)",
                [(namespace, name, number, f) for f in spec.artifacts],
            )
        return number

    def add_artifact(
        self,
        name: str,
        version: int,
        filename: str,
        sha256: str,
        size: int,
        at: int,
        namespace: str = "default",
    ) -> None:
        """Record the upload of a declared file; Conflict when it was uploaded before."""
        with self.db.write() as conn:
            row = self._artifact_row(conn, namespace, name, version, filename)
            if row[0]:
                raise artifact_immutable(name, version, filename, namespace)
            conn.execute(
                "UPDATE artifacts SET sha256 = ?, size = ?, uploaded = ?"
                " WHERE namespace = ? AND name = ? AND version = ? AND filename = ?",
                (sha256, int(size), int(at), namespace, name, version, filename),
            )

    def set_archived(
        self, name: str, version: int, archived: bool, at: int, namespace: str = "default"
    ) -> None:
        with self.db.write() as conn:
            self._require(conn, namespace, name, version)
            conn.execute(
                "INSERT INTO archive_log (namespace, name, version, archived, at)"
                " VALUES (?,?,?,?,?)",
                (namespace, name, version, int(archived), at),
            )

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        at: int,
        author: str | None,
        namespace: str = "default",
    ) -> None:
        with self.db.write() as conn:
            self._require(conn, namespace, name, version)
            conn.execute(
                "INSERT INTO aliases (namespace, name, alias, version, at, author)"
                " VALUES (?,?,?,?,?,?)",
                (namespace, name, alias, version, at, author),
            )

    # ---- reads -------------------------------------------------------------------------------

    @staticmethod
    def _has(conn, namespace: str, name: str, version: int) -> bool:
        row = conn.execute(
            "SELECT 1 FROM versions WHERE namespace = ? AND name = ? AND version = ?",
            (namespace, name, version),
        ).fetchone()
        return row is not None

    def _require(self, conn, namespace: str, name: str, version: int) -> None:
        if not self._has(conn, namespace, name, version):
            self.version_count(name, namespace)  # NotFound for an unknown model
            raise NotFound(
                f"model {of(name, namespace)} has no version {version}",
                field="version",
                fix=f"GET /api/models/{name}/versions{in_namespace(namespace)} lists its versions",
            )

    def version_count(self, name: str, namespace: str = "default") -> int:
        row = (
            self.db.read()
            .execute(
                "SELECT count(*) FROM versions WHERE namespace = ? AND name = ?", (namespace, name)
            )
            .fetchone()
        )
        if not row[0]:
            q = in_namespace(namespace)
            raise NotFound(
                f"no model {of(name, namespace)}",
                field="name",
                fix=f"register it with POST /api/models/{name}/versions{q} (GET /api/models{q} "
                "lists models; ?namespace=* lists every namespace)",
            )
        return row[0]

    def _artifact_row(self, conn, namespace: str, name: str, version: int, filename: str) -> tuple:
        row = conn.execute(
            "SELECT uploaded, sha256, size FROM artifacts"
            " WHERE namespace = ? AND name = ? AND version = ? AND filename = ?",
            (namespace, name, version, filename),
        ).fetchone()
        if row is None:
            self._require(conn, namespace, name, version)
            raise Conflict(
                f"'{filename}' is not an artifact of {name}/{version}",
                field="filename",
                fix="a version's file list is fixed when it is registered: register a new "
                "version whose 'artifacts' lists this file",
            )
        return row

    def artifact(self, name: str, version: int, filename: str, namespace: str = "default") -> dict:
        """An uploaded artifact's record (NotFound until it is uploaded)."""
        conn = self.db.read()
        uploaded, sha256, size = self._artifact_row(conn, namespace, name, version, filename)
        if not uploaded:
            raise NotFound(
                f"artifact '{filename}' of {name}/{version} has not been uploaded",
                field="filename",
                fix=f"PUT /api/models/{name}/versions/{version}/artifacts/{filename}"
                + in_namespace(namespace),
            )
        return {"filename": filename, "sha256": sha256, "size": size}

    def artifact_state(
        self, name: str, version: int, filename: str, namespace: str = "default"
    ) -> bool:
        """Whether a declared artifact was uploaded (Conflict if it is not declared)."""
        return bool(self._artifact_row(self.db.read(), namespace, name, version, filename)[0])

    def resolve(self, name: str, ref: str | int, namespace: str = "default") -> int:
        """The version number for a number or an alias."""
        self.version_count(name, namespace)
        if isinstance(ref, int) or str(ref).isdigit():
            number = int(ref)
            self._require(self.db.read(), namespace, name, number)
            return number
        check_name(str(ref), "alias", ALIAS)
        row = (
            self.db.read()
            .execute(
                "SELECT version FROM aliases WHERE namespace = ? AND name = ? AND alias = ?"
                " ORDER BY n DESC LIMIT 1",
                (namespace, name, ref),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(
                f"model {of(name, namespace)} has no alias '{ref}'",
                field="alias",
                fix=f"set it with PUT /api/models/{name}/aliases/{ref}{in_namespace(namespace)} "
                "or use a version number",
            )
        return row[0]

    def version(self, name: str, number: int, namespace: str = "default") -> dict:
        conn = self.db.read()
        self._require(conn, namespace, name, number)
        row = conn.execute(
            "SELECT created, body FROM versions WHERE namespace = ? AND name = ? AND version = ?",
            (namespace, name, number),
        ).fetchone()
        return self._public(conn, namespace, name, number, row[0], row[1])

    def _public(
        self, conn, namespace: str, name: str, number: int, created: int, body: str
    ) -> dict:
        data = orjson.loads(body)
        if data.get("training"):
            for key in ("start", "end"):
                data["training"][key] = format_ts(data["training"][key])
        key = (namespace, name, number)
        artifacts = conn.execute(
            "SELECT filename, sha256, size, uploaded FROM artifacts"
            " WHERE namespace = ? AND name = ? AND version = ? ORDER BY filename",
            key,
        )
        archived = conn.execute(
            "SELECT archived FROM archive_log WHERE namespace = ? AND name = ? AND version = ?"
            " ORDER BY n DESC LIMIT 1",
            key,
        ).fetchone()
        aliases = self.current_aliases(name, namespace)
        return {
            "namespace": namespace,
            "name": name,
            "version": number,
            "created": format_ts(created),
            **data,
            "artifacts": [
                {"filename": f, "uploaded": bool(u), "sha256": s or None, "size": z if u else None}
                for f, s, z, u in artifacts
            ],
            "archived": bool(archived and archived[0]),
            "aliases": sorted(a for a, v in aliases.items() if v == number),
        }

    def versions(
        self, name: str, *, archived: bool, limit: int, offset: int, namespace: str = "default"
    ) -> list[dict]:
        self.version_count(name, namespace)
        conn = self.db.read()
        rows = conn.execute(
            "SELECT version, created, body FROM versions WHERE namespace = ? AND name = ?"
            " ORDER BY version",
            (namespace, name),
        ).fetchall()
        out = []
        for number, created, body in rows:
            record = self._public(conn, namespace, name, number, created, body)
            if archived or not record["archived"]:
                out.append(record)
        return out[offset : offset + limit]

    def current_aliases(self, name: str, namespace: str = "default") -> dict[str, int]:
        rows = self.db.read().execute(
            "SELECT alias, version FROM aliases WHERE namespace = ? AND name = ? ORDER BY n",
            (namespace, name),
        )
        return dict(rows.fetchall())

    def alias_history(self, name: str, namespace: str = "default") -> list[dict]:
        rows = self.db.read().execute(
            "SELECT alias, version, at, author FROM aliases WHERE namespace = ? AND name = ?"
            " ORDER BY n",
            (namespace, name),
        )
        return [
            {"alias": a, "version": v, "at": format_ts(at), "author": who}
            for a, v, at, who in rows.fetchall()
        ]

    def names(self, namespace: str = "default") -> list[tuple[str, str]]:
        """(namespace, name) of every model in `namespace` ('*': in every namespace)."""
        if namespace == ALL_NAMESPACES:
            rows = self.db.read().execute(
                "SELECT DISTINCT namespace, name FROM versions ORDER BY namespace, name"
            )
        else:
            rows = self.db.read().execute(
                "SELECT DISTINCT namespace, name FROM versions WHERE namespace = ? ORDER BY name",
                (namespace,),
            )
        return [tuple(row) for row in rows.fetchall()]

    def lookup_ref(
        self, ref: str, code_hash: str | None, namespace: str = ALL_NAMESPACES
    ) -> dict | None:
        """The registered version of a model ref (in `namespace`; '*': in any): the newest whose
        code hash matches, else the newest with that ref (then `code_matches` is false); None
        when it is not registered."""
        where, args = f"{self.db.json_text('body', 'ref')} = ?", [ref]
        if namespace != ALL_NAMESPACES:
            where, args = where + " AND namespace = ?", [ref, namespace]
        found = (
            self.db.read()
            .execute(
                "SELECT namespace, name, version, "
                f"{self.db.json_text('body', 'code_hash')} FROM versions"
                f" WHERE {where} ORDER BY created DESC, version DESC",
                args,
            )
            .fetchall()
        )
        if not found:
            return None
        exact = [f for f in found if f[3] == code_hash]
        space, name, number, stored = (exact or found)[0]
        return {
            "namespace": space,
            "name": name,
            "version": number,
            "code_matches": stored == code_hash,
        }


def immutable(
    name: str, version: int, latest: int | None = None, namespace: str = "default"
) -> Conflict:
    nxt = f" (the next is {latest})" if latest else ""
    return Conflict(
        f"version {version} of model {of(name, namespace)} exists and versions are immutable",
        field="version",
        fix=f"register a new version with POST /api/models/{name}/versions"
        f"{in_namespace(namespace)}{nxt}; to hide an old one, POST .../archive",
    )


def artifact_immutable(
    name: str, version: int, filename: str, namespace: str = "default"
) -> Conflict:
    return Conflict(
        f"artifact '{filename}' of {name}/{version} was uploaded already and cannot change",
        field="filename",
        fix=f"register a new version with POST /api/models/{name}/versions"
        f"{in_namespace(namespace)} and upload it there",
    )
