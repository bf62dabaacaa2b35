"""`livetwin bench calibrate`'s table says how to get FilterPy when it is missing (never
`filterpy xNone`) and prints every kind of row, including skipped ones."""

from __future__ import annotations

from benchmarks.bench_calibrate import FILTERPY_MISSING, table_line


def test_rows_without_filterpy_say_how_to_install_it():
    timed = {"scenario": "rollers", "n_twins": 1000, "filter_steps_per_s": 7892.4}
    missing = table_line({**timed, "filterpy_ratio": None, "coverage_95": None}, filterpy=False)
    assert "pip install 'livetwin[bench]'" in missing and "xNone" not in missing
    assert "x483" in table_line({**timed, "filterpy_ratio": 483}, filterpy=True)
    loaded = table_line({**timed, "filterpy_ratio": 483, "load_avg": [1.5, 1.2, 0.9]}, True)
    assert loaded.endswith("load 1.5")
    skipped = table_line({"scenario": "filterpy", "skipped": FILTERPY_MISSING}, filterpy=False)
    assert "skipped" in skipped and "livetwin[bench]" in skipped
    untimed = table_line({"scenario": "accuracy", "n_twins": 200, "coverage_95": 0.97}, True)
    assert "steps/s=       -" in untimed and "coverage=0.97" in untimed
    fit = {
        "scenario": "model-fit",
        "n_twins": 1000,
        "detected": 1.0,
        "detect_steps_median": 7.0,
        "false_alarms_per_twin_day": 0.019,
    }
    assert "false alarms/twin-day 0.019" in table_line(fit, True)
