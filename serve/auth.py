"""API keys (`Authorization: Key <key>`) and the short-lived signed tokens the platform hands out.

Tokens are HS256 JWTs signed with the config's secret key: realtime / client-mode streaming tokens
(`/rest/tokens/`, scoped to app aliases) and CDN upload tokens (`/rest/storage/auth/token`).
"""

from __future__ import annotations

import hmac
import time
import uuid

import jwt


class Unauthorized(Exception):
    """Missing or wrong credentials; the gateway answers 401."""


class ApiKeys:
    def __init__(self, keys: list[str]):
        self._keys = [k.encode() for k in keys]

    def check(self, key: str | None) -> bool:
        if not key:
            return False
        candidate = key.encode()
        # Compare against every key so timing does not tell which prefix matched.
        ok = False
        for known in self._keys:
            ok |= hmac.compare_digest(candidate, known)
        return ok

    def check_header(self, authorization: str | None) -> bool:
        """Accept `Key <key>` (what both fal clients send)."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "key" and self.check(value.strip())


class TokenSigner:
    ALGORITHM = "HS256"

    def __init__(self, secret: str):
        self._secret = secret

    def issue(self, kind: str, ttl_s: float, **claims) -> str:
        now = int(time.time())
        payload = {"kind": kind, "iat": now, "exp": now + int(ttl_s), "jti": uuid.uuid4().hex, **claims}
        return jwt.encode(payload, self._secret, algorithm=self.ALGORITHM)

    def verify(self, token: str | None, kind: str) -> dict:
        if not token:
            raise Unauthorized("missing token")
        try:
            payload = jwt.decode(token, self._secret, algorithms=[self.ALGORITHM])
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        if payload.get("kind") != kind:
            raise Unauthorized("token is not valid here")
        return payload

    def verify_app(self, token: str | None, alias: str) -> dict:
        """A realtime/stream token is good for the app aliases it names (fal scopes by alias)."""
        payload = self.verify(token, "app")
        if alias not in payload.get("apps", []):
            raise Unauthorized(f"token does not allow app {alias!r}")
        return payload
