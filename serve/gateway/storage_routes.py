"""fal storage: REST upload (initiate + signed PUT, JS multipart), the Python CDN path, and `/files/` serving."""


import asyncio
import datetime as dt

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from serve.gateway.security import require_cdn_token, require_key
from serve.gateway.services import GatewayServices, services
from serve.storage import FileNotFound, InvalidKey

CDN_TOKEN_TTL_S = 3600


class InitiateUpload(BaseModel):
    content_type: str = Field("application/octet-stream", description="MIME type of the file to upload.")
    file_name: str | None = Field(None, description="Original file name.")


class InitiateUploadResponse(BaseModel):
    upload_url: str = Field(..., description="Signed URL: PUT the raw bytes here (no credentials needed).")
    file_url: str = Field(..., description="Where the file will be served from.")


class CdnToken(BaseModel):
    token: str
    token_type: str = "Bearer"
    base_url: str
    expires_at: str = Field(..., description="ISO-8601 with a UTC offset.")


class CdnUploadResponse(BaseModel):
    access_url: str


class CdnMultipartResponse(BaseModel):
    access_url: str
    uploadId: str


class Part(BaseModel):
    partNumber: int = Field(..., ge=1)
    etag: str | None = None


class CompleteMultipart(BaseModel):
    parts: list[Part] = Field(default_factory=list)


class PartUploaded(BaseModel):
    partNumber: int
    etag: str


def _key_or_404(svc: GatewayServices, key: str) -> str:
    try:
        from serve.storage import validate_key

        return validate_key(key)
    except InvalidKey:
        raise HTTPException(404, detail="File not found") from None


def _check_sig(svc: GatewayServices, key: str, sig: str | None, purpose: str) -> None:
    if not sig or not svc.storage.verify(key, sig, purpose):
        raise HTTPException(403, detail="upload_sig is missing, invalid or expired")


def _file_url(base: str, key: str) -> str:
    return f"{base}/files/{key}"


def storage_router() -> APIRouter:
    router = APIRouter(tags=["storage"])

    # ---- REST initiate (JS upload, Python "fal" fallback) -----------------------------------
    @router.post("/rest/storage/upload/initiate", response_model=InitiateUploadResponse,
                 dependencies=[Depends(require_key)], summary="Start an upload; returns a signed PUT URL")
    async def initiate(request: Request, body: InitiateUpload,
                       storage_type: str | None = Query(None, description="fal-cdn-v3 or gcs; both accepted."),
                       svc: GatewayServices = Depends(services)):
        key = svc.storage.new_key(body.file_name, body.content_type)
        base = svc.base_url(request)
        sig = svc.storage.sign(key, "upload")
        return {"upload_url": f"{_file_url(base, key)}?upload_sig={sig}", "file_url": _file_url(base, key)}

    @router.post("/rest/storage/upload/initiate-multipart", response_model=InitiateUploadResponse,
                 dependencies=[Depends(require_key)], summary="Start a multipart upload (JS, files > 90 MiB)")
    async def initiate_multipart(request: Request, body: InitiateUpload,
                                 storage_type: str | None = Query(None),
                                 svc: GatewayServices = Depends(services)):
        key = svc.storage.new_key(body.file_name, body.content_type)
        upload_id = await asyncio.to_thread(svc.storage.create_multipart, key)
        sig = svc.storage.sign(key, f"multipart:{upload_id}")
        base = svc.base_url(request)
        # JS appends /{part} and /complete to the path and keeps this query string.
        return {"upload_url": f"{_file_url(base, key)}?upload_sig={sig}&upload_id={upload_id}",
                "file_url": _file_url(base, key)}

    # ---- Python CDN path ------------------------------------------------------------------
    @router.post("/rest/storage/auth/token", response_model=CdnToken, dependencies=[Depends(require_key)],
                 summary="A bearer token for /cdn uploads (Python client)")
    async def cdn_token(request: Request, storage_type: str | None = Query(None),
                        svc: GatewayServices = Depends(services)):
        token = svc.tokens.issue("cdn", CDN_TOKEN_TTL_S)
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=CDN_TOKEN_TTL_S - 60)
        return {"token": token, "token_type": "Bearer", "base_url": f"{svc.base_url(request)}/cdn",
                "expires_at": expires.isoformat()}

    @router.post("/cdn/files/upload", response_model=CdnUploadResponse, dependencies=[Depends(require_cdn_token)],
                 summary="Upload raw bytes (body) and get their URL",
                 openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {
                     "type": "string", "format": "binary"}}}, "required": True}})
    async def cdn_upload(request: Request, svc: GatewayServices = Depends(services)):
        content_type = request.headers.get("content-type") or "application/octet-stream"
        key = svc.storage.new_key(request.headers.get("x-fal-file-name"), content_type)
        data = await request.body()
        await asyncio.to_thread(svc.storage.put, key, data, content_type)
        return {"access_url": _file_url(svc.base_url(request), key)}

    @router.post("/cdn/files/upload/multipart", response_model=CdnMultipartResponse,
                 dependencies=[Depends(require_cdn_token)], summary="Start a multipart upload (Python, > 100 MiB)")
    async def cdn_multipart(request: Request, svc: GatewayServices = Depends(services)):
        content_type = request.headers.get("content-type") or "application/octet-stream"
        key = svc.storage.new_key(request.headers.get("x-fal-file-name"), content_type)
        upload_id = await asyncio.to_thread(svc.storage.create_multipart, key)
        return {"access_url": _file_url(svc.base_url(request), key), "uploadId": upload_id}

    @router.put("/files/{key}/multipart/{upload_id}/{part_number}", response_model=PartUploaded,
                dependencies=[Depends(require_cdn_token)], summary="Upload one part (Python multipart)")
    async def cdn_part(request: Request, key: str, upload_id: str, part_number: int,
                       svc: GatewayServices = Depends(services)):
        key = _key_or_404(svc, key)
        etag = await _put_part(svc, key, upload_id, part_number, await request.body())
        return JSONResponse({"partNumber": part_number, "etag": etag}, headers={"ETag": etag})

    @router.post("/files/{key}/multipart/{upload_id}/complete", response_model=CdnUploadResponse,
                 dependencies=[Depends(require_cdn_token)], summary="Assemble the parts (Python multipart)")
    async def cdn_complete(request: Request, key: str, upload_id: str, body: CompleteMultipart,
                           svc: GatewayServices = Depends(services)):
        key = _key_or_404(svc, key)
        await _complete(svc, key, upload_id, body)
        return {"access_url": _file_url(svc.base_url(request), key)}

    # ---- signed PUT targets (no credentials: the signature authorises) --------------------
    @router.put("/files/{key}", summary="Signed upload target from /rest/storage/upload/initiate",
                openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {
                    "type": "string", "format": "binary"}}}}})
    async def signed_put(request: Request, key: str, upload_sig: str | None = Query(None),
                         svc: GatewayServices = Depends(services)):
        key = _key_or_404(svc, key)
        _check_sig(svc, key, upload_sig, "upload")
        content_type = request.headers.get("content-type") or None
        stored = await asyncio.to_thread(svc.storage.put, key, await request.body(), content_type)
        return {"file_url": _file_url(svc.base_url(request), key), "file_size": stored.size}

    @router.put("/files/{key}/{part_number}", response_model=PartUploaded,
                summary="Signed multipart part (JS multipart)")
    async def signed_part(request: Request, key: str, part_number: int, upload_sig: str | None = Query(None),
                          upload_id: str | None = Query(None), svc: GatewayServices = Depends(services)):
        key = _key_or_404(svc, key)
        _check_sig(svc, key, upload_sig, f"multipart:{upload_id}")
        etag = await _put_part(svc, key, upload_id, part_number, await request.body())
        return JSONResponse({"partNumber": part_number, "etag": etag}, headers={"ETag": etag})

    @router.post("/files/{key}/complete", summary="Assemble a signed multipart upload (JS multipart)")
    async def signed_complete(request: Request, key: str, body: CompleteMultipart,
                              upload_sig: str | None = Query(None), upload_id: str | None = Query(None),
                              svc: GatewayServices = Depends(services)):
        key = _key_or_404(svc, key)
        _check_sig(svc, key, upload_sig, f"multipart:{upload_id}")
        stored = await _complete(svc, key, upload_id, body)
        return {"file_url": _file_url(svc.base_url(request), key), "file_size": stored.size}

    # ---- serving -------------------------------------------------------------------------
    # `{key:path}`: any GET/HEAD under /files/ lands here (no key needed) and is judged by
    # validate_key, so hostile keys ('../..', '.multipart/...') get 404 rather than the keyed catch-all.
    @router.head("/files/{key:path}", include_in_schema=False)
    @router.get("/files/{key:path}", summary="Download a stored file",
                      response_class=StreamingResponse,
                      responses={200: {"description": "The file, with its stored content type."},
                                 404: {"description": "No such file."}})
    async def get_file(request: Request, key: str, svc: GatewayServices = Depends(services)):
        key = _key_or_404(svc, key)
        try:
            info = await asyncio.to_thread(svc.storage.stat, key)
        except FileNotFound:
            raise HTTPException(404, detail="File not found") from None
        headers = {"Content-Length": str(info.size), "Cache-Control": "public, max-age=86400"}
        if request.method == "HEAD":
            return Response(status_code=200, media_type=info.content_type, headers=headers)
        return StreamingResponse(_iterate(svc, key), media_type=info.content_type, headers=headers)

    return router


async def _iterate(svc: GatewayServices, key: str):
    # open_stream stats the file first; off the event loop, as object stores answer slowly.
    chunks = await asyncio.to_thread(svc.storage.open_stream, key)
    while True:
        chunk = await asyncio.to_thread(next, chunks, None)
        if chunk is None:
            return
        yield chunk


async def _put_part(svc: GatewayServices, key: str, upload_id: str | None, part_number: int, data: bytes) -> str:
    if part_number < 1:
        raise HTTPException(422, detail=[{"loc": ["path", "part_number"], "msg": "part numbers start at 1",
                                          "type": "value_error"}])
    try:
        return await asyncio.to_thread(svc.storage.put_part, key, upload_id or "", part_number, data)
    except (ValueError, KeyError) as exc:
        raise HTTPException(404, detail=f"Unknown multipart upload: {exc}") from None


async def _complete(svc: GatewayServices, key: str, upload_id: str | None, body: CompleteMultipart):
    parts = [(p.partNumber, p.etag) for p in body.parts] or None
    try:
        return await asyncio.to_thread(svc.storage.complete_multipart, key, upload_id or "", parts, None)
    except KeyError as exc:
        raise HTTPException(404, detail=f"Unknown multipart upload: {exc}") from None
    except ValueError as exc:
        raise HTTPException(422, detail=[{"loc": ["body", "parts"], "msg": str(exc), "type": "value_error"}]) from None
