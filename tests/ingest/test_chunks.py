"""A large JSON body is checked in chunks: the answer, the stored rows and `atomic` are those of
the whole-body path, with every rejection at its index in the request."""

from __future__ import annotations

import math

import orjson
import pytest
from conftest import PUMP, T0, obs
from fastapi.testclient import TestClient

import livetwin.api.app
import livetwin.ingest.chunks
from livetwin.api.app import create_app
from livetwin.engine.batch import decode_batch
from livetwin.ingest.chunks import normalize_chunked, split_array
from livetwin.ingest.observations import normalize
from livetwin.platform import Platform, Settings

BAD = {  # index in the request -> a row that is refused, and why
    3: ({"twin": "a", "type": "valve", "values": {"flow": 1}}, "type"),
    40: ({"twin": "a", "type": "pump", "values": {"flow": 5000}}, "values.flow"),
    41: ("not an object", None),
    77: ({"twin": "p1", "type": "pump", "values": {"flow": "high"}}, "values.flow"),
    150: ({"twin": "a\nb", "type": "pump", "values": {"flow": 1}}, "twin"),
    299: ({"twin": "a", "type": "pump", "ts": "yesterday", "values": {"flow": 1}}, "ts"),
}


def request_rows(n: int = 300, bad: dict = BAD) -> list:
    rows = []
    for i in range(n):
        row = obs(f"p{i % 25}", T0 + i, flow=i % 500, pressure=1.5)
        row["key"] = f"k{i % 250}"  # rows 250.. repeat the twin and key of rows 0..: duplicates
        rows.append(bad[i][0] if i in bad else row)
    return rows


def journaled(platform) -> list[tuple[str, int, dict]]:
    out = []
    for entry in platform.core.store.journal():
        if entry.kind == "obs":
            b = decode_batch(entry.body)
            for i, twin in enumerate(b.twins):
                values = {n: float(b.values[j, i]) for j, n in enumerate(b.names)}
                values = {n: v for n, v in values.items() if not math.isnan(v)}
                out.append((twin, int(b.ts[i]), values))
    return sorted(out)


def post(tmp_path, clock, monkeypatch, name: str, body: bytes, *, chunked: bool, atomic=False):
    """POST body to a fresh platform, chunked 7 rows at a time or whole: (status, answer, rows)."""
    monkeypatch.setattr(livetwin.api.app, "CHUNKED_ABOVE_BYTES", 0 if chunked else 1 << 40)
    monkeypatch.setattr(livetwin.ingest.chunks, "CHUNK_OBSERVATIONS", 7)
    settings = Settings(max_body_bytes=1 << 20)
    with Platform(tmp_path / name, clock=clock, settings=settings) as platform:
        with TestClient(create_app(platform)) as client:
            assert client.put("/api/types/pump", json=PUMP).status_code == 200
            r = client.post(f"/api/ingest?atomic={str(atomic).lower()}", content=body)
        return r.status_code, r.json(), journaled(platform)


@pytest.fixture
def chunked_runs(monkeypatch) -> list[bool]:
    """Records each run of the chunked path: True when it answered (no whole-body fallback)."""
    runs: list[bool] = []

    def spy(*args, **kwargs):
        result = normalize_chunked(*args, **kwargs)
        runs.append(result is not None)
        return result

    monkeypatch.setattr(livetwin.api.app, "normalize_chunked", spy)
    return runs


def test_chunked_answer_is_the_whole_body_answer(tmp_path, clock, monkeypatch, chunked_runs):
    body = orjson.dumps(request_rows())
    chunked = post(tmp_path, clock, monkeypatch, "chunked", body, chunked=True)
    whole = post(tmp_path, clock, monkeypatch, "whole", body, chunked=False)
    assert chunked_runs == [True]
    assert chunked == whole
    status, answer, stored = chunked
    assert status == 200
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [
        (i, field) for i, (_, field) in sorted(BAD.items())
    ]
    repeats = [j for j in range(50) if j not in BAD and 250 + j not in BAD]
    assert answer["duplicates"] == len(repeats)
    assert answer["accepted"] == len(stored) == 300 - len(BAD) - answer["duplicates"]


def test_atomic_body_with_one_bad_row_at_the_end_stores_nothing(
    tmp_path, clock, monkeypatch, chunked_runs
):
    body = orjson.dumps(request_rows(bad={299: BAD[299]}))
    chunked = post(tmp_path, clock, monkeypatch, "chunked", body, chunked=True, atomic=True)
    whole = post(tmp_path, clock, monkeypatch, "whole", body, chunked=False, atomic=True)
    assert chunked_runs == [True]
    assert chunked == whole
    status, answer, stored = chunked
    assert status == 422 and stored == []
    assert answer["accepted"] == 0 and [r["index"] for r in answer["rejected"]] == [299]


def test_the_same_good_body_atomic_is_stored_whole(tmp_path, clock, monkeypatch):
    body = orjson.dumps(request_rows(bad={}))
    status, answer, stored = post(
        tmp_path, clock, monkeypatch, "chunked", body, chunked=True, atomic=True
    )
    assert status == 200 and answer["accepted"] == len(stored) == 250


@pytest.mark.parametrize(
    "body",
    [b'{"twin": "a"}', b"[1, 2,]", b"not json", b'["\\ud800"]', b"[1e400]", b"[" * 2000],
)
def test_what_is_no_well_formed_array_takes_the_whole_body_path(tmp_path, clock, monkeypatch, body):
    chunked = post(tmp_path, clock, monkeypatch, "chunked", body, chunked=True)
    whole = post(tmp_path, clock, monkeypatch, "whole", body, chunked=False)
    assert chunked == whole and chunked[0] in (400, 422)


def test_normalize_chunked_equals_normalize(platform):
    platform.put_type("pump", PUMP)
    rows = request_rows()
    types = platform.query.compiled_types()
    whole = normalize(rows, types, now_ms=T0, max_future_ms=86_400_000)
    parts = normalize_chunked(
        split_array(orjson.dumps(rows)), types, now_ms=T0, max_future_ms=86_400_000, chunk=11
    )
    assert [r.to_dict() for r in parts.rejected] == [r.to_dict() for r in whole.rejected]

    def rows_of(n):
        return sorted(
            (int(i), b.twins[p], int(b.ts[p]))
            for b, index in n.batches
            for p, i in enumerate(index)
        )

    assert rows_of(parts) == rows_of(whole)
