"""Alarm e-mail against a real SMTP server (aiosmtpd on a free loopback port): plain with login,
STARTTLS and SSL with a test CA, retries on temporary failures, settings from the environment."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from email import message_from_bytes
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import T0
from tls_support import self_signed

from livetwin.actions.email import AlarmMailer, SmtpSettings, alarm_message, twin_link
from livetwin.errors import InvalidInput

PUMP = {
    "properties": {"temp": {"unit": "degC"}},
    "rules": {
        "overheat": {
            "when": "temp > 80",
            "severity": "critical",
            "message": "{twin} temperature {temp:.1f} above 80",
        },
        "warm": {"when": "temp > 60", "severity": "info"},
    },
}


class Inbox:
    """An aiosmtpd handler that keeps what it receives; `fail_first` answers 451 that often."""

    def __init__(self, fail_first: int = 0, reject: bool = False):
        self.messages: list[tuple[list[str], Message]] = []
        self.fail_first = fail_first
        self.reject = reject
        self.arrived = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        if self.reject:
            return "550 5.1.1 mailbox unavailable"
        if self.fail_first > 0:
            self.fail_first -= 1
            return "451 4.3.0 try again later"
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        self.arrived.set()
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login == b"alarms" and auth_data.password == b"s3cret pass"
    )
    return AuthResult(success=ok, handled=False)  # False: the server answers 535 itself


@pytest.fixture
def smtp_server():
    """Start servers on demand; stops them all after the test."""
    started: list[Controller] = []

    def start(handler: Inbox, **kwargs) -> int:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return port

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 / localhost: (server context, CA file)."""
    cert_file, key_file = self_signed(tmp_path_factory.mktemp("tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, str(cert_file)


def settings(port: int, **overrides) -> SmtpSettings:
    base = {
        "host": "127.0.0.1",
        "port": port,
        "security": "plain",
        "sender": "Livetwin <alarms@plant.example>",
        "recipients": ("ops@plant.example", "oncall@plant.example"),
        "public_url": "https://twins.plant.example/",
        "min_severity": "warning",
        "timeout_s": 5.0,
        "attempts": 3,
        "backoff_s": 0.01,
    }
    return SmtpSettings(**{**base, **overrides})


def wait_for(flag: threading.Event, what: str) -> None:
    assert flag.wait(10), f"{what} did not arrive"


def body_of(message: Message) -> str:
    return message.get_payload(decode=True).decode()


def test_a_raised_alarm_is_mailed_with_subject_and_twin_link(platform, clock, smtp_server):
    inbox = Inbox()
    port = smtp_server(inbox, authenticator=authenticator, auth_require_tls=False)
    platform.put_type("pump", PUMP)
    alarms = platform.alarms
    mailer = AlarmMailer(
        settings(port, user="alarms", password="s3cret pass"), bus=platform.bus
    ).start()
    try:
        clock.now = T0
        platform.ingest([{"twin": "site-a/pump-7", "type": "pump", "ts": T0,
                          "values": {"temp": 91.25}}])  # fmt: skip
        alarms.sync()
        wait_for(inbox.arrived, "the alarm mail")
    finally:
        mailer.stop()
    assert mailer.stats == {"sent": 1, "failed": 0, "retried": 0, "dropped": 0}
    ((recipients, message),) = inbox.messages  # the info-level 'warm' alarm is not mailed
    assert recipients == ["ops@plant.example", "oncall@plant.example"]
    assert message["Subject"] == "[CRITICAL] overheat on site-a/pump-7"
    assert message["From"] == "Livetwin <alarms@plant.example>"
    body = body_of(message)
    assert "site-a/pump-7 temperature 91.2 above 80" in body
    assert "https://twins.plant.example/#/twin/site-a/pump-7" in body
    assert "temp = 91.25" in body and "2026-11-22T10:00:00.000Z" in body


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_with_login(smtp_server, test_ca, security):
    server_context, ca_file = test_ca
    inbox = Inbox()
    if security == "starttls":
        extra = {"tls_context": server_context, "require_starttls": True}
    else:  # aiosmtpd only counts STARTTLS as TLS for auth_require_tls
        extra = {"ssl_context": server_context, "auth_require_tls": False}
    port = smtp_server(inbox, authenticator=authenticator, **{"auth_require_tls": True, **extra})
    config = settings(
        port, security=security, ca_file=ca_file, user="alarms", password="s3cret pass"
    )
    mailer = AlarmMailer(config)
    assert mailer.deliver(alarm_fixture()) is True
    ((_, message),) = inbox.messages
    assert message["Subject"] == "[WARNING] dry_run on pump-1"

    wrong = AlarmMailer(settings(port, security=security, ca_file=ca_file,
                                       user="alarms", password="wrong"))  # fmt: skip
    assert wrong.deliver(alarm_fixture()) is False
    assert wrong.stats["failed"] == 1 and wrong.stats["retried"] == 0  # 535 is permanent


def test_an_untrusted_certificate_is_refused(smtp_server, test_ca):
    server_context, _ = test_ca
    port = smtp_server(Inbox(), tls_context=server_context, require_starttls=True)
    mailer = AlarmMailer(settings(port, security="starttls", attempts=1))
    assert mailer.deliver(alarm_fixture()) is False
    assert mailer.stats["failed"] == 1


def test_temporary_failures_are_retried_and_permanent_ones_are_not(smtp_server):
    flaky = Inbox(fail_first=2)
    mailer = AlarmMailer(settings(smtp_server(flaky)))
    assert mailer.deliver(alarm_fixture()) is True
    assert mailer.stats == {"sent": 1, "failed": 0, "retried": 2, "dropped": 0}
    assert len(flaky.messages) == 1

    rejecting = AlarmMailer(settings(smtp_server(Inbox(reject=True))))
    assert rejecting.deliver(alarm_fixture()) is False
    assert rejecting.stats == {"sent": 0, "failed": 1, "retried": 0, "dropped": 0}

    nobody = AlarmMailer(settings(free_port(), attempts=2))  # connection refused
    assert nobody.deliver(alarm_fixture()) is False
    assert nobody.stats["retried"] == 1 and nobody.stats["failed"] == 1


def test_settings_from_the_environment(tmp_path):
    secret = tmp_path / "smtp-password"
    secret.write_text("from a file\n")
    env = {
        "LIVETWIN_SMTP_HOST": "smtp.example.com",
        "LIVETWIN_SMTP_SECURITY": "SSL",
        "LIVETWIN_SMTP_USER": "alarms",
        "LIVETWIN_SMTP_PASSWORD_FILE": str(secret),
        "LIVETWIN_SMTP_FROM": "twins@example.com",
        "LIVETWIN_SMTP_TO": "a@example.com, b@example.com",
        "LIVETWIN_SMTP_MIN_SEVERITY": "critical",
        "LIVETWIN_PUBLIC_URL": "https://twins.example.com/",
    }
    loaded = SmtpSettings.from_env(env)
    assert loaded.password == "from a file" and loaded.effective_port == 465
    assert loaded.recipients == ("a@example.com", "b@example.com")
    assert "from a file" not in repr(loaded)
    assert twin_link(loaded.public_url, "b1/f 2") == "https://twins.example.com/#/twin/b1/f%202"
    assert SmtpSettings.from_env({}) is None

    broken = {
        "smtp.to": {**env, "LIVETWIN_SMTP_TO": ""},
        "smtp.security": {**env, "LIVETWIN_SMTP_SECURITY": "tls1.0"},
        "smtp.password": {**env, "LIVETWIN_SMTP_PASSWORD": "inline"},
        "smtp.password_file": {**env, "LIVETWIN_SMTP_PASSWORD_FILE": str(tmp_path / "nope")},
        "smtp.port": {**env, "LIVETWIN_SMTP_PORT": "smtp"},
        "smtp.min_severity": {**env, "LIVETWIN_SMTP_MIN_SEVERITY": "panic"},
        "smtp.from": {**env, "LIVETWIN_SMTP_FROM": "twins"},
    }
    for field, environ in broken.items():
        with pytest.raises(InvalidInput) as caught:
            SmtpSettings.from_env(environ)
        assert caught.value.field == field and caught.value.fix


def test_the_message_names_unknown_values(smtp_server):
    alarm = {**alarm_fixture(), "values": {"flow": None, "head": 12.5}}
    text = body_of(alarm_message(settings(25), alarm))
    assert "flow = unknown, head = 12.5" in text
    assert "https://twins.plant.example/api/alarms/3" in text


def alarm_fixture() -> dict:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return {
        "id": 3,
        "version": 1,
        "twin": "pump-1",
        "type": "pump",
        "rule": "dry_run",
        "severity": "warning",
        "state": "active",
        "message": "pump-1 runs dry",
        "values": {"flow": 0.0},
        "since": stamp,
        "raised": stamp,
        "event": "raised",
    }


def test_alarm_mail_goes_to_the_recipients_of_the_twins_namespace(smtp_server):
    """LIVETWIN_SMTP_TO_BY_NAMESPACE: a caregiver per home; other namespaces get the default."""
    env = {
        "LIVETWIN_SMTP_HOST": "smtp.example.com",
        "LIVETWIN_SMTP_TO_BY_NAMESPACE": "home-7=ana@example.com, bo@example.com; home-8=cy@x.org",
    }
    loaded = SmtpSettings.from_env(env)
    assert loaded.recipients_for("home-7/kitchen") == ("ana@example.com", "bo@example.com")
    assert loaded.recipients_for("home-9/hall") == ()  # no default list: not mailed
    for bad in ("home-7", "home/7=a@example.com", "home-7=not-an-address"):
        with pytest.raises(InvalidInput) as caught:
            SmtpSettings.from_env({**env, "LIVETWIN_SMTP_TO_BY_NAMESPACE": bad})
        assert caught.value.field == "smtp.to_by_namespace" or caught.value.field == "smtp.to"
    inbox = Inbox()
    port = smtp_server(inbox)
    mailer = AlarmMailer(settings(port, by_namespace={"home-7": ("ana@example.com",)}))
    assert mailer.deliver({**alarm_fixture(), "twin": "home-7/kitchen"}) is True
    assert mailer.deliver(alarm_fixture()) is True  # pump-1: namespace default, default list
    assert [rcpt for rcpt, _ in inbox.messages] == [
        ["ana@example.com"],
        ["ops@plant.example", "oncall@plant.example"],
    ]
    silent = AlarmMailer(settings(port, recipients=(), by_namespace={"home-7": ("a@example.com",)}))
    assert silent.deliver(alarm_fixture()) is False and len(inbox.messages) == 2
