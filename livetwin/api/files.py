"""REST routes for files: import mappings (`/api/mappings`), file import (`POST /api/imports`,
a multipart upload) and a type's history as Parquet (`GET /api/types/{name}/export`)."""

from __future__ import annotations

import tempfile
import uuid

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from livetwin.api.body import declares_more_than, parse_body, read_body
from livetwin.api.openapi import ERROR_REF, error_response, request_body
from livetwin.api.tenancy import NAMESPACE_QUERY, TENANT, check_owner, claim
from livetwin.auth import Access
from livetwin.errors import InvalidInput, PayloadTooLarge
from livetwin.platform import Platform

PARQUET = "application/vnd.apache.parquet"
MAPPING_BODY = request_body(
    {
        "application/json": {"schema": {"type": "object"}},
        "application/yaml": {"schema": {"type": "string"}},
    }
)
IMPORT_BODY = request_body(
    {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "mapping": {"type": "string", "description": "a stored mapping's name"},
                    "mapping_spec": {
                        "type": "string",
                        "description": "or the mapping itself, as JSON or YAML",
                    },
                },
            }
        }
    }
)
IMPORT_REPORT = {
    "type": "object",
    "required": ["file", "rows", "accepted", "duplicates", "rejected", "rejected_total"],
    "properties": {
        "file": {"type": "string"},
        "format": {"type": "string"},
        "sha256": {"type": "string"},
        "rows": {"type": "integer"},
        "accepted": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "rejected": {
            "type": "array",
            "description": "the first 100 rejected rows",
            "items": {
                "type": "object",
                "required": ["row", "error"],
                "properties": {
                    "row": {"type": "integer", "description": "data row, from 1"},
                    "field": {"type": ["string", "null"]},
                    "error": {"type": ["string", "null"]},
                    "fix": {"type": ["string", "null"]},
                },
            },
        },
        "rejected_total": {"type": "integer"},
        "seconds": {"type": "number"},
    },
}
IMPORT_RESPONSES = {
    200: {
        "description": "the file was read; rows listed in `rejected` were not stored",
        "content": {"application/json": {"schema": IMPORT_REPORT}},
    },
    422: {
        "description": "every row was rejected (the report), or the file or mapping is wrong",
        "content": {
            "application/json": {"schema": {"oneOf": [IMPORT_REPORT, {"$ref": ERROR_REF}]}}
        },
    },
    404: error_response("`mapping` names no stored import mapping"),
}
EXPORT_RESPONSES = {
    200: {
        "description": "Parquet: twin, ts (UTC ms) and one float column per name",
        "content": {PARQUET: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def file_routes(app: FastAPI, platform: Platform) -> None:
    """Add the mapping, import and export routes of `platform` to `app`."""
    limit = platform.settings.max_body_bytes
    max_file = platform.settings.max_import_bytes
    scratch = platform.path / "tmp"

    def check_mapping(name: str, access: Access) -> None:
        fix = f"declare it with PUT /api/mappings/{name}"
        check_owner(platform.mappings.namespace, name, access, "import mapping", fix)

    @app.get("/api/mappings", tags=["files"])
    def list_mappings(
        access: Access = TENANT, namespace: str | None = NAMESPACE_QUERY
    ) -> list[dict]:
        return access.pick(namespace).filter(platform.mappings.list())

    @app.put("/api/mappings/{name}", tags=["files"], openapi_extra=MAPPING_BODY)
    async def put_mapping(name: str, request: Request, access: Access = TENANT) -> dict:
        """Declare how a file's columns map to twins, types, times and values (JSON or YAML),
        in the body's `namespace` (default: the token's only one, else `default`)."""
        body = await read_body(request, limit)
        body = claim("import mapping", name, body, platform.mappings.namespace, access)
        return await run_in_threadpool(platform.mappings.put, name, body)

    @app.get("/api/mappings/{name}", tags=["files"])
    def get_mapping(name: str, access: Access = TENANT) -> dict:
        check_mapping(name, access)
        return platform.mappings.get(name)

    @app.delete("/api/mappings/{name}", tags=["files"])
    def delete_mapping(name: str, access: Access = TENANT) -> dict:
        check_mapping(name, access)
        return platform.mappings.delete(name)

    @app.post("/api/imports", tags=["files"], openapi_extra=IMPORT_BODY, responses=IMPORT_RESPONSES)
    async def import_file(request: Request):
        """Import an uploaded CSV, JSON lines, Excel or Parquet file under a mapping (a stored
        one's name, or `mapping_spec`); rows are keyed by the file's hash and row number, so a
        file sent twice is stored once."""
        if declares_more_than(request, max_file):
            raise _too_large(max_file)
        form = await request.form(max_files=1, max_fields=10)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidInput(
                    "the upload has no file part",
                    field="file",
                    fix="send multipart/form-data with the file as 'file' (curl -F file=@data.csv)",
                )
            mapping = _mapping(form)
            scratch.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=scratch, suffix=".upload") as copy:
                await run_in_threadpool(_copy, upload, copy, max_file)
                report = await run_in_threadpool(
                    platform.import_file, copy.name, mapping, filename=upload.filename or "upload"
                )
        finally:
            await form.close()
        status = 422 if report["rejected_total"] and not report["accepted"] else 200
        return app.router.default_response_class(report, status_code=status)

    @app.get("/api/types/{name}/export", tags=["files"], responses=EXPORT_RESPONSES)
    async def export(
        name: str,
        start: str | None = Query(None, alias="from"),
        end: str | None = Query(None, alias="to"),
        names: str | None = Query(None, description="comma-separated; default: every name"),
    ):
        """The type's history within [from, to) as a Parquet file (one row per observation)."""
        wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / f"export-{uuid.uuid4().hex}.parquet"
        try:
            await run_in_threadpool(platform.export, name, path, start=start, end=end, names=wanted)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return FileResponse(
            path,
            media_type=PARQUET,
            filename=f"{name}.parquet",
            background=BackgroundTask(path.unlink, missing_ok=True),
        )


def _mapping(form) -> str | dict:
    name, spec = form.get("mapping"), form.get("mapping_spec")
    if (name is None) == (spec is None) or isinstance(name, UploadFile):
        raise InvalidInput(
            "give exactly one of mapping (a stored mapping's name) and mapping_spec",
            field="mapping",
            fix="add -F mapping=NAME (declare it with PUT /api/mappings/NAME) or "
            "-F mapping_spec=@map.yaml",
        )
    if name is not None:
        return name
    raw = spec.file.read() if isinstance(spec, UploadFile) else spec.encode()
    body = parse_body(raw, "application/yaml")  # YAML is a superset of JSON
    if not isinstance(body, dict):
        raise InvalidInput(
            "mapping_spec must be an object", field="mapping_spec", fix="send JSON or YAML"
        )
    return body


def _copy(upload: UploadFile, out, most: int) -> None:
    """The upload into `out`, refused past `most` bytes."""
    upload.file.seek(0)
    size = 0
    while chunk := upload.file.read(1 << 20):
        size += len(chunk)
        if size > most:
            raise _too_large(most)
        out.write(chunk)
    out.flush()


def _too_large(most: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the file exceeds the limit of {most} bytes",
        field="file",
        fix="split the file, or import it with `livetwin import` where the server runs",
    )
