"""Named extractor specs, kept in a store's extractor table, and ingest through one: a device's
own JSON mapped to observations, rejections pointed back at the payload's elements."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import orjson

from livetwin.core import done
from livetwin.errors import NotFound
from livetwin.ingest.extract import extract
from livetwin.ingest.observations import Rejection
from livetwin.journal.writer import IngestResult
from livetwin.namespaces import DEFAULT as DEFAULT_NAMESPACE
from livetwin.spec.extractor import ExtractorSpec


class Extractors:
    """The extractors of a `store` (put_extractor, extractors, delete_extractor). `cache`
    keeps parsed specs in this process: leave it off where other processes change them."""

    def __init__(self, store: Any, clock: Callable[[], int], *, cache: bool = True):
        self.store, self.clock, self.cache = store, clock, cache
        self._parsed: dict[str, ExtractorSpec] = {}

    def put(self, name: str, spec: Any) -> dict:
        """Declare (or replace) how a device's own JSON maps to observations."""
        parsed = ExtractorSpec.from_data(spec, name=name)
        body = parsed.model_dump(mode="json", exclude_defaults=True)
        self.store.put_extractor(name, orjson.dumps(body).decode(), self.clock())
        if self.cache:
            self._parsed[name] = parsed
        return body

    def get(self, name: str) -> ExtractorSpec:
        if name in self._parsed:
            return self._parsed[name]
        stored = self.store.extractors().get(name)
        if stored is None:
            raise NotFound(
                f"no extractor '{name}'",
                field="extractor",
                fix=f"declare it with PUT /api/extractors/{name}",
            )
        parsed = ExtractorSpec.from_data(orjson.loads(stored), name=name)
        if self.cache:
            self._parsed[name] = parsed
        return parsed

    def namespace(self, name: str) -> str:
        """The namespace that owns an extractor (NotFound for an unknown one)."""
        return self.get(name).namespace or DEFAULT_NAMESPACE

    def delete(self, name: str) -> dict:
        self.get(name)  # NotFound, with the fix
        self.store.delete_extractor(name)
        self._parsed.pop(name, None)
        return {"name": name, "deleted": True}

    def list(self) -> list[dict]:
        return [orjson.loads(s) for _, s in sorted(self.store.extractors().items())]


def submit_extracted(
    spec: ExtractorSpec,
    payload: Any,
    submit: Callable[..., Future],
    *,
    atomic: bool = False,
    topic_vars: dict[str, str] | None = None,
) -> Future:
    """Map `payload` with `spec`, then `submit(observations, atomic=...)` them: a future of the
    ingest result, its rows renumbered to the payload's elements (extraction rejections keep
    their element index; `IngestResult.reindex`)."""
    result = extract(spec, payload, topic_vars=topic_vars)
    failed = {e["index"] for e in result.errors}
    elements = [i for i in range(len(result.observations) + len(failed)) if i not in failed]
    extraction_rejections = [
        Rejection(e["index"], e["field"], e["error"], e["fix"]) for e in result.errors
    ]
    if atomic and extraction_rejections:
        return done(IngestResult(rejected=extraction_rejections))
    future = submit(result.observations, atomic=atomic)
    out: Future = Future()

    def remap(finished: Future) -> None:
        if finished.exception() is not None:
            out.set_exception(finished.exception())
            return
        ingest = finished.result()
        ingest.reindex(elements)
        ingest.rejected.extend(extraction_rejections)
        out.set_result(ingest)

    future.add_done_callback(remap)
    return out
