"""OPC UA connector specs: an endpoint, its security and credentials, and which server nodes
become which twin properties (listed node ids, or browse path patterns with wildcards).

Pure data and validation: no OPC UA library here (`livetwin.ingest.opcua` runs the specs).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from livetwin.errors import InvalidInput
from livetwin.spec import parse_model

__all__ = [
    "BrowsePattern",
    "ConnectorSpec",
    "config_connectors",
    "parse_connector",
    "with_password_file",
]

CONFIG_KIND = "opcua"
DEFAULT_PORT = 4840
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# ns=2;s=Pump.Flow, i=2258, ns=3;g=<guid>, ns=1;b=<base64>, nsu=urn:x;s=Flow
NODE_ID_RE = re.compile(r"(?:(?:ns=\d+|nsu=[^;]+);)?[isgb]=.+", re.DOTALL)
TEMPLATE_RE = re.compile(r"\{(\d+)\}")
# OPC UA policy names (the URI fragment) -> asyncua's SecurityPolicy class suffix
POLICIES = {
    "None": "None",
    "Basic256Sha256": "Basic256Sha256",
    "Aes128_Sha256_RsaOaep": "Aes128Sha256RsaOaep",
    "Aes256_Sha256_RsaPss": "Aes256Sha256RsaPss",
    "Basic256": "Basic256",  # deprecated by the OPC Foundation; for old servers
    "Basic128Rsa15": "Basic128Rsa15",  # deprecated
}
MODES = ("None", "Sign", "SignAndEncrypt")
EXAMPLE = {
    "endpoint": "opc.tcp://plc-7.plant.example:4840",
    "type": "pump",
    "nodes": [{"node": "ns=2;s=Pump1.Flow", "twin": "pump-1", "property": "flow"}],
    "browse": [{"path": "2:Plant/*/2:Flow", "twin": "{1}", "property": "flow"}],
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpcuaSecurity(_Strict):
    """How the secure channel is protected; certificate files lie in the data directory's
    `opcua/` folder (needed unless the policy is None)."""

    policy: str = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: str | None = Field(None, description="client certificate (DER or PEM) file name")
    private_key: str | None = Field(None, description="its private key (PEM) file name")


class OpcuaNode(_Strict):
    """One node id -> one twin property."""

    node: str = Field(description="an OPC UA node id, e.g. ns=2;s=Pump1.Flow")
    twin: str
    property: str
    type: str | None = Field(None, description="the twin type (default: the connector's)")


class OpcuaBrowse(_Strict):
    """Every variable whose browse path (from the Objects folder) matches `path`; `*` and `?`
    match within one segment, and `{1}`, `{2}`... in twin, property and type are the names
    the wildcard segments matched."""

    path: str = Field(description="e.g. 2:Plant/*/2:Flow (segments: [namespace index:]name)")
    twin: str = Field(description="e.g. {1}, or line-{1}")
    property: str
    type: str | None = None


class OpcuaConnectorBody(_Strict):
    """The JSON body of PUT /api/opcua/connectors/{name}."""

    endpoint: str = Field(description="opc.tcp://host:port[/path]")
    type: str | None = Field(None, description="the twin type of every mapping that names none")
    security: OpcuaSecurity = OpcuaSecurity()
    username: str | None = None
    password: str | None = Field(None, description="write-only: never returned")
    nodes: list[OpcuaNode] = Field(default_factory=list, max_length=100_000)
    browse: list[OpcuaBrowse] = Field(default_factory=list, max_length=100)
    sampling_ms: float = Field(100, ge=0, le=3_600_000)
    publishing_ms: float = Field(100, gt=0, le=3_600_000)


@dataclass(frozen=True)
class Segment:
    """One step of a browse path: a name pattern and, if given, its namespace index."""

    namespace: int | None
    pattern: str

    @property
    def wildcard(self) -> bool:
        return any(c in self.pattern for c in "*?[")

    def matches(self, namespace: int, name: str) -> bool:
        if self.namespace is not None and namespace != self.namespace:
            return False
        return fnmatch.fnmatchcase(name, self.pattern) if self.wildcard else name == self.pattern


@dataclass(frozen=True)
class BrowsePattern:
    """A parsed `browse` entry."""

    segments: tuple[Segment, ...]
    twin: str
    property: str
    type: str

    def names(self, captured: list[str]) -> tuple[str, str, str]:
        """(twin, property, type) with `{k}` replaced by the k-th wildcard match."""

        def fill(template: str) -> str:
            return TEMPLATE_RE.sub(lambda m: captured[int(m.group(1)) - 1], template)

        return fill(self.twin), fill(self.property), fill(self.type)


@dataclass(frozen=True)
class ConnectorSpec:
    """A validated connector: what `OpcuaConnectors` runs."""

    name: str
    body: OpcuaConnectorBody
    host: str
    port: int
    nodes: tuple[tuple[str, str, str, str], ...]  # (node id, twin, property, type)
    browse: tuple[BrowsePattern, ...]
    certificate: Path | None
    private_key: Path | None

    @property
    def endpoint(self) -> str:
        return self.body.endpoint

    def public(self) -> dict:
        """The spec as stored and shown: the password is never returned."""
        shown = self.body.model_dump(mode="json", exclude_defaults=True, exclude={"password"})
        if self.body.password is not None:
            shown["password_set"] = True
        return {"name": self.name, **shown}

    def stored(self) -> dict:
        return self.body.model_dump(mode="json", exclude_defaults=True)


def parse_connector(name: str, body: Any, *, pki_dir: Path) -> ConnectorSpec:
    """Validate a connector body (InvalidInput naming the field and the fix)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"connector name {name!r} is not allowed",
            field="name",
            fix="use 1-128 letters, digits, '_', '.', '-', starting with a letter or digit",
        )
    if isinstance(body, dict) and "name" in body:
        if body["name"] != name:
            raise InvalidInput(
                f"name {body['name']!r} in the body differs from {name!r} in the URL",
                field="name",
                fix="leave name out of the body, or make it match the URL",
            )
        body = {k: v for k, v in body.items() if k != "name"}
    if not isinstance(body, dict):
        raise InvalidInput(
            "an OPC UA connector is a JSON object", field="body", fix=f"send e.g. {EXAMPLE}"
        )
    spec = parse_model(OpcuaConnectorBody, body, what="OPC UA connector")
    host, port = _endpoint(spec.endpoint)
    if not spec.nodes and not spec.browse:
        raise InvalidInput(
            "the connector maps no nodes",
            field="nodes",
            fix='list node ids under nodes ([{"node": "ns=2;s=Pump1.Flow", "twin": "pump-1", '
            '"property": "flow"}]) or patterns under browse',
        )
    nodes = []
    for i, entry in enumerate(spec.nodes):
        if not NODE_ID_RE.fullmatch(entry.node):
            raise InvalidInput(
                f"{entry.node!r} is not an OPC UA node id",
                field=f"nodes[{i}].node",
                fix="write it as ns=<index>;s=<name> (or i=, g=, b=), e.g. ns=2;s=Pump1.Flow",
            )
        if TEMPLATE_RE.search(entry.twin + entry.property):
            raise InvalidInput(
                "{1}-style placeholders only fill in browse patterns",
                field=f"nodes[{i}]",
                fix="name the twin and property literally, or use a browse pattern",
            )
        nodes.append((entry.node, entry.twin, entry.property, _type(spec, entry, f"nodes[{i}]")))
    if len({n[0] for n in nodes}) != len(nodes):
        raise InvalidInput("a node id is listed twice", field="nodes", fix="list each node id once")
    browse = tuple(_pattern(spec, i, entry) for i, entry in enumerate(spec.browse))
    certificate, private_key = _security(spec.security, pki_dir)
    if spec.password is not None and spec.username is None:
        raise InvalidInput(
            "a password needs a username", field="username", fix="add username, or drop password"
        )
    return ConnectorSpec(name, spec, host, port, tuple(nodes), browse, certificate, private_key)


def _endpoint(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        port = -1
    if parts.scheme != "opc.tcp" or not parts.hostname or port < 1 or parts.username:
        raise InvalidInput(
            f"endpoint {endpoint!r} is not an opc.tcp://host:port URL",
            field="endpoint",
            fix="e.g. opc.tcp://plc-7.plant.example:4840 (credentials go in username/password)",
        )
    return parts.hostname, port


def _type(spec: OpcuaConnectorBody, entry: OpcuaNode | OpcuaBrowse, field: str) -> str:
    chosen = entry.type or spec.type
    if not chosen:
        raise InvalidInput(
            f"{field} has no twin type", field=f"{field}.type", fix="set type on the connector"
        )
    return chosen


def _pattern(spec: OpcuaConnectorBody, i: int, entry: OpcuaBrowse) -> BrowsePattern:
    field = f"browse[{i}]"
    segments = []
    for text in entry.path.strip("/").split("/"):
        head, colon, tail = text.partition(":")
        namespace = int(head) if colon and head.isdigit() else None
        pattern = tail if namespace is not None else text
        if not pattern or "**" in pattern:
            raise InvalidInput(
                f"browse path {entry.path!r} has an empty or '**' segment",
                field=f"{field}.path",
                fix="write one name pattern per level, e.g. 2:Plant/*/2:Flow",
            )
        segments.append(Segment(namespace, pattern))
    wildcards = sum(s.wildcard for s in segments)
    kind = _type(spec, entry, field)
    for key, template in (("twin", entry.twin), ("property", entry.property), ("type", kind)):
        for ref in TEMPLATE_RE.findall(template):
            if not 1 <= int(ref) <= wildcards:
                raise InvalidInput(
                    f"{field}.{key} {template!r} uses {{{ref}}}, but the path has {wildcards} "
                    "wildcard segment(s)",
                    field=f"{field}.{key}",
                    fix="number the path's wildcard segments from {1}",
                )
    return BrowsePattern(tuple(segments), entry.twin, entry.property, kind)


def _security(security: OpcuaSecurity, pki_dir: Path) -> tuple[Path | None, Path | None]:
    if security.policy not in POLICIES:
        raise InvalidInput(
            f"unknown security policy {security.policy!r}",
            field="security.policy",
            fix=f"use one of: {', '.join(POLICIES)}",
        )
    if (security.policy == "None") != (security.mode == "None"):
        raise InvalidInput(
            f"security policy {security.policy} does not go with mode {security.mode}",
            field="security.mode",
            fix="policy None takes mode None; any other policy takes Sign or SignAndEncrypt",
        )
    if security.policy == "None":
        return None, None
    files = []
    for key in ("certificate", "private_key"):
        name = getattr(security, key)
        path = pki_dir / name if name else None
        if name is None or Path(name).is_absolute() or ".." in Path(name).parts:
            raise InvalidInput(
                f"security policy {security.policy} needs security.{key}: a file name in {pki_dir}",
                field=f"security.{key}",
                fix=f"put the client's {key.replace('_', ' ')} in {pki_dir} and name it here",
            )
        if not path.is_file():
            raise InvalidInput(
                f"security.{key} {name!r} is not a file in {pki_dir}",
                field=f"security.{key}",
                fix=f"copy it to {path}",
            )
        files.append(path)
    return files[0], files[1]


def with_password_file(body: Any, folder: Path, where: str) -> Any:
    """A connector body from a file: `password_file` (relative to `folder`, the file's own
    folder) read into `password`, so the password itself need not sit in the file."""
    if not isinstance(body, dict) or "password_file" not in body:
        return body
    body = dict(body)
    name = body.pop("password_file")
    if not isinstance(name, str) or not name:
        raise InvalidInput(
            f"{where}.password_file must be a file name",
            field=f"{where}.password_file",
            fix="give the name of a file holding the password",
        )
    try:
        body["password"] = (folder / name).read_text().strip()
    except OSError as exc:
        raise InvalidInput(
            f"cannot read {where}.password_file {name}: {exc.strerror}",
            field=f"{where}.password_file",
            fix="give a readable file holding the password",
        ) from None
    return body


def config_connectors(section: Any, folder: Path) -> dict[str, Any]:
    """The connectors of the `opcua:` section of a `livetwin serve --config` file (found in
    `folder`), by name: `{connectors: {name: spec}}`; each is validated when it is applied."""
    example = "opcua: {connectors: {line-1: {endpoint: opc.tcp://plc:4840, type: pump, ...}}}"
    if not isinstance(section, dict) or set(section) - {"connectors"}:
        unknown = sorted(set(section) - {"connectors"}) if isinstance(section, dict) else []
        raise InvalidInput(
            f"unknown key opcua.{unknown[0]}" if unknown else "opcua: must be a mapping",
            field=f"opcua.{unknown[0]}" if unknown else "opcua",
            fix=example,
        )
    connectors = section.get("connectors") or {}
    if not isinstance(connectors, dict):
        raise InvalidInput(
            "opcua.connectors must map names to connector specs",
            field="opcua.connectors",
            fix=example,
        )
    return {
        name: with_password_file(body, folder, f"opcua.connectors.{name}")
        for name, body in connectors.items()
    }
