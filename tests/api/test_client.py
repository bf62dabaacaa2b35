"""`livetwin.Client` against a real server (uvicorn on a free port) gives what the in-process
`Platform` gives: the README's Python examples run against both and print the same."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from conftest import PUMP, T0, served

from livetwin.client import Client
from livetwin.errors import Conflict, InvalidInput, NotFound, Unavailable
from livetwin.platform import Platform, Settings

README = Path(__file__).resolve().parents[2] / "README.md"
SDK_CALL = re.compile(r"\b(?:Platform|Client)\([^)]*\)")


def readme_examples() -> list[str]:
    """The README's Python blocks that open a Platform or a Client."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return [b for b in blocks if SDK_CALL.search(b)]


def run_example(code: str, sdk) -> str:
    """Run one example with its Platform(...) / Client(...) call opening `sdk()`; its output."""
    lines = [line for line in code.splitlines() if not line.startswith(("from ", "import "))]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(SDK_CALL.sub("SDK()", "\n".join(lines)), {"SDK": sdk})  # noqa: S102
    return out.getvalue()


@contextlib.contextmanager
def _borrowed(sdk):
    """An SDK object the example may `with` without closing it (the fixture closes it)."""
    yield sdk


def test_the_readme_examples_print_the_same_in_process_and_over_http(tmp_path, clock):
    examples = readme_examples()
    assert len(examples) >= 2
    settings = Settings(webhooks=False, run_schedules=False)
    for k, code in enumerate(examples):  # each example on fresh data, here and there
        with Platform(tmp_path / f"local-{k}", clock=clock, settings=settings) as local:
            here = run_example(code, lambda p=local: _borrowed(p))
        with (
            Platform(tmp_path / f"remote-{k}", clock=clock, settings=settings) as served_platform,
            served(served_platform) as url,
            Client(url) as remote,
        ):
            there = run_example(code, lambda c=remote: _borrowed(c))
        assert here == there and here.strip(), code


def test_client_calls_match_the_platform(platform, live_server, tmp_path):
    platform.put_type("pump", PUMP)
    with Client(live_server) as c:
        assert c.get_type("pump") == platform.get_type("pump")
        obs = [{"twin": "p1", "type": "pump", "ts": T0, "values": {"flow": 5, "pressure": 2}}]
        first = c.ingest(obs)
        assert (first.accepted, first.duplicates) == (1, 0)
        again = c.ingest([{**obs[0], "key": "k1"}, {**obs[0], "key": "k1"}])
        assert (again.accepted, again.duplicates) == (1, 1)
        assert c.twin("p1") == platform.twin("p1")
        assert c.twins(type="pump") == platform.twins(type="pump")
        totals = c.aggregate("pump", ["flow"], ["sum", "count"], where="flow > 1")
        assert totals == platform.aggregate("pump", ["flow"], ["sum", "count"], where="flow > 1")
        assert totals["values"]["flow"] == {"sum": 5.0, "count": 1}
        assert c.history("p1", ["flow"], every="1m") == platform.history("p1", ["flow"], every="1m")
        assert c.observations("p1") == platform.observations("p1")
        with pytest.raises(NotFound) as err:
            c.twin("nope")
        assert err.value.fix and err.value.status == 404
        with pytest.raises(InvalidInput) as err:
            c.twins(type="pump", where="flow >")
        assert err.value.field == "where"
        csv = tmp_path / "a.csv"
        csv.write_text("id,time,q\n2,2026-11-22T10:00:00Z,7\n3,2026-11-22T10:00:00Z,x\n")
        mapping = {"type": "pump", "twin": "p{id}", "ts_column": "time", "values": {"flow": "q"}}
        c.put_mapping("m", mapping)
        assert c.get_mapping("m") == platform.get_mapping("m")
        report = c.import_file(csv, "m")
        assert (report["accepted"], report["rejected"][0]["row"]) == (1, 2)
        assert c.import_file(csv, mapping)["duplicates"] == 1  # the same file, stored once
        out = tmp_path / "pump.parquet"
        c.export("pump", out)
        import pyarrow.parquet as pq

        assert pq.read_table(out).column("twin").to_pylist() == ["p1", "p1", "p2"]
        assert c.alarms.counts() == platform.alarms.counts()
        assert c.scheduler.runs() == platform.scheduler.runs()


def test_ingest_is_retried_with_its_keys_and_stored_once(platform, live_server):
    """The first answer is lost (a 503 from a proxy): the retry sends the same keys."""
    import httpx

    platform.put_type("pump", PUMP)
    sent = []

    class LoseFirstAnswer(httpx.HTTPTransport):
        def handle_request(self, request):
            response = super().handle_request(request)
            sent.append(request.content)
            if len(sent) == 1:  # stored, but the caller never hears it
                response.read()
                return httpx.Response(503, json={"error": {"message": "proxy timeout"}})
            return response

    with Client(live_server, transport=LoseFirstAnswer()) as c:
        result = c.ingest([{"twin": "p1", "type": "pump", "ts": T0, "values": {"flow": 1}}])
    assert len(sent) == 2 and sent[0] == sent[1]
    assert (result.accepted, result.duplicates) == (0, 1)
    assert platform.stats()["journal_observations"] == 1


def test_an_unreachable_server_is_a_clear_error():
    with Client("http://127.0.0.1:9", retries=1) as c, pytest.raises(Unavailable) as err:
        c.list_types()
    assert err.value.field == "url" and "running" in err.value.fix


def test_history_frames_are_the_same_in_process_and_over_http(platform, live_server):
    pd = pytest.importorskip("pandas")
    platform.put_type("pump", PUMP)
    platform.ingest(
        [
            {"twin": "p1", "type": "pump", "ts": T0 + k * 60_000, "values": {"flow": k}}
            for k in range(3)
        ]
    )
    here = platform.history_frame("p1", ["flow", "pressure"])
    with Client(live_server) as c:
        there = c.history_frame("p1", ["flow", "pressure"])
    pd.testing.assert_frame_equal(here, there)
    assert list(here["flow"]) == [0.0, 1.0, 2.0] and here["pressure"].isna().all()
    assert str(here.index.tz) == "UTC" and here.index[0] == pd.Timestamp(T0, unit="ms", tz="UTC")


def test_client_twin_lifecycle_matches_the_platform(platform, live_server):
    spec = {"properties": {"flow": {}}, "attributes": {"mode": {"type": "enum", "values": ["a"]}}}
    platform.put_type("valve", spec)
    with Client(live_server) as c:
        made = c.create_twin("v1", "valve", attributes={"mode": "a"})
        assert made["created"] is True and c.twin("v1") == platform.twin("v1")
        c.update_twin("v1", attributes={"mode": "a"})
        with pytest.raises(InvalidInput) as err:
            c.update_twin("v1", attributes={"mode": "b"})
        assert err.value.field == "attributes.mode"
        with pytest.raises(Conflict):
            c.delete_type("valve")
        assert c.delete_twin("v1")["removed"] == ["v1"]
        with pytest.raises(NotFound):
            platform.twin("v1")
        assert c.delete_type("valve")["removed"] == []
        assert platform.list_types() == []
