"""File import and export, and a namespace's export and deletion, on a cluster front end over
four shards (in this process, no Ray): the single node's routes and answers, over the shards."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from livetwin.cluster.meta import shards_of

pytestmark = pytest.mark.services  # PostgreSQL

MAPPING = {"type": "pump", "twin": "p{id}", "ts_column": "time", "values": {"flow": "q"}}
IDS = [str(i) for i in range(12)]
CSV = "id,time,q\n" + "".join(
    f"{i},2026-11-22T10:0{m}:00Z,{int(i) * 10 + m}\n" for m in range(3) for i in IDS
)


def test_a_file_is_imported_over_the_shards_and_exported_back(front):
    client, shards, _ = front
    assert len(set(shards_of([f"p{i}" for i in IDS], 4))) > 1
    assert client.put("/api/mappings/plant", json=MAPPING).status_code == 200
    assert [m["name"] for m in client.get("/api/mappings").json()] == ["plant"]
    assert "plant" in shards.shards[0].core.store.configs("import-mapping")  # kept on shard 0
    upload = {"file": ("a.csv", CSV.encode())}
    report = client.post("/api/imports", files=upload, data={"mapping": "plant"})
    assert report.status_code == 200, report.text
    assert (report.json()["rows"], report.json()["accepted"]) == (36, 36)
    again = client.post("/api/imports", files=upload, data={"mapping": "plant"}).json()
    assert (again["accepted"], again["duplicates"]) == (0, 36)  # keyed by the file's hash
    for i in IDS:  # each twin on its own shard, with its newest value
        assert client.get(f"/api/twins/p{i}").json()["properties"]["flow"] == int(i) * 10 + 2

    exported = client.get("/api/types/pump/export", params={"names": "flow"})
    assert exported.status_code == 200, exported.text
    table = pq.read_table(io.BytesIO(exported.content)).to_pydict()
    rows = sorted(zip(table["twin"], table["flow"], strict=True))
    assert rows == sorted((f"p{i}", float(int(i) * 10 + m)) for m in range(3) for i in IDS)
    later = client.get("/api/types/pump/export", params={"from": "2026-11-22T10:02:00Z"})
    assert len(pq.read_table(io.BytesIO(later.content))) == len(IDS)
    assert client.get("/api/types/nope/export").status_code == 404
    bad = client.get("/api/types/pump/export", params={"names": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "names"
    assert client.delete("/api/mappings/plant").json() == {"name": "plant", "deleted": True}


def test_an_export_pages_through_each_shard(front, monkeypatch):
    import livetwin.cluster.frontend as frontend_module

    client, _, _ = front
    client.put("/api/mappings/plant", json=MAPPING)
    client.post("/api/imports", files={"file": ("a.csv", CSV.encode())}, data={"mapping": "plant"})
    monkeypatch.setattr(frontend_module, "EXPORT_PAGE_ROWS", 1)  # one twin per call
    table = pq.read_table(io.BytesIO(client.get("/api/types/pump/export").content))
    assert len(table) == 36 and len(set(table.column("twin").to_pylist())) == len(IDS)


def test_a_namespace_is_exported_and_deleted_over_the_shards(front):
    client, _, frontend = front
    valve = {"namespace": "plant-a", "properties": {"open": {}}}
    assert client.put("/api/types/valve", json=valve).status_code == 200
    twins = [f"plant-a/v{i}" for i in range(10)]
    assert len(set(shards_of(twins, 4))) > 1
    rows = [{"twin": t, "type": "valve", "ts": 1_795_341_600_000, "values": {"open": 1}}
            for t in [*twins, "plant-b/v0"]]  # fmt: skip
    assert client.post("/api/ingest", json=rows).json()["accepted"] == 11
    client.put("/api/mappings/m-a", json={**MAPPING, "namespace": "plant-a"})
    exported = client.get("/api/namespaces/plant-a/export").json()
    assert sorted(t["id"] for t in exported["twins"]) == sorted(twins)
    assert [t["name"] for t in exported["types"]] == ["valve"]
    assert [m["name"] for m in exported["mappings"]] == ["m-a"]

    url = "/api/namespaces/plant-a"
    assert client.delete(url).json()["error"]["field"] == "confirm"
    done = client.delete(url, params={"confirm": "plant-a"})
    assert done.status_code == 200, done.text
    answer = done.json()
    assert sorted(answer["deleted"]["twins"]) == sorted(twins)
    assert answer["kept_types"] == ["valve"]  # plant-b's twin still uses it
    assert answer["deleted"]["mappings"] == ["m-a"]
    left = [t["id"] for t in client.get("/api/twins", params={"limit": 100}).json()["items"]]
    assert left == ["plant-b/v0"]
    assert frontend.mappings.list() == []
