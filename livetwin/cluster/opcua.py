"""OPC UA connectors on a cluster: the single node's `OpcuaConnectors`, run by exactly one front
end, the one whose scheduler leads (so each value is ingested once), started when it takes the
lead and stopped when it loses it. Their specs live in shard 0's store, so the next leader runs
the same connectors. On the other front ends every call is a 503 naming the leader.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class LeaderConnectors:
    """`OpcuaConnectors` (`service`) that run while `scheduler` leads (see the module)."""

    def __init__(self, service: Any, scheduler: Any):
        self.service, self.scheduler = service, scheduler
        self._switch = threading.Lock()
        self._running = False
        scheduler.watch_role(self._follow_lead)

    def _follow_lead(self, _leading: bool) -> None:
        """Start or stop the connectors to match the scheduler's role now (role changes may
        arrive out of order: the current role decides)."""
        with self._switch:
            leading = self.scheduler.role == "leader"
            if leading and not self._running:
                self.service.start()
                log.warning("this front end leads: it runs the OPC UA connectors")
            elif not leading and self._running:
                self.service.stop()
            self._running = leading

    def stop(self) -> None:
        with self._switch:
            self.service.stop()
            self._running = False

    def connectors(self) -> list[dict]:
        self.scheduler.refuse_on_standby()
        return self.service.connectors()

    def connector(self, name: str) -> dict:
        self.scheduler.refuse_on_standby()
        return self.service.connector(name)

    def put_connector(self, name: str, body: Any) -> dict:
        self.scheduler.refuse_on_standby()
        return self.service.put_connector(name, body)

    def delete_connector(self, name: str) -> None:
        self.scheduler.refuse_on_standby()
        self.service.delete_connector(name)
