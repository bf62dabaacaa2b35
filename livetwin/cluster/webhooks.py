"""Webhooks on a cluster: the webhook service's calls over the shards' webhook services."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livetwin.cluster.meta import LIVE
from livetwin.errors import LivetwinError, NotFound

if TYPE_CHECKING:
    from livetwin.cluster.frontend import ClusterFrontend


class ClusterWebhooks:
    """The webhook service's calls (`livetwin/api/webhooks.py`) over the shards' webhook
    services: every shard holds the same subscriptions (made on all of them under one id) and
    the outbox of its own twins' events, which it sends itself and catches up from its own
    journal after a restart, so each event goes out at least once per subscription, from the
    shard that committed it. Reads merge the shards' answers; `from_seq` (a position in one
    shard's journal) is left out."""

    def __init__(self, frontend: ClusterFrontend):
        self.frontend = frontend

    def _all(self, method: str, *args: Any, **kwargs: Any) -> dict[int, Any]:
        return self.frontend._all("webhook", method, *args, **kwargs)

    def create(self, body: Any) -> dict:
        """Check the subscription here, then make it on every shard under one id (when a shard
        cannot make it, e.g. it is down or its node's outbound policy refuses the URL, it is
        deleted again from the others and that shard's error is the answer)."""
        from livetwin.actions.webhooks import validate_subscription
        from livetwin.actions.webhooks.service import new_subscription_id

        url, _, _ = validate_subscription(body)
        self.frontend.outbound.check_url(url, unresolved_ok=True)
        sub_id = new_subscription_id()
        try:
            answers = self._all("create", body, sub_id=sub_id)
        except LivetwinError:
            calls = {
                i: self.frontend.shards.call(i, "webhook", "delete", sub_id)
                for i in range(self.frontend.shards.count)
                if self.frontend.state(i) == LIVE
            }
            self.frontend._gather(calls, self.frontend.read_timeout_s)  # best effort
            raise
        return _without_position(answers[0])

    def subscriptions(self) -> list[dict]:
        return [_without_position(s) for s in self.frontend._one(0, "webhook", "subscriptions")]

    def get(self, sub_id: str) -> dict:
        """The subscription with its delivery counts and attempts summed over the shards."""
        answers = [a for _, a in sorted(self._all("get", sub_id).items())]
        merged = _without_position(answers[0])
        for key in ("pending", "delivered", "dead"):
            merged["deliveries"][key] = sum(a["deliveries"][key] for a in answers)
        for key in ("total", "failed"):
            merged["attempts"][key] = sum(a["attempts"][key] or 0 for a in answers)
        last = max(answers, key=lambda a: a["attempts"]["last_at"] or 0)["attempts"]
        for key in ("last_at", "last_status", "last_error"):
            merged["attempts"][key] = last[key]
        return merged

    def delete(self, sub_id: str) -> dict:
        return self._all("delete", sub_id)[0]

    def deliveries(self, sub_id: str, status: str | None = None, limit: int = 100) -> list[dict]:
        return _newest(self._all("deliveries", sub_id, status, limit), limit)

    def dead(self, limit: int = 100) -> list[dict]:
        return _newest(self._all("dead", limit), limit)

    def redeliver(self, sub_id: str, delivery_id: str | None = None) -> dict:
        """Re-queue dead letters on every shard (one delivery: on the shard that has it)."""
        self.get(sub_id)  # NotFound for an unknown subscription, 503 for a shard down
        calls = {
            i: self.frontend.shards.call(i, "webhook", "redeliver", sub_id, delivery_id)
            for i in range(self.frontend.shards.count)
        }
        answers, failures = self.frontend._gather(calls, self.frontend.read_timeout_s)
        for index, error in failures.items():
            if not isinstance(error, NotFound):
                raise error if isinstance(error, LivetwinError) else self.frontend._refusal(index)
        if not answers:  # every shard said it has no such dead letter
            raise next(iter(failures.values()))
        return {"id": sub_id, "requeued": sum(a["requeued"] for a in answers.values())}


def _without_position(subscription: dict) -> dict:
    return {k: v for k, v in subscription.items() if k != "from_seq"}


def _newest(answers: dict[int, list[dict]], limit: int) -> list[dict]:
    """The shards' deliveries merged, newest first (by creation time), up to `limit`."""
    merged = [d for answer in answers.values() for d in answer]
    merged.sort(key=lambda d: d["created"], reverse=True)
    return merged[:limit]
