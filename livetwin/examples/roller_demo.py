"""The roller-line part of `livetwin demo`: lines stream speeds in real time while their bearings
wear, and calibration follows the drags: the type's `calibration.every` makes it a system
schedule of the platform's scheduler (the demo prints true vs calibrated). The physics model is
a registered version, so the Models page shows it with the runs and twins that use it."""

from __future__ import annotations

import numpy as np

from livetwin.examples.rollers import DRAGS, ROLLER_LINE, ROLLER_TYPE, observations, roller_fleet
from livetwin.models.base import resolve_model
from livetwin.registry.lineage import code_hash

STEP_MS = 100  # the model's dt


class RollerDemo:
    """`lines` simulated roller lines feeding a platform, one model step every 100 ms."""

    def __init__(self, platform, lines: int = 10, seed: int = 11, every_s: float = 15.0):
        self.platform = platform
        self.sim = roller_fleet(lines, seed=seed)
        self.ids = [f"line-{i + 1}" for i in range(lines)]
        self.truth = self.sim.params[:, : len(DRAGS)].copy()
        calibration = {**ROLLER_TYPE["calibration"], "every": f"{every_s:g}s"}
        platform.put_type("roller_line", {**ROLLER_TYPE, "calibration": calibration})
        register_model(platform)
        self.next_ts: int | None = None

    def run_until(self, now_ms: int) -> int:
        """Simulate and ingest every step up to `now_ms`; returns the number of steps."""
        if self.next_ts is None:
            self.next_ts = now_ms - 60_000  # start a minute back, so calibration has data
        rows: list[dict] = []
        steps = 0
        while self.next_ts <= now_ms:
            sample = self.sim.step()
            self.truth = sample.params[:, : len(DRAGS)]
            rows += observations(sample, self.ids, self.next_ts)
            self.next_ts += STEP_MS
            steps += 1
        if rows:
            self.platform.ingest(rows)
        return steps

    def comparison(self) -> list[tuple[str, float, float, float, float]]:
        """(line, true b2, calibrated b2, lower, upper) for each line, as calibrated so far."""
        out = []
        for i, twin in enumerate(self.ids):
            b2 = self.platform.calibration(twin)["parameters"]["b2"]
            out.append((twin, float(self.truth[i, 1]), b2["value"], b2["lower"], b2["upper"]))
        return out


def register_model(platform) -> dict:
    """The roller-line model as version of `roller_line` in the registry: a new version only
    when its code changed since the last one (so a restarted demo keeps its version)."""
    hash_ = code_hash(ROLLER_LINE, resolve_model(ROLLER_LINE).fn)
    found = platform.registry.store.lookup_ref(ROLLER_LINE, hash_, namespace="default")
    if found is not None and found["code_matches"]:
        return platform.registry.get(found["name"], found["version"])
    return platform.registry.register(
        "roller_line",
        {
            "kind": "deductive",
            "ref": ROLLER_LINE,
            "author": "livetwin demo",
            "description": "4 rollers on one web: speeds, web tensions and slips from drive and "
            "brake torques; bearing drags b1..b4 calibrated (RK4, 20 substeps per 100 ms step)",
            "tags": {"example": "livetwin.examples.rollers"},
        },
    )


def coverage(rows: list[tuple[str, float, float, float, float]]) -> float:
    """Share of lines whose true drag lies inside the calibrated 95 % band."""
    inside = [lo is not None and lo <= true <= hi for _, true, _, lo, hi in rows]
    return float(np.mean(inside)) if inside else float("nan")
