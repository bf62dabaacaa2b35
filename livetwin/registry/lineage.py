"""The lineage graph: which runs read which data windows and model versions and produced which
values. Nodes are immutable; edges point from an input (or parent) to what it fed.

Stored in `<data>/lineage.db` or PostgreSQL (store/servicedb.py). Jobs call
`LineageStore.record`; the API walks the graph (`walk`), finds the run behind a published value
(`producer`) and exports JSON or GraphML.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.store.servicedb import service_db_opener
from livetwin.timefmt import format_ts

if TYPE_CHECKING:
    from livetwin.ports import Clock, OpenServiceDB

KINDS = ("run", "data", "model", "value", "task", "workflow")
DIRECTIONS = ("up", "down")
MAX_DEPTH = 100
MAX_WALK_NODES = 5_000

# n numbers nodes and spans in the order they were recorded (the newest wins a tie in time)
SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    name TEXT NOT NULL, created INTEGER NOT NULL,
    started INTEGER, finished INTEGER, host TEXT, code_hash TEXT, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_name ON nodes (kind, name, created);
CREATE TABLE IF NOT EXISTS edges (
    src TEXT NOT NULL, dst TEXT NOT NULL, role TEXT NOT NULL, PRIMARY KEY (src, dst)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edges_dst ON edges (dst, src);
-- which twin's values a node published over [ts_from, ts_to): traces a value to its run
CREATE TABLE IF NOT EXISTS produced (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL, twin TEXT NOT NULL, ts_from INTEGER NOT NULL, ts_to INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS produced_twin ON produced (twin, ts_from);
CREATE INDEX IF NOT EXISTS produced_node ON produced (node);
"""
NODE_COLUMNS = "id, kind, name, created, started, finished, host, code_hash, body"
PRODUCED_COLUMNS = "node, twin, ts_from, ts_to"


def migrate(conn) -> None:
    """A lineage.db from before `n` (SQLite ordered by rowid): rebuild `nodes` and `produced`
    with their rowid as n, in one transaction (SCHEMA then re-creates their indexes)."""
    for table, columns in (("nodes", NODE_COLUMNS), ("produced", PRODUCED_COLUMNS)):
        names = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        if not names or "n" in names:
            continue
        (create,) = [s for s in SCHEMA.split(";") if f"EXISTS {table} (" in s]
        conn.execute(f"ALTER TABLE {table} RENAME TO {table}_before_n")
        conn.execute(create)
        conn.execute(
            f"INSERT INTO {table} (n, {columns}) SELECT rowid, {columns} FROM {table}_before_n"
        )
        conn.execute(f"DROP TABLE {table}_before_n")  # its indexes go with it


def new_run_id(prefix: str = "run") -> str:
    """A fresh, unique node id for a run."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


class LineageStore:
    """Lineage nodes and edges in the service database `lineage` (`<data>/lineage.db` or its
    PostgreSQL schema); thread-safe, no background work.

    `storage` opens the database (an `OpenServiceDB`), or is a data directory (then
    `database_url`, None reading LIVETWIN_DATABASE_URL, chooses the backend)."""

    def __init__(
        self,
        storage: OpenServiceDB | str | Path,
        *,
        clock: Clock | None = None,
        database_url: str | None = None,
    ):
        open_db = storage if callable(storage) else service_db_opener(storage, database_url)
        self.db = open_db("lineage", SCHEMA, sqlite_migrate=migrate)
        self.clock = clock

    def close(self) -> None:
        self.db.close()

    def _now(self) -> int:
        from livetwin.timefmt import wall_clock_ms

        return int(self.clock()) if self.clock is not None else wall_clock_ms()

    # ---- writes ------------------------------------------------------------------------------

    def record(
        self,
        kind: str,
        name: str,
        *,
        id: str | None = None,
        inputs: dict | None = None,
        outputs: dict | None = None,
        parents: Sequence[str] = (),
        code_hash: str | None = None,
        started: int | None = None,
        finished: int | None = None,
        host: str | None = None,
        produced: Iterable[tuple[str, int, int]] = (),
    ) -> str:
        """Add one immutable node with edges from each of `parents` (which must exist).

        `inputs`/`outputs` are JSON-able descriptions; `produced` lists (twin, from, to) spans
        whose published values this node made. Returns the node id (Conflict if it exists).
        """
        if kind not in KINDS:
            raise InvalidInput(
                f"unknown lineage kind '{kind}'", field="kind", fix=f"use one of {', '.join(KINDS)}"
            )
        node_id = id or new_run_id(kind)
        body = orjson.dumps({"inputs": inputs or {}, "outputs": outputs or {}}).decode()
        host = host if host is not None else f"{socket.gethostname()}:{os.getpid()}"
        with self.db.write() as conn:
            self._require(conn, parents)
            added = conn.execute(
                f"INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (id) DO NOTHING RETURNING n",
                (node_id, kind, name, self._now(), started, finished, host, code_hash, body),
            ).fetchone()
            if added is None:
                raise Conflict(
                    f"lineage node '{node_id}' exists already",
                    field="id",
                    fix="lineage nodes are immutable: record a new node with a new id",
                )
            conn.executemany(
                "INSERT INTO edges (src, dst, role) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                [(p, node_id, "parent") for p in dict.fromkeys(parents)],
            )
            conn.executemany(
                f"INSERT INTO produced ({PRODUCED_COLUMNS}) VALUES (?,?,?,?)",
                [(node_id, str(t), int(a), int(b)) for t, a, b in produced],
            )
        return node_id

    def ensure(
        self,
        node_id: str,
        kind: str,
        name: str,
        inputs: dict | None = None,
        parents: Sequence[str] = (),
        code_hash: str | None = None,
    ) -> str:
        """A node with a deterministic id (a data window, a model version): added once."""
        if self.exists(node_id):
            return node_id
        try:
            return self.record(
                kind, name, id=node_id, inputs=inputs, parents=parents, code_hash=code_hash
            )
        except Conflict:  # a concurrent writer added it first
            return node_id

    @staticmethod
    def _require(conn, ids: Sequence[str]) -> None:
        for node_id in ids:
            if conn.execute("SELECT 1 FROM nodes WHERE id = ?", (node_id,)).fetchone() is None:
                raise InvalidInput(
                    f"parent lineage node '{node_id}' does not exist",
                    field="parents",
                    fix="record the parent first, or leave it out",
                )

    # ---- reads -------------------------------------------------------------------------------

    def exists(self, node_id: str) -> bool:
        row = self.db.read().execute("SELECT 1 FROM nodes WHERE id = ?", (node_id,)).fetchone()
        return row is not None

    def node(self, node_id: str) -> dict:
        row = (
            self.db.read()
            .execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?", (node_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(
                f"no lineage node '{node_id}'",
                field="id",
                fix="use an id from a run record ('lineage') or GET /api/lineage/value",
            )
        return self._node(row)

    def _node(self, row: tuple) -> dict:
        node_id, kind, name, created, started, finished, host, code_hash, body = row
        parents = self.db.read().execute(
            "SELECT src FROM edges WHERE dst = ? ORDER BY src", (node_id,)
        )
        return {
            "id": node_id,
            "kind": kind,
            "name": name,
            "created": format_ts(created),
            "started": format_ts(started) if started is not None else None,
            "finished": format_ts(finished) if finished is not None else None,
            "host": host,
            "code_hash": code_hash,
            "parents": [p for (p,) in parents],
            **orjson.loads(body),
        }

    def latest(self, kind: str, name: str) -> str | None:
        """The id of the newest node of `kind` named `name`, or None."""
        row = (
            self.db.read()
            .execute(
                "SELECT id FROM nodes WHERE kind = ? AND name = ? ORDER BY created DESC, n DESC"
                " LIMIT 1",
                (kind, name),
            )
            .fetchone()
        )
        return row[0] if row else None

    def walk(self, node_id: str, direction: str = "up", depth: int = 10) -> dict:
        """The subgraph reachable from `node_id` towards its inputs (up) or its products (down)."""
        if direction not in DIRECTIONS:
            raise InvalidInput(
                f"direction must be up or down, not '{direction}'",
                field="direction",
                fix="up: towards inputs and parents; down: towards what it fed",
            )
        if not 1 <= depth <= MAX_DEPTH:
            raise InvalidInput(
                f"depth must be between 1 and {MAX_DEPTH}", field="depth", fix="e.g. depth=10"
            )
        root = self.node(node_id)
        query = (
            "SELECT src, dst FROM edges WHERE dst = ?"
            if direction == "up"
            else "SELECT src, dst FROM edges WHERE src = ?"
        )
        conn = self.db.read()
        nodes, edges, frontier, truncated = {node_id: root}, set(), [node_id], False
        for _ in range(depth):
            following = []
            for current in frontier:
                for src, dst in conn.execute(query, (current,)).fetchall():
                    edges.add((src, dst))
                    nxt = src if direction == "up" else dst
                    if nxt in nodes:
                        continue
                    if len(nodes) >= MAX_WALK_NODES:
                        truncated = True
                        continue
                    nodes[nxt] = self.node(nxt)
                    following.append(nxt)
            frontier = following
            if not frontier:
                break
        edges = {e for e in edges if e[0] in nodes and e[1] in nodes}
        return {
            "root": node_id,
            "direction": direction,
            "depth": depth,
            "truncated": truncated,
            "nodes": list(nodes.values()),
            "edges": [{"from": s, "to": d} for s, d in sorted(edges)],
        }

    def fed(self, node_id: str, twins: int = 100) -> list[dict]:
        """What `node_id` fed directly, per kind and name (newest first): how many nodes, the
        first and last recorded, the newest one's id and the twins whose values it published
        (at most `twins` of them). A model version's use, without walking every run."""
        conn = self.db.read()
        groups = conn.execute(
            "SELECT n.kind, n.name, COUNT(*), MIN(n.created), MAX(n.created), MAX(n.n)"
            " FROM edges e JOIN nodes n ON n.id = e.dst WHERE e.src = ?"
            " GROUP BY n.kind, n.name ORDER BY MAX(n.n) DESC",
            (node_id,),
        ).fetchall()
        out = []
        for kind, name, count, first, last, newest_n in groups:
            (newest,) = conn.execute("SELECT id FROM nodes WHERE n = ?", (newest_n,)).fetchone()
            published = conn.execute(
                "SELECT DISTINCT twin FROM produced WHERE node = ? ORDER BY twin LIMIT ?",
                (newest, twins),
            ).fetchall()
            out.append(
                {
                    "kind": kind,
                    "name": name,
                    "count": count,
                    "first": format_ts(first),
                    "last": format_ts(last),
                    "newest": newest,
                    "twins": [t for (t,) in published],
                }
            )
        return out

    def producer(self, twin: str, name: str, ts: int) -> dict:
        """The run node that published `name` of `twin` at `ts` (the newest, if it was re-run)."""
        rows = self.db.read().execute(
            "SELECT node FROM produced WHERE twin = ? AND ts_from <= ? AND ts_to > ?"
            " ORDER BY n DESC",  # the newest run that covered ts wrote the value last
            (twin, ts, ts),
        )
        for (node_id,) in rows.fetchall():
            node = self.node(node_id)
            if name in node["outputs"].get("names", ()):
                return node
        raise NotFound(
            f"no recorded run published '{name}' of twin '{twin}' at {format_ts(ts)}",
            field="name",
            fix="measured values have no producing run; check twin, name and ts (a published "
            "value's own timestamp, or a time inside the run's window)",
        )

    def trace_value(self, twin: str, name: str, ts: int, depth: int = 10) -> dict:
        """A value node for (twin, name, ts) with the lineage above it (its run, data, model)."""
        run = self.producer(twin, name, ts)
        value_id = f"value:{twin}/{name}@{format_ts(ts)}"
        graph = self.walk(run["id"], "up", depth)
        value = {
            "id": value_id,
            "kind": "value",
            "name": name,
            "twin": twin,
            "ts": format_ts(ts),
            "parents": [run["id"]],
        }
        graph["nodes"].insert(0, value)
        graph["edges"].append({"from": run["id"], "to": value_id})
        graph["root"] = value_id
        graph["run"] = run["id"]
        return graph


def to_graphml(graph: dict) -> bytes:
    """A walk (`LineageStore.walk`) as GraphML: kind, name and JSON details per node."""
    ns = "http://graphml.graphdrawing.org/xmlns"
    ET.register_namespace("", ns)
    root = ET.Element(f"{{{ns}}}graphml")
    keys = ("kind", "name", "started", "finished", "host", "code_hash", "details")
    for key in keys:
        ET.SubElement(
            root,
            f"{{{ns}}}key",
            id=key,
            attrib={"for": "node", "attr.name": key, "attr.type": "string"},
        )
    g = ET.SubElement(root, f"{{{ns}}}graph", id=str(graph["root"]), edgedefault="directed")
    for node in graph["nodes"]:
        element = ET.SubElement(g, f"{{{ns}}}node", id=node["id"])
        details = {k: v for k, v in node.items() if k not in keys and k not in ("id", "parents")}
        values = {**{k: node.get(k) for k in keys[:-1]}, "details": orjson.dumps(details).decode()}
        for key, value in values.items():
            if value is not None:
                ET.SubElement(element, f"{{{ns}}}data", key=key).text = str(value)
    for i, edge in enumerate(graph["edges"]):
        ET.SubElement(g, f"{{{ns}}}edge", id=f"e{i}", source=edge["from"], target=edge["to"])
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# ---- code hashes -------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _hash_of_object(obj: Any) -> str:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    try:
        source = inspect.getsource(module) if module is not None else inspect.getsource(obj)
        text = source.encode()
    except (OSError, TypeError):  # no source (built in, or a REPL): hash the bytecode
        code = getattr(obj, "__code__", None)
        text = code.co_code if code is not None else repr(obj).encode()
    return hashlib.sha256(text).hexdigest()


def code_hash(ref: str, fn: Any = None) -> str:
    """sha256 of the code behind a model ref: an FMU file's bytes, or the source of the module
    that defines the function (so helpers it calls count too)."""
    if ref.startswith("fmu:"):
        path = ref[4:].split("?", 1)[0]
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise InvalidInput(
                f"cannot read FMU {path!r}: {exc}", field="ref", fix="check the FMU path"
            ) from None
        return digest.hexdigest()
    if fn is None:
        from livetwin.models.base import resolve_model

        fn = resolve_model(ref).fn
    return _hash_of_object(fn)
