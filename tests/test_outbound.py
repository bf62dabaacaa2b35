"""The outbound policy: destinations inside the network are refused after DNS resolution unless
the allow-list (LIVETWIN_OUTBOUND_ALLOW) names them."""

from __future__ import annotations

import pytest

from livetwin.errors import InvalidInput
from livetwin.outbound import OutboundDenied, OutboundPolicy
from livetwin.settings import Settings

DEFAULT = OutboundPolicy()


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://localhost:8080/admin", "loopback"),  # a name: refused for what it resolves to
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]:9000/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.9/", "private"),
        ("https://192.168.1.1/", "private"),
        ("http://[fd12::1]/", "private"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://169.254.10.10/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0:8000/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped IPv6
    ],
)
def test_inside_destinations_are_refused_by_default(url, why):
    with pytest.raises(OutboundDenied) as refused:
        DEFAULT.check_url(url)
    assert why in refused.value.message and refused.value.field == "url"
    assert "LIVETWIN_OUTBOUND_ALLOW" in refused.value.fix


def test_public_addresses_pass_and_unresolvable_hosts_only_when_declared():
    DEFAULT.check_url("https://93.184.215.14/hook")
    with pytest.raises(OutboundDenied, match="does not resolve"):
        DEFAULT.check_url("https://no-such-host.invalid/hook")
    DEFAULT.check_url("https://no-such-host.invalid/hook", unresolved_ok=True)  # checked per call


def test_the_allow_list_lets_named_networks_and_host_ports_through():
    OutboundPolicy(("127.0.0.0/8",)).check_url("http://localhost:8080/x")
    OutboundPolicy(("10.0.0.0/8",)).check_url("http://10.9.9.9/x")
    only_port = OutboundPolicy(("localhost:8080",))
    only_port.check_url("http://localhost:8080/x")
    with pytest.raises(OutboundDenied):
        only_port.check_url("http://localhost:8081/x")
    with pytest.raises(OutboundDenied):  # other private ranges stay refused
        OutboundPolicy(("127.0.0.0/8",)).check_url("http://169.254.169.254/")
    with pytest.raises(InvalidInput, match="allow-list"):
        OutboundPolicy(("localhost:http",))


def test_settings_read_the_allow_list_from_the_environment():
    env = {"LIVETWIN_OUTBOUND_ALLOW": "127.0.0.0/8, hooks.lan:8443"}
    settings = Settings.from_env(environ=env)
    assert settings.outbound_allow == ("127.0.0.0/8", "hooks.lan:8443")
    assert Settings.from_env(environ={}).outbound_allow is None
