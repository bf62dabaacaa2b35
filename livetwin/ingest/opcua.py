"""OPC UA ingest: connectors that subscribe to data changes on OPC UA servers and feed them to
ingest, reconnecting with back-off. See docs/opcua.md.

`OpcuaConnectors` keeps named connector specs (`livetwin.ingest.opcua_spec`) in the twin
store's config records and runs their asyncua clients on one asyncio thread. asyncua (LGPL,
the `opcua` extra) is imported only once a connector exists.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from livetwin.errors import InvalidInput, LivetwinError, NotFound, Unavailable
from livetwin.ingest.mqtt import ConfigRecords, RejectionLog
from livetwin.ingest.opcua_spec import CONFIG_KIND, POLICIES, ConnectorSpec, parse_connector
from livetwin.outbound import OutboundDenied, OutboundPolicy
from livetwin.timefmt import format_ts

if TYPE_CHECKING:
    from livetwin.ports import Clock, Ingest

__all__ = ["ConnectorFailed", "OpcuaConnectors", "asyncua_available"]

log = logging.getLogger(__name__)

COUNTERS = ("values_received", "values_rejected", "observations_accepted", "dropped")
MAX_BROWSED = 10_000  # nodes a browse pattern may visit per level
MAX_QUEUE = 1000  # samples the server keeps per node between two publishes
MAX_BUFFERED = 200_000  # values waiting for ingest per connector; older ones are dropped
INSTALL_FIX = "pip install 'livetwin[opcua]' (asyncua, LGPL-3.0) and restart the server"
REACH_FIX = "check the endpoint's host and port, and that the OPC UA server runs and is reachable"


def asyncua_available() -> bool:
    try:
        import asyncua  # noqa: F401
    except ImportError:
        return False
    return True


class ConnectorFailed(Exception):
    """Why a connection attempt failed. `config`: retrying cannot help until the spec or the
    server's configuration changes (a PUT answers 422 for these)."""

    def __init__(self, message: str, *, field: str, fix: str, config: bool) -> None:
        super().__init__(message)
        self.message, self.field, self.fix, self.config = message, field, fix, config

    def to_dict(self) -> dict:
        return {"message": self.message, "field": self.field, "fix": self.fix}


class OpcuaConnectors:
    """Named OPC UA connectors: each subscribes to its nodes' data changes and submits them to
    `ingest` in batches every `flush_s`. Thread-safe; the clients run on one asyncio thread,
    started with the first connector."""

    def __init__(
        self,
        *,
        ingest: Ingest,
        configs: ConfigRecords,
        clock: Clock,
        outbound: OutboundPolicy,
        pki_dir: Path,
        flush_s: float = 0.1,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        timeout_s: float = 4.0,
    ) -> None:
        self.ingest, self.configs, self.clock, self.outbound = ingest, configs, clock, outbound
        self.pki_dir = pki_dir
        self.options = {"flush_s": flush_s, "backoff_s": backoff_s, "timeout_s": timeout_s}
        self._lock = threading.RLock()  # the connector tables
        self._changes = threading.Lock()  # one PUT or DELETE at a time
        self._running: dict[str, Connector] = {}
        self._broken: dict[str, dict] = {}  # stored specs that cannot run (shown in the list)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> OpcuaConnectors:
        """Run the stored connectors (in the background; a server that is down is retried)."""
        for name, text in sorted(self.configs.configs(CONFIG_KIND).items()):
            try:
                spec = parse_connector(name, orjson.loads(text), pki_dir=self.pki_dir)
                self._check_outbound(spec)
                self._launch(spec)
            except (LivetwinError, ValueError) as exc:
                log.error("OPC UA connector %r was not started: %s", name, exc)
                fix = getattr(exc, "fix", None) or f"replace it: PUT /api/opcua/connectors/{name}"
                self._broken[name] = _broken_view(name, text, str(exc), fix)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every connector (what it received is submitted first) and the thread."""
        with self._lock:
            running, self._running = list(self._running.values()), {}
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return

        async def stop_all() -> None:
            await asyncio.gather(*(c.stop() for c in running))
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # what closed clients left behind
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self._call(stop_all(), timeout, loop=loop)
        except FutureTimeout:
            log.warning("OPC UA connectors did not stop within %.0f s", timeout)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
        if not loop.is_running():
            loop.close()

    def __enter__(self) -> OpcuaConnectors:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- connectors -------------------------------------------------------------------------

    def connectors(self) -> list[dict]:
        """Every connector's spec (without its password) and status, by name."""
        with self._lock:
            views = {n: c.view() for n, c in self._running.items()}
            views.update({n: v for n, v in self._broken.items() if n not in views})
        return [views[n] for n in sorted(views)]

    def connector(self, name: str) -> dict:
        with self._lock:
            running, broken = self._running.get(name), self._broken.get(name)
        if running is None and broken is None:
            raise NotFound(
                f"no OPC UA connector '{name}'",
                field="name",
                fix=f"create it with PUT /api/opcua/connectors/{name}",
            )
        return running.view() if running is not None else broken

    def put_connector(self, name: str, body: Any) -> dict:
        """Validate, try it once, then persist and run it (replacing a same-named one).

        A first attempt that the server refuses for a reason retrying cannot fix (security
        policy, credentials, certificate, unknown node, no match) raises InvalidInput and
        changes nothing; a server that cannot be reached is stored and retried.
        """
        spec = parse_connector(name, body, pki_dir=self.pki_dir)
        self._check_outbound(spec)
        with self._changes:
            return self._replace(spec)

    def _replace(self, spec: ConnectorSpec) -> dict:
        name = spec.name
        with self._lock:
            old = self._running.pop(name, None)
        if old is not None:
            self._stop(old)
        connector = self._launch(spec, watermarks=old.watermarks if old else None)
        try:
            first = self._call(connector.first_attempt(), self.options["timeout_s"] * 4 + 5)
        except FutureTimeout:  # still trying (a slow server, a large browse): the status tells
            first = None
        if first is not None and first.config:
            with self._lock:
                self._running.pop(name, None)
            self._stop(connector)  # the refusal is the answer, even when it stops slowly
            if old is not None:
                self._launch(old.spec, watermarks=old.watermarks)
            raise InvalidInput(first.message, field=first.field, fix=first.fix)
        self.configs.put_config(
            CONFIG_KIND, name, orjson.dumps(spec.stored()).decode(), self.clock()
        )
        with self._lock:
            self._broken.pop(name, None)
        return connector.view()

    def delete_connector(self, name: str) -> None:
        with self._changes:
            with self._lock:
                running = self._running.pop(name, None)
                broken = self._broken.pop(name, None)
            if running is not None:
                self._stop(running)
            deleted = self.configs.delete_config(CONFIG_KIND, name)
        if running is None and broken is None and not deleted:
            raise NotFound(f"no OPC UA connector '{name}'", field="name", fix="list them first")

    def wait_connected(self, name: str, timeout: float = 10.0) -> bool:
        """Block until the connector is connected and subscribed (True) or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                running = self._running.get(name)
            if running is not None and running.status["connected"]:
                return True
            time.sleep(0.02)
        return False

    # ---- stats ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Connectors and how many are connected, with the counters summed over them."""
        views = self.connectors()
        totals = dict.fromkeys(COUNTERS, 0)
        for view in views:
            for key in COUNTERS:
                totals[key] += view["status"].get(key, 0)
        connected = sum(bool(v["status"]["connected"]) for v in views)
        return {"connectors": len(views), "connected": connected, **totals}

    # ---- internals --------------------------------------------------------------------------

    def _check_outbound(self, spec: ConnectorSpec) -> None:
        self.outbound.check_url(spec.endpoint, "endpoint", unresolved_ok=True, schemes=("opc.tcp",))

    def _launch(self, spec: ConnectorSpec, watermarks: dict | None = None) -> Connector:
        loop = self._ensure_loop()
        connector = Connector(
            spec,
            ingest=self.ingest,
            clock=self.clock,
            outbound=self.outbound,
            watermarks=watermarks,
            **self.options,
        )
        with self._lock:
            self._running[spec.name] = connector
        self._call(connector.start(), loop=loop)
        return connector

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None:
                return self._loop
            if not asyncua_available():
                raise Unavailable(
                    "OPC UA connectors need the asyncua library, which is not installed",
                    field="opcua",
                    fix=INSTALL_FIX,
                )
            asyncua_log = logging.getLogger("asyncua")
            if asyncua_log.level == logging.NOTSET:  # its reconnect tracebacks; status says why
                asyncua_log.setLevel(logging.CRITICAL)
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name="opcua-connectors", daemon=True
            )
            self._thread.start()
            self._loop = loop
            return loop

    def _stop(self, connector: Connector, timeout: float = 30.0) -> None:
        """Stop a connector already taken out of the running ones (what it received is
        submitted first). One that does not stop in time is logged and left cancelled on the
        loop (`stop()` ends what is left): a replacement, a refusal or a deletion goes on."""
        try:
            self._call(connector.stop(), timeout)
        except FutureTimeout:
            log.warning(
                "OPC UA connector '%s' did not stop within %.0f s", connector.spec.name, timeout
            )

    def _call(self, coro, timeout: float = 30.0, *, loop=None):
        """Run `coro` on the connectors' loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, loop or self._ensure_loop())
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise


def _broken_view(name: str, text: str, message: str, fix: str) -> dict:
    """A stored connector that cannot run: its name, endpoint and why."""
    try:
        endpoint = orjson.loads(text).get("endpoint")
    except (ValueError, AttributeError):
        endpoint = None
    status = {"connected": False, "last_error": message, "fix": fix}
    return {"name": name, "endpoint": str(endpoint or ""), "status": status}


class Connector:
    """One connector on the loop: a session task that connects, maps and subscribes, then
    waits for the connection to drop (and retries with exponential back-off), and a flush task
    that submits what arrived every `flush_s` as one ingest batch."""

    def __init__(
        self,
        spec: ConnectorSpec,
        *,
        ingest: Ingest,
        clock: Clock,
        outbound: OutboundPolicy,
        watermarks: dict | None,
        flush_s: float,
        backoff_s: tuple[float, float],
        timeout_s: float,
    ) -> None:
        self.spec, self.ingest, self.clock, self.outbound = spec, ingest, clock, outbound
        self.flush_s, self.backoff_s, self.timeout_s = flush_s, backoff_s, timeout_s
        # node id -> (source ts, value) last taken: a reconnect's initial values are not repeats
        self.watermarks: dict[str, tuple[int, Any]] = {} if watermarks is None else watermarks
        self.status: dict[str, Any] = {
            "connected": False,
            "nodes": 0,
            **dict.fromkeys(COUNTERS, 0),
            "connects": 0,
            "last_value_at": None,
            "last_error": None,
            "fix": None,
            "last_rejected": None,
        }
        self._rejections = RejectionLog(what=f"OPC UA connector {spec.name}")
        self._buffer: list[tuple[str, float, int]] = []  # (node id, value, ts ms)
        self._targets: dict[str, tuple[str, str, str]] = {}  # node id -> twin, property, type
        self._tasks: list[asyncio.Task] = []
        self._first: asyncio.Future | None = None

    def view(self) -> dict:
        status = dict(self.status)
        if status["last_value_at"] is not None:
            status["last_value_at"] = format_ts(status["last_value_at"])
        return {**self.spec.public(), "status": status}

    async def start(self) -> None:
        self._first = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._session(), name=f"opcua-{self.spec.name}"),
            asyncio.create_task(self._flushing(), name=f"opcua-{self.spec.name}-flush"),
        ]

    async def first_attempt(self) -> ConnectorFailed | None:
        """The first connection attempt's failure (None: it connected and subscribed)."""
        return await asyncio.shield(self._first)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush()  # what arrived before the stop still goes in
        self.status["connected"] = False

    # ---- session ----------------------------------------------------------------------------

    async def _session(self) -> None:
        delay = self.backoff_s[0]
        while True:
            client = None
            try:
                client = await self._connect()
                lost: asyncio.Future = asyncio.get_running_loop().create_future()
                client.connection_lost_callback = partial(_set_once, lost)
                await self._subscribe(client)
                self.status.update(connected=True, last_error=None, fix=None)
                self.status["connects"] += 1
                log.info(
                    "OPC UA connector %s subscribed to %d node(s)",
                    self.spec.name,
                    self.status["nodes"],
                )
                self._settle(None)
                delay = self.backoff_s[0]
                raise ConnectorFailed(
                    f"lost the connection to {self.spec.endpoint}: {_text(await lost)}",
                    field="endpoint",
                    fix=REACH_FIX,
                    config=False,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure becomes the status, then a retry
                failed = exc if isinstance(exc, ConnectorFailed) else self._explain(exc)
                self.status.update(connected=False, last_error=failed.message, fix=failed.fix)
                log.warning(
                    "OPC UA connector %s: %s (retrying in %.1f s)",
                    self.spec.name,
                    failed.message,
                    delay,
                    exc_info=not isinstance(exc, ConnectorFailed | OSError | TimeoutError),
                )
                self._settle(failed)
            finally:
                self.status["connected"] = False
                if client is not None:
                    await _quietly(client.disconnect())
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_s[1])

    def _settle(self, outcome: ConnectorFailed | None) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(outcome)

    async def _connect(self):
        from asyncua import Client, ua

        spec = self.spec
        try:  # checked again on every connect: DNS may now point inside the network
            self.outbound.check_url(spec.endpoint, "endpoint", schemes=("opc.tcp",))
        except OutboundDenied as exc:
            raise ConnectorFailed(exc.message, field="endpoint", fix=exc.fix, config=True) from None
        # the watchdog reads the server's state this often, allowing as long for the answer
        client = Client(spec.endpoint, timeout=self.timeout_s, watchdog_intervall=self.timeout_s)
        client.name = client.description = f"livetwin {spec.name}"
        endpoints = await asyncio.wait_for(
            client.connect_and_get_server_endpoints(), self.timeout_s
        )
        security = spec.body.security
        mode = getattr(ua.MessageSecurityMode, security.mode.replace("None", "None_"))
        uri = "http://opcfoundation.org/UA/SecurityPolicy#" + security.policy
        chosen = [e for e in endpoints if e.SecurityPolicyUri == uri and e.SecurityMode == mode]
        if not chosen:
            offered = sorted({_offer(e) for e in endpoints})
            raise ConnectorFailed(
                f"the server at {spec.endpoint} refuses security policy {security.policy} with "
                f"mode {security.mode}; it offers: {', '.join(offered) or 'nothing'}",
                field="security.policy",
                fix="set security.policy and security.mode to one the server offers (with the "
                "client certificate and key for any policy but None), or enable this one on "
                "the server",
                config=True,
            )
        self._check_identity(chosen[0], ua)
        if spec.certificate is not None:
            await self._secure(client, chosen[0])
        if spec.body.username is not None:
            client.set_user(spec.body.username)
            client.set_password(spec.body.password or "")
        await asyncio.wait_for(client.connect(), self.timeout_s * 2)
        return client

    def _check_identity(self, endpoint, ua) -> None:
        tokens = {t.TokenType for t in endpoint.UserIdentityTokens}
        if self.spec.body.username is None and ua.UserTokenType.Anonymous not in tokens:
            raise ConnectorFailed(
                f"the server at {self.spec.endpoint} does not accept anonymous sessions",
                field="username",
                fix="set username and password of a user the server knows",
                config=True,
            )
        if self.spec.body.username is not None and ua.UserTokenType.UserName not in tokens:
            raise ConnectorFailed(
                f"the server at {self.spec.endpoint} does not accept a user name and password "
                f"with security policy {self.spec.body.security.policy}",
                field="username",
                fix="drop username and password (anonymous), or choose a policy whose endpoint "
                "accepts user names",
                config=True,
            )

    async def _secure(self, client, endpoint) -> None:
        from asyncua.crypto import security_policies, uacrypto
        from cryptography import x509

        spec = self.spec
        policy = getattr(security_policies, "SecurityPolicy" + POLICIES[spec.body.security.policy])
        try:
            cert = await uacrypto.load_certificate(str(spec.certificate))
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
            if uris:  # servers check that the application URI is the certificate's
                client.application_uri = uris[0]
            await client.set_security(  # the server's certificate: from its endpoints
                policy, str(spec.certificate), str(spec.private_key), mode=endpoint.SecurityMode
            )
        except (ValueError, TypeError, OSError, x509.ExtensionNotFound) as exc:
            raise ConnectorFailed(
                f"the client certificate or key cannot be used: {_text(exc)}",
                field="security.certificate",
                fix="give a DER or PEM certificate with the application URI in its "
                "subjectAltName, and its PEM private key",
                config=True,
            ) from None

    async def _subscribe(self, client) -> None:
        from asyncua import ua

        targets = self._targets = await self._resolve(client, ua)
        handler = _Handler(self)
        subscription = await client.create_subscription(
            self.spec.body.publishing_ms, handler, queue_maxsize=MAX_BUFFERED
        )
        nodes = [client.get_node(node_id) for node_id in targets]
        body = self.spec.body  # the server queues every sample taken between two publishes
        queue = min(MAX_QUEUE, math.ceil(body.publishing_ms / max(body.sampling_ms, 1)))
        results = await subscription.subscribe_data_change(
            nodes, sampling_interval=body.sampling_ms, queuesize=max(1, queue)
        )
        for node_id, result in zip(targets, results, strict=True):
            if isinstance(result, ua.StatusCode):
                raise ConnectorFailed(
                    f"the server refused to monitor node {node_id}: {result.name}",
                    field="nodes",
                    fix="map only variables the server lets this user read",
                    config=True,
                )
        self.status["nodes"] = len(targets)

    async def _resolve(self, client, ua) -> dict[str, tuple[str, str, str]]:
        """Node id -> (twin, property, type): the listed nodes (checked to exist and be
        variables) and the variables the browse patterns match."""
        targets: dict[str, tuple[str, str, str]] = {}
        listed = self.spec.nodes
        if listed:
            nodes = [client.get_node(node_id) for node_id, *_ in listed]
            classes = await client.read_attributes(nodes, ua.AttributeIds.NodeClass)
            for i, ((node_id, twin, prop, kind), value) in enumerate(
                zip(listed, classes, strict=True)
            ):
                if not value.StatusCode.is_good():
                    raise ConnectorFailed(
                        f"the server at {self.spec.endpoint} has no node {node_id} "
                        f"({value.StatusCode.name})",
                        field=f"nodes[{i}].node",
                        fix="copy the node id from the server's address space (e.g. in UaExpert), "
                        "or map it with a browse pattern",
                        config=True,
                    )
                if value.Value.Value != ua.NodeClass.Variable:
                    raise ConnectorFailed(
                        f"node {node_id} is an {ua.NodeClass(value.Value.Value).name}, not a "
                        "variable",
                        field=f"nodes[{i}].node",
                        fix="map the variables inside it (or a browse pattern ending in *)",
                        config=True,
                    )
                targets[nodes[i].nodeid.to_string()] = (twin, prop, kind)
        for i, pattern in enumerate(self.spec.browse):
            found = await _browse(client, ua, pattern.segments)
            if not found:
                raise ConnectorFailed(
                    f"browse[{i}].path {self.spec.body.browse[i].path!r} matches no variable on "
                    f"{self.spec.endpoint}",
                    field=f"browse[{i}].path",
                    fix="write the path from the Objects folder as [namespace index:]browse name "
                    "segments (e.g. 2:Plant/*/2:Flow); check the names in the server's address "
                    "space",
                    config=True,
                )
            for node_id, captured in found:
                targets.setdefault(node_id, pattern.names(captured))
        return targets

    # ---- values -----------------------------------------------------------------------------

    def received(self, node_id: str, value: Any, data_value: Any) -> None:
        """A data change (on the loop, from the subscription's handler)."""
        self.status["values_received"] += 1
        if not data_value.StatusCode.is_good() or not isinstance(value, int | float):
            self.status["values_rejected"] += 1
            why = (
                f"status {data_value.StatusCode.name}"
                if not data_value.StatusCode.is_good()
                else f"a {type(value).__name__} value; properties take numbers"
            )
            self._reject(node_id, why)
            return
        stamp = data_value.SourceTimestamp or data_value.ServerTimestamp
        ts = _ms(stamp) if stamp is not None else self.clock()
        if self.watermarks.get(node_id) == (ts, value):  # re-sent after a reconnect
            return
        self.watermarks[node_id] = (ts, value)
        if len(self._buffer) >= MAX_BUFFERED:
            del self._buffer[0]
            self.status["dropped"] += 1
        self._buffer.append((node_id, float(value), ts))
        self.status["last_value_at"] = self.clock()

    def _reject(self, where: str, why: str) -> None:
        self.status["last_rejected"] = {"node": where, "reason": why}
        self._rejections.note(f"node {where}", why)

    async def _flushing(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the flush task die
                log.exception("OPC UA connector %s: ingest failed", self.spec.name)
                self.status["last_error"] = f"ingest failed: {exc}"

    async def _flush(self) -> None:
        """Submit the buffered values as one batch (one observation per twin and timestamp)
        and wait until it is durable."""
        if not self._buffer:
            return
        taken, self._buffer = self._buffer, []
        grouped: dict[tuple[str, str, int], dict[str, tuple[float, str]]] = {}  # -> prop: value
        for node_id, value, ts in taken:
            target = self._targets.get(node_id)
            if target is not None:
                twin, prop, kind = target
                grouped.setdefault((twin, kind, ts), {})[prop] = (value, node_id)
        observations = [
            {"twin": twin, "type": kind, "ts": ts, "values": {p: v for p, (v, _) in row.items()}}
            for (twin, kind, ts), row in grouped.items()
        ]
        submitted = await asyncio.to_thread(self.ingest.submit, observations)  # checks rows
        result = await asyncio.wrap_future(submitted)
        self.status["observations_accepted"] += result.accepted + result.duplicates
        if result.rejected:
            rows = list(grouped.values())
            self.status["values_rejected"] += sum(len(rows[r.index]) for r in result.rejected)
            first = result.rejected[0]
            row = rows[first.index]
            at_fault = row.get((first.field or "").removeprefix("values.")) or next(
                iter(row.values())
            )
            self._reject(at_fault[1], f"{first.error}; {first.fix}")

    def _explain(self, exc: BaseException) -> ConnectorFailed:
        """An asyncua or network error as what went wrong and how to fix it."""
        from asyncua import ua

        name = type(exc).__name__
        endpoint = self.spec.endpoint
        if isinstance(exc, ua.UaStatusCodeError):
            code = ua.StatusCode(exc.code).name
            if code in (
                "BadUserAccessDenied",
                "BadIdentityTokenInvalid",
                "BadIdentityTokenRejected",
            ):
                return ConnectorFailed(
                    f"the server at {endpoint} refused the credentials of user "
                    f"{self.spec.body.username!r} ({code})",
                    field="password" if self.spec.body.username else "username",
                    fix="check username and password (or set them, if the server needs a user)",
                    config=True,
                )
            if code.startswith("BadCertificate") or code in (
                "BadSecurityChecksFailed",
                "BadSecurityPolicyRejected",
                "BadNoValidCertificates",
            ):
                return ConnectorFailed(
                    f"the server at {endpoint} refused livetwin's client certificate ({code})",
                    field="security.certificate",
                    fix=f"trust the certificate {self.spec.certificate} on the server (move it "
                    "from its rejected to its trusted folder), or check its validity dates",
                    config=True,
                )
            return ConnectorFailed(
                f"the server at {endpoint} answered {code}: {_text(exc)}",
                field="endpoint",
                fix=REACH_FIX,
                config=False,
            )
        if isinstance(exc, OSError | asyncio.TimeoutError | ConnectionError | EOFError):
            return ConnectorFailed(
                f"cannot reach {endpoint}: {_text(exc) or name}",
                field="endpoint",
                fix=REACH_FIX,
                config=False,
            )
        return ConnectorFailed(
            f"connecting to {endpoint} failed: {name}: {_text(exc)}",
            field="endpoint",
            fix=REACH_FIX,
            config=False,
        )


class _Handler:
    """asyncua's subscription handler: data changes go to the connector."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        self.connector.received(node.nodeid.to_string(), value, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        log.info("OPC UA connector %s: subscription status %s", self.connector.spec.name, status)


async def _browse(client, ua, segments) -> list[tuple[str, list[str]]]:
    """The variables reached from the Objects folder along `segments`, with the names their
    wildcard segments matched."""
    frontier = [(client.nodes.objects, [])]
    last = len(segments) - 1
    for depth, segment in enumerate(segments):
        results = await client.browse_nodes([node for node, _ in frontier])
        following = []
        for (_, captured), (_, result) in zip(frontier, results, strict=True):
            for ref in result.References:
                name = ref.BrowseName
                if not ref.IsForward or not segment.matches(name.NamespaceIndex, name.Name):
                    continue
                if depth == last and ref.NodeClass != ua.NodeClass.Variable:
                    continue
                names = [*captured, name.Name] if segment.wildcard else captured
                following.append((client.get_node(ref.NodeId), names))
        if len(following) > MAX_BROWSED:
            raise ConnectorFailed(
                f"a browse path reaches more than {MAX_BROWSED} nodes at level {depth + 1}",
                field="browse",
                fix="narrow the pattern's wildcards",
                config=True,
            )
        frontier = following
    return [(node.nodeid.to_string(), captured) for node, captured in frontier]


def _offer(endpoint) -> str:
    policy = endpoint.SecurityPolicyUri.rpartition("#")[2]
    return f"{policy}/{endpoint.SecurityMode.name}"


def _ms(stamp: datetime) -> int:
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def _text(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


async def _set_once(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


async def _quietly(coro) -> None:
    try:
        await asyncio.wait_for(coro, 5)
    except Exception:  # a client that is already gone cannot be closed more
        pass
