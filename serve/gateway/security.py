"""FastAPI security dependencies: `Authorization: Key <key>`, app tokens, CDN bearer tokens, signed URLs."""


from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import APIKeyHeader

from serve.auth import Unauthorized
from serve.gateway.services import GatewayServices, services

# Declared as an API-key header so /docs shows it and clients know to send `Key <key>`.
authorization_header = APIKeyHeader(name="Authorization", auto_error=False,
                                    description="`Key <api key>`, as the fal clients send it.")

KEY_HINT = "Missing or invalid API key: send the header 'Authorization: Key <your key>'"


def unauthorized(detail: str = KEY_HINT) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Key"})


async def require_key(authorization: str | None = Depends(authorization_header),
                      svc: GatewayServices = Depends(services)) -> None:
    if not svc.keys.check_header(authorization):
        raise unauthorized()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


async def require_cdn_token(authorization: str | None = Depends(authorization_header),
                            svc: GatewayServices = Depends(services)) -> None:
    """CDN upload routes take the bearer token from /rest/storage/auth/token (or an API key)."""
    if svc.keys.check_header(authorization):
        return
    try:
        svc.tokens.verify(bearer_token(authorization), "cdn")
    except Unauthorized as exc:
        raise unauthorized(f"CDN upload needs 'Authorization: Bearer <token from /rest/storage/auth/token>': {exc}")


def require_key_or_app_token(alias_of):
    """Stream/realtime routes also accept `?fal_jwt_token=` (JS client-mode streaming sends no header)."""

    async def dependency(request: Request,
                         authorization: str | None = Depends(authorization_header),
                         fal_jwt_token: str | None = Query(None, description="Token from POST /rest/tokens/."),
                         svc: GatewayServices = Depends(services)) -> None:
        if svc.keys.check_header(authorization):
            return
        token = fal_jwt_token or bearer_token(authorization)
        if token is None:
            raise unauthorized()
        try:
            svc.tokens.verify_app(token, alias_of(request))
        except Unauthorized as exc:
            raise unauthorized(str(exc))

    return dependency
