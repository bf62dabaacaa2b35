"""`livetwin.Client(url, token=...)`: the Python SDK for a remote server, over httpx, with the
methods and return shapes of the in-process `Platform` (types, ingest, twins, history, files,
alarms, runs). Errors come back as the same `LivetwinError` kinds the platform raises."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from livetwin.errors import (
    Conflict,
    InvalidInput,
    LivetwinError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from livetwin.ingest.observations import Rejection
from livetwin.journal.writer import IngestResult
from livetwin.timefmt import parse_ts

_ERRORS = {404: NotFound, 409: Conflict, 413: PayloadTooLarge, 422: InvalidInput, 503: Unavailable}
RETRIED = (502, 503, 504)  # the server is restarting or overloaded: the same request again


class Client:
    """A livetwin server over HTTP. Thread-safe; `close()` it (or use `with`).

    `ingest` gives every observation without a `key` an idempotency key before the first try,
    so a batch retried after a lost answer is stored once; requests that failed to connect or
    met 502/503/504 are retried `retries` times with exponential back-off. `namespace` sends
    `?namespace=` with every request: lists show that tenant only, new objects go there.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        namespace: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        params = {"namespace": namespace} if namespace else {}  # every request: one tenant
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            params=params,
            timeout=timeout,
            transport=transport,
        )
        self.retries = retries
        self.alarms = _Alarms(self)
        self.scheduler = _Runs(self)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- transport ---------------------------------------------------------------------

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs) -> Any:
        """One API call (retried on connection errors and 502/503/504); the JSON answer.
        A livetwin error body raises its LivetwinError, except for statuses in `ok`."""
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise Unavailable(
                        f"cannot reach {self.http.base_url}: {exc}",
                        field="url",
                        fix="check the server's address and that it is running",
                    ) from None
            else:
                if response.status_code not in RETRIED or attempt == self.retries:
                    return _answer(response, ok)
            for part in kwargs.get("files", {}).values():  # uploads are read again
                part[1].seek(0)
            time.sleep(min(0.25 * 2**attempt, 4.0))
        raise AssertionError("unreachable")

    # ---- types -------------------------------------------------------------------------

    def put_type(self, name: str, spec: dict) -> dict:
        return self.request("PUT", f"/api/types/{_path(name)}", json=spec)

    def get_type(self, name: str, version: int | None = None) -> dict:
        params = {} if version is None else {"version": version}
        return self.request("GET", f"/api/types/{_path(name)}", params=params)

    def list_types(self) -> list[dict]:
        return self.request("GET", "/api/types")

    def delete_type(self, name: str, *, cascade: bool = False, purge: bool = False) -> dict:
        params = {"cascade": str(cascade).lower(), "purge": str(purge).lower()}
        return self.request("DELETE", f"/api/types/{_path(name)}", params=params)

    # ---- twin lifecycle ----------------------------------------------------------------

    def create_twin(
        self,
        twin_id: str,
        type_name: str,
        *,
        attributes: dict | None = None,
        parent: str | None = None,
    ) -> dict:
        body = {"id": twin_id, "type": type_name, "attributes": attributes, "parent": parent}
        return self.request("POST", "/api/twins", json=_given(body))

    def update_twin(
        self, twin_id: str, *, attributes: dict | None = None, parent: str | None = None
    ) -> dict:
        body = _given({"attributes": attributes, "parent": parent})
        return self.request("PATCH", f"/api/twins/{_path(twin_id)}", json=body)

    def delete_twin(self, twin_id: str, *, purge: bool = False) -> dict:
        params = {"purge": str(purge).lower()}
        return self.request("DELETE", f"/api/twins/{_path(twin_id)}", params=params)

    # ---- namespaces (tenants) -----------------------------------------------------------

    def export_namespace(self, namespace: str) -> dict:
        return self.request("GET", f"/api/namespaces/{_path(namespace)}/export")

    def delete_namespace(
        self, namespace: str, *, confirm: str | None = None, purge: bool = False
    ) -> dict:
        params = _given({"confirm": confirm, "purge": str(purge).lower()})
        return self.request("DELETE", f"/api/namespaces/{_path(namespace)}", params=params)

    # ---- ingest ------------------------------------------------------------------------

    def ingest(self, observations: list[dict], *, atomic: bool = False) -> IngestResult:
        """Send observations; the answer once they are durable (as `Platform.ingest`)."""
        batch = uuid.uuid4().hex[:12]
        keyed = [
            {**o, "key": f"client-{batch}-{i}"} if isinstance(o, dict) and "key" not in o else o
            for i, o in enumerate(observations)
        ]
        body = self.request(
            "POST", "/api/ingest", params={"atomic": str(atomic).lower()}, json=keyed, ok=(422,)
        )
        return IngestResult(
            accepted=body["accepted"],
            duplicates=body["duplicates"],
            rejected=[
                Rejection(r["index"], r.get("field"), r.get("error"), r.get("fix"))
                for r in body["rejected"]
            ],
        )

    # ---- reads -------------------------------------------------------------------------

    def twin(self, twin_id: str) -> dict:
        twin = self.request("GET", f"/api/twins/{_path(twin_id)}")
        for field in ("created", "updated"):  # epoch ms, as the platform gives them
            if twin.get(field) is not None:
                twin[field] = parse_ts(twin[field])
        return twin

    def twins(
        self,
        *,
        type: str | None = None,
        parent: str | None = None,
        where: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict:
        params = {"type": type, "parent": parent, "where": where, "limit": limit, "offset": offset}
        return self.request("GET", "/api/twins", params=_given(params))

    def aggregate(
        self,
        type_name: str,
        names: list[str] | None = None,
        aggs: list[str] | None = None,
        *,
        where: str | None = None,
        parent: str | None = None,
    ) -> dict:
        params = {
            "names": ",".join(names) if names else None,
            "agg": ",".join(aggs) if aggs else None,
            "where": where,
            "parent": parent,
        }
        return self.request(
            "GET", f"/api/types/{_path(type_name)}/aggregate", params=_given(params)
        )

    def history(
        self,
        twin_id: str,
        names: list[str] | None = None,
        *,
        start: Any = None,
        end: Any = None,
        every: str | None = None,
        agg: str = "avg",
    ) -> dict:
        """Aligned series: {"ts": [epoch ms], "series": {name: [values]}} (as the platform)."""
        params = {
            "names": ",".join(names) if names else None,
            "from": start,
            "to": end,
            "every": every,
            "agg": agg,
        }
        return self.request("GET", f"/api/twins/{_path(twin_id)}/history", params=_given(params))

    def history_frame(self, twin_id: str, names: list[str] | None = None, **options) -> Any:
        """`history` as a pandas DataFrame indexed by UTC time (needs pandas)."""
        from livetwin.query import history_frame

        return history_frame(self.history(twin_id, names, **options))

    def observations(self, twin_id: str, *, limit: int = 50, before: Any = None) -> list[dict]:
        params = _given({"limit": limit, "before": before})
        return self.request("GET", f"/api/twins/{_path(twin_id)}/observations", params=params)

    # ---- calibration -------------------------------------------------------------------

    def calibrate(self, type_name: str, twins: list[str] | None = None) -> dict:
        if twins and len(twins) == 1:
            return self.request("POST", f"/api/twins/{_path(twins[0])}/calibrate")
        if twins:
            raise InvalidInput(
                "over HTTP, calibrate a whole type or one twin",
                field="twins",
                fix="pass one twin, or none for the whole type",
            )
        return self.request("POST", f"/api/types/{_path(type_name)}/calibrate")

    def calibration(self, twin_id: str) -> dict:
        return self.request("GET", f"/api/twins/{_path(twin_id)}/calibration")

    # ---- files -------------------------------------------------------------------------

    def put_mapping(self, name: str, spec: dict) -> dict:
        return self.request("PUT", f"/api/mappings/{_path(name)}", json=spec)

    def get_mapping(self, name: str) -> dict:
        return self.request("GET", f"/api/mappings/{_path(name)}")

    def list_mappings(self) -> list[dict]:
        return self.request("GET", "/api/mappings")

    def delete_mapping(self, name: str) -> dict:
        return self.request("DELETE", f"/api/mappings/{_path(name)}")

    def import_file(
        self, path: str | Path, mapping: str | dict, *, filename: str | None = None
    ) -> dict:
        """Upload a file to import under a stored mapping's name or a mapping; the report."""
        import orjson

        path = Path(path)
        fields = (
            {"mapping": mapping}
            if isinstance(mapping, str)
            else {"mapping_spec": orjson.dumps(mapping).decode()}
        )
        with open(path, "rb") as f:
            files = {"file": (filename or path.name, f)}
            return self.request("POST", "/api/imports", data=fields, files=files, ok=(422,))

    def export(
        self,
        type_name: str,
        out: str | Path | IO[bytes],
        *,
        start: Any = None,
        end: Any = None,
        names: list[str] | None = None,
    ) -> dict:
        """Write a type's history within [start, end) as Parquet to `out`; bytes written."""
        params = _given({"from": start, "to": end, "names": ",".join(names) if names else None})
        path = f"/api/types/{_path(type_name)}/export"
        with self.http.stream("GET", path, params=params) as response:
            if response.status_code != 200:
                response.read()
                _answer(response, ())
            sink = open(out, "wb") if isinstance(out, str | Path) else out  # noqa: SIM115
            try:
                for chunk in response.iter_bytes():
                    sink.write(chunk)
            finally:
                if sink is not out:
                    sink.close()
            return {"type": type_name, "bytes": response.num_bytes_downloaded}


class _Alarms:
    """`client.alarms`: the methods of the platform's alarm service (`platform.alarms`)."""

    def __init__(self, client: Client):
        self._c = client

    def list(self, **filters) -> dict:
        return self._c.request("GET", "/api/alarms", params=_given(filters))

    def counts(self) -> dict:
        return self._c.request("GET", "/api/alarms/counts")

    def get(self, alarm_id: int) -> dict:
        return self._c.request("GET", f"/api/alarms/{alarm_id}")

    def acknowledge(self, alarm_id: int, *, by: str | None = None, note: str | None = None):
        return self._c.request(
            "POST", f"/api/alarms/{alarm_id}/ack", json=_given({"by": by, "note": note})
        )

    def clear(self, alarm_id: int, *, by: str | None = None, note: str | None = None) -> dict:
        return self._c.request(
            "POST", f"/api/alarms/{alarm_id}/clear", json=_given({"by": by, "note": note})
        )

    def comment(self, alarm_id: int, text: str, author: str | None = None) -> dict:
        body = _given({"text": text, "author": author})
        return self._c.request("POST", f"/api/alarms/{alarm_id}/comments", json=body)


class _Runs:
    """`client.scheduler`: the scheduler's run reads (`platform.scheduler.runs` / `.run`)."""

    def __init__(self, client: Client):
        self._c = client

    def runs(self, **filters) -> list[dict]:
        return self._c.request("GET", "/api/runs", params=_given(filters))

    def run(self, run_id: str) -> dict:
        return self._c.request("GET", f"/api/runs/{_path(run_id)}")


def _answer(response: httpx.Response, ok: tuple[int, ...]) -> Any:
    """The JSON of a response; a livetwin error body raises as its LivetwinError kind."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code < 400 or response.status_code in ok and "error" not in (body or {}):
        return body
    error = (body or {}).get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": f"HTTP {response.status_code}: {response.text[:200]}"}
    kind = _ERRORS.get(response.status_code, LivetwinError)
    exc = kind(error.get("message", ""), field=error.get("field"), fix=error.get("fix"))
    exc.status, exc.code = response.status_code, error.get("code", exc.code)
    exc.details = error.get("details")
    raise exc


def _path(segment: str) -> str:
    return quote(segment, safe="/")


def _given(params: dict) -> dict:
    return {k: v for k, v in params.items() if v is not None}
