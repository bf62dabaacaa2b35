"""The stateless cluster front end: checks a batch once, splits it by shard, sends every part
at once and acknowledges after every shard involved has committed; reads go to the owning
shard, fleet queries fan out and merge.

`ClusterFrontend` offers the platform methods the shared API routes call (livetwin/api/app.py),
so a front end serves the same REST shapes as a single node (docs/cluster.md). It talks to
shards through `Shards`: Ray actors in a deployment (`RayShards`), plain objects in the unit
tests.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, TimeoutError, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from livetwin.auth.devices import DeviceStore
from livetwin.cluster.alarms import ClusterAlarms
from livetwin.cluster.backtests import ClusterBacktests
from livetwin.cluster.feed import FRONT_END, RUN_NOTICES, TYPE_NOTICE, ClusterFeed
from livetwin.cluster.meta import (
    LIVE,
    LOST,
    RECOVERING,
    ClusterMeta,
    placement_key,
    shards_of,
)
from livetwin.cluster.opcua import LeaderConnectors
from livetwin.cluster.scenarios import cluster_scenarios
from livetwin.cluster.shard import encode_part
from livetwin.cluster.webhooks import ClusterWebhooks
from livetwin.core import done
from livetwin.engine.events import Notice, TypeDefined
from livetwin.errors import (
    Conflict,
    InvalidInput,
    LivetwinError,
    Unavailable,
)
from livetwin.expr.aggregates import AGGREGATE_FUNCTIONS
from livetwin.ingest.extractors import Extractors, submit_extracted
from livetwin.ingest.files.mapping import ImportMappings
from livetwin.ingest.observations import Normalized, Rejection, normalize
from livetwin.journal.writer import IngestResult
from livetwin.namespaces import DEFAULT as DEFAULT_NAMESPACE
from livetwin.outbound import OutboundPolicy
from livetwin.registry import LineageStore, Registry
from livetwin.registry.artifacts import artifact_store
from livetwin.schedule import Scheduler
from livetwin.settings import Settings
from livetwin.spec.extractor import ExtractorSpec
from livetwin.spec.types import CompiledType, TwinTypeSpec, compile_type
from livetwin.store.servicedb import ServiceDB, open_service_db
from livetwin.timefmt import parse_duration, wall_clock_ms

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2  # what a refused row's answer asks the client to wait
LOST_AFTER_S = 60.0  # a shard that has not answered for this long is reported lost
EXPORT_PAGE_ROWS = 100_000  # rows a shard sends per call of an export
HEAVY_TIMEOUT_S = 24 * 3600.0  # the longest a heavy job's part may run on a shard
POLL_S = 0.5  # how often a heavy job's progress is asked for and a cancel passed on


class Shards(Protocol):
    """How a front end reaches its shards: `call(i, method, *args)` runs `Shard.method` on
    shard i and returns a future of its answer (`retry`: Ray may repeat it after a restart)."""

    count: int

    def call(
        self, index: int, method: str, *args: Any, retry: bool = True, **kwargs: Any
    ) -> Future: ...


class RayShards:
    """The shard actors of a Ray cluster (their handles, from `start_shards`)."""

    def __init__(self, handles: list):
        self.handles = handles
        self.count = len(handles)

    def call(
        self, index: int, method: str, *args: Any, retry: bool = True, **kwargs: Any
    ) -> Future:
        remote = getattr(self.handles[index], method)
        if not retry:  # a write that failed may have committed: the client retries, with keys
            remote = remote.options(max_task_retries=0)
        return remote.remote(*args, **kwargs).future()


class _Sender:
    """The writes for one shard: parts queued while a call is in flight go together in the
    next one, so HTTP requests become few, large actor calls (and one commit on the shard)."""

    MAX_PARTS = 64

    def __init__(self, frontend: ClusterFrontend, index: int):
        self.frontend, self.index = frontend, index
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"shard-{index}-sender", daemon=True).start()

    def send(self, part: bytes, atomic: bool) -> Future:
        """A future of the shard's answer to one part (its IngestResult as a dict)."""
        future: Future = Future()
        self.queue.put((part, atomic, future))
        return future

    def _run(self) -> None:
        while True:
            group = [self.queue.get()]
            while len(group) < self.MAX_PARTS:
                try:
                    group.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            parts, atomic = [g[0] for g in group], [g[1] for g in group]
            try:
                call = {self.index: self.frontend.shards.call(
                    self.index, "ingest_parts", parts, atomic, retry=False
                )}  # fmt: skip
                answers, failures = self.frontend._gather(call, self.frontend.write_timeout_s)
            except Exception as exc:  # the call could not even be sent: these parts fail
                answers, failures = {}, {self.index: exc}
                self.frontend._set_state(self.index, RECOVERING)
            for i, (_, _, future) in enumerate(group):
                if self.index in answers:
                    future.set_result(answers[self.index][i])
                else:
                    future.set_exception(failures[self.index])


@dataclass
class ClusterIngestResult(IngestResult):
    """What a cluster ingest stored; `unavailable` lists the rows of shards that could not take
    them now (answered with 503 and Retry-After: send them again, with their keys)."""

    unavailable: list[dict] = field(default_factory=list)

    def reindex(self, index: list[int]) -> None:
        super().reindex(index)
        for row in self.unavailable:
            row["index"] = index[row["index"]] if row["index"] < len(index) else row["index"]

    def to_dict(self) -> dict:
        body = super().to_dict()
        if self.unavailable:
            body["unavailable"] = sorted(self.unavailable, key=lambda r: r["index"])
            body["retry_after"] = RETRY_AFTER_S
        return body


def cause(exc: BaseException) -> BaseException:
    """The error a shard raised (Ray wraps it in a RayTaskError that keeps it as `cause`)."""
    inner = getattr(exc, "cause", None)
    return inner if isinstance(inner, BaseException) else exc


class ClusterFrontend:
    """A front end over the shards of `meta` (see the module docstring)."""

    def __init__(
        self,
        meta: ClusterMeta,
        shards: Shards,
        *,
        settings: Settings | None = None,
        clock=wall_clock_ms,
        data_dir: str = "livetwin-data",
        write_timeout_s: float = 30.0,
        read_timeout_s: float = 10.0,
        workflow_kind: str = "thread",
    ):
        self.meta, self.shards, self.data_dir = meta, shards, data_dir
        self.ident = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.workflow_kind = workflow_kind  # "ray" in a Ray cluster: workflow tasks on any node
        self.settings = settings or Settings()
        self.clock = clock
        self.outbound = OutboundPolicy(self.settings.outbound_allow or ())
        self.write_timeout_s, self.read_timeout_s = write_timeout_s, read_timeout_s
        self._types: dict[str, CompiledType] = {}
        self._types_lock = threading.Lock()
        self._state = [LIVE] * shards.count
        self._since = [time.monotonic()] * shards.count
        self._probes: set[int] = set()
        self._mutex = threading.Lock()
        self._senders = [_Sender(self, i) for i in range(shards.count)]
        self.alarms = ClusterAlarms(self)
        self.webhooks = ClusterWebhooks(self)
        # extractors live in shard 0's store, read there each time (any front end may change one)
        self.extractors = Extractors(_ShardConfigs(self, 0), clock, cache=False)
        self.mappings = ImportMappings(_ShardConfigs(self, 0), clock)  # file import, shard 0's
        self.feed = ClusterFeed(self)
        self.mqtt = self.commands = None  # start_mqtt
        self._versions: dict[tuple[str, int], CompiledType] = {}  # compiled_version
        self._refresh_types()
        self.lineage, self.registry = self._open_registry()
        self.backtests = ClusterBacktests(self)
        self.devices = DeviceStore(self.open_db, clock=self.clock)  # opened on first use
        self.scenarios = cluster_scenarios(self)
        self.scheduler = self._new_scheduler()
        self.opcua = self._leader_connectors()  # run while this front end's scheduler leads
        if self.settings.run_schedules:
            self.scheduler.start()
            self.feed.follow()  # the scheduler's event triggers hear the shards' changes

    def _leader_connectors(self) -> LeaderConnectors:
        """The cluster's OPC UA connectors (specs in shard 0's store), run by the leader: each
        batch goes in whole or fails (a recovering shard), as MQTT's does."""
        from livetwin.ingest.opcua import OpcuaConnectors

        connectors = OpcuaConnectors(
            ingest=_WholeBatches(self),
            configs=_ShardConfigs(self, 0),
            clock=self.clock,
            outbound=self.outbound,
            pki_dir=Path(self.data_dir) / "opcua",
        )
        return LeaderConnectors(connectors, self.scheduler)

    def _new_scheduler(self) -> Scheduler:
        """The single node's scheduler over the cluster's `<cluster>_schedule` schema: every
        front end runs one, the holder of its PostgreSQL lease leads (fires schedules, runs
        functions here and workflow tasks where `workflow_kind` says: Ray tasks in a Ray
        cluster), the others are on standby and take over when it is lost. Its built-in jobs
        are a single node's: calibration, retention, back-tests and scenarios fan out over the
        shards; baseline training, inactivity checks and file import read and write through
        this front end."""
        from livetwin.jobs.builtins import register_builtins
        from livetwin.registry.artifacts import bucket_client

        scheduler = Scheduler(
            clock=self.clock,
            bus=self.feed.bus,
            reader=self,
            open_db=self.open_db,
            lineage=self.lineage,
            functions_platform=self,  # ctx.platform of Python functions
            database_url=self.meta.services_url,
            outbound=self.outbound,
            allow_modules=self.settings.scheduler_modules,
            workflow_kind=self.workflow_kind,
        )
        register_builtins(
            scheduler,
            calibrate=self.calibrate,
            clock=self.clock,
            query=self,
            ingest=self,
            registry=self.registry,
            import_file=self.import_file,
            s3_client=partial(bucket_client, self.settings.artifacts, self.outbound),
            compact=(self.apply_retention, self.compact_journal),
            journal_retention=self.settings.journal_retention,
            backtests=self.backtests,
            scenarios=self.scenarios,
        )
        self.feed.bus.subscribe(self._announce_run)
        return scheduler

    def _announce_run(self, event: Any) -> None:
        """A run notice of this front end's scheduler goes to shard 0, marked with this front
        end (`data.front_end`): the cluster's webhook subscriptions hear it there, and every
        other front end's live stream through shard 0's feed (not waited for: lost if shard 0
        is down then). Notices that came from shard 0 carry their front end and stay here."""
        if isinstance(event, Notice) and event.kind in RUN_NOTICES:
            if FRONT_END not in event.data:
                self._announce(event)

    def _announce(self, notice: Notice) -> None:
        """Publish a notice of this front end on shard 0, marked with this front end."""
        marked = Notice(notice.kind, notice.id, {**notice.data, FRONT_END: self.ident})
        self.shards.call(0, "announce", marked).add_done_callback(_log_failure)

    def _open_registry(self) -> tuple[LineageStore, Registry]:
        """The model registry and lineage of the cluster: the single node's services over the
        cluster's service schemas (`<cluster>_registry`, `<cluster>_lineage`); artifacts in the
        configured store (S3 for several front ends; files: under this front end's --data)."""
        from livetwin.models.base import ModelRefs

        lineage = LineageStore(self.open_db, clock=self.clock)
        try:
            registry = Registry(
                clock=self.clock,
                open_db=self.open_db,
                lineage=lineage,
                artifacts=artifact_store(self.data_dir, self.settings.artifacts, self.outbound),
                tmp_dir=Path(self.data_dir) / "tmp",
                max_artifact_bytes=self.settings.max_artifact_bytes,
                model_refs=ModelRefs.configured(self.settings, self.data_dir),
            ).start()
        except BaseException:
            lineage.close()
            raise
        return lineage, registry

    @property
    def query(self) -> ClusterFrontend:
        """The read port the shared routes use (`compiled_types`): the front end itself."""
        return self

    def close(self) -> None:
        self.scheduler.stop()  # first: running functions may still ingest
        for service in (self.mqtt, self.commands, self.opcua):
            if service is not None:
                service.stop()
        self.feed.close()
        self.scenarios.close()
        self.registry.stop()
        self.backtests.close()
        self.lineage.close()
        self.devices.stop()

    def open_db(self, name: str, schema: str, **_sqlite_options) -> ServiceDB:
        """A cluster-wide service's database (tokens, tickets, registry, lineage, ...): the
        `<cluster>_<name>` schema, shared by every front end."""
        return open_service_db(self.data_dir, name, schema, database_url=self.meta.services_url)

    # ---- shard states ----------------------------------------------------------------------

    def _set_state(self, index: int, state: str) -> None:
        with self._mutex:
            if self._state[index] != state:
                log.warning("shard %d: %s -> %s", index, self._state[index], state)
                self._state[index], self._since[index] = state, time.monotonic()
            if state == LIVE or index in self._probes:
                return
            self._probes.add(index)
        threading.Thread(target=self._probe, args=(index,), daemon=True).start()

    def _probe(self, index: int) -> None:
        """Ask a shard that failed for its info until it answers again (then it is live)."""
        try:
            while True:
                try:
                    self.shards.call(index, "info").result(timeout=1.0)
                    break
                except Exception:
                    if time.monotonic() - self._since[index] > LOST_AFTER_S:
                        with self._mutex:
                            self._state[index] = LOST
                    time.sleep(0.1)
        finally:
            with self._mutex:
                self._probes.discard(index)
                self._state[index], self._since[index] = LIVE, time.monotonic()
            log.warning("shard %d: live again", index)

    def state(self, index: int) -> str:
        return self._state[index]

    def _gather(
        self, calls: dict[int, Future], timeout: float
    ) -> tuple[dict[int, Any], dict[int, BaseException]]:
        """The answers of shard calls (by shard) and their failures; a shard that failed or did
        not answer in time is marked recovering. Errors the shard raised on purpose
        (`LivetwinError`) are failures too, but leave its state alone."""
        wait(calls.values(), timeout=timeout)
        answers, failures = {}, {}
        for index, future in calls.items():
            try:
                answers[index] = future.result(timeout=0)
            except TimeoutError:
                failures[index] = Unavailable(
                    f"shard {index} did not answer within {timeout:g} s",
                    field="shard",
                    fix=f"retry after {RETRY_AFTER_S} s",
                )
                self._set_state(index, RECOVERING)
            except BaseException as exc:  # noqa: BLE001 - a shard's failure, reported per shard
                failures[index] = cause(exc)
                if not isinstance(failures[index], LivetwinError):
                    log.warning("shard %d failed: %r", index, failures[index])
                    self._set_state(index, RECOVERING)
        return answers, failures

    def _one(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """One shard's answer to a read; its own error as is, an unreachable shard as 503."""
        if self._state[index] != LIVE:
            raise self._refusal(index)
        answers, failures = self._gather(
            {index: self.shards.call(index, method, *args, **kwargs)}, self.read_timeout_s
        )
        if index in failures:
            error = failures[index]
            raise error if isinstance(error, LivetwinError) else self._refusal(index)
        return answers[index]

    def _all(
        self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> dict[int, Any]:
        """Every shard's answer (fan out); 503 naming the shards that cannot answer now."""
        calls = {i: (method, *args) for i in range(self.shards.count)}
        return self._some(calls, timeout=timeout, **kwargs)

    def _some(
        self, calls: dict[int, tuple], *, timeout: float | None = None, **kwargs: Any
    ) -> dict[int, Any]:
        """The answers of some shards (`{shard: (method, *args)}`, each also given `kwargs`);
        a shard's own error as is, 503 naming the shards that cannot answer now."""
        down = [i for i in calls if self._state[i] != LIVE]
        if down:
            raise self._refusal(*down)
        futures = {i: self.shards.call(i, *call, **kwargs) for i, call in calls.items()}
        answers, failures = self._gather(futures, timeout or self.read_timeout_s)
        for error in failures.values():
            if isinstance(error, LivetwinError) and not isinstance(error, Unavailable):
                raise error
        if failures:
            raise self._refusal(*sorted(failures))
        return answers

    def _refusal(self, *indices: int) -> Unavailable:
        states = ", ".join(f"{i} ({self._state[i]})" for i in indices)
        error = Unavailable(
            f"shard{'s' if len(indices) > 1 else ''} {states} cannot answer now",
            field="shard",
            fix=f"retry after {RETRY_AFTER_S} s; GET /api/cluster shows the shards' states",
        )
        error.headers = {"Retry-After": str(RETRY_AFTER_S)}
        return error

    # ---- types -----------------------------------------------------------------------------

    def _refresh_types(self) -> dict[str, CompiledType]:
        """Compile every type as shard 0 holds it (all shards hold the same)."""
        specs = self._one(0, "type_specs")
        with self._types_lock:
            for name, (version, spec) in specs.items():
                known = self._types.get(name)
                if known is None or known.version != version:
                    self._types[name] = self._compile(name, version, spec)
            for gone in set(self._types) - set(specs):
                del self._types[gone]
            return dict(self._types)

    def _compile(self, name: str, version: int, spec: dict) -> CompiledType:
        """A stored type version compiled here (its models resolved as a shard does)."""
        from livetwin.models.base import ModelRefs

        models = ModelRefs.configured(self.settings, self.data_dir).trusting_modules()
        parsed = TwinTypeSpec.model_validate({**spec, "name": name})
        return compile_type(parsed, version, resolve_model=models)

    def compiled_types(self) -> dict[str, CompiledType]:
        with self._types_lock:
            return dict(self._types)

    def compiled_type(self, name: str) -> CompiledType | None:
        """A type's current version (as this front end last read the types), or None."""
        return self.compiled_types().get(name)

    def _current_type(self, name: str) -> CompiledType:
        """A type's current version, read again from shard 0 when this front end does not know
        it yet (declared through another front end); NotFound with the fix when there is none."""
        ctype = self.compiled_type(name)
        if ctype is None:
            self.get_type(name)  # NotFound with the fix
            ctype = self._refresh_types()[name]
        return ctype

    def compiled_version(self, name: str, version: int) -> CompiledType:
        """A type version: the current one, or shard 0's stored spec compiled here (cached;
        NotFound when there is none)."""
        current = self.compiled_type(name)
        if current is not None and current.version == version:
            return current
        key = (name, version)
        if key not in self._versions:
            stored = self._one(0, "read", "get_type", name, version)["spec"]
            self._versions[key] = self._compile(name, version, stored)
        return self._versions[key]

    def type_of(self, twin_id: str) -> CompiledType:
        """The compiled type of a twin, as its shard says (NotFound when there is no such
        twin)."""
        twin = self.twin(twin_id)
        return self.compiled_version(twin["type"], twin["version"])

    def put_type(self, name: str, spec: dict) -> dict:
        """Declare or change a type on every shard (each keeps the same versions); every front
        end's scheduler hears of it (`_type_defined`)."""
        answers = self._all("put_type", name, spec, timeout=self.write_timeout_s)
        self._refresh_types()
        self._type_defined(name)
        notice = Notice(TYPE_NOTICE, f"{name}@{answers[0]['version']}", {"type": name})
        self._announce(notice)  # the other front ends hear it through shard 0's feed
        return answers[0]

    def _type_defined(self, name: str) -> None:
        """Tell this front end's scheduler (system schedules) of a type's current version."""
        ctype = self.compiled_types().get(name)
        if ctype is not None:
            self.feed.bus.publish(TypeDefined(0, ctype))

    def get_type(self, name: str, version: int | None = None) -> dict:
        return self._one(0, "read", "get_type", name, version)

    def list_types(self) -> list[dict]:
        """Types with their twin counts summed over the shards."""
        merged: dict[str, dict] = {}
        for answer in self._all("read", "list_types").values():
            for item in answer:
                if item["name"] in merged:
                    merged[item["name"]]["twins"] += item["twins"]
                else:
                    merged[item["name"]] = item
        return [merged[name] for name in sorted(merged)]

    def stale_after(self, type_name: str) -> tuple[int | None, str | None]:
        ctype = self.compiled_types().get(type_name)
        declared = ctype.spec.stale_after if ctype is not None else None
        if declared is not None:
            return parse_duration(declared), "type"
        return None, None  # observed gaps are a single-node estimate

    def truth(
        self, type_name: str, compile_for: Any, twins: list[str] | None = None
    ) -> tuple[list[str], np.ndarray] | None:
        """Whether a condition trigger's expression holds now (the scheduler's read): checked
        here for the type's current version, then evaluated by the shards of `twins` (all
        shards when None) on their own twins, merged in shard order."""
        ctype = self.compiled_types().get(type_name) or self._refresh_types().get(type_name)
        if ctype is None:
            return None
        source = compile_for(ctype).source
        if twins is None:
            calls = {i: ("truth", type_name, source, None) for i in range(self.shards.count)}
        else:
            calls = {
                i: ("truth", type_name, source, ids) for i, ids in self.by_shard(twins).items()
            }
        answers = [a for _, a in sorted(self._some(calls).items()) if a is not None]
        ids = [twin for found, _ in answers for twin in found]
        held = [truth for _, truth in answers]
        return ids, np.concatenate(held) if held else np.zeros(0, dtype=bool)

    def layout(self, name: str, version: int) -> tuple[tuple[str, ...], frozenset[str]]:
        """The column names of a type version and which are derived (for the live stream)."""
        ctype = self.compiled_version(name, version)
        return ctype.columns, frozenset(ctype.derived_order)

    def type_namespace(self, name: str) -> str:
        return self.get_type(name)["spec"].get("namespace") or DEFAULT_NAMESPACE

    # ---- ingest ----------------------------------------------------------------------------

    def ingest(self, observations: Any, *, atomic: bool = False) -> ClusterIngestResult:
        """`submit`, waited for (the built-in jobs write their results through it)."""
        return self.submit(observations, atomic=atomic).result()

    def submit(self, observations: Any, *, atomic: bool = False) -> Future:
        """Check a batch, split it by shard and send the parts at once: a future of the
        `ClusterIngestResult`, answered when every shard involved has committed (or failed)."""
        normalized = self._normalize(observations)
        return self.submit_normalized(normalized, atomic=atomic)

    def _normalize(self, observations: Any) -> Normalized:
        def check(types):
            return normalize(
                observations,
                types,
                now_ms=self.clock(),
                max_future_ms=self.settings.max_future_ms,
            )

        normalized = check(self.compiled_types())
        if any(r.field == "type" for r in normalized.rejected):  # declared by another front end?
            normalized = check(self._refresh_types())
        return self._parents_on_their_shards(normalized)

    def _parents_on_their_shards(self, normalized: Normalized) -> Normalized:
        """Reject the rows whose parent lives on another shard (the twin's shard could only
        say the parent does not exist), naming the placement that keeps them together."""
        batches = []
        for batch, index in normalized.batches:
            if batch.parents is None:
                batches.append((batch, index))
                continue
            keep = np.ones(len(batch), dtype=bool)
            for row, (twin, parent) in enumerate(zip(batch.twins, batch.parents, strict=True)):
                problem = parent is not None and self._parent_problem(twin, parent)
                if problem:
                    keep[row] = False
                    normalized.rejected.append(Rejection(int(index[row]), "parent", *problem))
            rows = np.flatnonzero(keep)
            if len(rows) == len(batch):
                batches.append((batch, index))
            elif len(rows):
                batches.append((batch.take(rows), index[rows]))
        normalized.batches = batches
        normalized.rejected.sort(key=lambda r: r.index)
        return normalized

    def _parent_problem(self, twin: str, parent: str) -> tuple[str, str] | None:
        """(error, fix) when `parent` lives on another shard than `twin`, else None."""
        parent_shard, twin_shard = shards_of([parent, twin], self.shards.count, self.meta.placement)
        if parent_shard == twin_shard:
            return None
        root = placement_key(parent, "root")
        fix = (
            f"name the child under its parent's first segment ('{root}/...'): a tree shares "
            "a shard in a cluster placed by root"
            if self.meta.placement == "root"
            else "create the cluster with --placement root and name children under their "
            "root's id (home-1/kitchen under home-1): docs/cluster.md, Placement"
        )
        error = (
            f"parent '{parent}' lives on shard {parent_shard} and '{twin}' on shard "
            f"{twin_shard}: a parent and its children must share a shard"
        )
        return error, fix

    def _check_parent(self, twin_id: str, options: dict) -> None:
        parent = options.get("parent")
        problem = isinstance(parent, str) and self._parent_problem(twin_id, parent)
        if problem:
            raise InvalidInput(problem[0], field="parent", fix=problem[1])

    def submit_normalized(self, normalized: Normalized, *, atomic: bool = False) -> Future:
        parts = self.split(normalized)
        if atomic and len(parts) > 1:
            raise LivetwinError(
                f"atomic=true needs every row on one shard; these rows fall on shards "
                f"{', '.join(map(str, sorted(parts)))}",
                field="atomic",
                fix="send atomic batches of twins of one shard, or send without atomic=true "
                "(each row is then stored or refused on its own, with idempotency keys)",
            )
        result = ClusterIngestResult(rejected=list(normalized.rejected))
        if (atomic and normalized.rejected) or not parts:
            return done(result)
        calls = {}
        for index, part in parts.items():
            if self._state[index] != LIVE:
                self._refuse_rows(result, index, part)
            else:
                calls[index] = self._senders[index].send(encode_part(part), atomic)
        out: Future = Future()
        if not calls:
            out.set_result(result)
            return out
        waiting = [len(calls)]
        lock = threading.Lock()

        def landed(index: int, future: Future) -> None:
            error = future.exception()
            with lock:
                if error is None:
                    answer = future.result()
                    result.accepted += answer["accepted"]
                    result.duplicates += answer["duplicates"]
                    result.rejected.extend(Rejection(**r) for r in answer["rejected"])
                elif isinstance(error, LivetwinError) and not isinstance(error, Unavailable):
                    result.rejected.extend(
                        Rejection(i, error.field, error.message, error.fix)
                        for i in _rows(parts[index])
                    )
                else:
                    self._refuse_rows(result, index, parts[index])
                waiting[0] -= 1
                if waiting[0]:
                    return
            out.set_result(result)

        for index, future in calls.items():
            future.add_done_callback(partial(landed, index))
        return out

    def _refuse_rows(self, result: ClusterIngestResult, index: int, part: Normalized) -> None:
        state = self._state[index] if self._state[index] != LIVE else RECOVERING
        result.unavailable.extend({"index": i, "shard": index, "state": state} for i in _rows(part))

    def split(self, normalized: Normalized) -> dict[int, Normalized]:
        """The checked batches of each shard (rows keep their request index)."""
        parts: dict[int, Normalized] = {}
        count = self.shards.count
        for batch, index in normalized.batches:
            owners = np.asarray(shards_of(batch.twins, count, self.meta.placement), np.int64)
            order = np.argsort(owners, kind="stable")
            cuts = np.flatnonzero(np.diff(owners[order])) + 1
            for rows in np.split(order, cuts):
                if len(rows):
                    shard = int(owners[rows[0]])
                    part = parts.setdefault(shard, Normalized())
                    part.batches.append((batch.take(rows), index[rows]))
        return parts

    def start_mqtt(self, connection: Any) -> None:
        """MQTT ingest through this front end: its subscriptions live in shard 0's store; with
        the connection's share group, several front ends split each topic; device topics are
        checked against the cluster's device credentials. And device commands: the single
        node's `CommandService` over the cluster's `<cluster>_commands` schema (shared by the
        front ends), hearing reported values on the merged feed."""
        from livetwin.actions.commands import CommandService
        from livetwin.ingest.mqtt import MqttBridge

        self.mqtt = MqttBridge(
            connection,
            ingest=_WholeBatches(self),
            extractor=self.extractors.get,
            configs=_ShardConfigs(self, 0),
            clock=self.clock,
            device_twins=self.devices.owner,
        ).start()
        self.commands = CommandService(
            connection, clock=self.clock, bus=self.feed.bus, reader=self, open_db=self.open_db
        ).start()
        self.feed.follow()  # reported values mark desired values reached

    def submit_extracted(self, extractor: str, payload: Any, *, atomic: bool = False) -> Future:
        """A device payload mapped by the named extractor, then ingested like `submit`."""
        spec = self.extractors.get(extractor)
        return submit_extracted(spec, payload, self.submit, atomic=atomic)

    def put_extractor(self, name: str, spec: Any) -> dict:
        return self.extractors.put(name, spec)

    def extractor(self, name: str) -> ExtractorSpec:
        return self.extractors.get(name)

    def extractor_namespace(self, name: str) -> str:
        return self.extractors.namespace(name)

    def list_extractors(self) -> list[dict]:
        return self.extractors.list()

    def delete_extractor(self, name: str) -> dict:
        return self.extractors.delete(name)

    # ---- files -----------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """This front end's data directory (uploads are staged under its tmp/)."""
        return Path(self.data_dir)

    def import_file(self, path: str | Path, mapping: Any, *, filename=None, progress=None):
        """Import a file under a mapping (`Platform.import_file`) through this front end's
        ingest: every batch split by shard; a batch a recovering shard could not take stops
        the import with 503 (import it again: rows stored already count as duplicates)."""
        from livetwin.ingest.files.importer import import_file

        return import_file(
            path,
            self.mappings.resolve(mapping),
            ingest=self,
            types=self.compiled_types,
            clock=self.clock,
            max_future_ms=self.settings.max_future_ms,
            filename=filename,
            progress=progress,
        )

    def export(self, type_name: str, out: Any, *, start=None, end=None, names=None) -> dict:
        """A type's history within [start, end) as Parquet (`Platform.export`): each shard's
        twins in turn, read a page of about EXPORT_PAGE_ROWS rows at a time."""
        from livetwin.ingest.files.export import export_range, write_parquet

        ctype = self._current_type(type_name)
        names, start_ms, end_ms = export_range(ctype, start, end, names)
        twins = 0

        def batches():
            import pyarrow as pa

            nonlocal twins
            for shard in range(self.shards.count):
                offset: int | None = 0
                while offset is not None:
                    page, offset, total = self._one(
                        shard, "export_twins", type_name, names, start_ms, end_ms, offset,
                        EXPORT_PAGE_ROWS,
                    )  # fmt: skip
                    twins += total if offset is None else 0
                    yield from pa.ipc.open_stream(page)

        rows = write_parquet(out, names, batches())
        return {"type": type_name, "twins": twins, "rows": rows, "names": names}

    # ---- reads -----------------------------------------------------------------------------

    def shard(self, twin_id: str) -> int:
        return shards_of([twin_id], self.shards.count, self.meta.placement)[0]

    def by_shard(self, twin_ids: list[str]) -> dict[int, list[str]]:
        """The twins of each shard, in shard order (each in the order given)."""
        parts: dict[int, list[str]] = {}
        placed = shards_of(twin_ids, self.shards.count, self.meta.placement)
        for twin, shard in zip(twin_ids, placed, strict=True):
            parts.setdefault(shard, []).append(twin)
        return dict(sorted(parts.items()))

    def type_rows(self, type_name: str, names_of: Any, twins: list[str] | None = None):
        """`Query.type_rows` over the shards: (the type compiled here, twin ids, uids, last
        observation times, {name: current values} of `names_of(type)`) for all its twins (shard
        by shard) or those of `twins` in that order. Uids are each shard's own: -1 here."""
        ctype = self._current_type(type_name)
        names = list(names_of(ctype))
        parts = (
            {i: None for i in range(self.shards.count)}
            if twins is None
            else self.by_shard(list(twins))
        )
        calls = {i: ("type_values", type_name, names, ids) for i, ids in parts.items()}
        found = self._some(calls) if calls else {}
        answers = [found[i] for i in sorted(found)]
        ids = [twin for found, _, _ in answers for twin in found]
        order = np.arange(len(ids)) if twins is None else _positions(ids, list(twins))
        last = np.concatenate([a[1] for a in answers] or [np.zeros(0, np.int64)])[order]
        current = {
            n: np.concatenate([a[2][n] for a in answers] or [np.zeros(0)])[order] for n in names
        }
        return ctype, [ids[k] for k in order], np.full(len(ids), -1), last, current

    def twin_types(self, twin_ids: list[str]) -> dict[str, str | None]:
        """The type name of each twin, in the order given (None: no such twin), asked of the
        twins' shards at once."""
        calls = {i: ("read", "twin_types", ids) for i, ids in self.by_shard(twin_ids).items()}
        found = {t: name for answer in self._some(calls).values() for t, name in answer.items()}
        return {twin: found[twin] for twin in twin_ids}

    def twin(self, twin_id: str) -> dict:
        return self._one(self.shard(twin_id), "read", "twin", twin_id)

    def history(self, twin_id: str, names=None, **window: Any) -> dict:
        return self._one(self.shard(twin_id), "read", "history", twin_id, names, **window)

    def observations(self, twin_id: str, *, limit: int = 50, before: Any = None) -> list[dict]:
        return self._one(
            self.shard(twin_id), "read", "observations", twin_id, limit=limit, before=before
        )

    def twins(self, *, limit: int = 100, offset: int = 0, **filters: Any) -> dict:
        """Twins matching the filters, paged over the shards in shard order (creation order
        within a shard and type): one count round, then one read of the shards the page
        covers."""
        if not 1 <= limit <= 1000:
            raise InvalidInput(
                "limit must be between 1 and 1000", field="limit", fix="page with limit and offset"
            )
        if offset < 0:
            raise InvalidInput("offset must not be negative", field="offset", fix="use 0 or more")
        counts = self._all("read", "twins", **filters, limit=1, offset=0)
        total = sum(c["total"] for c in counts.values())
        wanted, start = {}, 0
        for index in range(self.shards.count):
            n = counts[index]["total"]
            lo, hi = max(offset - start, 0), min(offset + limit - start, n)
            if lo < hi:
                wanted[index] = (lo, hi - lo)
            start += n
        calls = {
            i: self.shards.call(i, "read", "twins", **filters, limit=n, offset=lo)
            for i, (lo, n) in wanted.items()
        }
        answers, failures = self._gather(calls, self.read_timeout_s)
        if failures:
            raise self._refusal(*sorted(failures))
        items = [item for i in sorted(answers) for item in answers[i]["items"]]
        return {"items": items, "total": total, "offset": offset, "limit": limit}

    def aggregate(
        self,
        type_name: str,
        names: list[str] | None = None,
        aggs: list[str] | None = None,
        *,
        where: str | None = None,
        parent: str | None = None,
    ) -> dict:
        """Fleet totals merged over the shards: sums, counts, minima and maxima of theirs, an
        average as the sum over the count."""
        wanted = list(aggs or AGGREGATE_FUNCTIONS)
        asked = list(dict.fromkeys([*wanted, "sum", "count"]))  # what an average needs
        answers = self._all(
            "read", "aggregate", type_name, names, asked, where=where, parent=parent
        )
        parts = [answers[i] for i in sorted(answers)]
        merged = {}
        for name in parts[0]["values"]:
            got = {agg: [p["values"][name][agg] for p in parts] for agg in asked}
            present = {agg: [v for v in vs if v is not None] for agg, vs in got.items()}
            count = sum(present["count"])
            total = sum(present["sum"]) if present["sum"] else None
            found = {
                "sum": total,
                "count": count,
                "min": min(present["min"]) if present.get("min") else None,
                "max": max(present["max"]) if present.get("max") else None,
                "avg": total / count if count and total is not None else None,
            }
            merged[name] = {agg: found[agg] for agg in wanted}
        return {"type": type_name, "twins": sum(p["twins"] for p in parts), "values": merged}

    # ---- twin lifecycle (journaled by the twin's shard) -----------------------------------

    def create_twin(self, twin_id: str, type_name: str, **options: Any) -> dict:
        self._check_parent(twin_id, options)
        return self._one(
            self.shard(twin_id), "change", "create_twin", twin_id, type_name, **options
        )

    def update_twin(self, twin_id: str, **options: Any) -> dict:
        self._check_parent(twin_id, options)
        return self._one(self.shard(twin_id), "change", "update_twin", twin_id, **options)

    def delete_twin(self, twin_id: str, **options: Any) -> dict:
        return self._one(self.shard(twin_id), "change", "delete_twin", twin_id, **options)

    def delete_twins(self, twin_ids: list[str], *, purge: bool = False) -> list[dict]:
        """`delete_twin` for several twins, on their shards at once."""
        calls = {i: ("change", "delete_twins", ids) for i, ids in self.by_shard(twin_ids).items()}
        answers = self._some(calls, timeout=self.write_timeout_s, purge=purge)
        return [result for i in sorted(answers) for result in answers[i]]

    def export_namespace(self, namespace: str) -> dict:
        """Everything a namespace owns, over the shards (`livetwin.tenant`)."""
        from livetwin import tenant

        return tenant.export_namespace(self, namespace)

    def delete_namespace(
        self, namespace: str, *, confirm: str | None = None, purge: bool = False
    ) -> dict:
        """Remove what a namespace owns, over the shards (`livetwin.tenant`)."""
        from livetwin import tenant

        return tenant.delete_namespace(self, namespace, confirm=confirm, purge=purge)

    def delete_type(self, name: str, *, cascade: bool = False, purge: bool = False) -> dict:
        """Delete a type on every shard; without `cascade`, refused (409) before any shard
        changes while some shard holds twins of it."""
        if not cascade:
            counts = {t["name"]: t["twins"] for t in self.list_types()}
            if counts.get(name):
                raise Conflict(
                    f"type '{name}' has {counts[name]} twins",
                    field="name",
                    fix="delete them first, or send cascade=true to delete them too",
                )
        answers = self._all("change", "delete_type", name, cascade=cascade, purge=purge)
        self._refresh_types()
        merged = dict(answers[0])
        merged["removed"] = [t for i in sorted(answers) for t in answers[i].get("removed", ())]
        merged.pop("seq", None)  # each shard has its own journal
        return merged

    # ---- heavy jobs ------------------------------------------------------------------------

    def fan_out(
        self,
        calls: dict[int, tuple],
        *,
        job: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        timeout: float = HEAVY_TIMEOUT_S,
    ) -> dict[int, Any]:
        """Run a heavy job's parts on their shards, all at once (`{shard: (method, *args)}`; Ray
        runs a part again on the restarted shard when its node is lost). With `job` (the id the
        shards track the parts by, `Shard._job`), their summed progress goes to
        `progress(done, total)` and `cancelled()` is passed on while they run. Every shard's
        answer; a shard's own error as is, 503 naming the shards that failed."""
        down = [i for i in calls if self._state[i] != LIVE]
        if down:
            raise self._refusal(*down)
        futures = {i: self.shards.call(i, *call) for i, call in calls.items()}
        deadline = time.monotonic() + timeout
        parts: dict[int, tuple[int, int]] = {}  # each shard's last (done, total)
        while time.monotonic() < deadline and not all(f.done() for f in futures.values()):
            wait(futures.values(), timeout=POLL_S)
            if job is not None:
                self._follow(job, futures, parts, progress, cancelled)
        answers, failures = self._gather(futures, timeout=0)
        for error in failures.values():
            if isinstance(error, LivetwinError) and not isinstance(error, Unavailable):
                raise error
        if failures:
            raise self._refusal(*sorted(failures))
        return answers

    def _follow(self, job, futures, parts, progress, cancelled) -> None:
        """One look at a heavy job's running parts: pass a cancel on, sum their progress."""
        running = [i for i, f in futures.items() if not f.done()]
        if cancelled is not None and cancelled():
            for i in running:
                self.shards.call(i, "cancel_job", job, retry=False).add_done_callback(_quiet)
        if progress is None:
            return
        asked = {i: self.shards.call(i, "job_progress", job, retry=False) for i in running}
        wait(asked.values(), timeout=POLL_S)
        for i, answer in asked.items():
            if answer.done() and answer.exception() is None and answer.result() is not None:
                parts[i] = answer.result()
        for i, future in futures.items():
            if i in parts and future.done() and future.exception() is None:  # finished
                parts[i] = (parts[i][1], parts[i][1])
        if parts:
            progress(sum(d for d, _ in parts.values()), sum(t for _, t in parts.values()))

    def calibrate(self, type_name: str, twins: list[str] | None = None, *, run=None) -> dict:
        """Calibrate a type shard by shard, all shards at once (each runs the batched filter
        over its own twins); one run record summed over the shards, with each shard's."""
        from livetwin.jobs.calibration import new_run_id

        run = run or new_run_id("calibrate")
        chosen = (
            self.by_shard(twins) if twins is not None else dict.fromkeys(range(self.shards.count))
        )
        calls = {i: ("calibrate", type_name, ids, run) for i, ids in chosen.items()}
        answers = self.fan_out(calls, timeout=3600)
        records = [answers[i] for i in sorted(answers)]
        merged = dict(max(records, key=lambda r: r.get("twins") or 0))
        for key in ("twins", "calibrated"):
            merged[key] = sum(r.get(key) or 0 for r in records)
        merged["steps"] = max(r.get("steps") or 0 for r in records)
        statuses = {r.get("status") for r in records if r.get("twins")} or {"no-data"}
        merged["status"] = statuses.pop() if len(statuses) == 1 else "partial"
        for key in ("failed", "skipped"):
            merged[key] = {k: v for r in records for k, v in (r.get(key) or {}).items()}
        merged["run"] = run
        merged["shards"] = {i: answers[i] for i in sorted(answers)}
        return merged

    def calibration(self, twin_id: str) -> dict:
        return self._one(self.shard(twin_id), "calibration", twin_id)

    def apply_retention(self, type_name: str, now: int) -> dict:
        """A type's retention (rollups, deletes) applied by every shard to its own twins' history
        at once; the shards' counts summed, each shard's result under `shards`."""
        calls = {i: ("compact", type_name, now) for i in range(self.shards.count)}
        return summed(self.fan_out(calls))

    def compact_journal(self, now: int) -> dict:
        """Every shard's journal compacted per this front end's `journal_retention` (the
        leader's setting is the cluster's); summed, each shard's under `shards`."""
        from livetwin.jobs.retention import journal_retention_ms

        keep = journal_retention_ms(self.settings.journal_retention)
        if keep is None:
            return {"journal_retention": None}
        calls = {i: ("compact_journal", keep, now) for i in range(self.shards.count)}
        answers = self.fan_out(calls)  # each shard's cut: {upto, deleted, base_seq}
        return {
            "deleted": sum(a["deleted"] for a in answers.values()),
            "shards": {str(i): answers[i] for i in sorted(answers)},
        }

    def calibration_runs(self, type_name: str, limit: int = 20) -> list[dict]:
        """Every shard's recent runs of a type (its part of each cluster run), newest first."""
        runs = [
            r for answer in self._all("calibration_runs", type_name, limit).values() for r in answer
        ]
        runs.sort(key=lambda r: str(r.get("started")), reverse=True)
        return runs[:limit]

    # ---- the cluster -----------------------------------------------------------------------

    def cluster(self) -> dict:
        """The shards: state (live, recovering, lost), where each runs, its lag and twins."""
        calls = {
            i: self.shards.call(i, "info")
            for i in range(self.shards.count)
            if self._state[i] == LIVE
        }
        answers, _ = self._gather(calls, timeout=2.0)
        now = time.monotonic()
        shards = []
        for index in range(self.shards.count):
            info = answers.get(index, {})
            shards.append(
                {
                    "shard": index,
                    "state": self._state[index],
                    "since_s": round(now - self._since[index], 1),
                    "node": info.get("node"),
                    "host": info.get("host"),
                    "pid": info.get("pid"),
                    "twins": info.get("twins"),
                    "lag": info.get("lag"),
                    "last_seq": info.get("last_seq"),
                    "snapshot_seq": info.get("snapshot_seq"),
                }
            )
        return {
            "cluster": True,
            **self.meta.to_dict(),
            "live": sum(s["state"] == LIVE for s in shards),
            "twins": sum(s["twins"] or 0 for s in shards),
            "shard_list": shards,
        }


def _rows(part: Normalized) -> list[int]:
    return sorted(int(i) for _, index in part.batches for i in index)


def _positions(found: list[str], wanted: list[str]) -> np.ndarray:
    """Where each of `wanted` is in `found` (an index array that puts `found` in that order)."""
    at = {twin: k for k, twin in enumerate(found)}
    return np.array([at[twin] for twin in wanted], dtype=np.int64)


def summed(answers: dict[int, dict]) -> dict:
    """The shards' results of a job whose numbers are counts as one: the counts added up (in
    nested objects too), other values the first shard's; each shard's own under `shards`."""

    def add(parts: list) -> Any:
        if all(isinstance(p, dict) for p in parts):
            return {k: add([p[k] for p in parts if k in p]) for k in dict.fromkeys(
                k for p in parts for k in p)}  # fmt: skip
        numbers = all(isinstance(p, int | float) and not isinstance(p, bool) for p in parts)
        return sum(parts) if numbers else parts[0]

    ordered = [answers[i] for i in sorted(answers)]
    return {**add(ordered), "shards": {str(i): answers[i] for i in sorted(answers)}}


def _quiet(call: Future) -> None:
    """A call whose answer does not matter (a cancel passed on): its failure is not raised."""
    call.exception()


def _log_failure(call: Future) -> None:
    if call.exception() is not None:
        log.warning("a notice did not reach shard 0: %r", call.exception())


class _ShardConfigs:
    """The extractor and config tables of one shard's store, as `Extractors` and the MQTT
    bridge (its subscriptions) use them."""

    def __init__(self, frontend: ClusterFrontend, index: int):
        self.frontend, self.index = frontend, index

    def put_extractor(self, name: str, body: str, at: int) -> None:
        self.frontend._one(self.index, "config", "put_extractor", name, body, at)

    def extractors(self) -> dict[str, str]:
        return self.frontend._one(self.index, "config", "extractors")

    def delete_extractor(self, name: str) -> None:
        self.frontend._one(self.index, "config", "delete_extractor", name)

    def configs(self, kind: str) -> dict[str, str]:
        return self.frontend._one(self.index, "config", "configs", kind)

    def put_config(self, kind: str, name: str, spec: str, at: int) -> None:
        self.frontend._one(self.index, "config", "put_config", kind, name, spec, at)

    def delete_config(self, kind: str, name: str) -> bool:
        return self.frontend._one(self.index, "config", "delete_config", kind, name)


class _WholeBatches:
    """The ingest port of the MQTT bridge: a batch some of whose rows a shard could not take
    fails as a whole, so the bridge leaves its messages unacknowledged and the broker sends them
    again (rows stored meanwhile come back as duplicates when they carry keys)."""

    def __init__(self, frontend: ClusterFrontend):
        self.frontend = frontend

    def submit(self, observations: Any, *, atomic: bool = False) -> Future:
        out: Future = Future()

        def landed(future: Future) -> None:
            error = future.exception()
            if error is None and future.result().unavailable:
                shards = sorted({r["shard"] for r in future.result().unavailable})
                error = self.frontend._refusal(*shards)
            if error is not None:
                out.set_exception(error)
            else:
                out.set_result(future.result())

        self.frontend.submit(observations, atomic=atomic).add_done_callback(landed)
        return out
