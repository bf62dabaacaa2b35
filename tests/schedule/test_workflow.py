"""Workflows: dynamic DAGs, the YAML form, retries, failure isolation and lineage nodes."""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import sqlite3
import threading
from types import SimpleNamespace

import pytest

from livetwin.errors import InvalidInput
from livetwin.registry.lineage import LineageStore
from livetwin.schedule.workflow import (
    Executor,
    UpstreamFailed,
    current_task,
    load_workflow,
    task,
    workflow,
    workflow_job,
)
from livetwin.timefmt import parse_ts

WINDOW = {"type": "room", "start": "2026-03-09T00:00:00Z", "end": "2026-04-06T00:00:00Z"}


@task
def square(x: int) -> int:
    return x * x


@task
def total(values: list) -> int:
    return sum(values)


@task
def halve(x: int) -> float:
    return x / 2


@task
def fit(days: int) -> dict:
    current_task().reads(data=WINDOW, model=("room-baseline", 3))
    return {"days": days}


@task
def worker_pid(x: int) -> tuple[int, int]:
    return os.getpid(), x * 10


@workflow
def squares_then_maybe_halve(n: int):
    parts = [square(i) for i in range(n)]  # a loop: n tasks
    summed = total(parts)
    if summed.result() > 20:  # a condition on a task's value
        return halve(summed)
    return summed


@pytest.fixture
def lineage(tmp_path):
    store = LineageStore(tmp_path)
    yield store
    store.close()


@pytest.fixture
def executor(lineage):
    with Executor(lineage, max_workers=4) as ex:
        yield ex


def walked_ids(lineage, node_id, direction, depth=10) -> set[str]:
    return {n["id"] for n in lineage.walk(node_id, direction, depth)["nodes"]}


def names(run) -> list[str]:
    return sorted(t["name"] for t in run.to_dict()["tasks"])


def test_dynamic_dag_loop_and_condition(executor, lineage):
    big = executor.start(squares_then_maybe_halve, 5)
    assert big.result() == 15.0  # (0+1+4+9+16) / 2
    assert names(big) == ["halve", "square", "square", "square", "square", "square", "total"]
    small = executor.start(squares_then_maybe_halve, 3)
    assert small.result() == 5  # 0+1+4: the condition skips halve
    assert names(small) == ["square", "square", "square", "total"]
    assert big.state == small.state == "succeeded"

    # lineage: total's parents are the five squares; halve's parent is total
    tasks = {t.name: t for t in big.tasks if t.name != "square"}
    squares = [t.node_id for t in big.tasks if t.name == "square"]
    total_node = lineage.node(tasks["total"].node_id)
    assert sorted(total_node["parents"]) == sorted(squares)
    assert lineage.node(tasks["halve"].node_id)["parents"] == [tasks["total"].node_id]
    run_node = lineage.node(big.node_id)
    assert run_node["kind"] == "workflow" and run_node["parents"] == [tasks["halve"].node_id]
    assert run_node["outputs"] == {"value": 15.0}
    # walking up from the run reaches every task of the run, and nothing of the other run
    reached = walked_ids(lineage, big.node_id, "up")
    assert reached == {big.node_id, *squares, tasks["total"].node_id, tasks["halve"].node_id}
    down = lineage.walk(squares[0], "down", depth=1)
    assert [n["name"] for n in down["nodes"]] == ["square", "total"]
    assert down["edges"] == [{"from": squares[0], "to": tasks["total"].node_id}]


def test_lineage_node_records_code_hash_inputs_reads_and_host(executor, lineage):
    @workflow
    def train():
        return fit(7)

    run = executor.start(train)
    assert run.result() == {"days": 7}
    node = lineage.node(run.tasks[0].node_id)
    expected = hashlib.sha256(inspect.getsource(fit.fn).encode()).hexdigest()
    assert node["code_hash"] == expected
    assert node["kind"] == "task" and node["name"] == "fit"
    assert node["inputs"]["args"] == {"days": 7}
    assert node["inputs"]["data"] == [
        {"type": "room", "start": 1773014400000, "end": 1775433600000}
    ]
    assert node["inputs"]["models"] == [{"name": "room-baseline", "version": 3}]
    assert node["inputs"]["workflow_run"] == run.id
    assert node["outputs"] == {"value": {"days": 7}}
    assert node["host"] == f"{socket.gethostname()}:{os.getpid()}" and node["parents"] == []
    assert parse_ts(node["started"]) <= parse_ts(node["finished"])
    assert run.tasks[0].started_ms == parse_ts(node["started"])


def test_lineage_times_come_from_the_stores_clock(tmp_path):
    ticks = iter(range(1_800_000_000_000, 1_800_000_000_100))
    store = LineageStore(tmp_path, clock=lambda: next(ticks))  # platform.lineage: platform.clock
    try:
        with Executor(store) as ex:
            run = ex.start(squares_then_maybe_halve, 2)
            run.result()
        node = store.node(run.node_id)
        task_node = store.node(run.tasks[0].node_id)
    finally:
        store.close()
    started, finished = parse_ts(node["started"]), parse_ts(node["finished"])
    assert 1_800_000_000_000 <= started < finished < 1_800_000_000_100
    assert (started, finished) == (run.started_ms, run.finished_ms)
    assert started < parse_ts(task_node["started"]) <= parse_ts(task_node["finished"]) < finished


def test_retries_until_success(executor, lineage):
    calls = []

    @task(retries=2)
    def flaky(x):
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)} failed")
        return x + 1

    @workflow
    def wf():
        return flaky(1)

    run = executor.start(wf)
    assert run.result() == 2
    assert calls == [1, 1, 1]
    record = run.to_dict()["tasks"][0]
    assert record["state"] == "succeeded" and record["attempts"] == 3
    assert lineage.node(record["node"])["inputs"]["attempts"] == 3


def test_failure_fails_the_run_but_independent_branches_finish(executor, lineage):
    attempts = []

    @task(retries=1)
    def broken(x):
        attempts.append(x)
        raise ValueError(f"sensor {x} is broken")

    @workflow
    def wf():
        bad = broken(3)
        after_bad = square(bad)  # depends on the failure: never runs
        good = [square(i) for i in range(3)]  # independent: must finish
        return total([after_bad, *good])

    run = executor.start(wf)
    with pytest.raises(ValueError, match="sensor 3 is broken"):
        run.result()
    assert attempts == [3, 3]  # the first attempt and one retry
    states = {}
    for t in run.to_dict()["tasks"]:
        states.setdefault(t["name"], []).append(t["state"])
    assert states["broken"] == ["failed"]
    assert sorted(states["square"]) == ["skipped", "succeeded", "succeeded", "succeeded"]
    assert states["total"] == ["skipped"]
    assert run.state == "failed" and "sensor 3 is broken" in run.to_dict()["error"]
    skipped = next(t for t in run.tasks if t.name == "total")
    with pytest.raises(UpstreamFailed):
        skipped.result()
    failed_node = lineage.node(next(t for t in run.tasks if t.name == "broken").node_id)
    assert failed_node["outputs"] == {"error": "ValueError: sensor 3 is broken"}


def test_a_failing_result_inside_the_body_reports_the_task_error(executor):
    @task
    def boom():
        raise KeyError("missing column")

    @workflow
    def wf():
        if boom().result():  # raises inside the body
            return 1
        return 0

    with pytest.raises(KeyError, match="missing column"):
        executor.run(wf)


def test_independent_tasks_run_at_the_same_time(executor):
    gate = threading.Event()

    @task
    def wait_for_gate():
        return gate.wait(timeout=10)  # only true if open_gate runs while this one waits

    @task
    def open_gate():
        gate.set()
        return True

    @workflow
    def wf():
        return [wait_for_gate(), open_gate()]

    assert executor.run(wf) == [True, True]


def test_explicit_ordering_with_after(executor):
    order = []

    @task
    def step(name):
        order.append(name)
        return name

    @workflow
    def wf():
        first = step("first")
        return step.submit("second", after=[first])

    assert executor.run(wf) == "second"
    assert order == ["first", "second"]


def test_tasks_and_workflows_called_outside_an_executor():
    assert square(4) == 16  # a task outside a workflow is a plain call
    assert fit(3) == {"days": 3}  # current_task() works there too
    with pytest.raises(RuntimeError, match="only available inside a @task"):
        current_task()
    with pytest.raises(RuntimeError, match=r"Executor\(platform.lineage\)"):
        squares_then_maybe_halve(3)  # a workflow needs an executor that records lineage


def test_bad_reads_are_rejected(executor):
    @task
    def reads_badly():
        current_task().reads(data={"start": "yesterday", "end": "today"})

    @workflow
    def wf():
        return reads_badly()

    with pytest.raises(InvalidInput) as info:
        executor.run(wf)
    assert info.value.field == "data.start"


def test_process_executor_runs_tasks_in_other_processes(lineage):
    @workflow
    def wf():
        return [worker_pid(i) for i in range(3)]

    with Executor(lineage, kind="process", max_workers=2) as ex:
        run = ex.start(wf)
        values = run.result()
    assert [v[1] for v in values] == [0, 10, 20]
    assert all(pid != os.getpid() for pid, _ in values)
    nodes = lineage.walk(run.node_id, "up", depth=1)["nodes"]
    assert sorted(n["kind"] for n in nodes) == ["task", "task", "task", "workflow"]


def test_process_executor_refuses_local_functions(lineage):
    @task
    def local(x):
        return x

    @workflow
    def wf():
        return local(1)

    with Executor(lineage, kind="process", max_workers=1) as ex:
        with pytest.raises(InvalidInput, match="cannot import it") as info:
            ex.run(wf)
    assert info.value.field == "kind"


# ---- the YAML form ---------------------------------------------------------------------------

FUNCTIONS = {"square": square, "total": total, "halve": halve, "fit": fit}

CHAIN = """
name: nightly
steps:
  - {name: a, function: square, args: {x: 3}}
  - {name: b, function: square, args: [4]}
  - {name: both, function: total, args: {values: [$a, $b]}}
  - {name: half, function: halve, args: {x: $both}}
  - {name: train, function: fit, args: {days: 7}, after: [half]}
"""


def test_yaml_chain_runs_in_dependency_order(executor, lineage):
    wf = load_workflow(CHAIN, FUNCTIONS)
    run = executor.start(wf)
    assert run.result() == {"a": 9, "b": 16, "both": 25, "half": 12.5, "train": {"days": 7}}
    by_name = {t.name: t for t in run.tasks}
    assert sorted(lineage.node(by_name["both"].node_id)["parents"]) == sorted(
        [by_name["a"].node_id, by_name["b"].node_id]
    )
    assert lineage.node(by_name["train"].node_id)["parents"] == [by_name["half"].node_id]
    halve_source = hashlib.sha256(inspect.getsource(halve.fn).encode()).hexdigest()
    assert lineage.node(by_name["half"].node_id)["code_hash"] == halve_source
    assert lineage.node(run.node_id)["name"] == "nightly"


def test_yaml_cycle_is_rejected_naming_the_step_and_cycle():
    spec = """
name: loop
steps:
  - {name: load, function: square, args: {x: 1}, after: [check]}
  - {name: train, function: square, args: {x: 2}, after: [load]}
  - {name: check, function: square, args: {x: 3}, after: [train]}
"""
    with pytest.raises(InvalidInput) as info:
        load_workflow(spec, FUNCTIONS)
    err = info.value
    assert err.status == 422
    assert "cycle" in err.message
    cycle = err.message.split(": ", 1)[1].split(" (")[0].split(" -> ")
    assert set(cycle) == {"load", "train", "check"} and cycle[0] == cycle[-1]
    step = err.message.split("'")[1]
    assert err.field == f"steps[{['load', 'train', 'check'].index(step)}].after"


def test_yaml_cycle_through_a_value_reference_is_rejected():
    spec = {
        "steps": [
            {"name": "a", "function": "square", "args": {"x": "$b"}},
            {"name": "b", "function": "square", "args": {"x": "$a"}},
        ]
    }
    with pytest.raises(InvalidInput, match="cycle"):
        load_workflow(spec, FUNCTIONS)


@pytest.mark.parametrize(
    ("steps", "field", "words"),
    [
        ([{"name": "a", "function": "rm_rf"}], "steps[0].function", "unknown function"),
        ([{"name": "a", "function": "square", "after": ["z"]}], "steps[0].after", "unknown step"),
        ([{"name": "a", "function": "square", "args": {"x": "$z"}}], "steps[0].args", "unknown"),
        (
            [{"name": "a", "function": "square"}, {"name": "a", "function": "total"}],
            "steps[1].name",
            "used twice",
        ),
        ([{"name": "a", "function": "square", "retries": -1}], "steps[0].retries", "retries"),
        ([{"name": "a", "function": "square", "afterr": []}], "steps[0]", "unknown step field"),
        ([{"name": "1a", "function": "square"}], "steps[0].name", "not valid"),
        ([], "steps", "non-empty"),
    ],
)
def test_yaml_bad_input_names_the_field(steps, field, words):
    with pytest.raises(InvalidInput, match=words) as info:
        load_workflow({"name": "w", "steps": steps}, FUNCTIONS)
    assert info.value.field == field
    assert info.value.fix


def test_yaml_unparseable_text():
    with pytest.raises(InvalidInput) as info:
        load_workflow("steps: [unclosed", FUNCTIONS)
    assert info.value.field == "workflow"


def test_yaml_literal_dollar_and_step_retries(executor):
    calls = []

    def echo(text):
        calls.append(text)
        if len(calls) == 1:
            raise TimeoutError("first call times out")
        return text

    wf = load_workflow(
        {"steps": [{"name": "say", "function": "echo", "args": ["$$5"], "retries": 1}]},
        {"echo": echo},
    )
    assert executor.run(wf) == {"say": "$5"}
    assert calls == ["$5", "$5"]


def test_workflow_job_glue_returns_the_run_record(executor):
    job = workflow_job(executor, squares_then_maybe_halve)
    record = job(SimpleNamespace(args={"n": 5}, run_id="run-1"))
    assert record["state"] == "succeeded" and record["value"] == 15.0
    assert record["id"] == "run-1"  # the scheduler run's id: a durable run resumes under it
    assert len(record["tasks"]) == 7 and record["node"]


def test_lineage_persists_in_the_store_file(tmp_path):
    store = LineageStore(tmp_path)
    with Executor(store) as ex:
        run = ex.start(squares_then_maybe_halve, 5)
        assert run.result() == 15.0
    store.close()
    reopened = LineageStore(tmp_path)
    try:
        assert reopened.latest("workflow", "squares_then_maybe_halve") == run.node_id
        assert walked_ids(reopened, run.node_id, "up") == {run.node_id} | {
            t.node_id for t in run.tasks
        }
    finally:
        reopened.close()


def test_a_task_whose_lineage_cannot_be_recorded_fails(executor, lineage, monkeypatch):
    record = lineage.record

    def disk_full_for_total(kind, name, **fields):
        if name == "total":
            raise sqlite3.OperationalError("database or disk is full")
        return record(kind, name, **fields)

    monkeypatch.setattr(lineage, "record", disk_full_for_total)
    run = executor.start(squares_then_maybe_halve, 2)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        run.result()
    states = {t.name: t.state for t in run.tasks}
    assert states == {"square": "succeeded", "total": "failed"}
    node = lineage.node(run.node_id)  # the run itself is recorded, with the error
    assert node["outputs"] == {"error": "OperationalError: database or disk is full"}


@pytest.mark.platform_services("schedules")
def test_a_registered_workflow_runs_as_a_scheduler_function(platform):
    scheduler = platform.scheduler
    scheduler.register_workflow(
        "squares", squares_then_maybe_halve, events=["ready"], args={"n": 5}
    )
    scheduler.post_event("ready", {"rows": 10})  # the join completes: one run
    scheduler.wait_idle()
    (run,) = scheduler.runs(function="squares")
    assert run["state"] == "succeeded", run
    result = run["result"]
    assert result["value"] == 15.0 and len(result["tasks"]) == 7
    node = platform.lineage.node(result["node"])  # in the platform's own lineage
    assert node["kind"] == "workflow" and node["name"] == "squares_then_maybe_halve"
