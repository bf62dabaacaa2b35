"""Signing in to the dashboard in a real headless Chromium: with an API token and with a local
OIDC provider (authorization code + PKCE); a namespace-scoped user sees only their namespace's
twins; live values arrive over a ticketed stream; the switcher narrows several namespaces;
logout forgets the credential; with auth off there is no login at all."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from browser_support import DESKTOP, chromium, require_browser
from conftest import served
from oidc_support import OidcProvider, s256

from livetwin.api.app import create_app
from livetwin.api.auth import install_auth
from livetwin.outbound import OutboundPolicy
from livetwin.platform import Platform

pytestmark = pytest.mark.services  # needs Chromium (see conftest.py)

PUMP = {"properties": {"flow": {"unit": "m3/h"}}}
TWINS = {"plant-a": ["plant-a/pump-1", "plant-a/pump-2"], "plant-b": ["plant-b/pump-1"]}
NOTES = b"plant-a's model notes"
KEEP_SOURCES = """
window.sources = [];
window.EventSource = class extends EventSource {
  constructor(...args) { super(...args); window.sources.push(this); }
};
"""  # the page's EventSources, so a test can break the connection
USERS = {"ana": ["read:plant-a"], "bob": ["read:plant-a", "write:plant-b"]}


def _seed(platform: Platform) -> None:
    now = platform.clock()
    rows = [{"twin": "pump-9", "type": "pump", "ts": now, "values": {"flow": 9.0}}]
    platform.put_type("pump", PUMP)
    for ns, twins in TWINS.items():
        platform.put_type(f"{ns}-pump", {**PUMP, "namespace": ns})
        rows += [
            {"twin": t, "type": f"{ns}-pump", "ts": now, "values": {"flow": 1.0}} for t in twins
        ]
    assert not platform.ingest(rows).rejected
    notes = {"kind": "inductive", "artifacts": ["notes.txt"]}
    platform.registry.register("wear", notes, {"notes.txt": NOTES}, namespace="plant-a")


@pytest.fixture(scope="module")
def idp():
    with OidcProvider(USERS) as provider:
        yield provider


@pytest.fixture(scope="module")
def server(tmp_path_factory, idp):
    """The dashboard with auth on (API tokens and OIDC JWTs from `idp`); its URL and tokens."""
    require_browser()
    platform = Platform(tmp_path_factory.mktemp("login") / "data")
    platform.outbound = OutboundPolicy(("127.0.0.0/8",))  # the identity provider is on loopback
    app = create_app(platform)
    tokens = install_auth(
        app,
        platform,
        mode="oidc",
        jwks_url=idp.jwks_url,
        issuer=idp.issuer,
        audience=idp.audience,
        oidc_client_id=idp.client_id,
    )
    _seed(platform)
    try:
        with served(platform, app) as url:
            idp.redirect_uris.add(f"{url}/")
            yield type("Served", (), {"url": url, "platform": platform, "tokens": tokens})
    finally:
        platform.close()


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.urls = []  # every URL the page requested
    tab.on("request", lambda r: tab.urls.append(r.url))
    tab.logs = []  # console messages and uncaught errors, shown when a wait fails
    tab.on("console", lambda m: tab.logs.append(f"{m.type}: {m.text}"))
    tab.on("pageerror", lambda exc: tab.logs.append(f"pageerror: {exc}"))
    yield tab
    context.close()


def _listed(page) -> list[str]:
    try:
        page.wait_for_selector("table.twins")
    except Exception:
        raise AssertionError(f"{page.inner_text('#view')!r}; {page.logs}") from None
    return sorted(
        page.eval_on_selector_all("tr[data-twin]", "rows => rows.map(r => r.dataset.twin)")
    )


def _ready(page) -> None:
    page.wait_for_selector('#view[data-ready="1"]')


def test_token_login_sees_its_namespace_live_values_and_logs_out(server, page):
    from playwright.sync_api import expect

    page.add_init_script(KEEP_SOURCES)
    page.goto(f"{server.url}/#/fleet")
    page.wait_for_selector("form.login")
    expect(page.locator("#nav")).to_be_hidden()
    assert page.locator("table.twins").count() == 0

    page.fill('input[name="token"]', "lt_nope")  # a bad token: the server's error in place
    page.click('form.login button[type="submit"]')
    expect(page.locator(".login-card .error")).to_contain_text("malformed API token")

    reader = server.tokens.create(name="ana", scope="read", namespace="plant-a")
    page.fill('input[name="token"]', reader["token"])
    page.click('form.login button[type="submit"]')
    assert _listed(page) == TWINS["plant-a"]  # neither plant-b's nor default's
    expect(page.locator("#session .who")).to_contain_text("read:plant-a")
    assert page.locator('#session select[name="namespace"]').count() == 0  # one namespace
    stored = page.evaluate("sessionStorage.getItem('livetwin.session')")
    assert reader["token"] in stored

    # live values over the stream, opened with a single-use ticket
    page.click('tr[data-twin="plant-a/pump-1"] td:first-child a')
    page.wait_for_selector("#live.on")
    server.platform.ingest(
        [
            {
                "twin": "plant-a/pump-1",
                "type": "plant-a-pump",
                "ts": server.platform.clock(),
                "values": {"flow": 777},
            }
        ]
    )
    expect(page.locator('tr[data-name="flow"] .value')).to_have_text("777")
    # a dropped connection: a new ticket (the old one is spent), resumed after the last event
    page.evaluate("window.sources.at(-1).dispatchEvent(new Event('error'))")
    expect(page.locator("#live")).to_have_text("live")
    row = {"twin": "plant-a/pump-1", "type": "plant-a-pump", "values": {"flow": 778}}
    server.platform.ingest([{**row, "ts": server.platform.clock()}])
    expect(page.locator('tr[data-name="flow"] .value')).to_have_text("778")
    streams = [parse_qs(urlsplit(u).query) for u in page.urls if "/api/stream" in u]
    assert all(s["ticket"][0].startswith("ltt_") for s in streams)  # the fleet's too
    twin = [s for s in streams if "twin" in s]
    assert len(twin) == 2 and twin[0]["ticket"] != twin[1]["ticket"]
    assert "last_event_id" in twin[1]
    assert not any(reader["token"] in u for u in page.urls)  # never in a URL
    assert reader["token"] not in page.url

    # a link into the API (a model artifact) is fetched with the credential, then saved
    page.goto(f"{server.url}/#/models/wear")
    _ready(page)
    with page.expect_download() as got:
        page.click('a:text("notes.txt")')
    assert Path(got.value.path()).read_bytes() == NOTES
    assert got.value.suggested_filename == "notes.txt"

    page.goto(f"{server.url}/#/twin/{'plant-b%2Fpump-1'}")  # another tenant's twin: 404
    _ready(page)
    expect(page.locator("#view .error")).to_contain_text("no twin")

    page.click("#logout")
    page.wait_for_selector("form.login")
    assert page.evaluate("sessionStorage.getItem('livetwin.session')") is None
    page.goto(f"{server.url}/#/fleet")
    page.reload()
    page.wait_for_selector("form.login")

    # a credential revoked while signed in: the next request brings the login back, saying why
    second = server.tokens.create(name="ana2", scope="read", namespace="plant-a")
    page.fill('input[name="token"]', second["token"])
    page.click('form.login button[type="submit"]')
    _listed(page)
    server.tokens.revoke(second["id"])
    page.click('#nav a[href="#/types"]')
    expect(page.locator(".login-card .error")).to_contain_text("revoked")


def test_oidc_login_with_pkce_and_the_namespace_switcher(server, idp, page):
    from playwright.sync_api import expect

    page.goto(f"{server.url}/#/fleet")
    page.click("#oidc-login")
    page.wait_for_url(f"{idp.issuer}/authorize?*")
    assert "code_challenge_method=S256" in page.url and "code_challenge=" in page.url
    page.select_option('select[name="user"]', "bob")
    page.click('button[type="submit"]')
    page.wait_for_url(f"{server.url}/#/fleet")  # the code has left the address bar
    assert _listed(page) == TWINS["plant-a"] + TWINS["plant-b"]
    expect(page.locator("#session .who")).to_contain_text("jwt:bob")
    assert idp.refusals == []

    switcher = page.locator('#session select[name="namespace"]')
    options = switcher.locator("option").all_inner_texts()
    assert options == ["all namespaces", "plant-a", "plant-b"]
    switcher.select_option("plant-b")
    expect(page.locator("tr[data-twin]")).to_have_count(1)
    assert _listed(page) == TWINS["plant-b"]
    assert all("namespace=plant-b" in u for u in page.urls[-5:] if "/api/twins" in u), page.urls[
        -5:
    ]

    page.click("#logout")
    page.wait_for_selector("form.login")
    assert page.evaluate("Object.keys(sessionStorage)") == []


def test_the_provider_checks_pkce_and_codes_are_single_use(idp):
    import httpx

    redirect = "http://127.0.0.1:1/"
    idp.redirect_uris.add(redirect)
    verifier = "v" * 50
    request = {
        "response_type": "code",
        "client_id": idp.client_id,
        "redirect_uri": redirect,
        "state": "s",
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
    }
    plain = httpx.get(f"{idp.issuer}/authorize", params={**request, "code_challenge_method": ""})
    assert plain.status_code == 400 and "PKCE" in plain.text
    answer = httpx.post(f"{idp.issuer}/authorize", data={**request, "user": "ana"})
    code = answer.headers["location"].split("code=")[1].split("&")[0]
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": idp.client_id,
        "redirect_uri": redirect,
    }
    wrong = httpx.post(f"{idp.issuer}/token", data={**exchange, "code_verifier": "x" * 50})
    assert wrong.status_code == 400 and "PKCE" in wrong.json()["error_description"]
    answer = httpx.post(f"{idp.issuer}/authorize", data={**request, "user": "ana"})
    exchange["code"] = answer.headers["location"].split("code=")[1].split("&")[0]
    good = httpx.post(f"{idp.issuer}/token", data={**exchange, "code_verifier": verifier})
    assert good.status_code == 200 and good.json()["access_token"].count(".") == 2
    again = httpx.post(f"{idp.issuer}/token", data={**exchange, "code_verifier": verifier})
    assert again.status_code == 400
    idp.refusals.clear()


def test_without_auth_the_dashboard_needs_no_login(browser, platform, live_server):
    _seed(platform)
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    try:
        tab.goto(f"{live_server}/#/fleet")
        twins = _listed(tab)
        assert twins == sorted(["pump-9", *TWINS["plant-a"], *TWINS["plant-b"]])
        assert tab.locator("form.login").count() == 0 and tab.locator("#logout").count() == 0
        deadline = time.monotonic() + 5  # the switcher offers every namespace of the fleet
        while tab.locator('#session select[name="namespace"]').count() == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        context.close()
