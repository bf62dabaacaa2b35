"""Alarms: the lifecycle service (`service.py`: rules run on state changes and a clock tick,
active -> acknowledged -> cleared, notices) over its tables (`store.py`)."""

from livetwin.actions.alarms.service import MAX_COMMENT, MAX_NAME, AlarmService
from livetwin.actions.alarms.store import OPEN_STATES, SCHEMA, STATES
from livetwin.spec.rules import SEVERITIES

__all__ = [
    "MAX_COMMENT",
    "MAX_NAME",
    "OPEN_STATES",
    "SCHEMA",
    "SEVERITIES",
    "STATES",
    "AlarmService",
]
