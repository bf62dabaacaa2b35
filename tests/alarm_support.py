"""Alarm test helpers: the alarms a replay of the journal reproduces."""

from __future__ import annotations

from livetwin.core import TwinCore
from livetwin.engine import rules
from livetwin.engine.events import StateChanged, TypeDefined
from livetwin.query import Query


def replayed_alarms(platform, now: int | None = None) -> list[dict]:
    """The alarms (as `alarm_story`) that the type rules raise when the platform's journal is
    fed into a fresh sandbox core: each applied batch goes through `rules.evaluate` as it is
    published, then pending conditions meet the clock at `now`."""
    state = rules.RuleState()
    ctypes: dict = {}
    transitions: list[rules.Transition] = []
    failures: list[BaseException] = []
    with TwinCore.sandbox() as sandbox:
        reader = Query(sandbox)

        def evaluate(event) -> None:
            try:
                if isinstance(event, TypeDefined):
                    ctypes[(event.ctype.name, event.ctype.version)] = event.ctype
                    transitions.extend(rules.retarget(state, event.ctype))
                elif isinstance(event, StateChanged):
                    ctype = ctypes[(event.applied.type, event.applied.version)]
                    read = reader.current_by_uid
                    transitions.extend(rules.evaluate(state, ctype, event.applied, read))
            except BaseException as exc:  # the bus only logs a failing subscriber
                failures.append(exc)

        sandbox.bus.subscribe(evaluate)
        sandbox.feed(platform.core.store.journal())
    assert not failures, failures
    if now is not None:
        transitions.extend(rules.due(state, now))
    told = rules.AlarmStories()
    for t in transitions:
        told.add(t)
    stories = told.stories
    return sorted(stories, key=lambda a: (a["twin"], a["rule"], a["raised"]))


def alarm_story(alarm: dict) -> dict:
    """What a replay can reproduce of an alarm: what raised it, when, and when it cleared."""
    keys = ("twin", "rule", "severity", "message", "values", "since", "raised", "cleared")
    return {k: alarm[k] for k in keys}
