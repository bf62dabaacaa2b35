"""Durable workflows: a process killed (SIGKILL) in the middle of a scheduled workflow run; on the
next start the run resumes after its finished tasks, which do not run again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from livetwin.platform import Platform
    from livetwin.schedule.workflow import task, workflow

    data, calls, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

    @task
    def step(name, x):
        with calls.open("a") as f:
            f.write(name + "\\n")
        if name == "third" and mode == "crash":
            time.sleep(600)  # killed here
        return x + 1

    @workflow
    def chain(start=0):
        return step("third", step("second", step("first", start)))

    with Platform(data) as platform:
        s = platform.scheduler
        s.register_workflow("chain", chain)
        if mode == "crash":
            s.run_function("chain", args={"start": 10})
            time.sleep(600)
        s.wait_idle(60)  # the interrupted run runs again from the queue
        run = s.run(s.runs(function="chain")[0]["id"])
        print(json.dumps({"state": run["state"], "attempts": run["attempts"],
                          "result": run["result"], "id": run["id"]}))
    """
)


def python(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "chain.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE, text=True
    )


def test_a_workflow_killed_mid_run_resumes_after_its_finished_tasks(tmp_path):
    data, calls = str(tmp_path / "data"), tmp_path / "calls.txt"
    crashed = python(tmp_path, data, str(calls), "crash")
    try:
        deadline = time.monotonic() + 60
        while "third" not in (calls.read_text() if calls.exists() else ""):
            assert crashed.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        crashed.kill()  # SIGKILL: no shutdown, the run stays 'running' in schedule.db
        crashed.wait()
    resumed = python(tmp_path, data, str(calls), "resume")
    out, _ = resumed.communicate(timeout=120)
    run = json.loads(out.strip().splitlines()[-1])
    assert run["state"] == "succeeded" and run["result"]["value"] == 13
    assert run["result"]["id"] == run["id"]  # the workflow run is the scheduler run
    assert calls.read_text().split() == ["first", "second", "third", "third"]
    assert [t.get("resumed", False) for t in run["result"]["tasks"]] == [True, True, False]
