"""`/api/devices`: issue, list and revoke device credentials (admin, per namespace), and what a
device credential may call over HTTP: `POST /api/ingest` with its own twins only (docs/devices.md).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from livetwin.api.body import read_body
from livetwin.api.openapi import error_response, json_body
from livetwin.api.tenancy import NAMESPACE_QUERY, TENANT
from livetwin.auth import Access, Forbidden
from livetwin.auth.devices import DevicePrincipal, DeviceStore, TwinPattern
from livetwin.errors import InvalidInput, NotFound

DEVICE_ROUTE = ("POST", "/api/ingest")  # the one route a device credential may call
FIELDS = ("name", "twins", "namespace")
MAX_BODY = 16 * 1024
OUT_OF_REACH = {404: error_response("a namespace the credentials do not hold")}
DEVICE_BODY = json_body(
    {
        "type": "object",
        "required": ["name", "twins"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "twins": {
                "type": "string",
                "description": "a twin id, or a pattern: '*' any characters but "
                "'/', '**' any characters, '?' one character but '/'",
            },
            "namespace": {
                "type": "string",
                "description": "the twins' namespace (optional: checked if given)",
            },
        },
    },
    example={"name": "pump-7 gateway", "twins": "plant-a/pump-7*"},
)


def check_device_route(method: str, path: str, principal: DevicePrincipal) -> None:
    """Forbidden unless this is the one route a device may call (POST /api/ingest)."""
    if (method, path.rstrip("/")) == DEVICE_ROUTE:
        return
    raise Forbidden(
        f"a device credential may only send observations of its twins "
        f"('{principal.twins.text}') with POST /api/ingest, not {method} {path}",
        field="authorization",
        fix="use an API token for anything else (`livetwin token create`)",
    )


def device_routes(app: FastAPI, devices: DeviceStore) -> None:
    """Add `/api/devices` over `devices`: a device belongs to its twins' namespace; callers see
    and manage the devices of the namespaces their credentials hold (with admin scope)."""

    def reachable(device_id: str, access: Access) -> dict:
        device = devices.get(device_id)
        if not access.allows(device["namespace"]):
            raise NotFound(
                f"no device '{device_id}'", field="id", fix="list devices with GET /api/devices"
            )
        return device

    @app.post(
        "/api/devices",
        tags=["devices"],
        status_code=201,
        openapi_extra=DEVICE_BODY,
        responses=OUT_OF_REACH,
    )
    async def create_device(request: Request, access: Access = TENANT) -> dict:
        """Issue a device credential for a twin or twin pattern: `{name, twins, namespace?}`.
        `credential` (`ltd_...`; on MQTT the password, with `mqtt_username`) is shown only here."""
        body = await read_body(request, MAX_BODY)
        if not isinstance(body, dict):
            raise InvalidInput(
                "the body must be a JSON object",
                field="body",
                fix='send {"name": "pump-7 gateway", "twins": "plant-a/pump-7"}',
            )
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise InvalidInput(
                f"unknown field(s): {', '.join(unknown)}",
                field=unknown[0],
                fix=f"use {', '.join(FIELDS)}",
            )
        pattern = TwinPattern.parse(body.get("twins"))
        access.check(
            pattern.namespace,
            f"namespace '{pattern.namespace}'",
            "give twins of a namespace your token holds, e.g. '<namespace>/pump-7'",
        )
        return await run_in_threadpool(
            devices.create,
            name=body.get("name"),
            twins=pattern.text,
            namespace=body.get("namespace"),
        )

    @app.get("/api/devices", tags=["devices"], responses=OUT_OF_REACH)
    def list_devices(
        access: Access = TENANT, namespace: str | None = NAMESPACE_QUERY
    ) -> list[dict]:
        """Devices (never their credentials), revoked ones included."""
        return access.pick(namespace).filter(devices.list())

    @app.get("/api/devices/{device_id}", tags=["devices"])
    def get_device(device_id: str, access: Access = TENANT) -> dict:
        return reachable(device_id, access)

    @app.delete("/api/devices/{device_id}", tags=["devices"])
    def revoke_device(device_id: str, access: Access = TENANT) -> dict:
        """Revoke a device from now on: HTTP refuses it at once, the MQTT bridge within
        seconds, the broker after `livetwin devices export-mosquitto` and a reload."""
        reachable(device_id, access)
        return devices.revoke(device_id)
