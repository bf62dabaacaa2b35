"""A real OPC UA server (asyncua's own) on a free loopback port, run on its own thread, for the
OPC UA connector tests: a Plant folder with pump objects holding flow and pressure variables."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

asyncua = pytest.importorskip("asyncua", reason="OPC UA tests need the opcua extra (asyncua)")
from asyncua import Server, ua  # noqa: E402
from asyncua.crypto.cert_gen import setup_self_signed_certificate  # noqa: E402
from asyncua.crypto.permission_rules import User, UserRole  # noqa: E402
from asyncua.server.user_managers import UserManager  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

NAMESPACE = "urn:livetwin:test"


async def certificate(key: Path, cert: Path, uri: str, use) -> None:
    """A self-signed application certificate (DER) and its key (PEM) for `uri`."""
    await setup_self_signed_certificate(
        key, cert, uri, socket.gethostname(), [use], {"commonName": uri}
    )


def client_certificate(folder: Path) -> None:
    """livetwin's client certificate and key as livetwin-cert.der / livetwin-key.pem."""
    folder.mkdir(parents=True, exist_ok=True)
    asyncio.run(
        certificate(
            folder / "livetwin-key.pem",
            folder / "livetwin-cert.der",
            "urn:livetwin:client",
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Users(UserManager):
    """Accepts only `operator` / `secret`."""

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == "operator" and password == "secret":
            return User(role=UserRole.User)
        return None


class OpcServer:
    """An asyncua server with `pumps` under Objects/2:Plant, each with variables flow,
    pressure (numbers) and serial (a string); string node ids `<pump>.<name>` in namespace 2.
    `users`: only
    operator/secret may connect (no anonymous sessions)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        pumps=("pump-1", "pump-2"),
        users=False,
        pki: Path | None = None,
    ):
        self.port = port or free_port()
        self.pumps, self.users, self.pki = pumps, users, pki
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Server | None = None
        self.variables: dict[str, object] = {}
        self.ns = 2

    def _run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> OpcServer:
        self._run(self._start())
        return self

    async def _start(self) -> None:
        server = Server(user_manager=Users() if self.users else None)
        await server.init()
        server.set_endpoint(self.endpoint)
        if self.pki is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:  # only Basic256Sha256 with SignAndEncrypt, on a self-signed server certificate
            key, cert = self.pki / "server-key.pem", self.pki / "server-cert.der"
            await certificate(
                key, cert, "urn:livetwin:test:server", ExtendedKeyUsageOID.SERVER_AUTH
            )
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        if self.users:
            server.set_security_IDs(["Username"])
        self.ns = await server.register_namespace(NAMESPACE)
        plant = await server.nodes.objects.add_folder(self.ns, "Plant")
        for pump in self.pumps:
            obj = await plant.add_object(self.ns, pump)
            for prop, initial in (("flow", 1.0), ("pressure", 2.0)):
                node_id = ua.NodeId(f"{pump}.{prop}", self.ns)
                var = await obj.add_variable(node_id, ua.QualifiedName(prop, self.ns), initial)
                self.variables[f"{pump}.{prop}"] = var
            await obj.add_variable(
                ua.NodeId(f"{pump}.serial", self.ns), ua.QualifiedName("serial", self.ns), "SN-1"
            )
        await server.start()
        self.server = server

    def write(self, name: str, value: float) -> None:
        self._run(self.variables[name].write_value(value))

    def stop(self) -> None:
        if self.server is not None:
            self._run(self.server.stop())
            self.server = None

    def close(self) -> None:
        self.stop()
        self._run(_cancel_others())  # the stopped server's session loops
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _cancel_others() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
