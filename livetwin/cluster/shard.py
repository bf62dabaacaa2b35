"""One shard: a twin core on its own PostgreSQL schema, the body of a restartable Ray actor.

`Shard` is plain Python (the tests drive it in-process); `start_shards` runs one `Shard` per
shard as a named, detached Ray actor that Ray restarts (`max_restarts=-1`) wherever there is
room when its node is lost. A (re)started shard loads its newest snapshot and replays its
journal tail (`TwinCore`), so it holds exactly what was acknowledged.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from livetwin.api.stream import Cursor, LiveFeed
from livetwin.backtest.service import BacktestService, EmptySelection
from livetwin.core import TwinCore
from livetwin.engine.batch import decode_batch, encode_batch
from livetwin.errors import LivetwinError, Unavailable
from livetwin.ingest.observations import Normalized
from livetwin.query import Query
from livetwin.settings import Settings
from livetwin.spec.types import stored_spec

NAMESPACE = "livetwin"  # the Ray namespace of shard actors
SHARD_RESOURCE = "livetwin_shard"  # nodes that offer it are the only ones to host shards
READ_RETRIES = 3  # a read is retried by Ray after a restart; ingest never is (see frontend)


@dataclass
class ShardJob:
    """A heavy job's part running on a shard: its progress (polled by the front end that asked
    for it) and whether that front end passed on a cancel."""

    done: int = 0
    total: int = 0
    cancelled: bool = False

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total


class Shard:
    """A `TwinCore` over the shard's schema with the reads a front end routes to it."""

    def __init__(
        self,
        index: int,
        url: str,
        services_url: str,
        settings: Settings | None = None,
        shards: int = 1,
    ):
        from livetwin.store.postgres import PostgresStore

        started = time.perf_counter()
        self.index, self.services_url, self.shards = index, services_url, shards
        self.settings = settings or Settings.from_env()  # the node's LIVETWIN_* variables
        self._scratch = tempfile.mkdtemp(prefix=f"livetwin-shard{index:02d}-")
        store = PostgresStore(url, max_connections=4)
        try:  # snapshots live in PostgreSQL too: local files are only a cache
            self.core = TwinCore(store, Path(self._scratch) / "snapshots", settings=self.settings)
        except BaseException:
            store.close()
            raise
        self.query = Query(self.core)
        self.feed = LiveFeed(self.core.bus, last_seq=self.core.recovered["last_seq"])
        self.alarms = self._start_alarms(url)
        self.webhooks = self._start_webhooks(url) if self.settings.webhooks else None
        self.mailer = self._start_mailer()
        self._calibration_ports = None
        self._conditions: dict[tuple, Any] = {}  # condition triggers compiled (`truth`)
        self._calibration_lock = threading.Lock()
        self._jobs: dict[str, ShardJob] = {}  # heavy jobs running here, by the front end's id
        self._backtest_service = None  # made on first use
        self.started_s = round(time.perf_counter() - started, 3)

    def _start_alarms(self, url: str):
        """The shard's alarm service: its twins' rules, its alarms in `<shard schema>_alarms`."""
        from functools import partial

        from livetwin.actions.alarms import AlarmService
        from livetwin.cluster.meta import cluster_alarm_id
        from livetwin.store.servicedb import open_service_db

        try:
            return AlarmService(
                clock=self.core.clock,
                bus=self.core.bus,
                reader=self.query,
                open_db=partial(open_service_db, self._scratch, database_url=url),
                tick_s=self.settings.alarm_tick_s,
                public_id=partial(cluster_alarm_id, shard=self.index, shards=self.shards),
            ).start()
        except BaseException:
            self.core.close()
            raise

    def _start_webhooks(self, url: str):
        """The shard's webhook service: the cluster's subscriptions (a front end puts each on
        every shard under one id) and the outbox of this shard's events in
        `<shard schema>_webhooks`, sent from here (under its sender lease) and caught up from
        this shard's journal after a restart, as on a single node."""
        from functools import partial

        from livetwin.actions.webhooks import WebhookService
        from livetwin.outbound import OutboundPolicy
        from livetwin.store.servicedb import open_service_db

        try:
            return WebhookService(
                clock=self.core.clock,
                bus=self.core.bus,
                reader=self.query,
                open_db=partial(open_service_db, self._scratch, database_url=url),
                outbound=OutboundPolicy(self.settings.outbound_allow or ()),
                database_url=url,
                source=f"s{self.index:02d}",  # delivery ids are unique over the shards
            ).start()
        except BaseException:
            self.alarms.stop()
            self.core.close()
            raise

    def _start_mailer(self):
        """Alarm e-mail of this shard's alarms when the node's LIVETWIN_SMTP_* settings name a
        server: each alarm is mailed once, by the shard that raised it."""
        from livetwin.actions.email import AlarmMailer, SmtpSettings

        try:
            smtp = SmtpSettings.from_env(self.settings.smtp or {})
            return AlarmMailer(smtp, bus=self.core.bus).start() if smtp else None
        except BaseException:
            if self.webhooks is not None:
                self.webhooks.stop()
            self.alarms.stop()
            self.core.close()
            raise

    def close(self) -> None:
        self.feed.close()
        for service in (self.alarms, self.mailer, self.webhooks):  # in order: alarms notify
            if service is not None:
                service.stop()
        self.core.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    # ---- state -----------------------------------------------------------------------------

    def info(self) -> dict:
        """Where the shard runs and how far it is: node, pid, twins, seq, queued work."""
        ray = sys.modules.get("ray")  # loaded when this runs as an actor
        node = ray.get_runtime_context().get_node_id() if ray and ray.is_initialized() else None
        stats = self.core.stats()
        return {
            "shard": self.index,
            "host": socket.gethostname(),
            "node": node,
            "pid": os.getpid(),
            "twins": stats["twins"],
            "last_seq": stats["last_seq"],
            "snapshot_seq": stats["snapshot_seq"],
            "lag": self.core.writer.queue_depth,
            "recovered": self.core.recovered,
            "started_s": self.started_s,
        }

    def events(self, after: tuple[int, int] | None, limit: int = 100) -> tuple:
        """What became durable after the feed position `after` (None: from now on): (the new
        position, up to `limit` events: applied batches and notices, in order)."""
        if after is None:
            newest = self.feed.newest()
            return (newest.seq, newest.row), []
        items = self.feed.after(Cursor(*after))[0][:limit]
        last = items[-1].last if items else Cursor(*after)
        return (last.seq, last.row), [item.event for item in items]

    def truth(self, type_name: str, source: str, twins: list[str] | None) -> Any:
        """Whether a condition trigger's expression holds now for this shard's twins of a type
        (all, or those of `twins`): `Query.truth`, compiled here for the current version."""
        from livetwin.expr import compile_expression

        def compile_for(ctype: Any) -> Any:
            key = (type_name, ctype.version, source)
            if key not in self._conditions:
                self._conditions[key] = compile_expression(
                    source, ctype.column_index(), allow_windows=False, field="trigger.when"
                )
            return self._conditions[key]

        return self.query.truth(type_name, compile_for, twins)

    # ---- types (put on every shard by the front end) ---------------------------------------

    def put_type(self, name: str, spec: dict) -> dict:
        return self.core.put_type(name, spec)

    def type_specs(self) -> dict[str, tuple[int, dict]]:
        """Every live type's (version, spec) by name: front ends compile them to check ingest."""
        return {
            name: (ctype.version, stored_spec(ctype.spec))
            for name, ctype in self.query.compiled_types().items()
        }

    def read(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One of the core's read views (`Query`): get_type, list_types, twin, twin_types,
        twins, history, observations, aggregate."""
        if method not in READS:
            raise ValueError(f"not a shard read: {method}")
        return getattr(self.query, method)(*args, **kwargs)

    def change(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One journaled lifecycle change of the core: create_twin, update_twin, delete_twin,
        delete_type."""
        if method not in CHANGES:
            raise ValueError(f"not a shard change: {method}")
        return getattr(self.core, method)(*args, **kwargs)

    def config(self, method: str, *args: Any) -> Any:
        """The store's extractor and config tables (shard 0 keeps the cluster's extractors and
        MQTT subscriptions): put_extractor, extractors, delete_extractor, configs, put_config,
        delete_config."""
        if method not in CONFIGS:
            raise ValueError(f"not a shard config call: {method}")
        return getattr(self.core.store, method)(*args)

    def type_values(
        self, type_name: str, names: list[str], twins: list[str] | None
    ) -> tuple[list[str], Any, dict]:
        """This shard's twins of a type (all, or `twins` in that order): ids, last observation
        times and the current values of `names` (`Query.type_rows` without the type)."""
        _, ids, _, last, current = self.query.type_rows(type_name, lambda _: names, twins)
        return ids, last, current

    def export_twins(
        self,
        type_name: str,
        names: list[str],
        start_ms: int,
        end_ms: int,
        offset: int,
        max_rows: int,
    ) -> tuple[bytes, int | None, int]:
        """A page of this shard's part of an export: the history of its twins of a type from the
        `offset`-th on, until about `max_rows` rows, as an Arrow IPC stream; the next offset
        (None: the last page) and how many twins of the type this shard holds."""
        import pyarrow as pa

        from livetwin.ingest.files.export import history_batches, schema_of

        _, twins, uids, _, _ = self.query.type_rows(type_name, lambda ct: [])
        sink, rows, at = pa.BufferOutputStream(), 0, offset
        with pa.ipc.new_stream(sink, schema_of(names)) as writer:
            while at < len(twins) and rows < max_rows:
                one = history_batches(
                    self.query, type_name, [twins[at]], [int(uids[at])], names, start_ms, end_ms
                )
                for batch in one:
                    writer.write_batch(batch)
                    rows += batch.num_rows
                at += 1
        return sink.getvalue().to_pybytes(), at if at < len(twins) else None, len(twins)

    def calibration(self, twin_id: str) -> dict:
        """A twin's calibrated parameters and virtual sensors with bands, and recent runs."""
        from livetwin.jobs.calibration import calibration_view

        return calibration_view(self.query, self.core.store, twin_id)

    def calibration_runs(self, type_name: str, limit: int) -> list[dict]:
        return self.core.store.calibration_runs(type_name, limit)

    def alarm(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One call of the shard's alarm service: list, counts, get, acknowledge, clear, comment."""
        if method not in ALARM_CALLS:
            raise ValueError(f"not a shard alarm call: {method}")
        return getattr(self.alarms, method)(*args, **kwargs)

    def announce(self, notice: Any) -> None:
        """A front end's notice (a run finished, a type declared), published on this shard's
        bus: its webhook service sends run notices to the cluster's subscriptions and its feed
        hands every notice to the other front ends."""
        self.core.bus.publish(notice)

    def webhook(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One call of the shard's webhook service: create, subscriptions, get, delete,
        deliveries, dead, redeliver."""
        if method not in WEBHOOK_CALLS:
            raise ValueError(f"not a shard webhook call: {method}")
        if self.webhooks is None:
            raise Unavailable(
                f"webhooks are off on shard {self.index} (its settings say webhooks=False)",
                field="webhooks",
                fix="start the shards with the default settings (webhooks on)",
            )
        return getattr(self.webhooks, method)(*args, **kwargs)

    # ---- ingest ----------------------------------------------------------------------------

    def ingest_parts(self, parts: list[bytes], atomic: list[bool]) -> list[dict]:
        """Journal (durably) and apply checked parts (`encode_part`), all handed to the writer
        at once (one group commit); each part's IngestResult, answered after the commit."""
        futures = [
            self.core.submit_normalized(decode_part(part), atomic=a)
            for part, a in zip(parts, atomic, strict=True)
        ]
        return [future.result().to_dict() for future in futures]

    # ---- heavy jobs ------------------------------------------------------------------------

    @contextmanager
    def _job(self, job: str | None) -> Iterator[ShardJob]:
        """Track a heavy job's part while it runs, under the id its front end polls it by."""
        part = ShardJob()
        if job is not None:
            self._jobs[job] = part
        try:
            yield part
        except Exception as exc:
            if not part.cancelled or isinstance(exc, LivetwinError):
                raise
            raise LivetwinError(
                f"{job} was cancelled", field="job", fix="start it again"
            ) from None  # a cancel is the user's, not the shard's failure
        finally:
            if job is not None and self._jobs.get(job) is part:
                del self._jobs[job]

    def job_progress(self, job: str) -> tuple[int, int] | None:
        """(done, total) of a heavy job's part running here, or None (not running)."""
        part = self._jobs.get(job)
        return None if part is None else (part.done, part.total)

    def cancel_job(self, job: str) -> bool:
        """Ask a heavy job's part running here to stop; whether it runs here."""
        part = self._jobs.get(job)
        if part is not None:
            part.cancelled = True
        return part is not None

    def scenario_check(self, request: Any, type_name: str, twins: list[str], total: int) -> None:
        """Every check a cluster scenario's run makes on this shard's twins of it (`total`: the
        scenario's twins, which its limits count): InvalidInput naming the field."""
        self._forecaster().fork(request, type_name, twins, total)

    def scenario(
        self, request: Any, type_name: str, twins: list[str], total: int, job: str
    ) -> tuple[dict, dict]:
        """Fork and forecast this shard's twins of a cluster scenario (their calibrated filter
        state and history are here) as the part `job` of its run; the front end merges the
        shards' summaries and series (`merge_forecasts`)."""
        with self._job(job) as part:
            return self._forecaster().forecast_twins(
                request, type_name, twins, total=total, progress=part.progress,
                cancelled=lambda: part.cancelled,
            )  # fmt: skip

    def _forecaster(self):
        from livetwin.jobs.scenario import Forecaster

        return Forecaster(self.query, self.core.store)

    def calibrate(self, type_name: str, twins: list[str] | None, run: str) -> dict:
        """Calibrate this shard's twins of a type (the batched filter over all of them) as the
        run `<run>-shard<NN>` (each shard records its own lineage node)."""
        from livetwin.jobs.calibration import calibrate

        with self._calibration_lock:
            return calibrate(self._ports(), type_name, twins, run=f"{run}-shard{self.index:02d}")

    def compact(self, type_name: str, now: int) -> dict:
        """A type's retention applied to this shard's history (`compact_type`)."""
        from livetwin.jobs.retention import compact_type

        return compact_type(self.query, type_name, now)

    def compact_journal(self, keep_ms: int, now: int) -> dict:
        """This shard's journal cut behind its newest snapshot, keeping `keep_ms`."""
        from livetwin.journal import compaction

        return compaction.compact(self.core, keep_ms, now)

    def backtest_plan(self, body: dict) -> dict | EmptySelection:
        """A back-test request checked against this shard's twins and journal: its args, or
        why this shard has nothing to replay (an error only when every shard says so)."""
        try:
            return self._backtests().plan(body).args
        except EmptySelection as nothing:
            return nothing

    def backtest(self, body: dict, job: str | None = None) -> dict | None:
        """This shard's part of a back-test (its twins, its journal), tracked as `job`: a
        report to merge (`livetwin.backtest.merge`), or None when none of its twins is in it."""
        service = self._backtests()
        with self._job(job) as part:
            try:
                plan = service.plan(body)
            except EmptySelection:
                return None
            return service.replay(
                plan, progress=part.progress, cancelled=lambda: part.cancelled, mergeable=True
            )

    def _backtests(self) -> BacktestService:
        """The single node's back-test service over this shard's core, keeping nothing (the
        front end keeps the merged report and its lineage)."""
        if self._backtest_service is None:
            from livetwin.jobs.backtest_calibration import backtest_calibration

            self._backtest_service = BacktestService(
                reader=self.query,
                core=self.core,
                archive=None,
                clock=self.core.clock,
                calibration=backtest_calibration,
            )
        return self._backtest_service

    def _ports(self):
        if self._calibration_ports is None:
            from functools import partial

            import psycopg

            from livetwin.jobs.ports import CalibrationPorts
            from livetwin.registry import LineageStore
            from livetwin.registry.store import RegistryStore
            from livetwin.store.servicedb import open_service_db

            open_db = partial(open_service_db, self._scratch, database_url=self.services_url)
            with psycopg.connect(self.services_url, autocommit=True) as conn:  # one shard at a
                conn.execute("SELECT pg_advisory_lock(hashtext('livetwin.services'))")  # time
                self._calibration_ports = CalibrationPorts(
                    clock=self.core.clock,
                    reader=self.query,
                    ingest=self.core,
                    store=self.core.store,
                    lineage=LineageStore(open_db, clock=self.core.clock),
                    models=RegistryStore(open_db),
                )
        return self._calibration_ports


def encode_part(part: Normalized) -> bytes:
    """A shard's share of a checked batch as bytes (cheap to send): each batch in the journal's
    wire form with the request index of its rows."""
    return _part_encoder.encode(
        [(encode_batch(b), np.ascontiguousarray(i, dtype="<i8").tobytes()) for b, i in part.batches]
    )


def decode_part(data: bytes) -> Normalized:
    return Normalized(
        batches=[
            (decode_batch(b), np.frombuffer(i, dtype="<i8").astype(np.int64))
            for b, i in _part_decoder.decode(data)
        ]
    )


_part_encoder = msgspec.msgpack.Encoder()
_part_decoder = msgspec.msgpack.Decoder(list[tuple[bytes, bytes]])

CONFIGS = frozenset(
    {"put_extractor", "extractors", "delete_extractor", "configs", "put_config", "delete_config"}
)
CHANGES = frozenset({"create_twin", "update_twin", "delete_twin", "delete_twins", "delete_type"})
ALARM_CALLS = frozenset({"list", "counts", "get", "acknowledge", "clear", "comment"})
WEBHOOK_CALLS = frozenset(
    {"create", "subscriptions", "get", "delete", "deliveries", "dead", "redeliver"}
)
READS = frozenset(
    {"get_type", "list_types", "twin", "twin_types", "twins", "history", "observations",
     "aggregate"}
)  # fmt: skip


def shard_name(cluster: str, index: int) -> str:
    """The Ray actor name of a shard."""
    return f"{cluster}-shard-{index:02d}"


def start_shards(meta, *, settings: Settings | None = None) -> list:
    """A handle on every shard actor of the cluster, creating those that do not run yet
    (named and detached: they outlive the front end that created them)."""
    import ray

    placement: dict[str, Any] = {"num_cpus": 0}
    if ray.cluster_resources().get(SHARD_RESOURCE):
        placement["resources"] = {SHARD_RESOURCE: 0.001}
    actor = ray.remote(Shard)
    handles = []
    for index, url in enumerate(meta.shard_urls):
        handles.append(
            actor.options(
                name=shard_name(meta.name, index),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                max_restarts=-1,
                max_task_retries=READ_RETRIES,
                max_concurrency=32,
                scheduling_strategy="SPREAD",
                **placement,
            ).remote(index, url, meta.services_url, settings, meta.shards)
        )
    return handles
