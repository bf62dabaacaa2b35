"""The `train-baseline` job: each twin's seasonal activity baseline trained from stored history
into the model registry; plus the twin, series and argument helpers the inactivity check
(`jobs/inactivity.py`) shares.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from livetwin.errors import InvalidInput, LivetwinError
from livetwin.models.baseline import (
    ARTIFACT,
    DAY_MS,
    HOUR_MS,
    ActivityBaseline,
    baseline_metadata,
    fit_activity,
    utc_offsets_ms,
    zone,
)
from livetwin.spec.rules import SEVERITIES
from livetwin.timefmt import SMALLEST_MS, format_ts, parse_duration, parse_ts

if TYPE_CHECKING:
    from livetwin.jobs.ports import BaselinePorts
    from livetwin.schedule.functions import RunContext

log = logging.getLogger(__name__)

AUTHOR = "livetwin/train-baseline"
MAX_LISTED = 200  # per-twin entries in a job's result; the counts cover all
_PAGE = 1000
_MODEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]")

Log = Callable[[str], None]


# ---- twins and their activity series ----------------------------------------------------------


def model_name(prefix: str, twin: str) -> str:
    """The registry name of a twin's baseline: `prefix + twin`, '/' (a child id) written '.'."""
    name = _MODEL_CHARS.sub("_", prefix + twin.replace("/", "."))
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", name):
        raise InvalidInput(
            f"'{name[:80]}' (model of twin '{twin}') is not a model name",
            field="model_prefix",
            fix="use a prefix that starts with a letter and keeps names within 64 characters",
        )
    return name


def twins_of(platform: BaselinePorts, type_name: str, twins: Any) -> list[str]:
    """All twins of the type in creation order, or the chosen ones (each checked)."""
    platform.get_type(type_name)  # NotFound with the fix
    found: list[str] = []
    offset = 0
    while True:
        page = platform.twins(type=type_name, limit=_PAGE, offset=offset)
        found += [t["id"] for t in page["items"]]
        offset += _PAGE
        if offset >= page["total"]:
            break
    if twins is None:
        return found
    if not isinstance(twins, list) or not all(isinstance(t, str) for t in twins):
        raise InvalidInput(
            "twins must be a list of twin ids", field="args.twins", fix='e.g. ["home-1"]'
        )
    known = set(found)
    unknown = [t for t in twins if t not in known]
    if unknown:
        raise InvalidInput(
            f"not twins of type '{type_name}': {', '.join(unknown[:10])}",
            field="args.twins",
            fix=f"list twins of type '{type_name}', or leave twins out for all of them",
        )
    return list(dict.fromkeys(twins))


class Sources:
    """Which twins report `prop` for each twin: itself when its type declares the property,
    else its descendants that do (a home's rooms)."""

    def __init__(self, platform: BaselinePorts, type_name: str, prop: str):
        self.platform = platform
        self.prop = prop
        self._has: dict[str, bool] = {}
        self.own = self._declares(type_name)
        self._children: dict[str, list[tuple[str, str]]] | None = None

    def _declares(self, type_name: str) -> bool:
        if type_name not in self._has:
            spec = self.platform.get_type(type_name)["spec"]
            self._has[type_name] = self.prop in (spec.get("properties") or {})
        return self._has[type_name]

    def of(self, twin: str) -> list[str]:
        if self.own:
            return [twin]
        if self._children is None:  # one pass over all twins, not one scan per twin
            self._children = {}
            offset = 0
            while True:
                page = self.platform.twins(limit=_PAGE, offset=offset)
                for item in page["items"]:
                    if item["parent"] is not None:
                        self._children.setdefault(item["parent"], []).append(
                            (item["id"], item["type"])
                        )
                offset += _PAGE
                if offset >= page["total"]:
                    break
        out, stack, seen = [], [twin], {twin}
        while stack:
            for child, child_type in self._children.get(stack.pop(), ()):
                if child in seen:
                    continue
                seen.add(child)
                stack.append(child)
                if self._declares(child_type):
                    out.append(child)
        return sorted(out)


def read_series(
    platform: BaselinePorts, twin: str, prop: str, start: int, end: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ts, value) of the reports of `prop` in [start, end), NaN rows (other names) left out;
    a range over the history query's point limit is read in halves."""
    try:
        series = platform.history(twin, [prop], start=start, end=end)
    except InvalidInput as exc:
        if exc.field != "every" or end - start < 2 * HOUR_MS:
            raise
        mid = start + (end - start) // 2
        first, second = (
            read_series(platform, twin, prop, start, mid),
            read_series(platform, twin, prop, mid, end),
        )
        return np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]])
    ts = np.asarray(series["ts"], dtype=np.int64)
    values = np.asarray(series["series"][prop], dtype=np.float64)  # None (missing) -> NaN
    seen = np.isfinite(values)
    return ts[seen], values[seen]


def last_report(platform: BaselinePorts, twin: str, prop: str, now_ms: int) -> int | None:
    """When the twin last reported `prop` (at or before `now_ms`): the twin's state says when it
    last reported anything, and history is searched backwards from there."""
    state = platform.twin(twin)
    if state["updated"] is None:
        return None
    end = min(int(state["updated"]), now_ms) + 1
    window = HOUR_MS
    while True:
        start = max(SMALLEST_MS, end - window)  # the earliest time the platform accepts
        ts, _ = read_series(platform, twin, prop, start, end)
        if ts.size:
            return int(ts.max())
        if start == SMALLEST_MS:
            return None
        window *= 8


# ---- arguments --------------------------------------------------------------------------------


def last_midnight(now_ms: int, tz: str) -> int:
    """The last local midnight in `tz` at or before `now_ms`."""
    local = now_ms + int(utc_offsets_ms(np.array([now_ms]), tz)[0])
    return now_ms - local % DAY_MS


def _until(value: Any, now_ms: int, tz: str) -> int:
    if value in (None, "midnight"):
        return last_midnight(now_ms, tz)
    if value == "now":
        return now_ms
    try:
        return parse_ts(value)
    except ValueError as exc:
        raise InvalidInput(
            f"args.until: {exc}",
            field="args.until",
            fix='use "midnight" (the default), "now" or a time (ISO 8601 or epoch ms)',
        ) from None


def _start(since: Any, window: Any, until: int) -> int | None:
    if since is not None and window is not None:
        raise InvalidInput(
            "give since or window, not both", field="args.window", fix="drop one of them"
        )
    if since is not None:
        try:
            return parse_ts(since)
        except ValueError as exc:
            raise InvalidInput(
                f"args.since: {exc}", field="args.since", fix="e.g. 2026-03-01T00:00:00Z"
            ) from None
    if window is not None:
        try:
            return until - parse_duration(str(window))
        except ValueError as exc:
            raise InvalidInput(f"args.window: {exc}", field="args.window", fix="e.g. 28d") from None
    return None


def text_arg(args: dict, key: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidInput(
            f"args.{key} must be a non-empty string",
            field=f"args.{key}",
            fix=ARG_FIXES.get(key, ""),
        )
    return value


def flag_arg(args: dict, key: str, default: bool) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(
            f"args.{key} must be true or false", field=f"args.{key}", fix="use true or false"
        )
    return value


def check_keys(args: dict, allowed: Iterable[str], job: str) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"unknown argument(s) of {job}: {', '.join(unknown)}",
            field=f"args.{unknown[0]}",
            fix=f"use only: {', '.join(sorted(allowed))}",
        )


ARG_FIXES = {
    "type": "name the twin type, e.g. home",
    "property": "name the motion property, e.g. motion",
    "tz": "use an IANA time zone such as Europe/Berlin",
    "model_prefix": "e.g. activity.",
    "severity": f"use one of: {', '.join(SEVERITIES)}",
}


# ---- training ---------------------------------------------------------------------------------


def train_baselines(
    platform: BaselinePorts,
    type_name: str,
    *,
    prop: str = "motion",
    tz: str = "UTC",
    twins: list[str] | None = None,
    model_prefix: str = "activity.",
    until: Any = "midnight",
    since: Any = None,
    window: Any = None,
    now_ms: int | None = None,
    log_line: Log | None = None,
) -> dict:
    """Fit an activity baseline per twin of `type_name` from its stored `prop` reports (its own,
    or its descendants' when its type lacks `prop`) in [since, until), and register each as the
    next version of model `model_prefix + twin` with its training period.

    `until` is "midnight" (the last local midnight, so today's events are never learnt), "now"
    or a time. A twin without reports in the period is skipped, with the reason, never fatal.
    """
    say = log_line or (lambda _: None)
    zone(tz)
    now = platform.clock() if now_ms is None else int(now_ms)
    end = _until(until, now, tz)
    start = _start(since, window, end)
    if start is not None and start >= end:
        raise InvalidInput(
            f"the training period {format_ts(start)} .. {format_ts(end)} is empty",
            field="args.since" if since is not None else "args.window",
            fix="start the period before `until` (default: last midnight)",
        )
    model_name(model_prefix, "x")  # a bad prefix fails the run, not each twin
    names = twins_of(platform, type_name, twins)
    sources = Sources(platform, type_name, prop)
    if not sources.own and prop not in _descendant_props(platform):
        raise InvalidInput(
            f"no twin type declares property '{prop}'",
            field="args.property",
            fix=f"name a property of '{type_name}' or of its children's types",
        )
    say(
        f"training {len(names)} {type_name} baselines of '{prop}' in {tz}, "
        f"{format_ts(start) if start is not None else 'all history'} .. {format_ts(end)}"
    )
    started = time.perf_counter()
    trained: list[dict] = []
    skipped: list[dict] = []
    samples = {"visits": 0, "duration": 0, "inactivity": 0}
    reports = 0
    read_s = fit_s = register_s = 0.0
    for i, twin in enumerate(names):
        t0 = time.perf_counter()
        parts = [
            read_series(platform, s, prop, start or SMALLEST_MS, end) for s in sources.of(twin)
        ]
        ts = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        values = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        t1 = time.perf_counter()
        read_s += t1 - t0
        if ts.size == 0:
            skipped.append({"twin": twin, "reason": f"no '{prop}' reports in the period"})
            continue
        try:  # one twin's bad data or name never stops the others
            model = fit_activity(ts, values, tz, start_ms=start, end_ms=end)
            t2 = time.perf_counter()
            fit_s += t2 - t1
            record = register_baseline(
                platform, model_name(model_prefix, twin), model, twin=twin,
                type_name=type_name, prop=prop, reports=int(ts.size),
            )  # fmt: skip
        except LivetwinError as exc:
            skipped.append({"twin": twin, "reason": exc.message, "field": exc.field})
            continue
        register_s += time.perf_counter() - t2
        for part, baseline in model.parts().items():
            samples[part] += baseline.samples
        reports += int(ts.size)
        trained.append(
            {
                "twin": twin,
                "model": record["name"],
                "version": record["version"],
                "reports": int(ts.size),
                "visits": int(model.duration.samples),
            }
        )
        if (i + 1) % 100 == 0:
            say(f"  {i + 1}/{len(names)} twins trained")
    seconds = time.perf_counter() - started
    say(
        f"registered {len(trained)} versions ({reports} reports) in {seconds:.2f} s "
        f"(read {read_s:.2f} s, fit {fit_s:.2f} s, register {register_s:.2f} s); "
        f"{len(skipped)} skipped"
    )
    return {
        "type": type_name,
        "property": prop,
        "tz": tz,
        "training": {
            "start": format_ts(start) if start is not None else None,
            "end": format_ts(end),
        },
        "versions": len(trained),
        "reports": reports,
        "samples": samples,
        "skipped": len(skipped),
        "seconds": round(seconds, 3),
        "trained": trained[:MAX_LISTED],
        "skipped_twins": skipped[:MAX_LISTED],
    }


def _descendant_props(platform: BaselinePorts) -> set[str]:
    names: set[str] = set()
    for info in platform.list_types():
        names.update(platform.get_type(info["name"])["spec"].get("properties") or {})
    return names


def register_baseline(
    platform: BaselinePorts,
    name: str,
    model: ActivityBaseline,
    *,
    twin: str,
    type_name: str,
    prop: str,
    reports: int,
) -> dict:
    """Register `model` as the next version of `name`, with its training period and artifact."""
    body = baseline_metadata(
        model,
        description=f"weekday x hour activity of {twin}",
        author=AUTHOR,
        tags={"twin": twin, "type": type_name, "property": prop},
        metrics={
            "reports": float(reports),
            **{f"samples.{k}": float(p.samples) for k, p in model.parts().items()},
        },
    )
    body["training"]["description"] = f"'{prop}' reports of {twin} ({reports} reports)"
    return platform.registry.register(name, body, {ARTIFACT: model.to_bytes()})


def explained(job: Callable[[RunContext, Any], dict]) -> Callable[[RunContext, Any], dict]:
    """A job whose errors a user can fix leave their field and fix in the run's log (the run's
    `error` keeps only the message)."""

    def run(ctx: RunContext, platform: Any) -> dict:
        try:
            return job(ctx, platform)
        except LivetwinError as exc:
            ctx.log(f"error in {exc.field or 'input'}: {exc.message}; fix: {exc.fix or '-'}")
            raise

    run.__name__ = run.__qualname__ = job.__name__
    run.__doc__ = job.__doc__
    return run


@explained
def train_baseline_job(ctx: RunContext, platform: BaselinePorts) -> dict:
    """Built-in job `train-baseline`: args {type, property?, tz?, twins?, model_prefix?, until?,
    since?, window?} (registered bound to its platform by `livetwin.jobs.register_builtins`)."""
    args = ctx.args
    check_keys(
        args,
        ("type", "property", "tz", "twins", "model_prefix", "until", "since", "window"),
        "train-baseline",
    )
    return train_baselines(
        platform,
        text_arg(args, "type"),
        prop=text_arg(args, "property", "motion"),
        tz=text_arg(args, "tz", "UTC"),
        twins=args.get("twins"),
        model_prefix=text_arg(args, "model_prefix", "activity."),
        until=args.get("until", "midnight"),
        since=args.get("since"),
        window=args.get("window"),
        log_line=ctx.log,
    )


__all__ = [
    "last_midnight",
    "last_report",
    "model_name",
    "read_series",
    "register_baseline",
    "train_baseline_job",
    "train_baselines",
]
