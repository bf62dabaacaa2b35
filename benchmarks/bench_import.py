"""File import benchmark: a generated CSV (wide layout, 5 values per row, 1,000 twins) imported
through the ingest path, with its peak memory, at two file sizes (memory should not grow with
the file), and the same file again (every row a duplicate).

Run with `livetwin bench import [--json] [--quick]`; each scenario prints one JSON line. Each
import runs in a child process so its peak RSS (VmHWM) is its own: `rss_before_mb` after the
platform opened, `peak_rss_mb` after the import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from common import PROPS, ROOT, T0, Report, temp_dir, type_spec  # noqa: E402

TWINS = 1_000
TARGET = 300_000  # values/s
MAPPING = {
    "type": "bench",
    "twin_column": "twin",
    "ts_column": "time",
    "values": {p: p for p in PROPS},
}


def main(json_only: bool = False, quick: bool = False) -> None:
    report = Report(json_only, quick)
    rows = 400_000 if quick else 2_000_000
    with temp_dir("livetwin-bench-import-") as tmp:
        for size in (rows // 4, rows):
            path = tmp / f"bench-{size}.csv"
            report.note(f"writing {size:,} rows x {len(PROPS)} values to {path.name} ...")
            write_csv(path, size)
            mb = path.stat().st_size / 2**20
            data = tmp / f"data-{size}"
            first = run_import(data, path, declare=True)
            again = run_import(data, path, declare=False)
            values = first["accepted"] * len(PROPS)
            report.emit(
                f"CSV import, {size:,} rows ({mb:.0f} MB)",
                values_per_s=values / first["seconds"],
                observations_per_s=first["accepted"] / first["seconds"],
                target=f">= {TARGET:,} values/s",
                meets_target=values / first["seconds"] >= TARGET,
                file_mb=round(mb, 1),
                seconds=first["seconds"],
                peak_rss_mb=first["peak_rss_mb"],
                rss_before_mb=first["rss_before_mb"],
                accepted=first["accepted"],
                rejected=first["rejected_total"],
            )
            report.emit(
                f"the same file again, {size:,} rows (all duplicates)",
                values_per_s=size * len(PROPS) / again["seconds"],
                observations_per_s=size / again["seconds"],
                seconds=again["seconds"],
                duplicates=again["duplicates"],
                accepted=again["accepted"],
                peak_rss_mb=again["peak_rss_mb"],
            )
    report.table("livetwin bench import" + (" (--quick)" if quick else ""))


def write_csv(path: Path, rows: int, chunk: int = 200_000) -> None:
    """`rows` rows: twin, ISO time, and one value column per property (seeded)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(7)
    with pacsv.CSVWriter(path, _schema(pa)) as out:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            k = np.arange(start, start + n)
            twins = pa.array(np.char.add("twin-", (k % TWINS).astype(str)))
            ts = pa.array(T0 + (k // TWINS) * 1000, pa.timestamp("ms", tz="UTC"))
            values = [pa.array(np.round(rng.random(n) * 100, 3)) for _ in PROPS]
            out.write_batch(pa.RecordBatch.from_arrays([twins, ts, *values], schema=_schema(pa)))


def _schema(pa):
    return pa.schema(
        [("twin", pa.string()), ("time", pa.timestamp("ms", tz="UTC"))]
        + [(p, pa.float64()) for p in PROPS]
    )


def run_import(data: Path, path: Path, *, declare: bool) -> dict:
    """One import in a child process; its report with peak RSS."""
    args = [sys.executable, __file__, "--child", str(data), str(path), "1" if declare else "0"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"import failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(data: str, path: str, declare: str) -> None:
    from livetwin.platform import Platform, Settings

    settings = Settings(webhooks=False, run_schedules=False)
    with Platform(data, settings=settings) as platform:
        if declare == "1":
            platform.put_type("bench", type_spec())
        before = _hwm_mb()
        result = platform.import_file(path, MAPPING)
        peak = _hwm_mb()
    result = {k: v for k, v in result.items() if k != "rejected"}
    print(json.dumps({**result, "peak_rss_mb": round(peak), "rss_before_mb": round(before)}))


def _hwm_mb() -> float:
    """This process's peak RSS (VmHWM: its own, unlike ru_maxrss after fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(*sys.argv[2:5])
