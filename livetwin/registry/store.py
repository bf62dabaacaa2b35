"""Model registry metadata in `<data>/registry.db`: immutable versions, their artifacts' hashes,
the archived flag and the alias history. Nothing here deletes a version.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.registry.db import SqliteFile
from livetwin.timefmt import format_ts, parse_ts

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # starts with a letter: never a version
FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
KINDS = ("deductive", "inductive", "hybrid")

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, created INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS artifacts (
    name TEXT NOT NULL, version INTEGER NOT NULL, filename TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, uploaded INTEGER NOT NULL,
    PRIMARY KEY (name, version, filename));
-- the archived flag is the one mutable thing about a version; every change is kept
CREATE TABLE IF NOT EXISTS archive_log (
    n INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
    archived INTEGER NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS archive_log_version ON archive_log (name, version, n);
-- moving an alias adds a record; the newest record per (name, alias) is the current one
CREATE TABLE IF NOT EXISTS aliases (
    n INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER NOT NULL, at INTEGER NOT NULL, author TEXT);
CREATE INDEX IF NOT EXISTS aliases_name ON aliases (name, alias, n);
"""


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
    model_config = ConfigDict(extra="forbid")
    name: str
    version: int = Field(ge=1)


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
    if len(set(spec.artifacts)) != len(spec.artifacts):
        raise InvalidInput("artifact names repeat", field="artifacts", fix="list each file once")
    if spec.training and spec.training.end < spec.training.start:
        raise InvalidInput(
            "training.end is before training.start", field="training.end", fix="swap them"
        )
    return spec


class RegistryStore:
    """Versions, artifacts, archive flags and aliases in `<directory>/registry.db`."""

    def __init__(self, directory: str | Path):
        self.db = SqliteFile(Path(directory) / "registry.db", SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ---- writes ------------------------------------------------------------------------------

    def add_version(self, name: str, spec: VersionSpec, extra: dict, at: int) -> int:
        """Store a new version (the next number); Conflict if `spec.version` is taken."""
        body = spec.model_dump(mode="json", exclude={"version", "artifacts"})
        body.update(extra)
        with self.db.write() as conn:
            latest = conn.execute(
                "SELECT max(version) FROM versions WHERE name = ?", (name,)
            ).fetchone()[0]
            number = (latest or 0) + 1
            if spec.version is not None and spec.version != number:
                if spec.version < number:
                    raise immutable(name, spec.version, number)
                raise Conflict(
                    f"model '{name}' would get version {number}, not {spec.version}",
                    field="version",
                    fix=f"versions are numbered 1, 2, ...: leave version out or send {number}",
                )
            for p in spec.parents:
                if not self._has(conn, p.name, p.version):
                    raise NotFound(
                        f"parent version {p.name}/{p.version} does not exist",
                        field="parents",
                        fix="name registered versions as parents",
                    )
            conn.execute(
                "INSERT INTO versions VALUES (?,?,?,?)",
                (name, number, at, orjson.dumps(body).decode()),
            )
            conn.executemany(
                "INSERT INTO artifacts VALUES (?,?,?,'',0,0)",
                [(name, number, f) for f in spec.artifacts],
            )
        return number

    def add_artifact(
        self, name: str, version: int, filename: str, sha256: str, size: int, at: int
    ) -> None:
        """Record the upload of a declared file; Conflict when it was uploaded before."""
        with self.db.write() as conn:
            row = self._artifact_row(conn, name, version, filename)
            if row[0]:
                raise artifact_immutable(name, version, filename)
            conn.execute(
                "UPDATE artifacts SET sha256 = ?, size = ?, uploaded = ?"
                " WHERE name = ? AND version = ? AND filename = ?",
                (sha256, int(size), int(at), name, version, filename),
            )

    def set_archived(self, name: str, version: int, archived: bool, at: int) -> None:
        with self.db.write() as conn:
            self._require(conn, name, version)
            conn.execute(
                "INSERT INTO archive_log (name, version, archived, at) VALUES (?,?,?,?)",
                (name, version, int(archived), at),
            )

    def set_alias(self, name: str, alias: str, version: int, at: int, author: str | None) -> None:
        with self.db.write() as conn:
            self._require(conn, name, version)
            conn.execute(
                "INSERT INTO aliases (name, alias, version, at, author) VALUES (?,?,?,?,?)",
                (name, alias, version, at, author),
            )

    # ---- reads -------------------------------------------------------------------------------

    @staticmethod
    def _has(conn, name: str, version: int) -> bool:
        row = conn.execute(
            "SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
        return row is not None

    def _require(self, conn, name: str, version: int) -> None:
        if not self._has(conn, name, version):
            self.version_count(name)  # NotFound for an unknown model
            raise NotFound(
                f"model '{name}' has no version {version}",
                field="version",
                fix=f"GET /api/models/{name}/versions lists its versions",
            )

    def version_count(self, name: str) -> int:
        row = (
            self.db.read()
            .execute("SELECT count(*) FROM versions WHERE name = ?", (name,))
            .fetchone()
        )
        if not row[0]:
            raise NotFound(
                f"no model '{name}'",
                field="name",
                fix=f"register it with POST /api/models/{name}/versions (GET /api/models lists "
                "models)",
            )
        return row[0]

    def _artifact_row(self, conn, name: str, version: int, filename: str) -> tuple:
        row = conn.execute(
            "SELECT uploaded, sha256, size FROM artifacts"
            " WHERE name = ? AND version = ? AND filename = ?",
            (name, version, filename),
        ).fetchone()
        if row is None:
            self._require(conn, name, version)
            raise Conflict(
                f"'{filename}' is not an artifact of {name}/{version}",
                field="filename",
                fix="a version's file list is fixed when it is registered: register a new "
                "version whose 'artifacts' lists this file",
            )
        return row

    def artifact(self, name: str, version: int, filename: str) -> dict:
        """An uploaded artifact's record (NotFound until it is uploaded)."""
        uploaded, sha256, size = self._artifact_row(self.db.read(), name, version, filename)
        if not uploaded:
            raise NotFound(
                f"artifact '{filename}' of {name}/{version} has not been uploaded",
                field="filename",
                fix=f"PUT /api/models/{name}/versions/{version}/artifacts/{filename}",
            )
        return {"filename": filename, "sha256": sha256, "size": size}

    def artifact_state(self, name: str, version: int, filename: str) -> bool:
        """Whether a declared artifact was uploaded (Conflict if it is not declared)."""
        return bool(self._artifact_row(self.db.read(), name, version, filename)[0])

    def resolve(self, name: str, ref: str | int) -> int:
        """The version number for a number or an alias."""
        self.version_count(name)
        if isinstance(ref, int) or str(ref).isdigit():
            number = int(ref)
            self._require(self.db.read(), name, number)
            return number
        check_name(str(ref), "alias", ALIAS)
        row = (
            self.db.read()
            .execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ? ORDER BY n DESC LIMIT 1",
                (name, ref),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(
                f"model '{name}' has no alias '{ref}'",
                field="alias",
                fix=f"set it with PUT /api/models/{name}/aliases/{ref} or use a version number",
            )
        return row[0]

    def version(self, name: str, number: int) -> dict:
        conn = self.db.read()
        self._require(conn, name, number)
        row = conn.execute(
            "SELECT created, body FROM versions WHERE name = ? AND version = ?", (name, number)
        ).fetchone()
        return self._public(conn, name, number, row[0], row[1])

    def _public(self, conn, name: str, number: int, created: int, body: str) -> dict:
        data = orjson.loads(body)
        if data.get("training"):
            for key in ("start", "end"):
                data["training"][key] = format_ts(data["training"][key])
        artifacts = conn.execute(
            "SELECT filename, sha256, size, uploaded FROM artifacts"
            " WHERE name = ? AND version = ? ORDER BY filename",
            (name, number),
        )
        archived = conn.execute(
            "SELECT archived FROM archive_log WHERE name = ? AND version = ? ORDER BY n DESC"
            " LIMIT 1",
            (name, number),
        ).fetchone()
        return {
            "name": name,
            "version": number,
            "created": format_ts(created),
            **data,
            "artifacts": [
                {"filename": f, "uploaded": bool(u), "sha256": s or None, "size": z if u else None}
                for f, s, z, u in artifacts
            ],
            "archived": bool(archived and archived[0]),
            "aliases": sorted(a for a, v in self.current_aliases(name).items() if v == number),
        }

    def versions(self, name: str, *, archived: bool, limit: int, offset: int) -> list[dict]:
        self.version_count(name)
        conn = self.db.read()
        rows = conn.execute(
            "SELECT version, created, body FROM versions WHERE name = ? ORDER BY version",
            (name,),
        ).fetchall()
        out = []
        for number, created, body in rows:
            record = self._public(conn, name, number, created, body)
            if archived or not record["archived"]:
                out.append(record)
        return out[offset : offset + limit]

    def current_aliases(self, name: str) -> dict[str, int]:
        rows = self.db.read().execute(
            "SELECT alias, version FROM aliases WHERE name = ? ORDER BY n", (name,)
        )
        return dict(rows.fetchall())

    def alias_history(self, name: str) -> list[dict]:
        rows = self.db.read().execute(
            "SELECT alias, version, at, author FROM aliases WHERE name = ? ORDER BY n", (name,)
        )
        return [
            {"alias": a, "version": v, "at": format_ts(at), "author": who}
            for a, v, at, who in rows.fetchall()
        ]

    def names(self) -> list[str]:
        rows = self.db.read().execute("SELECT DISTINCT name FROM versions ORDER BY name")
        return [n for (n,) in rows.fetchall()]

    def lookup_ref(self, ref: str, code_hash: str | None) -> dict | None:
        """The registered version of a model ref: the newest whose code hash matches, else the
        newest with that ref (then `code_matches` is false); None when it is not registered."""
        found = (
            self.db.read()
            .execute(
                "SELECT name, version, json_extract(body, '$.code_hash') FROM versions"
                " WHERE json_extract(body, '$.ref') = ? ORDER BY created DESC, version DESC",
                (ref,),
            )
            .fetchall()
        )
        if not found:
            return None
        exact = [f for f in found if f[2] == code_hash]
        name, number, stored = (exact or found)[0]
        return {"name": name, "version": number, "code_matches": stored == code_hash}


def immutable(name: str, version: int, latest: int | None = None) -> Conflict:
    nxt = f" (the next is {latest})" if latest else ""
    return Conflict(
        f"version {version} of model '{name}' exists and versions are immutable",
        field="version",
        fix=f"register a new version with POST /api/models/{name}/versions{nxt}; "
        "to hide an old one, POST .../archive",
    )


def artifact_immutable(name: str, version: int, filename: str) -> Conflict:
    return Conflict(
        f"artifact '{filename}' of {name}/{version} was uploaded already and cannot change",
        field="filename",
        fix=f"register a new version with POST /api/models/{name}/versions and upload it there",
    )
