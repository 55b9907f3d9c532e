"""Operations: `/healthz` (process up), `/readyz` (queue actor answering), `/metrics` (Prometheus text)."""


import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from serve.gateway.services import GatewayServices, services


def deployment_statuses(app_name: str) -> dict[str, str]:
    """Each deployment's state in Ray Serve (HEALTHY, UPDATING, UNHEALTHY, ...); blocking call."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: str(getattr(d.status, "value", d.status)) for name, d in app.deployments.items()}


def ops_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Liveness")
    async def healthz():
        return {"status": "ok"}

    @router.get("/readyz", summary="Readiness: the job queue answers and every deployment is healthy")
    async def readyz(svc: GatewayServices = Depends(services)):
        try:
            stats = await asyncio.wait_for(svc.queue.stats.remote(), 5.0)
            deployments = await asyncio.wait_for(asyncio.to_thread(deployment_statuses, svc.config.app_name), 5.0)
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "detail": f"{type(exc).__name__}: {exc}"}, status_code=503)
        body = {"endpoints": [e.id for e in svc.registry], "deployments": deployments, "queue": stats}
        if any(state != "HEALTHY" for state in deployments.values()):
            return JSONResponse({"status": "unavailable", **body}, status_code=503)
        return {"status": "ready", **body}

    @router.get("/metrics", response_class=PlainTextResponse, summary="Queue metrics in Prometheus text format")
    async def metrics(svc: GatewayServices = Depends(services)):
        stats = await svc.queue.stats.remote()
        lines = []
        for name, value in sorted(stats.items()):
            metric = f"visus_queue_{name}"
            kind = "gauge" if name in ("queued", "running") else "counter"
            lines += [f"# TYPE {metric} {kind}", f"{metric} {value}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return router
