"""Request bodies: read within a size limit, parsed as JSON (or YAML) with errors naming the fix.

Every route reads its body here (413 before reading past the limit); YAML refuses aliases and
nesting beyond its limit (livetwin/spec/safe_yaml.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from livetwin.errors import InvalidInput, PayloadTooLarge
from livetwin.spec.safe_yaml import load_yaml

MAX_JSON_DEPTH = 1024  # orjson's own limit on nested arrays and objects


async def read_body(request: Request, limit: int, *, required: bool = True) -> Any:
    """The request body within the size limit, parsed off the event loop (JSON, or YAML).

    An empty body is an error, or None when not `required`.
    """
    raw = await read_raw_body(request, limit)
    if not required and not raw.strip():
        return None
    return await run_in_threadpool(parse_body, raw, request.headers.get("content-type", ""))


async def read_raw_body(request: Request, limit: int) -> bytes:
    """The request body's bytes, refused (413) before reading past `limit`."""
    if declares_more_than(request, limit):
        raise PayloadTooLarge(
            f"body of {request.headers['content-length'][:40]} bytes exceeds the limit of "
            f"{limit} bytes",
            field="body",
            fix="send smaller batches",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"body exceeds the limit of {limit} bytes", field="body", fix="send smaller batches"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def declares_more_than(request: Request, limit: int) -> bool:
    """Whether the request's Content-Length announces more than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    return declared.isdigit() and (len(declared) > 18 or int(declared) > limit)


def parse_body(raw: bytes, content_type: str) -> Any:
    """JSON (or YAML when the content type says so) with errors that say where it broke."""
    if not raw.strip():
        raise InvalidInput("the request body is empty", field="body", fix="send a JSON body")
    if "yaml" in content_type:
        return load_yaml(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise InvalidInput(
                f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                field="body",
                fix=f"flatten the document: at most {MAX_JSON_DEPTH} levels of arrays and objects",
            ) from None
        error = InvalidInput(
            f"malformed JSON: {exc}",
            field="body",
            fix="send valid JSON (check quotes, commas and brackets)",
        )
        error.status, error.code = 400, "malformed_json"
        raise error from None
