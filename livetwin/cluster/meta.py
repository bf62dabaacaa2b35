"""The cluster's metadata in PostgreSQL: shard count (fixed at creation), livetwin version and
each shard's database URL; and the stable hash that puts a twin on its shard.

A twin lives on shard `crc32(utf-8 twin id) mod shards` (zlib's CRC-32, the same on every
platform and Python version). The shard count never changes after the cluster is created: a
start with another count, or by another livetwin version, is refused before anything runs.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from livetwin import __version__
from livetwin.errors import InvalidInput, Unavailable

MAX_SHARDS = 1024
NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
DATABASE_FIX = (
    "give --database postgresql://user@host:5432/db (cluster mode keeps everything there)"
)


LIVE, RECOVERING, LOST = "live", "recovering", "lost"  # a shard's state, as a front end sees it
PLACEMENTS = ("twin", "root")  # what a twin's shard is the hash of (fixed at creation)


def placement_key(twin_id: str, placement: str = "twin") -> str:
    """What places a twin: its id (`twin`), or its id's first segment (`root`: the part before
    the first '/', so `home-1`, `home-1/kitchen` and `home-1/kitchen/fridge` share a shard and a
    parent's aggregates see all its children)."""
    return twin_id.split("/", 1)[0] if placement == "root" else twin_id


def shard_of(twin_id: str, shards: int, placement: str = "twin") -> int:
    """The shard of a twin: CRC-32 of its UTF-8 placement key, modulo the shard count."""
    return zlib.crc32(placement_key(twin_id, placement).encode()) % shards


def shards_of(twin_ids: Sequence[str], shards: int, placement: str = "twin") -> list[int]:
    """`shard_of` for many twins."""
    crc32 = zlib.crc32
    keys = twin_ids if placement == "twin" else [placement_key(t, placement) for t in twin_ids]
    return [crc32(k.encode()) % shards for k in keys]


def cluster_alarm_id(local_id: int, shard: int, shards: int) -> int:
    """An alarm's id in the cluster: its shard's own id x shards + shard (so the shard follows
    from the id alone: `divmod(id, shards)`)."""
    return local_id * shards + shard


def with_schema(url: str, schema: str) -> str:
    """`url` with `schema` as its search_path (the store creates the schema when missing)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(frozen=True)
class ClusterMeta:
    """A cluster as stored: its name, shard count, version, the URL of every shard and how
    twins are placed (`placement_key`)."""

    name: str
    shards: int
    version: str
    shard_urls: tuple[str, ...]
    created: int
    base_url: str
    placement: str = "twin"

    @property
    def services_url(self) -> str:
        """Where the cluster-wide services (tokens, lineage, registry) keep their schemas
        (`<name>_tokens`, `<name>_lineage`, ...)."""
        return with_schema(self.base_url, self.name)

    def shard_schema(self, index: int) -> str:
        return shard_schema(self.name, index)

    def to_dict(self) -> dict:
        from livetwin.store.postgres import safe_url

        return {
            "name": self.name,
            "shards": self.shards,
            "placement": self.placement,
            "version": self.version,
            "created": self.created,
            "databases": [safe_url(u) for u in self.shard_urls],
        }


def shard_schema(name: str, index: int) -> str:
    """The PostgreSQL schema of shard `index`: `<name>_shard_00`, `<name>_shard_01`, ..."""
    return f"{name}_shard_{index:02d}"


def check_database_url(url: str | None) -> str:
    """The cluster's PostgreSQL URL, or `Unavailable` naming the fix (none, or not PostgreSQL)."""
    url = (url or "").strip()
    if not url:
        raise Unavailable(
            "cluster mode needs PostgreSQL and no database is configured",
            field="database",
            fix=DATABASE_FIX,
        )
    if not url.startswith(("postgresql://", "postgres://")):
        raise Unavailable(
            f"cluster mode needs a postgresql:// database URL, not '{url.split('://')[0]}://...'",
            field="database",
            fix=DATABASE_FIX,
        )
    return url


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidInput(
            f"the cluster name {name!r} is not a valid name",
            field="cluster-name",
            fix="use 1-31 lower-case letters, digits and _, starting with a letter",
        )
    return name


def _connect(url: str):
    import psycopg

    from livetwin.store.postgres import safe_url

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise Unavailable(
            f"cannot connect to PostgreSQL at {safe_url(url)}: {first}",
            field="database",
            fix=DATABASE_FIX + "; check that the server runs and the URL is right",
        ) from None


def open_cluster(
    url: str | None,
    *,
    shards: int | None = None,
    name: str = "livetwin",
    databases: Sequence[str] = (),
    version: str = __version__,
    create: bool = True,
    placement: str | None = None,
) -> ClusterMeta:
    """The cluster `name` stored in the database at `url`, created with `shards` shards and
    `placement` (default `twin`) when it does not exist (shard i's schema lives in
    `databases[i % len(databases)]`, default `url`).

    Refused with a clear error: no PostgreSQL, no shard count for a new cluster, another shard
    count or placement than the stored one, another livetwin version than the one that created
    it. With `create=False` it only checks (nothing is written): what a start does before it
    commits.
    """
    if placement is not None and placement not in PLACEMENTS:
        raise InvalidInput(
            f"--placement must be {' or '.join(PLACEMENTS)}, not {placement!r}",
            field="placement",
            fix="twin: spread every twin by its id; root: keep each id's first segment (a "
            "tree of twins) on one shard",
        )
    url = check_database_url(url)
    name = check_name(name)
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        raise InvalidInput(
            f"--shards must be 1-{MAX_SHARDS}, not {shards}",
            field="shards",
            fix="choose the shard count once, e.g. 4x the nodes you expect to run",
        )
    for database in databases:
        check_database_url(database)
    import psycopg
    from psycopg import sql

    schema = sql.Identifier(f"{name}_cluster")
    with _connect(url) as conn, conn.transaction():
        # one creator at a time: two clusters started at once with different counts
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{name}_cluster",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.cluster (one boolean PRIMARY KEY DEFAULT true "
                "CHECK (one), shards integer NOT NULL, version text NOT NULL, "
                "created bigint NOT NULL)"
            ).format(schema)
        )
        conn.execute(  # clusters created before placements place by twin id
            sql.SQL(
                "ALTER TABLE {}.cluster ADD COLUMN IF NOT EXISTS placement text NOT NULL "
                "DEFAULT 'twin'"
            ).format(schema)
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.shards (shard integer PRIMARY KEY, "
                "url text NOT NULL)"
            ).format(schema)
        )
        row = conn.execute(
            sql.SQL("SELECT shards, version, created, placement FROM {}.cluster").format(schema)
        ).fetchone()
        if row is None:
            if shards is None:
                raise InvalidInput(
                    f"there is no cluster '{name}' in this database yet",
                    field="shards",
                    fix="give --shards N to create it (fixed for the cluster's life)",
                )
            created = conn.execute("SELECT (extract(epoch FROM now()) * 1000)::bigint").fetchone()[
                0
            ]
            conn.execute(
                sql.SQL("INSERT INTO {}.cluster (shards, version, created, placement) "
                        "VALUES (%s, %s, %s, %s)").format(schema),
                (shards, version, created, placement or "twin"),
            )  # fmt: skip
            pool = list(databases) or [url]
            urls = [with_schema(pool[i % len(pool)], shard_schema(name, i)) for i in range(shards)]
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL("INSERT INTO {}.shards VALUES (%s, %s)").format(schema),
                    list(enumerate(urls)),
                )
            row = (shards, version, created, placement or "twin")
        stored_shards, stored_version, created, stored_placement = row
        if shards is not None and shards != stored_shards:
            raise InvalidInput(
                f"the cluster '{name}' has {stored_shards} shards; it cannot start with {shards}",
                field="shards",
                fix=f"start with --shards {stored_shards} (or leave --shards out); the shard "
                "count is fixed when a cluster is created",
            )
        if placement is not None and placement != stored_placement:
            raise InvalidInput(
                f"the cluster '{name}' places twins by {stored_placement}; it cannot start with "
                f"--placement {placement}",
                field="placement",
                fix=f"start with --placement {stored_placement} (or leave it out); the placement "
                "is fixed when a cluster is created",
            )
        if stored_version != version:
            raise Unavailable(
                f"the cluster '{name}' runs livetwin {stored_version}; this is livetwin {version}",
                field="version",
                fix=f"run livetwin {stored_version} on every node (upgrade all nodes together)",
            )
        urls = tuple(
            u
            for (u,) in conn.execute(
                sql.SQL("SELECT url FROM {}.shards ORDER BY shard").format(schema)
            )
        )
        if not create:
            raise psycopg.Rollback()  # a check only: nothing stays written
    return ClusterMeta(name, stored_shards, stored_version, urls, created, url, stored_placement)


def drop_cluster(url: str, name: str) -> None:
    """Delete a cluster and every schema it made (its shards' and services'): for tests and
    for starting over. Irreversible."""
    from psycopg import sql

    with _connect(url) as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = %s OR nspname LIKE %s",
            (name, name.replace("_", "\\_") + "\\_%"),
        ).fetchall()
        for (schema,) in schemas:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
