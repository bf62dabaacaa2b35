"""Alarms on a cluster: the alarm service's calls over the shards' alarm services."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livetwin.cluster.meta import cluster_alarm_id
from livetwin.errors import InvalidInput

if TYPE_CHECKING:
    from livetwin.cluster.frontend import ClusterFrontend


class ClusterAlarms:
    """The alarm service's calls (`livetwin/api/alarms.py`) over the shards' alarm services:
    each shard keeps its twins' alarms in its own schema; an alarm's id in the cluster is
    `local id x shards + shard`, so a front end finds the shard from the id alone. Lists merge
    the shards' newest first (by raise time), paged up to offset + limit <= 1000."""

    def __init__(self, frontend: ClusterFrontend):
        self.frontend = frontend
        self.count = frontend.shards.count

    def _global(self, alarm: dict, shard: int) -> dict:
        return {**alarm, "id": cluster_alarm_id(alarm["id"], shard, self.count)}

    def _call(self, alarm_id: int, method: str, *args: Any, **kwargs: Any) -> dict:
        shard, local = alarm_id % self.count, alarm_id // self.count
        found = self.frontend._one(shard, "alarm", method, local, *args, **kwargs)
        return self._global(found, shard)

    def get(self, alarm_id: int) -> dict:
        return self._call(alarm_id, "get")

    def acknowledge(self, alarm_id: int, **change: Any) -> dict:
        return self._call(alarm_id, "acknowledge", **change)

    def clear(self, alarm_id: int, **change: Any) -> dict:
        return self._call(alarm_id, "clear", **change)

    def comment(self, alarm_id: int, text: str, author: str | None = None) -> dict:
        return self._call(alarm_id, "comment", text, author)

    def list(self, *, limit: int = 100, offset: int = 0, **filters: Any) -> dict:
        if not 1 <= limit <= 1000:
            raise InvalidInput(
                "limit must be between 1 and 1000", field="limit", fix="page with limit and offset"
            )
        if offset < 0 or offset + limit > 1000:
            raise InvalidInput(
                "a cluster pages alarms up to offset + limit = 1000",
                field="offset",
                fix="narrow the list with state, severity, type or twin",
            )
        twin = filters.get("twin")
        shards = [self.frontend.shard(twin)] if twin else range(self.count)
        calls = {i: ("alarm", "list") for i in shards}
        answers = self.frontend._some(calls, limit=offset + limit, offset=0, **filters)
        items = [self._global(a, i) for i, answer in answers.items() for a in answer["items"]]
        items.sort(key=lambda a: (a["raised"], a["id"]), reverse=True)
        return {
            "items": items[offset : offset + limit],
            "total": sum(answer["total"] for answer in answers.values()),
            "offset": offset,
            "limit": limit,
        }

    def counts(self, namespaces: frozenset[str] | None = None) -> dict:
        """Open alarms per severity and state, summed over the shards."""
        answers = self.frontend._all("alarm", "counts", namespaces)
        total: dict = {}
        for answer in answers.values():
            for severity, states in answer.items():
                into = total.setdefault(severity, dict.fromkeys(states, 0))
                for state, n in states.items():
                    into[state] += n
        return total
