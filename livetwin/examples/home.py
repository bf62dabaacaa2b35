"""The home demo fleet: homes with rooms and motion sensors, a few weeks of synthetic motion with a
weekday x hour rhythm (one occupant stops moving), seasonal baselines per room and home, and the
"no activity for too long" emergency check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from livetwin.errors import NotFound
from livetwin.jobs.baseline import model_name, train_baselines
from livetwin.jobs.inactivity import RULE, check_inactivity, load_baselines
from livetwin.models.baseline import DAY_MS, HOUR_MS, week_cells
from livetwin.timefmt import format_ts, parse_ts

ROOMS = ("bedroom", "bathroom", "kitchen", "living")
TZ = "Europe/Berlin"
PREFIX = "activity."  # model `activity.<home>` (and `activity.<home>.<room>`) per twin
DEMO_NOW = parse_ts("2026-04-08T13:00:00Z")  # Wednesday 15:00 in Berlin (after the DST change)

ROOM_TYPE = {
    "description": "A room with a motion (PIR occupancy) sensor that reports changes",
    "properties": {
        "motion": {
            "min": 0,
            "max": 1,
            "description": "1 when motion starts, 0 when the sensor times out (still or gone)",
        },
    },
    "derived": {
        "occupied_min_1h": {"expr": "time_in(motion > 0, '1h') / 60", "unit": "min"},
        "visits_1h": {"expr": "sum(motion, '1h')", "unit": "1/h"},
    },
}

HOME_TYPE = {
    "description": "A home whose rooms have motion sensors; the emergency check writes back here",
    "properties": {
        "emergency": {"min": 0, "max": 1, "description": "1 when inactive beyond the baseline"},
        "inactive_min": {"min": 0, "unit": "min", "description": "minutes since any motion"},
        "threshold_min": {"min": 0, "unit": "min", "description": "the emergency threshold now"},
        "last_activity": {"unit": "ms", "description": "when motion was last reported (epoch)"},
        "inactivity_emergency": {
            "min": 0,
            "max": 1,
            "description": "1 from an emergency until motion resumes: the `inactivity` rule",
        },
    },
    "rules": {
        "inactivity": {
            "when": "inactivity_emergency > 0",
            "severity": "critical",
            "message": "no activity in {twin} for {inactive_min:.1f} min: longer than the "
            "seasonal threshold of {threshold_min:.1f} min",
            "description": "check-inactivity found the home quiet for longer than its baseline",
        },
    },
    "children": ["room"],
}

# (first hour, presence intervals per hour, room weights in ROOMS order) until the next row.
_RETIRED = (
    (0, 0.4, (6, 4, 0, 0)),
    (6, 2.0, (4, 4, 2, 0)),
    (7, 6.0, (2, 3, 4, 1)),
    (9, 4.0, (1.5, 1.5, 3, 4)),
    (12, 5.0, (0, 2, 5, 3)),
    (14, 3.0, (1, 1.5, 1.5, 6)),
    (18, 5.0, (0, 1, 5, 4)),
    (20, 4.0, (0.5, 1, 2, 6.5)),
    (22, 2.0, (4, 4, 0.5, 1.5)),
    (23, 0.6, (7, 3, 0, 0)),
)
_WORKER_WEEKDAY = (
    (0, 0.4, (6, 4, 0, 0)),
    (6, 6.0, (2, 4, 3, 1)),
    (8, 3.0, (1, 3, 3, 3)),
    (9, 0.0, (1, 1, 1, 1)),  # away at work
    (17, 5.0, (0.5, 1.5, 4, 4)),
    (19, 4.0, (0, 1, 3, 6)),
    (22, 2.0, (4, 4, 0.5, 1.5)),
    (23, 0.6, (7, 3, 0, 0)),
)
_WORKER_WEEKEND = (
    (0, 0.5, (6, 4, 0, 0)),
    (8, 4.0, (2, 3, 4, 1)),
    (10, 2.5, (1, 1.5, 2, 5.5)),
    (13, 1.0, (1, 1, 1, 1)),  # out in the afternoon
    (18, 5.0, (0, 1, 5, 4)),
    (20, 4.0, (0.5, 1, 2, 6.5)),
    (23, 1.0, (6, 4, 0, 0)),
)
_MEDIAN_MIN = np.array([18.0, 5.0, 9.0, 14.0])  # typical presence interval per room


def _profile(weekday_rows: tuple, weekend_rows: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(7, 24) rates and (7, 24, rooms) room probabilities from hour tables."""
    rates = np.zeros((7, 24))
    weights = np.zeros((7, 24, len(ROOMS)))
    for day in range(7):
        rows = weekday_rows if day < 5 else weekend_rows
        for (hour, rate, w), nxt in zip(rows, (*rows[1:], (24, 0, ())), strict=True):
            rates[day, hour : nxt[0]] = rate
            weights[day, hour : nxt[0]] = np.asarray(w) / np.sum(w)
    return rates, weights


PERSONAS = {
    "retired": _profile(_RETIRED, _RETIRED),
    "worker": _profile(_WORKER_WEEKDAY, _WORKER_WEEKEND),
}


def expected_visits(persona: str) -> np.ndarray:
    """The generator's true mean presence intervals per hour, (7, 24, rooms), local time."""
    rates, weights = PERSONAS[persona]
    return rates[:, :, None] * weights


@dataclass
class HomeFleet:
    """Synthetic motion reports of `homes` homes x 4 rooms (sorted by time, a fixed seed)."""

    homes: list[str]
    personas: list[str]
    emergency_home: str | None
    stop_ms: int | None
    start_ms: int
    end_ms: int
    tz: str
    twin: np.ndarray = field(repr=False)  # room id per report
    ts: np.ndarray = field(repr=False)
    motion: np.ndarray = field(repr=False)

    def observations(self) -> list[dict]:
        """Room observations for `Platform.ingest` (the first of each room names its home)."""
        out = []
        parented: set[str] = set()
        for twin, ts, value in zip(
            self.twin.tolist(), self.ts.tolist(), self.motion.tolist(), strict=True
        ):
            obs = {"twin": twin, "type": "room", "ts": ts, "values": {"motion": value}}
            if twin not in parented:
                obs["parent"] = twin.rsplit("/", 1)[0]
                parented.add(twin)
            out.append(obs)
        return out


def home_fleet(
    homes: int = 4,
    *,
    weeks: int = 4,
    seed: int = 5,
    tz: str = TZ,
    end_ms: int = DEMO_NOW,
    emergency_home: int | None = -1,
    stop_before_end_ms: int = 5 * HOUR_MS,
) -> HomeFleet:
    """Generate motion reports for the `weeks` before `end_ms`.

    Even homes are workers (away on weekday daytime), odd homes retired (at home all day). Each
    hour draws Poisson(rate x a daily mood factor) presence intervals at uniform instants,
    rooms by the hour's weights, lognormal durations; an interval ends before the next starts
    (one occupant). In `emergency_home` (an index; None for none) every report after
    `end_ms - stop_before_end_ms` is missing: the occupant stopped moving.
    """
    rng = np.random.default_rng(seed)
    start = end_ms - weeks * 7 * DAY_MS
    ids = [f"home-{i + 1}" for i in range(homes)]
    personas = ["worker" if i % 2 == 0 else "retired" for i in range(homes)]
    stopped = ids[emergency_home] if emergency_home is not None and homes else None
    stop_ms = end_ms - stop_before_end_ms if stopped else None
    hours = np.arange(start - start % HOUR_MS, end_ms, HOUR_MS, dtype=np.int64)
    cells = week_cells(hours, tz)
    day_index = (hours - hours[0]) // DAY_MS
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for home, persona in zip(ids, personas, strict=True):
        rates, weights = PERSONAS[persona]
        mood = rng.gamma(10.0, 0.1, int(day_index[-1]) + 1)[day_index]
        n = rng.poisson(rates.ravel()[cells] * mood)
        begin = np.repeat(hours, n) + rng.integers(0, HOUR_MS, int(n.sum()))
        cum = np.cumsum(weights.reshape(-1, len(ROOMS))[np.repeat(cells, n)], axis=1)
        room = (cum < rng.random(begin.size)[:, None]).sum(axis=1).clip(0, len(ROOMS) - 1)
        order = np.argsort(begin, kind="stable")
        begin, room = begin[order], room[order]
        length = (_MEDIAN_MIN[room] * 60_000 * rng.lognormal(0, 0.6, begin.size)).astype(np.int64)
        gap = np.diff(begin, append=np.int64(end_ms))
        finish = np.minimum(begin + length, begin + gap - np.minimum(1000, gap // 2))
        if home == stopped:
            keep = begin < stop_ms
            begin, room, finish = begin[keep], room[keep], np.minimum(finish[keep], stop_ms)
        keep = (begin >= start) & (finish < end_ms) & (finish > begin)
        begin, room, finish = begin[keep], room[keep], finish[keep]
        names = np.array([f"{home}/{r}" for r in ROOMS])[room]
        parts.append(
            (
                np.concatenate([names, names]),
                np.concatenate([begin, finish]),
                np.repeat([1.0, 0.0], begin.size),
            )
        )
    twin = np.concatenate([p[0] for p in parts])
    ts = np.concatenate([p[1] for p in parts])
    motion = np.concatenate([p[2] for p in parts])
    order = np.argsort(ts, kind="stable")
    return HomeFleet(
        homes=ids,
        personas=personas,
        emergency_home=stopped,
        stop_ms=stop_ms,
        start_ms=int(start),
        end_ms=int(end_ms),
        tz=tz,
        twin=twin[order],
        ts=ts[order],
        motion=motion[order],
    )


def run_home_demo(
    platform,
    *,
    homes: int = 4,
    weeks: int = 4,
    seed: int = 5,
    tz: str = TZ,
    now_ms: int = DEMO_NOW,
    emergency_home: int | None = -1,
    announce: bool = True,
    out: Callable[[str], None] | None = print,
) -> dict:
    """Ingest a home fleet's history, then do what the scheduled jobs do (`schedule_home_jobs`):
    train a baseline per room and per home from the stored history up to last midnight into the
    registry (`train-baseline`), and check every home and room at `now_ms` with the registered
    versions (`check-inactivity`): each home's verdict is written back and, with `announce`,
    its `inactivity_emergency` too, on which the home type's rule raises a critical `inactivity`
    alarm per emergency (rooms are evidence, never alarmed).

    Returns {"now", "homes": verdicts, "rooms": verdicts, "emergencies": [home ids], "alarms",
    "baselines": {twin: ActivityBaseline}, "models": {twin: {model, version}}, "training",
    "fleet": HomeFleet}.
    """
    fleet = home_fleet(
        homes, weeks=weeks, seed=seed, tz=tz, end_ms=now_ms, emergency_home=emergency_home
    )
    platform.put_type("room", ROOM_TYPE)
    platform.put_type("home", HOME_TYPE)
    platform.ingest(
        [
            {"twin": h, "type": "home", "ts": fleet.start_ms, "values": {"emergency": 0}}
            for h in fleet.homes
        ]
    )
    platform.ingest(fleet.observations())
    training = {
        kind: train_baselines(platform, kind, tz=tz, since=fleet.start_ms, now_ms=now_ms)
        for kind in ("room", "home")
    }
    home_check = check_inactivity(platform, "home", now_ms=now_ms, alarms=announce)
    room_check = check_inactivity(platform, "room", now_ms=now_ms, alarms=False, publish=False)
    if announce:
        platform.alarms.sync()  # the rule has seen the written-back verdicts
    raised = [platform.alarms.find_open(v["twin"], RULE) for v in home_check["verdicts"]]
    twins = [*fleet.homes, *np.unique(fleet.twin).tolist()]
    baselines, models = load_baselines(platform, {t: model_name(PREFIX, t) for t in twins})
    home_verdicts = home_check["verdicts"]
    if out is not None:
        out(
            f"home demo: {len(fleet.ts)} motion reports from {len(fleet.homes)} homes x "
            f"{len(ROOMS)} rooms, {format_ts(fleet.start_ms)} .. {format_ts(now_ms)} ({tz}); "
            f"{sum(t['versions'] for t in training.values())} baselines trained up to "
            f"{training['home']['training']['end']}"
        )
        for v in home_verdicts:
            flag = "EMERGENCY" if v["emergency"] else "ok"
            out(
                f"  {v['twin']:8} {flag:9} inactive {v.get('inactive_min', '?')} min, threshold "
                f"{v.get('threshold_min', '?')} min ({v.get('weekday')} {v.get('hour')}:00)"
            )
    return {
        "now": format_ts(now_ms),
        "homes": home_verdicts,
        "rooms": room_check["verdicts"],
        "emergencies": home_check["emergencies"],
        "alarms": [a for a in raised if a is not None],
        "baselines": baselines,
        "models": models,
        "training": training,
        "fleet": fleet,
    }


def home_job_functions(tz: str = TZ) -> dict[str, dict]:
    """The scheduler functions of the home fleet: nightly training of rooms and homes, and the
    inactivity check of homes."""
    return {
        "train-home-baselines": {
            "kind": "builtin",
            "job": "train-baseline",
            "args": {"type": "home", "tz": tz, "model_prefix": PREFIX},
            "description": "retrain each home's activity baseline up to last midnight",
        },
        "train-room-baselines": {
            "kind": "builtin",
            "job": "train-baseline",
            "args": {"type": "room", "tz": tz, "model_prefix": PREFIX},
            "description": "retrain each room's activity baseline up to last midnight",
        },
        "check-home-inactivity": {
            "kind": "builtin",
            "job": "check-inactivity",
            "args": {"type": "home", "model_prefix": PREFIX},
            "description": "check homes against their seasonal baseline (the `inactivity` rule "
            "raises and clears alarms on the verdicts)",
        },
    }


def home_job_schedules(tz: str = TZ, namespace: str = "default") -> list[dict]:
    """Retrain nightly at 03:00 local time, check every 5 minutes."""
    nightly = {"kind": "cron", "cron": "0 3 * * *", "tz": tz}
    return [
        {"id": "home-baselines-nightly", "function": "train-home-baselines", "trigger": nightly,
         "missed": "once", "namespace": namespace},
        {"id": "room-baselines-nightly", "function": "train-room-baselines", "trigger": nightly,
         "missed": "once", "namespace": namespace},
        {"id": "home-inactivity-5m", "function": "check-home-inactivity",
         "trigger": {"kind": "cron", "cron": "*/5 * * * *", "tz": tz}, "missed": "skip",
         "namespace": namespace},
    ]  # fmt: skip


def schedule_home_jobs(platform, *, tz: str = TZ, namespace: str = "default") -> dict:
    """Declare the home fleet's functions and cron schedules on `platform.scheduler`
    (idempotent: an unchanged schedule keeps its next run; a changed one is replaced)."""
    scheduler = platform.scheduler
    functions = [
        scheduler.define_function(name, spec, namespace)
        for name, spec in home_job_functions(tz).items()
    ]
    schedules = []
    for body in home_job_schedules(tz, namespace):
        try:
            have = scheduler.schedule(body["id"])
        except NotFound:
            have = None
        if have is not None and _same_schedule(have, body):
            schedules.append(have)
            continue
        if have is not None:
            scheduler.delete_schedule(body["id"])
        schedules.append(scheduler.add_schedule(body))
    return {"functions": functions, "schedules": schedules}


def _same_schedule(have: dict, body: dict) -> bool:
    return (
        have["function"] == body["function"]
        and have["namespace"] == body["namespace"]
        and have["missed"] == body["missed"]
        and all(have["trigger"].get(k) == v for k, v in body["trigger"].items())
    )
