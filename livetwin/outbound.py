"""The one policy for outbound HTTP (webhooks, http functions, OIDC keys, the S3 endpoint): by
default no call reaches loopback, link-local, private, CGNAT or cloud-metadata addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from urllib.parse import urlsplit

from livetwin.errors import InvalidInput

ALLOW_ENV = "LIVETWIN_OUTBOUND_ALLOW"
FIX = f"allow it with {ALLOW_ENV} (CIDRs or host:port, comma-separated)"
MAX_STORED_BYTES = 64 * 1024  # response bodies kept in run records are cut here
DEFAULT_PORTS = {"http": 80, "https": 443, "opc.tcp": 4840}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# destinations inside the network: denied unless the allow-list names them
DENIED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(cidr), why)
    for cidr, why in [
        ("169.254.169.254/32", "a cloud metadata service"),
        ("fd00:ec2::254/128", "a cloud metadata service"),
        ("0.0.0.0/8", "an unspecified address"),
        ("::/128", "an unspecified address"),
        ("127.0.0.0/8", "a loopback address"),
        ("::1/128", "a loopback address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("fc00::/7", "a private address"),
        ("100.64.0.0/10", "a shared (CGNAT) address"),
        ("169.254.0.0/16", "a link-local address"),
        ("fe80::/10", "a link-local address"),
        ("224.0.0.0/4", "a multicast address"),
        ("ff00::/8", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
    ]
)


class OutboundDenied(InvalidInput):
    """A destination the outbound policy refuses (422 when met while creating something; its
    text, kept in run records and dead letters, carries the fix)."""

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}"


@dataclass(frozen=True)
class OutboundPolicy:
    """Which destinations outbound calls may reach: everything public, plus the `allow` list
    (CIDRs such as ``10.0.0.0/8``, or ``host:port`` such as ``localhost:8080``)."""

    allow: tuple[str, ...] = ()
    _rules: tuple = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # parsed once: a bad entry fails at startup, not at the first call
        object.__setattr__(self, "_rules", tuple(map(_parse_allow, self.allow)))

    def check_url(
        self,
        url: str,
        field: str = "url",
        *,
        unresolved_ok: bool = False,
        schemes: tuple[str, ...] = ("http", "https"),
    ) -> None:
        """Refuse `url` (OutboundDenied naming `field`) when its scheme is not one of `schemes`
        or its host, after DNS resolution, has any address in a denied range that the
        allow-list does not name. A host that does not resolve is refused too, unless
        `unresolved_ok` (when a URL is declared: each call checks it again)."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in schemes or not host:
            raise OutboundDenied(
                f"{url!r} is not an {' or '.join(s + '://' for s in schemes)} URL with a host",
                field=field,
                fix=f"e.g. {schemes[-1]}://example.com" + ("/hook" if "http" in schemes else ""),
            )
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise OutboundDenied(
                f"{url!r} has a bad port", field=field, fix="fix the port"
            ) from None
        if self._allows_host(host, port):
            return
        try:
            addresses = list(resolve(host, port, field))
        except OutboundDenied:
            if unresolved_ok:
                return
            raise
        for address in addresses:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            why = denied_because(address)
            if why and not self._allows_address(address):
                raise OutboundDenied(
                    f"{field} {url!r} points to {why} ({address}), which outbound calls may not "
                    "reach",
                    field=field,
                    fix=FIX,
                )

    def _allows_host(self, host: str, port: int) -> bool:
        return (host, port) in self._rules or (host, None) in self._rules

    def _allows_address(self, address: Address) -> bool:
        return any(
            isinstance(rule, ipaddress.IPv4Network | ipaddress.IPv6Network) and address in rule
            for rule in self._rules
        )


def _parse_allow(entry: str) -> Network | tuple[str, int | None]:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    host, sep, port = entry.rpartition(":")
    if not sep:
        host, port = entry, ""
    host = host.strip("[]").lower()
    if not host or (port and not port.isdigit()):
        raise InvalidInput(
            f"bad outbound allow-list entry {entry!r}",
            field=ALLOW_ENV,
            fix="give CIDRs (10.0.0.0/8) or host:port (localhost:8080), comma-separated",
        )
    return host, int(port) if port else None


def denied_because(address: Address) -> str | None:
    """Why the default policy refuses an address (None: a public one)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network, why in DENIED:
        if address.version == network.version and address in network:
            return why
    return None


def resolve(host: str, port: int, field: str = "url") -> Iterator[Address]:
    """Every address `host` resolves to (OutboundDenied when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundDenied(
            f"the host {host!r} of {field} does not resolve: {exc}",
            field=field,
            fix="check the host name",
        ) from None
    for *_, sockaddr in infos:
        yield ipaddress.ip_address(str(sockaddr[0]).split("%")[0])


def capped(chunks: Iterable[bytes], limit: int = MAX_STORED_BYTES) -> tuple[bytes, bool]:
    """At most `limit` bytes of a streamed body, and whether it was cut."""
    kept = bytearray()
    for chunk in chunks:
        kept += chunk
        if len(kept) > limit:
            return bytes(kept[:limit]), True
    return bytes(kept), False
