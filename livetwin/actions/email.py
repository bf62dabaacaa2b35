"""E-mail for alarms: raised alarms of a minimum severity are mailed through SMTP (STARTTLS, SSL
or plain, optional login) by a worker thread with retries. Settings come from LIVETWIN_SMTP_*
environment variables or an `SmtpSettings` object; never from code or the journal.
"""

from __future__ import annotations

import logging
import queue
import smtplib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from livetwin.engine.events import Event, Notice
from livetwin.errors import InvalidInput
from livetwin.namespaces import check_namespace, namespace_of
from livetwin.spec.rules import SEVERITIES

if TYPE_CHECKING:
    from livetwin.ports import Bus

log = logging.getLogger(__name__)

SECURITY_PORTS = {"starttls": 587, "ssl": 465, "plain": 25}
MAX_BACKOFF_S = 300.0
ENV = "LIVETWIN_SMTP_"


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send alarm mail. `port` 0 means the default of `security`."""

    host: str
    recipients: tuple[str, ...]
    sender: str = "livetwin@localhost"
    port: int = 0
    security: str = "starttls"  # starttls | ssl | plain
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    public_url: str = "http://127.0.0.1:8000"
    min_severity: str = "warning"
    ca_file: str | None = None  # trust this CA (PEM) instead of the system's
    timeout_s: float = 10.0
    attempts: int = 5
    backoff_s: float = 2.0
    # per namespace (a caregiver per home): its alarms go there instead of `recipients`
    by_namespace: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.host:
            _bad(
                "host", "the SMTP host is missing", "set LIVETWIN_SMTP_HOST, e.g. smtp.example.com"
            )
        if self.security not in SECURITY_PORTS:
            _bad("security", f"unknown security '{self.security}'", "use starttls, ssl or plain")
        if not 0 <= self.port <= 65535:
            _bad("port", f"port {self.port} is out of range", "use a TCP port, e.g. 587")
        if not self.recipients and not self.by_namespace:
            _bad(
                "to",
                "no recipients",
                "set LIVETWIN_SMTP_TO to one or more comma-separated addresses "
                "(or LIVETWIN_SMTP_TO_BY_NAMESPACE)",
            )
        for namespace in self.by_namespace:
            try:
                check_namespace(namespace, "to_by_namespace")
            except InvalidInput as exc:
                _bad("to_by_namespace", exc.message, "write home-7=ana@example.com; home-8=...")
        per_namespace = (a for group in self.by_namespace.values() for a in group)
        for address in (self.sender, *self.recipients, *per_namespace):
            if "@" not in parseaddr(address)[1]:
                _bad(
                    "to" if address != self.sender else "from",
                    f"'{address}' is not an e-mail address",
                    "write addresses as name@example.com",
                )
        if (self.user is None) != (self.password is None):
            _bad(
                "user",
                "a login needs both user and password",
                "set LIVETWIN_SMTP_USER with LIVETWIN_SMTP_PASSWORD or _PASSWORD_FILE",
            )
        if self.min_severity not in SEVERITIES:
            _bad(
                "min_severity",
                f"unknown severity '{self.min_severity}'",
                f"use one of: {', '.join(SEVERITIES)}",
            )
        if self.attempts < 1:
            _bad("attempts", "attempts must be at least 1", "use 1 (no retries) or more")

    def recipients_for(self, twin: str) -> tuple[str, ...]:
        """Who gets the alarms of `twin`: its namespace's recipients, else `recipients`."""
        return self.by_namespace.get(namespace_of(twin), self.recipients)

    @property
    def effective_port(self) -> int:
        return self.port or SECURITY_PORTS[self.security]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SmtpSettings | None:
        """Settings from LIVETWIN_SMTP_* variables (None when LIVETWIN_SMTP_HOST is not set);
        `livetwin.settings.Settings.from_env` reads them from the environment."""
        host = env.get(ENV + "HOST", "").strip()
        if not host:
            return None
        password = env.get(ENV + "PASSWORD")
        password_file = env.get(ENV + "PASSWORD_FILE")
        if password is not None and password_file:
            _bad(
                "password",
                "both LIVETWIN_SMTP_PASSWORD and _PASSWORD_FILE are set",
                "set only one of them",
            )
        if password_file:
            try:
                password = Path(password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                _bad(
                    "password_file",
                    f"cannot read {password_file}: {exc.strerror}",
                    "point LIVETWIN_SMTP_PASSWORD_FILE at a readable file",
                )
        port_text = env.get(ENV + "PORT", "0").strip() or "0"
        if not port_text.isdigit():
            _bad("port", f"port '{port_text}' is not a number", "use a TCP port, e.g. 587")
        return cls(
            host=host,
            port=int(port_text),
            security=env.get(ENV + "SECURITY", "starttls").strip().lower(),
            user=env.get(ENV + "USER") or None,
            password=password or None,
            sender=env.get(ENV + "FROM", "livetwin@localhost").strip(),
            recipients=_addresses(env.get(ENV + "TO", "")),
            by_namespace=_by_namespace(env.get(ENV + "TO_BY_NAMESPACE", "")),
            public_url=env.get("LIVETWIN_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/"),
            min_severity=env.get(ENV + "MIN_SEVERITY", "warning").strip().lower(),
            ca_file=env.get(ENV + "CA_FILE") or None,
        )


def _addresses(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


def _by_namespace(text: str) -> dict[str, tuple[str, ...]]:
    """`home-7=ana@example.com,bo@example.com; home-8=cy@example.com` as a dict."""
    out = {}
    for part in (p.strip() for p in text.split(";") if p.strip()):
        namespace, equals, addresses = part.partition("=")
        if not equals or not _addresses(addresses):
            _bad(
                "to_by_namespace",
                f"'{part}' is not namespace=addresses",
                "write LIVETWIN_SMTP_TO_BY_NAMESPACE='home-7=ana@example.com; home-8=...'",
            )
        out[namespace.strip()] = _addresses(addresses)
    return out


def _bad(name: str, message: str, fix: str):
    raise InvalidInput(f"SMTP settings: {message}", field=f"smtp.{name}", fix=fix)


def twin_link(public_url: str, twin: str) -> str:
    """The dashboard address of a twin."""
    return f"{public_url.rstrip('/')}/#/twin/{quote(twin, safe='/')}"


def alarm_message(settings: SmtpSettings, alarm: dict) -> EmailMessage:
    """The mail for one alarm (an alarm dict as the alarm service publishes it)."""
    link = twin_link(settings.public_url, alarm["twin"])
    values = ", ".join(f"{k} = {_number(v)}" for k, v in sorted(alarm.get("values", {}).items()))
    lines = [
        alarm["message"],
        "",
        f"Twin:     {alarm['twin']} ({alarm.get('type') or 'no type'})",
        f"Rule:     {alarm['rule']} ({alarm['severity']})",
        f"Since:    {alarm['since']}",
        f"Raised:   {alarm['raised']}",
        f"Values:   {values or '-'}",
        f"Alarm:    #{alarm['id']}, {alarm['state']}",
        "",
        f"Open the twin: {link}",
        f"Alarm details: {settings.public_url.rstrip('/')}/api/alarms/{alarm['id']}",
    ]
    message = EmailMessage()
    message["Subject"] = f"[{alarm['severity'].upper()}] {alarm['rule']} on {alarm['twin']}"
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.recipients_for(alarm["twin"]))
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or None)
    message["X-Livetwin-Alarm"] = f"{alarm['id']}.{alarm['version']}"
    message.set_content("\n".join(lines) + "\n")
    return message


def send_mail(settings: SmtpSettings, message: EmailMessage) -> None:
    """Deliver one message over SMTP as the settings say (raises smtplib/OSError on failure)."""
    context = ssl.create_default_context(cafile=settings.ca_file)
    port, timeout = settings.effective_port, settings.timeout_s
    if settings.security == "ssl":
        client = smtplib.SMTP_SSL(settings.host, port, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(settings.host, port, timeout=timeout)
    with client:
        if settings.security == "starttls":
            client.starttls(context=context)
        if settings.user is not None:
            client.login(settings.user, settings.password)
        client.send_message(message)


def _number(value) -> str:
    return (
        "unknown" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
    )


def _permanent(exc: BaseException) -> bool:
    """A 5xx answer (bad address, refused login, rejected message) will not change on retry."""
    if isinstance(exc, smtplib.SMTPNotSupportedError | ssl.SSLCertVerificationError):
        return True  # the server lacks STARTTLS or AUTH, or its certificate is not trusted
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    code = getattr(exc, "smtp_code", None)
    return isinstance(code, int) and 500 <= code < 600


_STOP = object()


class AlarmMailer:
    """Mails raised alarms of at least `settings.min_severity`, off the bus thread.

    `stats` counts mails sent, failed (given up), retried attempts and dropped (queue full).
    Mails still queued at `stop()` get `drain_s` seconds to go out.
    """

    def __init__(self, settings: SmtpSettings, *, bus: Bus | None = None, max_queue: int = 1000):
        self.bus = bus  # where raised alarms are announced (the mail's content comes with them)
        self.settings = settings
        self.stats = {"sent": 0, "failed": 0, "retried": 0, "dropped": 0}
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._stopping = threading.Event()
        self._token: int | None = None
        self._thread = threading.Thread(target=self._work, name="livetwin-mailer", daemon=True)
        self._minimum = SEVERITIES.index(settings.min_severity)

    def start(self) -> AlarmMailer:
        if self.bus is None:
            raise ValueError("AlarmMailer.start needs the bus that announces alarms")
        self._token = self.bus.subscribe(self._on_event)
        self._thread.start()
        return self

    def stop(self, drain_s: float = 5.0) -> None:
        if self._token is None:
            return
        self.bus.unsubscribe(self._token)
        self._token = None
        try:
            self._queue.put(_STOP, timeout=drain_s)
        except queue.Full:
            pass
        self._thread.join(drain_s)
        self._stopping.set()  # no more retries
        self._thread.join()

    def _on_event(self, event: Event) -> None:
        """Bus thread: queue raised alarms that are severe enough."""
        if not isinstance(event, Notice) or event.kind != "alarm":
            return
        alarm = event.data
        if alarm.get("event") != "raised":
            return
        if SEVERITIES.index(alarm.get("severity", "info")) < self._minimum:
            return
        try:
            self._queue.put_nowait(alarm)
        except queue.Full:
            self.stats["dropped"] += 1
            log.error("alarm mail queue is full: alarm %s not mailed", alarm.get("id"))

    def _work(self) -> None:
        while True:
            alarm = self._queue.get()
            if alarm is _STOP:
                return
            self.deliver(alarm)

    def deliver(self, alarm: dict) -> bool:
        """Mail one alarm now, retrying with exponential backoff; True when sent."""
        if not self.settings.recipients_for(alarm["twin"]):
            return False  # its namespace has no recipients and there is no default list
        message = alarm_message(self.settings, alarm)
        attempts = self.settings.attempts
        for attempt in range(1, attempts + 1):
            try:
                send_mail(self.settings, message)
                self.stats["sent"] += 1
                return True
            except (smtplib.SMTPException, OSError) as exc:
                last = attempt == attempts or _permanent(exc) or self._stopping.is_set()
                log.warning(
                    "mailing alarm %s failed (attempt %d of %d): %s",
                    alarm["id"], attempt, attempts, exc,
                )  # fmt: skip
                if last:
                    break
                self.stats["retried"] += 1
                delay = min(MAX_BACKOFF_S, self.settings.backoff_s * 2 ** (attempt - 1))
                if self._stopping.wait(delay):
                    break
        self.stats["failed"] += 1
        log.error("gave up mailing alarm %s to %s", alarm["id"], message["To"])
        return False
