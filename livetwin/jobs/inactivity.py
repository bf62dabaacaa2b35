"""The `check-inactivity` job: the inactivity emergency rule run on each twin's registered
baseline; the verdicts are written back through ingest, where a type rule raises and clears the
alarm (so a replay reproduces it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from livetwin.errors import InvalidInput, NotFound
from livetwin.jobs.baseline import (
    ARG_FIXES,
    MAX_LISTED,
    Log,
    Sources,
    check_keys,
    explained,
    flag_arg,
    last_report,
    model_name,
    text_arg,
    twins_of,
)
from livetwin.models.baseline import ActivityBaseline, BaselinePredictor, emergency_check
from livetwin.spec.rules import SEVERITIES
from livetwin.timefmt import format_ts, parse_ts

if TYPE_CHECKING:
    from livetwin.jobs.ports import BaselinePorts
    from livetwin.schedule.functions import RunContext

log = logging.getLogger(__name__)

RULE = "inactivity"
PUBLISHED = ("emergency", "inactive_min", "threshold_min", "last_activity")  # if declared
ALARM_SIGNAL = "inactivity_emergency"  # 1 while in emergency: a type rule alarms on it
LAST_ACTIVITY = "last_activity"  # epoch ms of the newest activity the check saw


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
            f"unknown severity '{severity}'", field="args.severity", fix=ARG_FIXES["severity"]
        )
    now = platform.clock() if now_ms is None else int(now_ms)
    names = twins_of(platform, type_name, twins)
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
    twins = [v["twin"] for v in verdicts]
    now = platform.query.type_rows(type_name, lambda _ctype: read, twins)[-1]
    before = now.get(LAST_ACTIVITY, np.full(len(twins), np.nan))
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


@explained
def check_inactivity_job(ctx: RunContext, platform: BaselinePorts) -> dict:
    """Built-in job `check-inactivity`: args {type, property?, twins?, model_prefix?, version?,
    severity?, alarms?, publish?, level?, factor?, min_minutes?, neighbours?}."""
    args = ctx.args
    rule_keys = ("level", "factor", "min_minutes", "neighbours")
    check_keys(
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
        text_arg(args, "type"),
        prop=text_arg(args, "property", "motion"),
        twins=args.get("twins"),
        model_prefix=text_arg(args, "model_prefix", "activity."),
        version=args.get("version"),
        severity=text_arg(args, "severity", "critical"),
        alarms=flag_arg(args, "alarms", True),
        publish=flag_arg(args, "publish", True),
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


__all__ = ["ALARM_SIGNAL", "RULE", "check_inactivity", "check_inactivity_job", "load_baselines"]
