"""Seasonal-baseline jobs: train each twin's activity baseline from stored history into the
model registry (`train-baseline`), and run the inactivity emergency rule on the registered
versions, writing the verdicts back through ingest, where a type rule raises and clears the
alarm (`check-inactivity`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from livetwin.errors import InvalidInput, LivetwinError, NotFound
from livetwin.models.baseline import (
    ARTIFACT,
    DAY_MS,
    HOUR_MS,
    ActivityBaseline,
    BaselinePredictor,
    baseline_metadata,
    emergency_check,
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

RULE = "inactivity"
AUTHOR = "livetwin/train-baseline"
PUBLISHED = ("emergency", "inactive_min", "threshold_min", "last_activity")  # if declared
ALARM_SIGNAL = "inactivity_emergency"  # 1 while in emergency: a type rule alarms on it
LAST_ACTIVITY = "last_activity"  # epoch ms of the newest activity the check saw
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


def _twins_of(platform: BaselinePorts, type_name: str, twins: Any) -> list[str]:
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


def _text(args: dict, key: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidInput(
            f"args.{key} must be a non-empty string", field=f"args.{key}", fix=_FIXES.get(key, "")
        )
    return value


def _flag(args: dict, key: str, default: bool) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(
            f"args.{key} must be true or false", field=f"args.{key}", fix="use true or false"
        )
    return value


def _check_keys(args: dict, allowed: Iterable[str], job: str) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"unknown argument(s) of {job}: {', '.join(unknown)}",
            field=f"args.{unknown[0]}",
            fix=f"use only: {', '.join(sorted(allowed))}",
        )


_FIXES = {
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
    names = _twins_of(platform, type_name, twins)
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


def _explained(job: Callable[[RunContext, Any], dict]) -> Callable[[RunContext, Any], dict]:
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


@_explained
def train_baseline_job(ctx: RunContext, platform: BaselinePorts) -> dict:
    """Built-in job `train-baseline`: args {type, property?, tz?, twins?, model_prefix?, until?,
    since?, window?} (registered bound to its platform by `livetwin.jobs.register_builtins`)."""
    args = ctx.args
    _check_keys(
        args,
        ("type", "property", "tz", "twins", "model_prefix", "until", "since", "window"),
        "train-baseline",
    )
    return train_baselines(
        platform,
        _text(args, "type"),
        prop=_text(args, "property", "motion"),
        tz=_text(args, "tz", "UTC"),
        twins=args.get("twins"),
        model_prefix=_text(args, "model_prefix", "activity."),
        until=args.get("until", "midnight"),
        since=args.get("since"),
        window=args.get("window"),
        log_line=ctx.log,
    )


# ---- the emergency check ----------------------------------------------------------------------


def load_baselines(
    platform: BaselinePorts, names: dict[str, str], version: Any = None
) -> tuple[dict[str, ActivityBaseline], dict[str, dict]]:
    """twin -> baseline for each twin's model (`version`: None = the `production` alias, else the
    newest), and twin -> {model, version} or {model, reason} of each."""
    models: dict[str, ActivityBaseline] = {}
    used: dict[str, dict] = {}
    for twin, name in names.items():
        try:
            number, predictor = platform.registry.predictor(name, version)
        except NotFound:
            wanted = "" if version is None else f" version {version}"
            used[twin] = {"model": name, "reason": f"no registered model '{name}'{wanted}"}
            continue
        model = getattr(predictor, "model", None)
        if not isinstance(predictor, BaselinePredictor) or not isinstance(model, ActivityBaseline):
            used[twin] = {"model": name, "reason": f"{name} v{number} is not an activity baseline"}
            continue
        models[twin] = model
        used[twin] = {"model": name, "version": number}
    return models, used


def check_inactivity(
    platform: BaselinePorts,
    type_name: str,
    *,
    prop: str = "motion",
    twins: list[str] | None = None,
    model_prefix: str = "activity.",
    version: Any = None,
    severity: str = "critical",
    alarms: bool = True,
    publish: bool = True,
    now_ms: int | None = None,
    log_line: Log | None = None,
    **rule: Any,
) -> dict:
    """Run the inactivity emergency rule on each twin of `type_name` at `now_ms` (default: the
    platform's clock) with its registered baseline, and write the verdicts back through ingest.

    The last activity is the newest `prop` report of the twin or its descendants. With
    `publish` each verdict goes into those of `emergency`, `inactive_min`, `threshold_min`,
    `last_activity` the type declares. With `alarms` the twin's `inactivity_emergency` is
    written too (with the evidence the alarm message needs): 1 in an emergency, held at 1 until
    activity newer than the emergency's comes in, then 0. The type's rule on it (the home
    example's `inactivity`) raises and clears the alarm, so a replay of the journal reproduces
    it; the job itself raises nothing. `severity` is checked but the rule declares the alarm's
    severity. `rule` goes to `emergency_check` (level, factor, min_minutes, neighbours).
    """
    say = log_line or (lambda _: None)
    if severity not in SEVERITIES:
        raise InvalidInput(
            f"unknown severity '{severity}'", field="args.severity", fix=_FIXES["severity"]
        )
    now = platform.clock() if now_ms is None else int(now_ms)
    names = _twins_of(platform, type_name, twins)
    sources = Sources(platform, type_name, prop)
    baselines, used = load_baselines(
        platform, {t: model_name(model_prefix, t) for t in names}, version
    )
    last: dict[str, int | None] = {}
    for twin in names:
        seen = [last_report(platform, s, prop, now) for s in sources.of(twin)]
        seen = [t for t in seen if t is not None]
        last[twin] = max(seen) if seen else None
    verdicts = emergency_check(now, last, baselines, **rule)
    for verdict in verdicts:
        info = used[verdict["twin"]]
        verdict.update(info)
        if "reason" in info and "version" not in info:
            verdict["reason"] = info["reason"]
    declared = set(platform.get_type(type_name)["spec"].get("properties") or {})
    signals = _alarm_signals(platform, type_name, verdicts, declared) if alarms else {}
    if alarms and not signals and verdicts:
        say(
            f"type '{type_name}' declares no '{ALARM_SIGNAL}' property: no alarm signal written "
            f"(declare it and a rule on it, as the home example does)"
        )
    cleared = []
    for verdict in verdicts:
        signal = signals.get(verdict["twin"])
        verdict["alarm"] = None if signal is None else signal[0]
        if signal is not None and signal[1] == 1 and signal[0] == 0:
            cleared.append(verdict["twin"])
    emergencies = [v["twin"] for v in verdicts if v["emergency"]]
    _write_back(platform, type_name, verdicts, declared, now, publish=publish, alarms=alarms)
    say(
        f"checked {len(verdicts)} {type_name} twins at {format_ts(now)}: "
        f"{len(emergencies)} in emergency {emergencies[:20]}; {len(cleared)} alarms to clear"
    )
    return {
        "type": type_name,
        "now": format_ts(now),
        "checked": len(verdicts),
        "emergencies": emergencies,
        "cleared": cleared,
        "verdicts": verdicts,
    }


def _alarm_signals(
    platform: BaselinePorts, type_name: str, verdicts: list[dict], declared: set[str]
) -> dict[str, tuple[int, float]]:
    """twin -> (its new `inactivity_emergency`, the one it has now) when the type declares it.

    1 in an emergency; an emergency stays 1 while no activity newer than the `last_activity`
    written with it has come in, so a threshold that merely grows at night never clears the
    alarm of an occupant who has not moved (without `last_activity` declared, 0 ends it)."""
    if ALARM_SIGNAL not in declared or not verdicts:
        return {}
    read = [ALARM_SIGNAL] + ([LAST_ACTIVITY] if LAST_ACTIVITY in declared else [])
    ids, now = platform.query.columns(type_name, read, [v["twin"] for v in verdicts])
    before = now.get(LAST_ACTIVITY, np.full(len(ids), np.nan))
    signals = {}
    for k, verdict in enumerate(verdicts):
        previous = float(now[ALARM_SIGNAL][k])
        latest = verdict.get("last_activity")
        resumed = (
            "threshold_min" in verdict
            and latest is not None
            and not parse_ts(latest) <= before[k]  # NaN: nothing to compare with
        )
        signal = int(verdict["emergency"] or (previous == 1 and not resumed))
        signals[verdict["twin"]] = (signal, previous)
    return signals


def _write_back(
    platform: BaselinePorts,
    type_name: str,
    verdicts: list[dict],
    declared: set[str],
    now: int,
    *,
    publish: bool,
    alarms: bool,
) -> None:
    """The verdicts as observations of their twins at `now`: the evidence with `publish`, the
    alarm signal (and the evidence its message needs) with `alarms`."""
    names = set(PUBLISHED) if publish else set()
    if alarms and ALARM_SIGNAL in declared:
        names |= {ALARM_SIGNAL, *PUBLISHED[1:]}
    names &= declared
    if not names:
        return
    rows = []
    for v in verdicts:
        values = {
            "emergency": int(v["emergency"]),
            ALARM_SIGNAL: v.get("alarm"),
            LAST_ACTIVITY: parse_ts(v["last_activity"]) if "last_activity" in v else None,
            **{k: v[k] for k in ("inactive_min", "threshold_min") if k in v},
        }
        values = {k: x for k, x in values.items() if k in names and x is not None}
        rows.append({"twin": v["twin"], "type": type_name, "ts": now, "values": values})
    result = platform.ingest(rows)
    if getattr(result, "rejected", None):
        log.warning("check-inactivity: %d verdict rows rejected", len(result.rejected))


@_explained
def check_inactivity_job(ctx: RunContext, platform: BaselinePorts) -> dict:
    """Built-in job `check-inactivity`: args {type, property?, twins?, model_prefix?, version?,
    severity?, alarms?, publish?, level?, factor?, min_minutes?, neighbours?}."""
    args = ctx.args
    rule_keys = ("level", "factor", "min_minutes", "neighbours")
    _check_keys(
        args,
        ("type", "property", "twins", "model_prefix", "version", "severity", "alarms", "publish")
        + rule_keys,
        "check-inactivity",
    )
    rule = {}
    for key in rule_keys:
        if key in args:
            value = args[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(
                    f"args.{key} must be a number", field=f"args.{key}", fix="e.g. 1.5"
                )
            rule[key] = int(value) if key == "neighbours" else float(value)
    result = check_inactivity(
        platform,
        _text(args, "type"),
        prop=_text(args, "property", "motion"),
        twins=args.get("twins"),
        model_prefix=_text(args, "model_prefix", "activity."),
        version=args.get("version"),
        severity=_text(args, "severity", "critical"),
        alarms=_flag(args, "alarms", True),
        publish=_flag(args, "publish", True),
        log_line=ctx.log,
        **rule,
    )
    # a run's result is kept small: full evidence for emergencies, the gist for the rest
    compact = ("twin", "emergency", "inactive_min", "threshold_min", "version", "reason", "alarm")
    result["verdicts"] = [
        v if v["emergency"] and i < MAX_LISTED // 4 else {k: v[k] for k in compact if k in v}
        for i, v in enumerate(result["verdicts"][:MAX_LISTED])
    ]
    return result


__all__ = [
    "check_inactivity",
    "check_inactivity_job",
    "last_midnight",
    "last_report",
    "load_baselines",
    "model_name",
    "read_series",
    "register_baseline",
    "train_baseline_job",
    "train_baselines",
]
