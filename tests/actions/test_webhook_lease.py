"""The webhook outbox on PostgreSQL shared by two processes: only the holder of the sender lease
sends, a subscription made on the other one is sent by the holder, and the other takes over the
sending when the holder's session is lost."""

from __future__ import annotations

import psycopg
import pytest
from conftest import PUMP, T0, obs
from postgres_support import PG_URL, fresh_schema
from webhook_support import LOCAL_OUTBOUND, Receiver, wait_for

from livetwin.actions.webhooks import WebhookService
from livetwin.engine.events import EventBus
from livetwin.platform import Platform, Settings
from livetwin.store.open import DATABASE_URL_ENV

pytestmark = pytest.mark.services  # needs PostgreSQL (see conftest.py)


def test_one_process_sends_and_the_other_takes_over(tmp_path, monkeypatch):
    receiver = Receiver()
    with fresh_schema() as url:
        monkeypatch.setenv(DATABASE_URL_ENV, url)
        with Platform(tmp_path / "a", settings=Settings(webhooks=False)) as platform:
            platform.put_type("pump", PUMP)

            def service(bus) -> WebhookService:
                return WebhookService(
                    clock=platform.clock,
                    bus=bus,
                    reader=platform.query,
                    open_db=platform.open_db,
                    outbound=LOCAL_OUTBOUND,
                    lease_retry_s=0.2,
                    backoff_s=0.05,
                )

            first = service(platform.bus).start()  # fans this core's events out, and sends
            second = service(EventBus()).start()  # another process's sender, on standby
            try:
                assert first.sending and not second.sending
                sub = second.create({"url": receiver.url, "secret": "s3cret-s3cret-s3cret"})["id"]
                wait_for(lambda: sub in {s["id"] for s in first.subscriptions()})
                platform.ingest([obs("p1", T0, flow=1.0)])
                wait_for(lambda: len(receiver.received) == 1)  # sent by the holder
                assert second.stats()["sending"] == 0
                with psycopg.connect(PG_URL, autocommit=True) as admin:
                    pid = first._lease._conn.info.backend_pid
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                wait_for(lambda: second.sending and not first.sending, timeout=5)
                platform.ingest([obs("p1", T0 + 1000, flow=2.0)])  # fanned out by the first
                wait_for(lambda: len(receiver.received) == 2)  # sent by the second
                # the sender records the delivery after the receiver answered: wait for it
                wait_for(lambda: second.get(sub)["deliveries"]["delivered"] == 2)
                assert len({r["id"] for r in receiver.received}) == 2
            finally:
                second.stop()
                first.stop()
                receiver.close()
