"""A tiny real OIDC provider on loopback for tests: discovery, JWKS, /authorize (a sign-in form)
and /token (authorization code + PKCE S256, codes single use), issuing RS256 JWTs with PyJWT,
the library the server verifies them with.

    with OidcProvider({"alice": ["read:plant-a"]}, audience="livetwin") as idp:
        idp.redirect_uris.add("http://127.0.0.1:8000/")
        install_auth(app, platform, mode="oidc", jwks_url=idp.jwks_url, issuer=idp.issuer,
                     audience=idp.audience, oidc_client_id=idp.client_id)
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CODE_TTL_S = 60


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcProvider:
    """An identity provider whose `users` map a user name to its permission claims."""

    def __init__(
        self,
        users: dict[str, list[str]],
        *,
        client_id: str = "livetwin-dashboard",
        audience: str = "livetwin",
        token_ttl_s: int = 3600,
    ):
        self.users, self.client_id, self.audience = users, client_id, audience
        self.token_ttl_s = token_ttl_s
        self.redirect_uris: set[str] = set()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.codes: dict[str, dict] = {}  # code -> the request it answers
        self.refusals: list[str] = []  # why /token refused, for the tests to read
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.jwks_url = f"{self.issuer}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OidcProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # ---- what it serves ---------------------------------------------------------------------

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": self.jwks_url,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["public"],
        }

    def jwks(self) -> dict:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": "test-key", "use": "sig", "alg": "RS256"}]}

    def issue(self, user: str, audience: str | None = None, **extra) -> str:
        """A signed JWT for `user` with their permissions (tests may call it directly)."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": audience or self.audience,
            "iat": now,
            "exp": now + self.token_ttl_s,
            "permissions": self.users[user],
            **extra,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "test-key"})

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """The sign-in form for a valid authorization request, else 400 naming the problem."""
        problem = self._check_authorize(query)
        if problem:
            return 400, f"<p id='problem'>{html.escape(problem)}</p>"
        hidden = "".join(
            f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
            for k, v in query.items()
        )
        options = "".join(f"<option>{html.escape(u)}</option>" for u in self.users)
        return 200, (
            "<!doctype html><title>Test IdP</title><form method='post' action='/authorize'>"
            f"{hidden}<label>User <select name='user'>{options}</select></label>"
            "<button type='submit'>Continue</button></form>"
        )

    def approve(self, form: dict[str, str]) -> str:
        """The redirect back to the client with a fresh code (single use, 60 s)."""
        problem = self._check_authorize(form)
        if problem or form.get("user") not in self.users:
            raise ValueError(problem or "unknown user")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self.codes[code] = {**form, "at": time.monotonic()}
        back = {"code": code, "state": form.get("state", "")}
        return f"{form['redirect_uri']}?{urlencode(back)}"

    def token(self, form: dict[str, str]) -> tuple[int, dict]:
        """Exchange a code: the client, redirect URI and PKCE verifier must match its request."""
        with self._lock:
            request = self.codes.pop(form.get("code", ""), None)  # single use
        why = None
        if form.get("grant_type") != "authorization_code":
            why = "unsupported_grant_type"
        elif request is None or time.monotonic() - request["at"] > CODE_TTL_S:
            why = "invalid_grant: unknown, used or expired code"
        elif form.get("client_id") != request["client_id"]:
            why = "invalid_grant: client_id differs"
        elif form.get("redirect_uri") != request["redirect_uri"]:
            why = "invalid_grant: redirect_uri differs"
        elif s256(form.get("code_verifier", "")) != request["code_challenge"]:
            why = "invalid_grant: PKCE verification failed"
        if why:
            self.refusals.append(why)
            error, _, description = why.partition(": ")
            return 400, {"error": error, "error_description": description}
        user = request["user"]
        return 200, {
            "token_type": "Bearer",
            "access_token": self.issue(user, scope=request.get("scope", "")),
            "id_token": self.issue(user, audience=self.client_id),
            "expires_in": self.token_ttl_s,
        }

    def _check_authorize(self, query: dict[str, str]) -> str | None:
        if query.get("response_type") != "code":
            return "response_type must be code"
        if query.get("client_id") != self.client_id:
            return f"unknown client_id {query.get('client_id')!r}"
        if query.get("redirect_uri") not in self.redirect_uris:
            return f"redirect_uri {query.get('redirect_uri')!r} is not registered"
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return "PKCE is required: code_challenge with code_challenge_method=S256"
        if not query.get("state"):
            return "state is required"
        return None

    # ---- HTTP -------------------------------------------------------------------------------

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: str, kind: str, headers: dict | None = None):
                data = body.encode()
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.send_header("access-control-allow-origin", "*")  # a browser app calls it
                self.send_header("cache-control", "no-store")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _json(self, status: int, document: dict):
                self._send(status, json.dumps(document), "application/json")

            def _form(self) -> dict[str, str]:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(min(length, 64 * 1024)).decode()
                return {k: v[0] for k, v in parse_qs(raw).items()}

            def do_GET(self):
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    self._json(200, provider.discovery())
                elif url.path == "/jwks.json":
                    self._json(200, provider.jwks())
                elif url.path == "/authorize":
                    query = {k: v[0] for k, v in parse_qs(url.query).items()}
                    self._send(*provider.authorize(query), "text/html")
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self):
                url = urlsplit(self.path)
                if url.path == "/authorize":
                    try:
                        location = provider.approve(self._form())
                    except ValueError as exc:
                        self._send(400, html.escape(str(exc)), "text/html")
                        return
                    self._send(302, "", "text/html", {"location": location})
                elif url.path == "/token":
                    self._json(*provider.token(self._form()))
                else:
                    self._json(404, {"error": "not_found"})

            def do_OPTIONS(self):  # CORS preflight
                self._send(
                    204,
                    "",
                    "text/plain",
                    {
                        "access-control-allow-methods": "GET, POST",
                        "access-control-allow-headers": "content-type",
                    },
                )

            def log_message(self, *args):
                pass

        return Handler
