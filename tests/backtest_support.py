"""A recorded fleet for back-test tests: twins reporting once a minute with known patterns."""

from __future__ import annotations

import numpy as np

from livetwin.journal import snapshot

T0 = 1_795_341_600_000  # 2026-11-22T10:00:00Z
MINUTE = 60_000
TWINS = [f"oven-{i}" for i in range(12)]
MINUTES = 180
START, END = T0 + 60 * MINUTE, T0 + 150 * MINUTE  # the window the tests back-test

OVEN = {
    "properties": {"temp": {"unit": "degC"}, "fan": {}, "valve": {}, "humidity": {}},
    "derived": {
        "temp_avg": "avg(temp, '10m')",
        "power": "fan * 2 + temp / 10",
    },
    "rules": {"fan_stuck": {"when": "fan > 9.5", "for": "2m"}},
}

# (twin, first minute, minutes above 80 degC): a hot spell of 5 minutes or more is the pattern
HOT = [("oven-1", 70, 7), ("oven-4", 100, 5), ("oven-4", 130, 6), ("oven-7", 90, 3)]
HOT_OUTSIDE = [("oven-2", 20, 8)]  # before the window


def temps(rng: np.random.Generator) -> np.ndarray:
    """[twin, minute] temperatures: 40-70 degC, with the hot spells at 85-95."""
    t = rng.uniform(40, 70, (len(TWINS), MINUTES)).round(3)
    for twin, first, length in HOT + HOT_OUTSIDE:
        t[TWINS.index(twin), first : first + length] = rng.uniform(85, 95, length).round(3)
    return t


def record(platform, seed: int = 3) -> np.ndarray:
    """Declare the oven type and ingest the fleet's history; the temperatures."""
    platform.put_type("oven", OVEN)
    rng = np.random.default_rng(seed)
    t = temps(rng)
    fan = rng.uniform(0, 10, (len(TWINS), MINUTES)).round(3)
    valve = rng.integers(0, 3, (len(TWINS), MINUTES)).astype(float)  # 0 now and then
    t_, fan, valve = t.tolist(), fan.tolist(), valve.tolist()
    rows = [
        {
            "twin": twin,
            "type": "oven",
            "ts": T0 + m * MINUTE + i,  # twins a millisecond apart
            "values": {"temp": t_[i][m], "fan": fan[i][m], "valve": valve[i][m]},
        }
        for m in range(MINUTES)
        for i, twin in enumerate(TWINS)
    ]
    for k in range(0, len(rows), 500):
        assert platform.ingest(rows[k : k + 500]).accepted == len(rows[k : k + 500])
    platform.alarms.sync()
    return t


def expected_hot_alarms(for_minutes: int = 5) -> set[tuple[str, int, int, int]]:
    """(twin, since, raised, cleared) of the hot spells in the window lasting `for_minutes`."""
    out = set()
    for twin, first, length in HOT:
        if length < for_minutes:
            continue
        i = TWINS.index(twin)
        since = T0 + first * MINUTE + i
        raised = since + for_minutes * MINUTE
        if START <= raised < END:
            out.add((twin, since, raised, T0 + (first + length) * MINUTE + i))
    return out


def live_fingerprint(platform) -> dict:
    """Everything live a back-test must leave byte-identical: engine state, history, alarms,
    journal."""
    with platform.core.lock:
        meta, arrays = snapshot.capture(platform.core.engine, 0)
        state = snapshot.encode(meta, arrays)
    history = {
        twin: platform.history(twin, None, start=T0 - MINUTE, end=T0 + 1000 * MINUTE)
        for twin in TWINS
    }
    return {
        "state": state,
        "history": history,
        "alarms": platform.alarms.list(limit=1000),
        "journal": platform.core.store.journal_size(),
        "last_seq": platform.core.store.last_seq(),
    }
