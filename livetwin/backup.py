"""Online backup and restore of a data directory (and its PostgreSQL schemas when configured).

A backup is a folder (or an s3://bucket/prefix) holding consistent copies of every SQLite file
(SQLite's backup API, while livetwin runs), a `pg_dump` archive of the livetwin schemas when the
store is PostgreSQL, the snapshots and other files (artifacts, models), and `manifest.json`.
Copy order keeps it consistent: snapshots, history and the services' databases (all derived from
the journal) before the journal, so the journal copy holds everything they cover and a restored
start replays the rest; artifacts after the registry that names them.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from livetwin.errors import InvalidInput, NotFound, Unavailable
from livetwin.timefmt import format_ts, wall_clock_ms

MANIFEST = "manifest.json"
DUMP = "postgres.dump"
FORMAT = 1
SKIP = {"lock", "tmp"}  # the platform's lock file and scratch space
JOURNAL = "livetwin.db"  # journal, idempotency keys, types: copied after what derives from it


def backup(data: str | Path, to: str, *, database_url: str = "", s3=None) -> dict:
    """Copy the data directory `data` (and the PostgreSQL schemas of `database_url`) to `to`, a
    folder or s3://bucket/prefix (`s3(bucket)` gives a boto3 client); returns the manifest."""
    data = Path(data)
    if not (data / JOURNAL).exists() and not database_url:
        raise NotFound(
            f"{data} is not a livetwin data directory (no livetwin.db)",
            field="data",
            fix="give the --data directory livetwin serve uses",
        )
    with tempfile.TemporaryDirectory(prefix="livetwin-backup-") as scratch:
        local = Path(scratch) if to.startswith("s3://") else _empty_target(Path(to), "to")
        files = []
        for path in _ordered(data):
            target = local / path.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".db":
                _copy_sqlite(path, target)
            else:
                shutil.copy2(path, target)
            files.append(_entry(local, target))
        if database_url:
            _pg_dump(database_url, local / DUMP)
            files.append(_entry(local, local / DUMP))
        manifest = {
            "format": FORMAT,
            "created": format_ts(wall_clock_ms()),
            "source": str(data.resolve()),
            "store": "postgresql" if database_url else "sqlite",
            "files": files,
        }
        (local / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        if to.startswith("s3://"):
            _upload(local, to, s3)
    return manifest


def restore(source: str, data: str | Path, *, database_url: str = "", s3=None) -> dict:
    """Bring a backup (folder or s3://bucket/prefix) back into `data`, which must be empty or
    missing (and the PostgreSQL database of `database_url` must lack the backed-up schemas)."""
    data = Path(data)
    _empty_target(data, "data", create=False)
    with tempfile.TemporaryDirectory(prefix="livetwin-restore-") as scratch:
        local = Path(source)
        if source.startswith("s3://"):
            local = Path(scratch)
            _download(source, local, s3)
        manifest = _manifest(local, source)
        data.mkdir(parents=True, exist_ok=True)
        for item in manifest["files"]:
            path = local / item["path"]
            if item["path"] == DUMP:
                continue
            if _digest(path) != item["sha256"]:
                raise InvalidInput(
                    f"{item['path']} in the backup does not match its manifest checksum",
                    field="from",
                    fix="the backup is damaged: restore another one",
                )
            target = data / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        if manifest["store"] == "postgresql":
            if not database_url:
                raise InvalidInput(
                    "this backup is of a PostgreSQL deployment",
                    field="database_url",
                    fix="set LIVETWIN_DATABASE_URL (or --database-url) to the target database",
                )
            _pg_restore(local / DUMP, database_url)
    return manifest


# ---- files ------------------------------------------------------------------------------------


def _empty_target(path: Path, field: str, *, create: bool = True) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidInput(
            f"{path} is not empty",
            field=field,
            fix="give a new or empty directory (nothing there is overwritten)",
        )
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _ordered(data: Path) -> list[Path]:
    """The files to copy, in the order of the module docstring: what is derived from the journal
    (snapshots, history, the services' databases) before the journal, other files last."""
    found = []
    for path in sorted(data.rglob("*")):
        relative = path.relative_to(data)
        if path.is_dir() or relative.parts[0] in SKIP or path.suffix in (".tmp", ".lock"):
            continue
        if path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        found.append(path)

    def rank(path: Path) -> int:
        top = path.relative_to(data).parts[0]
        if top == "snapshots":
            return 0
        if top == "history.db":
            return 1
        if top == JOURNAL:
            return 3
        return 2 if path.suffix == ".db" else 4

    return sorted(found, key=rank)


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite file (its WAL included) with the backup API."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.execute("PRAGMA busy_timeout=10000")
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _entry(root: Path, path: Path) -> dict:
    return {
        "path": path.relative_to(root).as_posix(),
        "bytes": path.stat().st_size,
        "sha256": _digest(path),
    }


def _manifest(local: Path, source: str) -> dict:
    try:
        manifest = orjson.loads((local / MANIFEST).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        raise NotFound(
            f"{source} holds no readable {MANIFEST}: not a livetwin backup",
            field="from",
            fix="give the folder or s3:// prefix `livetwin backup --to` wrote",
        ) from None
    if manifest.get("format") != FORMAT:
        raise InvalidInput(
            f"backup format {manifest.get('format')} is not {FORMAT}",
            field="from",
            fix="restore it with the livetwin version that wrote it",
        )
    return manifest


# ---- PostgreSQL ---------------------------------------------------------------------------


def _schemas(url: str) -> list[str]:
    """The store's schema and its services' schemas (`<schema>_<service>`)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = %s OR nspname LIKE %s",
            (schema, schema.replace("_", "\\_") + "\\_%"),
        ).fetchall()
    return [r[0] for r in rows]


def _pg_url(url: str) -> str:
    """The URL without its `options` (pg_dump sets its own search_path)."""
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("options="))
    return parts._replace(query=query).geturl()


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError:
        raise Unavailable(
            f"{command[0]} is not installed",
            field="database_url",
            fix="install the PostgreSQL client tools",
        ) from None
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
        raise Unavailable(
            f"{what} failed: {why}",
            field="database_url",
            fix="check LIVETWIN_DATABASE_URL and that the PostgreSQL client matches the server",
        )


def _pg_dump(url: str, target: Path) -> None:
    """One consistent `pg_dump` (custom format) of the livetwin schemas."""
    schemas = [arg for s in _schemas(url) for arg in ("-n", s)]
    _run(
        ["pg_dump", "-Fc", "--no-owner", *schemas, "-f", str(target), "-d", _pg_url(url)], "pg_dump"
    )


def _pg_restore(dump: Path, url: str) -> None:
    import psycopg

    listed = subprocess.run(["pg_restore", "-l", str(dump)], capture_output=True, text=True)
    wanted = {
        line.split()[-2]
        for line in listed.stdout.splitlines()
        if " SCHEMA - " in line and not line.startswith(";")
    }
    with psycopg.connect(_pg_url(url), autocommit=True) as conn:
        present = {
            r[0]
            for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (sorted(wanted),)
            )
        }
    if present:
        raise InvalidInput(
            f"the database already has the schemas {', '.join(sorted(present))}",
            field="database_url",
            fix="restore into another database (CREATE DATABASE ...) or drop those schemas",
        )
    _run(["pg_restore", "--no-owner", "-d", _pg_url(url), str(dump)], "pg_restore")


# ---- S3 ---------------------------------------------------------------------------------------


def _s3_target(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if not parts.netloc:
        raise InvalidInput(f"{url} names no bucket", field="to", fix="s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


def _upload(local: Path, url: str, s3) -> None:
    bucket, prefix = _s3_target(url)
    client = s3(bucket)
    if client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{MANIFEST}").get("KeyCount"):
        raise InvalidInput(f"{url} holds a backup already", field="to", fix="choose a new prefix")
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == MANIFEST):  # the manifest last
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


def _download(url: str, local: Path, s3) -> None:
    bucket, prefix = _s3_target(url)
    client = s3(bucket)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    for page in pages:
        for item in page.get("Contents", []):
            target = local / item["Key"][len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(target))
