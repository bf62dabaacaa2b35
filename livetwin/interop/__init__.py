"""Twin standards in and out: DTDL interfaces and AAS submodels as livetwin types, types and
twins exported to them, and a read-only NGSI-LD view of twins (docs/interop.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

CHILD_KINDS = frozenset(
    {"Component", "Relationship", "ReferenceElement", "SubmodelElementCollection"}
)  # source elements that became children


@dataclass
class Skipped:
    """A part of the source model that livetwin cannot hold, and why."""

    path: str  # where in the file: a DTMI and element name, or a submodel id and idShort path
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class ImportedType:
    """One type a source model describes, before its children are resolved and it is declared.

    `spec` is a type spec body with its `source`; the children are listed by source id in
    `children` (and as `source.elements` of a child kind with that `id`), since their livetwin
    names are known only once the whole file and the existing types are seen."""

    name: str  # the type name it proposes
    where: str  # where it sits in the file, for errors ("[0]", "submodels[1]")
    spec: dict
    children: list[str] = field(default_factory=list)


@dataclass
class Parsed:
    """What a file holds: its types and what was skipped."""

    standard: str
    types: list[ImportedType]
    skipped: list[Skipped]


def source_key(standard: str, source_id: str) -> str:
    """The id that names one model across its versions (a DTMI without its `;version`)."""
    if standard == "dtdl":
        return source_id.partition(";")[0]
    return source_id


def last_segment(source_id: str) -> str:
    """A readable name from a source id: `dtmi:com:example:Pump;1` -> Pump, an URL's last part."""
    base = source_id.partition(";")[0] if source_id.startswith("dtmi:") else source_id
    for separator in ("#", "/", ":"):
        base = base.rstrip(separator).rpartition(separator)[2] or base
    return base
