"""Types and twins in a standard's shape (`?format=dtdl|aas`), read through `Query`."""

from __future__ import annotations

from typing import Any

from livetwin.errors import InvalidInput
from livetwin.interop import aas, dtdl
from livetwin.query import Query
from livetwin.spec.types import TwinTypeSpec

FORMATS = ("dtdl", "aas")


def export_type(query: Query, name: str, version: int | None, format: str) -> dict:
    """A type version as a DTDL Interface or an AAS environment (its submodel template)."""
    chosen = query.get_type(name, version)["version"]  # NotFound with the fix
    spec = query.compiled_version(name, chosen).spec
    if _format(format) == "dtdl":
        return dtdl.export_type(name, spec, chosen, lambda child: _dtmi(query, child))
    return aas.export_type(name, spec, chosen, lambda child: _spec_of(query, child))


def export_twin(query: Query, twin_id: str, format: str) -> dict:
    """A twin's current state as DTDL twin JSON (Azure Digital Twins) or an AAS submodel."""
    twin = query.twin(twin_id)  # NotFound with the fix
    spec = query.compiled_version(twin["type"], twin["version"]).spec
    if _format(format) == "dtdl":
        return dtdl.export_twin(twin, spec)
    return aas.export_twin(twin, spec, lambda child: _spec_of(query, child))


def _format(format: str) -> str:
    if format not in FORMATS:
        raise InvalidInput(
            f"unknown format {format!r}", field="format", fix="use format=dtdl or format=aas"
        )
    return format


def _spec_of(query: Query, name: str) -> tuple[TwinTypeSpec, int] | None:
    ctype = query.compiled_type(name)
    return None if ctype is None else (ctype.spec, ctype.version)


def _dtmi(query: Query, name: str) -> str:
    found: Any = _spec_of(query, name)
    spec, version = found if found else (TwinTypeSpec(), 1)
    return dtdl.dtmi_of(name, spec, version)
