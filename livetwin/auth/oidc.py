"""OIDC: bearer JWTs signed by a key from the identity provider's JWKS URL; grants come from
permission claims such as `read:plant-a` (PyJWT is imported only when a verifier is made).
"""

from __future__ import annotations

from livetwin.auth.rules import Principal, Unauthorized, grants_from_claims
from livetwin.outbound import OutboundDenied, OutboundPolicy


class JwtVerifier:
    """Bearer JWTs signed by a key from a JWKS URL (OIDC); grants from permission claims.
    The URL passes `outbound` (the outbound policy) when the verifier is made and before
    every fetch of the keys; redirects are not followed."""

    def __init__(
        self,
        jwks_url: str,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        claim: str = "permissions",
        algorithms: tuple[str, ...] = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256"),
        leeway_s: float = 30.0,
        outbound: OutboundPolicy | None = None,
    ):
        import jwt

        policy = outbound or OutboundPolicy()
        policy.check_url(jwks_url, "jwks_url", unresolved_ok=True)

        class CheckedClient(jwt.PyJWKClient):
            def fetch_data(self):
                try:
                    policy.check_url(self.uri, "jwks_url")
                except OutboundDenied as exc:
                    raise jwt.PyJWKClientConnectionError(str(exc)) from None
                return super().fetch_data()

        self._jwt = jwt
        self.client = CheckedClient(jwks_url, cache_keys=True, lifespan=300, timeout=10)
        self.audience, self.issuer, self.claim = audience, issuer, claim
        self.algorithms, self.leeway_s = list(algorithms), leeway_s

    def authenticate(self, token: str) -> Principal:
        """Verify signature, expiry, audience and issuer; Unauthorized with the reason if not."""
        jwt = self._jwt
        try:
            key = self.client.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"verify_aud": self.audience is not None, "require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized(
                "the bearer JWT has expired", field="authorization", fix="get a fresh token"
            ) from None
        except jwt.PyJWKClientConnectionError as exc:
            raise Unauthorized(
                f"cannot fetch the signing keys: {exc}",
                field="authorization",
                fix="check the server's --jwks-url and that the identity provider is reachable",
            ) from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise Unauthorized(
                f"invalid bearer JWT: {exc}",
                field="authorization",
                fix="send a JWT issued by the configured identity provider",
            ) from None
        subject = str(claims.get("sub", "?"))
        return Principal(f"jwt:{subject}", grants_from_claims(claims, self.claim))
