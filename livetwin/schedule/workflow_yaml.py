"""The declarative form of a workflow: a YAML/JSON chain of steps, each a registered function
with its arguments and the steps it comes after.
"""

from __future__ import annotations

import graphlib
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
import yaml

from livetwin.errors import InvalidInput
from livetwin.schedule.tasks import Task, TaskFuture, Workflow, current_run_var

_STEP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_STEP_KEYS = {"name", "function", "args", "after", "retries", "retry_delay_s"}


def load_workflow(spec: str | bytes | Mapping, functions: Mapping[str, Callable]) -> Workflow:
    """A `Workflow` from YAML/JSON text or a dict of the form

    ```yaml
    name: nightly
    steps:
      - {name: load, function: load_history, args: {days: 7}}
      - {name: fit, function: fit_baseline, args: {rows: $load}, retries: 2}
      - {name: check, function: check_emergency, after: [fit]}
    ```

    `function` names an entry of `functions` (only registered functions can run); `args` is a
    dict (keyword arguments) or a list; a string `$step` stands for that step's value and makes
    the step wait for it (`$$` escapes a literal `$`). The run's value is `{step: value}`.
    Unknown keys, unknown functions, unknown steps and cycles raise `InvalidInput`.
    """
    if isinstance(spec, str | bytes):
        try:
            spec = yaml.safe_load(spec)
        except yaml.YAMLError as exc:
            raise InvalidInput(
                f"the workflow is not valid YAML: {exc}".splitlines()[0],
                field="workflow",
                fix="send a YAML or JSON object with a steps list",
            ) from None
    if not isinstance(spec, Mapping):
        raise InvalidInput(
            "a workflow must be an object with name and steps",
            field="workflow",
            fix="send {name: ..., steps: [{name, function, args, after}]}",
        )
    unknown = set(spec) - {"name", "steps", "description"}
    if unknown:
        raise InvalidInput(
            f"unknown workflow field(s): {', '.join(sorted(map(str, unknown)))}",
            field=str(sorted(map(str, unknown))[0]),
            fix="use name, description and steps",
        )
    name = _checked_name(spec.get("name", "workflow"), "workflow name", "name")
    steps = spec.get("steps")
    if not isinstance(steps, list) or not steps:
        raise InvalidInput(
            "a workflow needs a non-empty steps list",
            field="steps",
            fix="add steps: [{name, function, args, after}]",
        )
    parsed = [_parse_step(i, step, functions) for i, step in enumerate(steps)]
    index = {}
    for i, step in enumerate(parsed):
        if step["name"] in index:
            raise InvalidInput(
                f"step name '{step['name']}' is used twice",
                field=f"steps[{i}].name",
                fix="give every step its own name",
            )
        index[step["name"]] = i
    graph = {}
    for i, step in enumerate(parsed):
        for field, waits in (("after", step["after"]), ("args", step["refs"])):
            for other in waits:
                if other not in index:
                    raise InvalidInput(
                        f"step '{step['name']}' refers to unknown step '{other}'",
                        field=f"steps[{i}].{field}",
                        fix=f"use one of: {', '.join(index)}",
                    )
        graph[step["name"]] = step["after"] + step["refs"]
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        raise InvalidInput(
            f"step '{cycle[1]}' is part of a cycle: {' -> '.join(cycle)} "
            "(each step runs after the one before it)",
            field=f"steps[{index[cycle[1]]}].after",
            fix="remove one of the dependencies so the steps form a chain or a tree",
        ) from None
    by_name = {step["name"]: step for step in parsed}

    def body() -> dict:
        run = current_run_var.get()
        assert run is not None
        futures: dict[str, TaskFuture] = {}
        for step_name in order:
            step = by_name[step_name]
            args = _substitute(step["args"], futures)
            after = [futures[a] for a in step["after"]]
            if isinstance(args, list):
                futures[step_name] = run.submit(step["task"], tuple(args), {}, after=after)
            else:
                futures[step_name] = run.submit(step["task"], (), args, after=after)
        return {s["name"]: futures[s["name"]] for s in parsed}

    body.__name__ = name
    canonical = orjson.dumps(
        {"name": name, "steps": steps}, option=orjson.OPT_SORT_KEYS, default=str
    )
    return Workflow(body, name=name, code_hash=hashlib.sha256(canonical).hexdigest())


def _parse_step(i: int, step: Any, functions: Mapping[str, Callable]) -> dict:
    where = f"steps[{i}]"
    if not isinstance(step, Mapping):
        raise InvalidInput(
            "a step must be an object", field=where, fix="write {name, function, args, after}"
        )
    unknown = set(step) - _STEP_KEYS
    if unknown:
        raise InvalidInput(
            f"unknown step field(s): {', '.join(sorted(map(str, unknown)))}",
            field=where,
            fix=f"use {', '.join(sorted(_STEP_KEYS))}",
        )
    name = _checked_name(step.get("name"), "step name", f"{where}.name")
    fn_name = step.get("function")
    fn = functions.get(fn_name) if isinstance(fn_name, str) else None
    if fn is None:
        known = ", ".join(sorted(functions)) or "(none registered)"
        raise InvalidInput(
            f"unknown function {fn_name!r} in step '{name}'",
            field=f"{where}.function",
            fix=f"register the function first or use one of: {known}",
        )
    args = step.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict | list):
        raise InvalidInput(
            "args must be an object (keyword arguments) or a list",
            field=f"{where}.args",
            fix="write args: {name: value} or args: [value, ...]",
        )
    after = step.get("after", [])
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise InvalidInput(
            "after must be a list of step names",
            field=f"{where}.after",
            fix="write after: [other_step]",
        )
    retries = step.get("retries", getattr(fn, "retries", 0))
    delay = step.get("retry_delay_s", getattr(fn, "retry_delay_s", 0.0))
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        raise InvalidInput(
            "retries must be an integer from 0 to 100", field=f"{where}.retries", fix="e.g. 2"
        )
    if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay <= 3600:
        raise InvalidInput(
            "retry_delay_s must be a number of seconds from 0 to 3600",
            field=f"{where}.retry_delay_s",
            fix="e.g. 1.5",
        )
    plain = fn.fn if isinstance(fn, Task) else fn
    return {
        "name": name,
        "task": Task(plain, name=name, retries=retries, retry_delay_s=float(delay)),
        "args": args,
        "after": list(dict.fromkeys(after)),
        "refs": list(dict.fromkeys(_references(args))),
    }


def _checked_name(name: Any, what: str, field: str) -> str:
    if not isinstance(name, str) or not _STEP_NAME.match(name):
        raise InvalidInput(
            f"{what} {name!r} is not valid",
            field=field,
            fix="use letters, digits, '_' and '-' (at most 64, starting with a letter)",
        )
    return name


def _references(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        if value.startswith("$") and not value.startswith("$$"):
            yield value[1:]
    elif isinstance(value, dict):
        for v in value.values():
            yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


def _substitute(value: Any, futures: Mapping[str, TaskFuture]) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return value[1:] if value.startswith("$$") else futures[value[1:]]
    if isinstance(value, dict):
        return {k: _substitute(v, futures) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, futures) for v in value]
    return value
