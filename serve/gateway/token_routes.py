"""`POST /rest/tokens/`: short-lived app tokens for realtime and client-mode streaming (a bare JSON string)."""


from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from serve.gateway.security import require_key
from serve.gateway.services import GatewayServices, services


class TokenRequest(BaseModel):
    allowed_apps: list[str] = Field(..., min_length=1, description="App aliases, e.g. ['sam2'].")
    token_expiration: int = Field(120, ge=10, le=86_400, description="Lifetime in seconds.")


def token_router() -> APIRouter:
    router = APIRouter(tags=["tokens"])

    # Registered with its trailing slash exactly: the Python client never follows redirects.
    @router.post("/rest/tokens/", response_model=str, dependencies=[Depends(require_key)],
                 summary="Issue a short-lived token scoped to app aliases (returned as a bare JSON string)")
    async def issue(body: TokenRequest, svc: GatewayServices = Depends(services)) -> str:
        return svc.tokens.issue("app", body.token_expiration, apps=body.allowed_apps)

    return router
