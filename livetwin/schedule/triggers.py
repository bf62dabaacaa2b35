"""Trigger specs (once, interval, cron, event, condition): validation and firing instants.

Cron runs in a time zone with Vixie-cron semantics across DST changes (see `CronTrigger`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from livetwin.errors import InvalidInput
from livetwin.timefmt import parse_duration, parse_ts_field

KINDS = ("once", "interval", "cron", "event", "condition")
TIME_KINDS = ("once", "interval", "cron")
MISSED = ("skip", "once", "catch_up")
EVENT_SOURCES = ("event", "state", "created", "type", "job")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
CRON_EXAMPLE = "e.g. '0 3 * * *' (03:00 every day) or '*/15 * * * *' (every 15 minutes)"
CRON_FIELDS = "minute hour day-of-month month day-of-week"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_DST_SHIFT = timedelta(hours=3)


def check_name(value: Any, field: str) -> str:
    """A function or event name: a letter, then letters, digits, '_', '.', '-' (max 64)."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidInput(
            f"{field} must be a name: a letter, then letters, digits, '_', '.' or '-' (max 64)",
            field=field,
            fix="e.g. 'recalibrate' or 'line-3.done'",
        )
    return value


def duration_ms(value: Any, field: str) -> int:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidInput(
            f"{field} must be a duration", field=field, fix="e.g. '30s', '10m' or '1h'"
        )
    try:
        return parse_duration(value) if isinstance(value, str) else _positive(value, field)
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field, fix="e.g. '30s', '10m' or '1h'") from None


def _positive(value: int, field: str) -> int:
    if value < 1:
        raise ValueError(f"{field} must be at least 1 ms")
    return value


class CronTrigger:
    """A 5-field cron expression (or @daily, @hourly ...) evaluated in a time zone.

    Across DST changes it behaves like Vixie cron: a local time that occurs twice (autumn) fires
    once, at its first occurrence, unless the hour field is a wildcard ('*', '*/2'), in which case
    it fires in both; a local time that does not exist (spring) fires at the same wall time after
    the gap (02:30 -> 03:30) for fixed hours, and not at all for wildcard hours.
    """

    def __init__(self, expr: Any, tz: Any = "UTC"):
        if not isinstance(expr, str) or not expr.strip():
            raise InvalidInput(
                "cron must be a cron expression string",
                field="trigger.cron",
                fix=f"write {CRON_FIELDS}, {CRON_EXAMPLE}",
            )
        self.expr = " ".join(expr.split())
        fields = self.expr.split(" ")
        if not self.expr.startswith("@") and len(fields) != 5:
            raise InvalidInput(
                f"cron '{self.expr}' has {len(fields)} fields, not 5",
                field="trigger.cron",
                fix=f"write {CRON_FIELDS}, {CRON_EXAMPLE}",
            )
        try:
            croniter(self.expr, datetime(2026, 1, 1))
        except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
            raise InvalidInput(
                f"cannot parse cron '{self.expr}': {exc}",
                field="trigger.cron",
                fix=f"write {CRON_FIELDS}, {CRON_EXAMPLE}",
            ) from None
        if not isinstance(tz, str):
            raise InvalidInput(
                "tz must be an IANA time zone name", field="trigger.tz", fix="e.g. 'Europe/Berlin'"
            )
        try:
            self.zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(
                f"unknown time zone '{tz}'",
                field="trigger.tz",
                fix="use an IANA name such as 'Europe/Berlin', 'America/New_York' or 'UTC'",
            ) from None
        self.tz = tz
        hour = "*" if self.expr.startswith("@") else fields[1]
        self.wildcard_hour = hour.startswith("*")

    def next_after(self, after_ms: int) -> int | None:
        """The first firing instant strictly after `after_ms` (None if it never fires again)."""
        after = _EPOCH + timedelta(milliseconds=after_ms)
        local = after.astimezone(self.zone).replace(tzinfo=None, fold=0) - _MAX_DST_SHIFT
        it = croniter(self.expr, local)
        for _ in range(100_000):
            try:
                candidate = it.get_next(datetime)
            except CroniterBadDateError:
                return None
            for instant in self._instants(candidate):
                if instant > after_ms:
                    return instant
        return None

    def _instants(self, naive: datetime) -> list[int]:
        """The UTC instants (ms) at which the local wall time `naive` fires, in order."""
        first = naive.replace(tzinfo=self.zone, fold=0)
        second = naive.replace(tzinfo=self.zone, fold=1)
        exists = first.astimezone(UTC).astimezone(self.zone).replace(tzinfo=None) == naive
        if not exists:  # in a spring-forward gap: fold=0 reads it with the old offset
            return [] if self.wildcard_hour else [_ms(first)]
        if first.utcoffset() != second.utcoffset() and self.wildcard_hour:
            return sorted({_ms(first), _ms(second)})
        return [_ms(first)]


def _ms(dt: datetime) -> int:
    return (dt.astimezone(UTC) - _EPOCH) // timedelta(milliseconds=1)


@dataclass
class Trigger:
    """A validated trigger; `spec` is its canonical JSON form."""

    kind: str
    spec: dict
    cron: CronTrigger | None = None
    every_ms: int | None = None
    at_ms: int | None = None

    def first_due(self, now_ms: int) -> int | None:
        """The first firing instant of a new schedule created at `now_ms` (time kinds only)."""
        if self.kind == "once":
            return self.at_ms
        if self.kind == "interval":
            start = self.at_ms if self.at_ms is not None else now_ms + self.every_ms
            return start if start > now_ms else self.next_after(start, now_ms)
        if self.kind == "cron":
            return self.cron.next_after(now_ms)
        return None

    def next_after(self, due_ms: int, after_ms: int) -> int | None:
        """The first instant after `after_ms` following the instant `due_ms` (time kinds)."""
        if self.kind == "once":
            return None
        if self.kind == "interval":
            steps = max(0, (after_ms - due_ms) // self.every_ms + 1)
            return due_ms + steps * self.every_ms
        return self.cron.next_after(max(due_ms, after_ms))


def parse_trigger(raw: Any, now_ms: int) -> Trigger:
    """Validate a trigger object; `now_ms` resolves `after` of a once trigger."""
    if not isinstance(raw, dict):
        raise InvalidInput(
            "trigger must be an object with a kind",
            field="trigger",
            fix=f'e.g. {{"kind": "cron", "cron": "0 3 * * *", "tz": "UTC"}}; kinds: '
            f"{', '.join(KINDS)}",
        )
    kind = raw.get("kind")
    if kind not in KINDS:
        raise InvalidInput(
            f"unknown trigger kind {kind!r}",
            field="trigger.kind",
            fix=f"use one of: {', '.join(KINDS)}",
        )
    allowed = {
        "once": {"at", "after"},
        "interval": {"every", "start"},
        "cron": {"cron", "tz"},
        "event": {"on", "name", "type", "twin_prefix", "function", "state", "names"},
        "condition": {"type", "when", "twin_prefix"},
    }[kind] | {"kind"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidInput(
            f"unknown field(s) for a {kind} trigger: {', '.join(unknown)}",
            field=f"trigger.{unknown[0]}",
            fix=f"use only: {', '.join(sorted(allowed))}",
        )
    return _PARSERS[kind](raw, now_ms)


def _once(raw: dict, now_ms: int) -> Trigger:
    if ("at" in raw) == ("after" in raw):
        raise InvalidInput(
            "a once trigger needs exactly one of 'at' or 'after'",
            field="trigger.at",
            fix='e.g. {"kind": "once", "after": "10m"} or "at": "2026-12-01T08:00:00Z"',
        )
    if "at" in raw:
        at = parse_ts_field(raw["at"], "trigger.at")
    else:
        at = now_ms + duration_ms(raw["after"], "trigger.after")
    return Trigger("once", {"kind": "once", "at": at}, at_ms=at)


def _interval(raw: dict, now_ms: int) -> Trigger:
    if "every" not in raw:
        raise InvalidInput(
            "an interval trigger needs 'every'", field="trigger.every", fix='e.g. "every": "5m"'
        )
    every = duration_ms(raw["every"], "trigger.every")
    start = parse_ts_field(raw["start"], "trigger.start") if raw.get("start") is not None else None
    spec = {"kind": "interval", "every": every, "start": start}
    return Trigger("interval", spec, every_ms=every, at_ms=start)


def _cron(raw: dict, now_ms: int) -> Trigger:
    if "cron" not in raw:
        raise InvalidInput(
            "a cron trigger needs 'cron'",
            field="trigger.cron",
            fix=f"{CRON_FIELDS}, {CRON_EXAMPLE}",
        )
    cron = CronTrigger(raw["cron"], raw.get("tz", "UTC"))
    if cron.next_after(now_ms) is None:
        raise InvalidInput(
            f"cron '{cron.expr}' never fires",
            field="trigger.cron",
            fix=f"use a date that exists, {CRON_EXAMPLE}",
        )
    return Trigger("cron", {"kind": "cron", "cron": cron.expr, "tz": cron.tz}, cron=cron)


def _event(raw: dict, now_ms: int) -> Trigger:
    on = raw.get("on", "event")
    if on not in EVENT_SOURCES:
        raise InvalidInput(
            f"unknown event source {on!r}",
            field="trigger.on",
            fix="use event (posted to /api/events), state, created, type or job",
        )
    spec: dict = {"kind": "event", "on": on}
    if on == "event":
        spec["name"] = check_name(raw.get("name"), "trigger.name")
    for key in ("type", "twin_prefix", "function", "state"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise InvalidInput(
                f"trigger.{key} must be a non-empty string",
                field=f"trigger.{key}",
                fix=f"give a string or leave {key} out to match all",
            )
        spec[key] = value
    names = raw.get("names")
    if names is not None:
        if on != "state" or not isinstance(names, list) or not names:
            raise InvalidInput(
                "trigger.names must be a non-empty list of property names, with on: state",
                field="trigger.names",
                fix='e.g. "names": ["flow"]: only batches carrying a flow value fire',
            )
        if not all(isinstance(n, str) and n for n in names):
            raise InvalidInput(
                "trigger.names must list property names",
                field="trigger.names",
                fix='e.g. ["flow", "pressure"]',
            )
        spec["names"] = list(names)
    if spec.get("state") not in (None, "succeeded", "failed"):
        raise InvalidInput(
            "trigger.state must be succeeded or failed",
            field="trigger.state",
            fix="leave it out to match every finished run",
        )
    return Trigger("event", spec)


def _condition(raw: dict, now_ms: int) -> Trigger:
    for key in ("type", "when"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise InvalidInput(
                f"a condition trigger needs '{key}'",
                field=f"trigger.{key}",
                fix='e.g. {"kind": "condition", "type": "pump", "when": "flow > 900"}',
            )
    prefix = raw.get("twin_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        raise InvalidInput(
            "trigger.twin_prefix must be a non-empty string",
            field="trigger.twin_prefix",
            fix="give a string or leave it out to match all twins of the type",
        )
    spec = {"kind": "condition", "type": raw["type"], "when": raw["when"], "twin_prefix": prefix}
    return Trigger("condition", spec)


_PARSERS = {
    "once": _once,
    "interval": _interval,
    "cron": _cron,
    "event": _event,
    "condition": _condition,
}


def due_instants(
    trigger: Trigger, next_at: int, now_ms: int, missed: str, grace_ms: int, limit: int
) -> tuple[list[int], int | None]:
    """(instants to fire now, the next instant to wait for) of a time trigger due at `next_at`.

    An instant older than `grace_ms` was missed (the scheduler was down or stalled): `skip`
    fires only if some instant lies within the grace window, `once` fires once for all of them,
    `catch_up` fires each one (at most `limit` per call; the rest on the next tick).
    """
    if next_at > now_ms:
        return [], next_at
    if missed == "catch_up":
        due: list[int] = []
        at: int | None = next_at
        while at is not None and at <= now_ms and len(due) < limit:
            due.append(at)
            at = trigger.next_after(at, at)
        return due, at
    following = trigger.next_after(next_at, now_ms)
    if now_ms - next_at <= grace_ms:
        return [next_at], following
    recent = trigger.next_after(next_at, now_ms - grace_ms - 1)
    if recent is not None and recent <= now_ms:
        return [recent], following
    return ([next_at] if missed == "once" else []), following
