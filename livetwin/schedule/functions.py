"""Functions the scheduler runs: built-in jobs, Python callables and remote HTTP endpoints.

A function is declared as data (`FunctionSpec`); one attempt of a run calls `invoke`, which
returns a JSON-able result or raises. Retries, timing and records are the service's business.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from livetwin.errors import InvalidInput
from livetwin.namespaces import check_namespace
from livetwin.outbound import OutboundPolicy, capped
from livetwin.schedule.triggers import check_name, duration_ms

KINDS = ("builtin", "python", "http")
HTTP_METHODS = ("POST", "PUT", "PATCH", "GET")
MAX_LOG_LINES = 1_000
MAX_LOG_CHARS = 2_000
MAX_RESULT_BYTES = 64 * 1024
MAX_RESPONSE_PREVIEW = 32 * 1024  # characters of a cut response kept in the run record
MAX_EVENTS = 16

JobFn = Callable[["RunContext"], Any]
JOBS: dict[str, JobFn] = {}


def register_job(name: str, fn: JobFn) -> None:
    """Make a job kind available to every scheduler in this process by name (the built-in ones,
    bound to a core's ports, are registered per scheduler: `Scheduler.register_job`)."""
    JOBS[check_name(name, "job")] = fn


@dataclass
class FunctionSpec:
    """A declared function; `to_dict()` is what is stored and shown."""

    namespace: str
    name: str
    kind: str
    job: str | None = None  # builtin
    ref: str | None = None  # python: "module:function"; None = registered in code by name
    url: str | None = None  # http
    method: str = "POST"
    timeout_s: float = 10.0
    events: tuple[str, ...] = ()  # join: runs when each of these has arrived
    args: dict = field(default_factory=dict)
    concurrency: int = 1
    retries: int = 0
    backoff_s: float = 1.0
    description: str = ""
    ttl: str | int | None = None  # join events older than this expire (as declared)
    ttl_ms: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def to_dict(self) -> dict:
        body = {
            "namespace": self.namespace,
            "name": self.name,
            "kind": self.kind,
            "events": list(self.events),
            "args": self.args,
            "concurrency": self.concurrency,
            "retries": self.retries,
            "backoff_s": self.backoff_s,
            "description": self.description,
        }
        if self.ttl is not None:
            body["ttl"] = self.ttl
        if self.kind == "builtin":
            body["job"] = self.job
        elif self.kind == "python":
            body["ref"] = self.ref
        else:
            body.update(url=self.url, method=self.method, timeout_s=self.timeout_s)
        return body


def parse_function(
    name: str,
    raw: Any,
    namespace: Any = None,
    *,
    allow_modules: Sequence[str] | None = None,
    resolve: bool = True,
    jobs: Collection[str] | None = None,
    outbound: OutboundPolicy | None = None,
) -> FunctionSpec:
    """Validate a function declaration. `allow_modules` limits "module:function" references to
    modules under these prefixes (None: any module, for trusted in-process callers); `resolve`
    False skips importing references, looking up jobs and checking URLs (reloading stored
    declarations); `jobs` are the job kinds a builtin function may name (default: those of
    `register_job`); `outbound` is the policy an http function's URL must pass."""
    if not isinstance(raw, dict):
        raise InvalidInput(
            "a function must be a JSON object",
            field="body",
            fix='e.g. {"kind": "http", "url": "https://example.com/run"}',
        )
    check_name(name, "name")
    namespace = check_namespace(raw.get("namespace", namespace))
    kind = raw.get("kind")
    if kind not in KINDS:
        raise InvalidInput(
            f"unknown function kind {kind!r}", field="kind", fix=f"use one of: {', '.join(KINDS)}"
        )
    common = {"kind", "name", "namespace", "events", "ttl", "args", "concurrency", "retries"}
    common |= {"backoff_s"}
    allowed = (
        common
        | {"description"}
        | {
            "builtin": {"job"},
            "python": {"ref"},
            "http": {"url", "method", "timeout_s"},
        }[kind]
    )
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidInput(
            f"unknown field(s) for a {kind} function: {', '.join(unknown)}",
            field=unknown[0],
            fix=f"use only: {', '.join(sorted(allowed))}",
        )
    spec = FunctionSpec(
        namespace=namespace,
        name=name,
        kind=kind,
        events=_events(raw.get("events")),
        args=_object(raw.get("args"), "args"),
        concurrency=_int(raw.get("concurrency", 1), "concurrency", 1, 256),
        retries=_int(raw.get("retries", 3 if kind == "http" else 0), "retries", 0, 20),
        backoff_s=_number(raw.get("backoff_s", 1.0), "backoff_s", 0.0, 3600.0),
        description=str(raw.get("description") or "")[:1000],
    )
    if raw.get("ttl") is not None:
        spec.ttl, spec.ttl_ms = raw["ttl"], duration_ms(raw["ttl"], "ttl")
    if kind == "builtin":
        job = raw.get("job")
        known = JOBS if jobs is None else jobs
        if resolve and job not in known:
            raise InvalidInput(
                f"unknown built-in job {job!r}",
                field="job",
                fix=f"use one of: {', '.join(sorted(known))}",
            )
        spec.job = job
    elif kind == "python":
        spec.ref = raw.get("ref")
        if spec.ref is not None and resolve:
            resolve_ref(spec.ref, allow_modules)
    else:
        spec.url = check_url(raw.get("url"))
        if resolve and outbound is not None:
            outbound.check_url(spec.url, unresolved_ok=True)
        method = str(raw.get("method", "POST")).upper()
        if method not in HTTP_METHODS:
            raise InvalidInput(
                f"unsupported method {raw.get('method')!r}",
                field="method",
                fix=f"use one of: {', '.join(HTTP_METHODS)}",
            )
        spec.method = method
        spec.timeout_s = _number(raw.get("timeout_s", 10.0), "timeout_s", 0.01, 600.0)
    return spec


def check_url(url: Any) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            "url must be an http:// or https:// URL with a host",
            field="url",
            fix="e.g. https://example.com/functions/retrain",
        )
    return url


def resolve_ref(ref: Any, allow_modules: Sequence[str] | None = None) -> Callable:
    """Import "package.module:function" and return the callable, or InvalidInput."""
    fix = "write 'package.module:function' for a function importable on the server"
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise InvalidInput(f"bad function reference {ref!r}", field="ref", fix=fix)
    module_name, attr = ref.split(":")
    if allow_modules is not None and not any(
        module_name == p.rstrip(".") or module_name.startswith(p.rstrip(".") + ".")
        for p in allow_modules
    ):
        raise InvalidInput(
            f"module '{module_name}' may not be referenced through the API",
            field="ref",
            fix="register the function in code (scheduler.register) or allow the module's "
            "prefix in the server's configuration",
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InvalidInput(f"cannot import {ref!r}: {exc}", field="ref", fix=fix) from None
    if not callable(fn):
        raise InvalidInput(f"{ref!r} is not callable", field="ref", fix=fix)
    return fn


def _events(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_EVENTS:
        raise InvalidInput(
            f"events must be a list of at most {MAX_EVENTS} event names",
            field="events",
            fix='e.g. ["data-ready", "model-ready"]',
        )
    names = [check_name(v, f"events[{i}]") for i, v in enumerate(value)]
    if len(set(names)) != len(names):
        raise InvalidInput("events lists a name twice", field="events", fix="list each name once")
    return tuple(names)


def _object(value: Any, field_name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{field_name} must be an object", field=field_name, fix='e.g. {"type": "pump"}'
        )
    return value


def _int(value: Any, field_name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"{field_name} must be an integer from {low} to {high}",
            field=field_name,
            fix=f"e.g. {low}",
        )
    return value


def _number(value: Any, field_name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidInput(
            f"{field_name} must be a number from {low:g} to {high:g}",
            field=field_name,
            fix=f"e.g. {max(low, 1.0):g}",
        )
    return float(value)


@dataclass
class RunContext:
    """What a function receives: its run, arguments, joined events, trigger, and `platform`
    (what the composition root hands Python functions; None for a bare scheduler)."""

    run_id: str
    function: str
    namespace: str
    attempt: int
    args: dict
    events: list[dict]
    trigger: dict
    platform: Any
    logs: list[str] = field(default_factory=list)
    progress_info: dict = field(default_factory=dict)  # shown with the running run
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def log(self, message: Any) -> None:
        """Add a line to the run's log (kept with the run, capped)."""
        if len(self.logs) < MAX_LOG_LINES:
            self.logs.append(str(message)[:MAX_LOG_CHARS])

    def progress(self, done: float, total: float | None = None) -> None:
        """Report how far the run is (`done` of `total` units); GET /api/runs/{id} shows it."""
        self.progress_info.update(done=done, total=total)

    @property
    def cancelled(self) -> bool:
        """Whether the run was asked to stop (POST /api/runs/{id}/cancel): a job that checks
        this stops at its next step by raising."""
        return self.cancel_event.is_set()


class Invoker:
    """Calls one attempt of a function; holds the in-code registrations and an HTTP client.
    `jobs` are the scheduler's own job kinds (looked up before the process-wide ones);
    `outbound` is the policy every remote call's URL passes first (redirects are not followed)."""

    def __init__(
        self, jobs: dict[str, JobFn] | None = None, outbound: OutboundPolicy | None = None
    ) -> None:
        self.jobs = {} if jobs is None else jobs
        self.outbound = outbound or OutboundPolicy()
        self.callables: dict[tuple[str, str], Callable] = {}
        self._refs: dict[str, Callable] = {}
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        """The HTTP client of remote functions, made on first use (an SSL context costs ~30 ms)."""
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(follow_redirects=False)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()

    def invoke(self, spec: FunctionSpec, ctx: RunContext) -> Any:
        if spec.kind == "builtin":
            job = self.jobs.get(spec.job) or JOBS.get(spec.job)
            if job is None:
                raise LookupError(f"built-in job '{spec.job}' is not registered in this process")
            return job(ctx)
        if spec.kind == "python":
            return self._callable(spec)(ctx)
        return self._http(spec, ctx)

    def _callable(self, spec: FunctionSpec) -> Callable:
        if spec.ref is None:
            fn = self.callables.get(spec.key)
            if fn is None:
                raise LookupError(
                    f"function '{spec.name}' is registered in code and this process has not "
                    "registered it: call scheduler.register(name, fn) before start()"
                )
            return fn
        with self._lock:
            if spec.ref not in self._refs:
                self._refs[spec.ref] = resolve_ref(spec.ref)
            return self._refs[spec.ref]

    def _http(self, spec: FunctionSpec, ctx: RunContext) -> Any:
        body = {
            "run_id": ctx.run_id,
            "function": ctx.function,
            "namespace": ctx.namespace,
            "attempt": ctx.attempt,
            "args": ctx.args,
            "events": ctx.events,
            "trigger": ctx.trigger,
        }
        headers = {
            "User-Agent": "livetwin-scheduler",
            "X-Livetwin-Run": ctx.run_id,
            "X-Livetwin-Attempt": str(ctx.attempt),
        }
        content = None
        if spec.method != "GET":
            headers["Content-Type"] = "application/json"
            content = orjson.dumps(body)
        self.outbound.check_url(spec.url)  # again: what the name resolves to may have changed
        with self.http.stream(
            spec.method, spec.url, content=content, headers=headers, timeout=spec.timeout_s
        ) as response:
            body, cut = capped(response.iter_bytes(), MAX_RESULT_BYTES)
        status = response.status_code
        ctx.log(f"attempt {ctx.attempt}: {spec.method} {spec.url} -> HTTP {status}")
        text = body.decode(response.encoding or "utf-8", errors="replace")
        if not 200 <= status < 300:
            raise RemoteError(f"HTTP {status}: {text[:300]}")
        if cut:
            ctx.log(f"the response is longer than {MAX_RESULT_BYTES} bytes: it was cut")
            return {
                "truncated": True,
                "note": f"the response was cut at {MAX_RESULT_BYTES} bytes",
                "preview": text[:MAX_RESPONSE_PREVIEW],
            }
        if "json" in response.headers.get("content-type", "") and body:
            return orjson.loads(body)
        return text or None


class RemoteError(Exception):
    """A remote function answered with a non-2xx status."""


def json_result(value: Any) -> bytes:
    """A run result as JSON bytes (non-JSON values as their repr; huge ones truncated)."""
    try:
        raw = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        raw = orjson.dumps(repr(value)[:MAX_RESULT_BYTES])
    if len(raw) > MAX_RESULT_BYTES:
        raw = orjson.dumps({"truncated": True, "preview": raw[:1000].decode(errors="replace")})
    return raw
