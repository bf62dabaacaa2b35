"""The demo fleet: centrifugal pumps with flow, pressure and power, and a simulator for them."""

from __future__ import annotations

import numpy as np

PUMP_TYPE = {
    "description": "A centrifugal pump in a water network",
    "properties": {
        "flow": {"unit": "m3/h", "min": 0, "max": 1000},
        "pressure": {"unit": "bar", "min": 0, "max": 40},
        "power": {"unit": "kW", "min": 0, "max": 500},
        "temperature": {"unit": "degC", "min": -40, "max": 150},
    },
    "parameters": {
        "rated_power": {"value": 30, "unit": "kW", "min": 1, "max": 500},
    },
    "derived": {
        "hydraulic_kw": {"expr": "flow * pressure / 36", "unit": "kW"},
        "efficiency": {"expr": "hydraulic_kw / power if power > 0 else 0", "unit": ""},
        "load": {"expr": "power / rated_power", "unit": ""},
        "flow_avg_10m": {"expr": "avg(flow, '10m')", "unit": "m3/h"},
        "hot_minutes_1h": {"expr": "time_in(temperature > 70, '1h') / 60", "unit": "min"},
    },
}

STATION_TYPE = {
    "description": "A pumping station holding pumps",
    "properties": {"inlet_level": {"unit": "m", "min": 0, "max": 50}},
    "children": ["pump"],
}


class PumpFleet:
    """A reproducible random walk of `n` pumps in `stations` stations."""

    def __init__(self, n: int = 50, stations: int = 5, seed: int = 7):
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.stations = [f"station-{s + 1}" for s in range(stations)]
        self.ids = [f"pump-{i + 1}" for i in range(n)]
        self.parent = [self.stations[i % stations] for i in range(n)]
        self.flow = self.rng.uniform(40, 120, n)
        self.pressure = self.rng.uniform(2, 6, n)
        self.temperature = self.rng.uniform(35, 60, n)
        self.sent_parents = False

    def tick(self, ts_ms: int) -> list[dict]:
        """One observation per station and per pump at `ts_ms`."""
        rng = self.rng
        self.flow = np.clip(self.flow + rng.normal(0, 3, self.n), 5, 300)
        self.pressure = np.clip(self.pressure + rng.normal(0, 0.1, self.n), 0.5, 12)
        self.temperature = np.clip(self.temperature + rng.normal(0, 1.5, self.n), 20, 95)
        efficiency = 0.55 + 0.15 * np.sin(self.flow / 60)
        power = self.flow * self.pressure / 36 / efficiency
        out: list[dict] = [
            {
                "twin": s,
                "type": "station",
                "ts": ts_ms,
                "values": {"inlet_level": float(rng.uniform(3, 5))},
            }
            for s in self.stations
        ]
        for i, twin in enumerate(self.ids):
            obs = {
                "twin": twin,
                "type": "pump",
                "ts": ts_ms,
                "values": {
                    "flow": round(float(self.flow[i]), 3),
                    "pressure": round(float(self.pressure[i]), 3),
                    "power": round(float(power[i]), 3),
                    "temperature": round(float(self.temperature[i]), 2),
                },
            }
            if not self.sent_parents:
                obs["parent"] = self.parent[i]
            out.append(obs)
        self.sent_parents = True
        return out


def declare(platform) -> None:
    """Declare the demo types on a platform (idempotent)."""
    platform.put_type("station", STATION_TYPE)
    platform.put_type("pump", PUMP_TYPE)
