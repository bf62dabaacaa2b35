"""The `import` job kind on the real scheduler: files that arrived in a folder are imported
and moved to done/ or failed/ with their reports."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import PUMP

MAPPING = {"type": "pump", "twin": "p{id}", "ts_column": "time", "values": {"flow": "q"}}


@pytest.mark.platform_services("schedules")
def test_the_import_job_imports_a_folder_and_sorts_its_files(platform, tmp_path):
    platform.put_type("pump", PUMP)
    platform.put_mapping("plant", MAPPING)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.csv").write_text(
        "id,time,q\n1,2026-11-22T10:00:00Z,5\n2,2026-11-22T10:00:00Z,x\n"
    )
    (inbox / "wrong.csv").write_text("id,when,q\n1,2026-11-22T10:00:00Z,5\n")  # no 'time'
    (inbox / "fresh.csv").write_text("id,time,q\n")  # still being written: left for later
    old = time.time() - 60
    for name in ("good.csv", "wrong.csv"):
        os.utime(inbox / name, (old, old))
    scheduler = platform.scheduler
    args = {"folder": str(inbox), "mapping": "plant", "settle_s": 30}
    scheduler.define_function("inbox", {"kind": "builtin", "job": "import", "args": args})
    run = scheduler.wait(scheduler.run_function("inbox")["id"], 20)
    assert run["state"] == "succeeded", run
    assert sorted(p.name for p in inbox.iterdir()) == ["done", "failed", "fresh.csv"]
    assert (inbox / "done" / "good.csv").exists()
    report = json.loads((inbox / "done" / "good.csv.report.json").read_text())
    assert (report["accepted"], report["rejected"][0]["row"]) == (1, 2)
    failed = json.loads((inbox / "failed" / "wrong.csv.report.json").read_text())
    assert failed["error"]["field"] == "ts_column" and "'time'" in failed["error"]["message"]
    assert any("good.csv: done (1 accepted" in line for line in run["logs"])
    assert platform.twin("p1")["properties"]["flow"] == 5.0


@pytest.mark.platform_services("schedules")
def test_the_import_job_refuses_unknown_arguments(platform, tmp_path):
    scheduler = platform.scheduler
    args = {"folder": str(tmp_path), "mapping": "plant", "colour": "red"}
    scheduler.define_function("inbox", {"kind": "builtin", "job": "import", "args": args})
    run = scheduler.wait(scheduler.run_function("inbox")["id"], 20)
    assert run["state"] == "failed" and "unknown argument(s) of import: colour" in run["error"]


def test_the_import_job_takes_new_objects_under_an_s3_prefix(tmp_path, clock):
    """Against a real S3-protocol server (moto's, on loopback)."""
    from s3_support import CREDENTIALS, REGION, moto_s3, s3_client
    from webhook_support import LOOPBACK

    from livetwin.platform import Platform, Settings

    with moto_s3() as endpoint:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket="drop")
        s3.put_object(Bucket="drop", Key="in/a.csv", Body=b"id,time,q\n1,2026-11-22T10:00:00Z,5\n")
        s3.put_object(Bucket="drop", Key="in/b.csv", Body=b"id,when,q\n1,2,3\n")
        s3.put_object(Bucket="drop", Key="in/old/c.csv", Body=b"not taken: below the prefix")
        settings = Settings(
            webhooks=False,
            run_schedules=True,
            outbound_allow=LOOPBACK,
            artifacts={
                "LIVETWIN_S3_ENDPOINT": endpoint,
                "LIVETWIN_S3_REGION": REGION,
                **CREDENTIALS,
            },
        )
        with Platform(tmp_path / "d", clock=clock, settings=settings) as p:
            p.put_type("pump", PUMP)
            p.put_mapping("plant", MAPPING)
            args = {"s3": "s3://drop/in/", "mapping": "plant"}
            p.scheduler.define_function("drop", {"kind": "builtin", "job": "import", "args": args})
            run = p.scheduler.wait(p.scheduler.run_function("drop")["id"], 30)
            assert run["state"] == "succeeded", run
            assert p.twin("p1")["properties"]["flow"] == 5.0
        listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="drop")["Contents"])
        assert listed == [
            "in/done/a.csv",
            "in/done/a.csv.report.json",
            "in/failed/b.csv",
            "in/failed/b.csv.report.json",
            "in/old/c.csv",
        ]
        report = json.loads(
            s3.get_object(Bucket="drop", Key="in/failed/b.csv.report.json")["Body"].read()
        )
        assert report["error"]["field"] == "ts_column"
