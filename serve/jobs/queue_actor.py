"""The job queue: a detached, named, restartable Ray actor that owns every queued request.

It keeps job records, logs, results and per-job change notifications; dispatches jobs to the model
deployments' handles as soon as they arrive (so Ray Serve's autoscaler sees the real backlog);
writes each state change through to the journal; delivers webhooks. Status polls are answered from
memory and never touch a model replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import Any

from serve import job_events
from serve.jobs.journal import open_journal
from serve.jobs.records import JobRecord

logger = logging.getLogger("visus.queue")

# Partial results (e.g. per-frame video masks) kept per running job for status-stream watchers. They
# are not journaled: the final result is the record; a watcher that falls this far behind skips some.
DATA_EVENTS_KEPT = 512


def _replica_lost(exc: BaseException) -> bool:
    """The replica died or became unreachable mid-job: the job itself may be fine, so run it again."""
    from ray.exceptions import RayActorError  # ActorDiedError and ActorUnavailableError included

    return isinstance(exc, RayActorError)


class _Live:
    """In-memory companions of an active job: its change signal, dispatch task and queue slot."""

    __slots__ = ("changed", "task", "cancel_requested", "version", "data", "data_count")

    def __init__(self):
        self.changed = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.cancel_requested = False
        self.version = 0
        self.data: deque[dict] = deque(maxlen=DATA_EVENTS_KEPT)  # the newest partial results
        self.data_count = 0  # partial results so far; data[-1] is number data_count - 1

    def data_since(self, offset: int) -> list[dict]:
        first_kept = self.data_count - len(self.data)
        return list(self.data)[max(0, offset - first_kept):]


class JobQueue:
    """Run as `ray.remote(JobQueue).options(name=..., lifetime="detached", max_restarts=-1, ...)`."""

    def __init__(self, settings: dict):
        self._settings = settings
        self._app_name: str = settings["app_name"]
        self._journal = open_journal(settings["journal_url"], self._app_name)
        self._seq = self._journal.max_seq()
        self._jobs: dict[str, JobRecord] = {}
        self._live: dict[str, _Live] = {}
        self._completed: OrderedDict[str, None] = OrderedDict()  # LRU of finished jobs kept in memory
        self._queued: dict[str, OrderedDict[str, None]] = {}  # deployment -> queued ids in order
        self._handles: dict[str, Any] = {}
        self._dispatch_slots = asyncio.Semaphore(settings.get("max_dispatch", 256))
        self._recovered = False
        self._stats = {"submitted": 0, "completed": 0, "failed": 0, "cancelled": 0, "redispatched": 0}

    # ------------------------------------------------------------------ recovery
    async def _ensure_recovered(self) -> None:
        # Runs on the first call after (re)start: the constructor cannot start asyncio tasks.
        if self._recovered:
            return
        self._recovered = True
        for job in self._journal.unfinished():
            was_running = job.status == "IN_PROGRESS"
            job.status = "IN_QUEUE"
            job.started_at = None
            self._stats["redispatched"] += 1
            self._track(job)
            self._journal.save(job)
            if was_running:
                self._add_log(job, job_events.log(
                    "the job queue restarted while this request ran; dispatching it again", "WARN")["log"])
            self._start(job)
        for job in self._journal.pending_webhooks():
            asyncio.get_running_loop().create_task(self._deliver_webhook(job))

    async def ready(self) -> dict:
        await self._ensure_recovered()
        return {"jobs_in_memory": len(self._jobs), **self._stats}

    # ------------------------------------------------------------------ bookkeeping
    def _track(self, job: JobRecord) -> None:
        self._jobs[job.request_id] = job
        self._live[job.request_id] = _Live()
        if job.status == "IN_QUEUE":
            self._queued.setdefault(job.deployment, OrderedDict())[job.request_id] = None

    def _notify(self, job: JobRecord) -> None:
        live = self._live.get(job.request_id)
        if live is not None:
            live.version += 1
            live.changed.set()
            live.changed = asyncio.Event()

    def _lookup(self, request_id: str, queue_base: str | None) -> JobRecord | None:
        job = self._jobs.get(request_id)
        if job is None:
            job = self._journal.load(request_id)
            if job is not None and job.status == "COMPLETED":
                self._remember_completed(job)
        if job is None or (queue_base is not None and job.queue_base != queue_base):
            return None
        return job

    def _remember_completed(self, job: JobRecord) -> None:
        self._jobs[job.request_id] = job
        self._completed[job.request_id] = None
        self._completed.move_to_end(job.request_id)
        while len(self._completed) > self._settings.get("keep_completed_in_memory", 1000):
            old, _ = self._completed.popitem(last=False)
            self._jobs.pop(old, None)
            self._live.pop(old, None)

    def _queue_position(self, job: JobRecord) -> int:
        queued = self._queued.get(job.deployment)
        if not queued:
            return 0
        for position, request_id in enumerate(queued):
            if request_id == job.request_id:
                return position
        return 0

    # ------------------------------------------------------------------ API used by the gateway
    async def submit(self, spec: dict) -> dict:
        """Record a new job (durably) and dispatch it. Idempotent on request_id."""
        await self._ensure_recovered()
        existing = self._lookup(spec["request_id"], None)
        if existing is not None:
            return existing.status_view(False, self._queue_position(existing))
        self._seq += 1
        now = time.time()
        timeout = spec.get("start_timeout_s")
        job = JobRecord(
            request_id=spec["request_id"], seq=self._seq, endpoint_id=spec["endpoint_id"],
            queue_base=spec["queue_base"], deployment=spec["deployment"], payload=spec["payload"],
            base_url=spec["base_url"], webhook_url=spec.get("webhook_url"), created_at=now,
            start_deadline=now + timeout if timeout else None,
            webhook_state="pending" if spec.get("webhook_url") else None,
        )
        self._track(job)
        self._journal.save(job)
        self._stats["submitted"] += 1
        self._start(job)
        return job.status_view(False, self._queue_position(job))

    async def status(self, request_id: str, queue_base: str | None, with_logs: bool) -> dict | None:
        await self._ensure_recovered()
        job = self._lookup(request_id, queue_base)
        if job is None:
            return None
        return job.status_view(with_logs, self._queue_position(job))

    async def watch(self, request_id: str, queue_base: str | None, after_version: int,
                    log_offset: int, timeout_s: float, data_offset: int = 0) -> dict | None:
        """Long-poll: return once the job changed after `after_version` (or on timeout).

        Also returns the partial results from number `data_offset` on that are still kept.
        """
        await self._ensure_recovered()
        job = self._lookup(request_id, queue_base)
        if job is None:
            return None
        live = self._live.get(request_id)
        if live is not None and live.version <= after_version and job.status != "COMPLETED":
            try:
                await asyncio.wait_for(live.changed.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        version = live.version if live is not None else after_version + 1
        return {"version": version, "log_count": len(job.logs),
                "status": job.status_view(True, self._queue_position(job), log_offset),
                "data": live.data_since(data_offset) if live is not None else [],
                "data_count": live.data_count if live is not None else data_offset}

    async def result(self, request_id: str, queue_base: str | None) -> dict | None:
        await self._ensure_recovered()
        job = self._lookup(request_id, queue_base)
        if job is None:
            return None
        if job.status != "COMPLETED":
            return {"ready": False, "status": job.status}
        return {"ready": True, "status_code": job.result_status, "body": job.result_body,
                "headers": job.result_headers}

    async def cancel(self, request_id: str, queue_base: str | None) -> str | None:
        """'requested' (was queued or running), 'completed' (too late) or None (unknown)."""
        await self._ensure_recovered()
        job = self._lookup(request_id, queue_base)
        if job is None:
            return None
        if job.status == "COMPLETED":
            return "completed"
        live = self._live[request_id]
        live.cancel_requested = True
        if live.task is not None:
            live.task.cancel()
        return "requested"

    async def stats(self) -> dict:
        await self._ensure_recovered()
        queued = sum(len(q) for q in self._queued.values())
        running = sum(1 for j in self._jobs.values() if j.status == "IN_PROGRESS")
        return {"queued": queued, "running": running, **self._stats}

    # ------------------------------------------------------------------ dispatch
    def _start(self, job: JobRecord) -> None:
        live = self._live[job.request_id]
        live.task = asyncio.get_running_loop().create_task(self._run(job))

    def _handle(self, deployment: str):
        handle = self._handles.get(deployment)
        if handle is None:
            from ray import serve

            handle = serve.get_deployment_handle(deployment, app_name=self._app_name)
            self._handles[deployment] = handle
        return handle

    async def _run(self, job: JobRecord) -> None:
        live = self._live[job.request_id]
        outcome: dict | None = None
        try:
            if live.cancel_requested:
                raise asyncio.CancelledError
            async with self._dispatch_slots:
                while True:
                    try:
                        outcome = await self._consume(job)
                        break
                    except Exception as exc:
                        if not _replica_lost(exc) or job.dispatch_count >= self._settings.get("max_attempts", 3):
                            raise
                        self._stats["redispatched"] += 1
                        self._add_log(job, job_events.log(
                            f"the replica running this request was lost ({type(exc).__name__}); dispatching it again",
                            "WARN")["log"])
        except asyncio.CancelledError:
            if live.cancel_requested:
                outcome = job_events.infrastructure_error(499, "Request was cancelled", "client_cancelled")
                self._stats["cancelled"] += 1
            elif job.start_deadline is not None and job.started_at is None and time.time() >= job.start_deadline:
                outcome = job_events.infrastructure_error(504, "Request did not start before its x-fal-request-timeout",
                                                          "startup_timeout")
                outcome["headers"]["X-Fal-Request-Timeout-Type"] = "user"
            else:
                raise
        except Exception as exc:  # a deployment that died or could not be reached
            logger.exception("job %s failed in dispatch", job.request_id)
            outcome = job_events.infrastructure_error(503, f"Model deployment failed: {type(exc).__name__}: {exc}",
                                                      "runner_disconnected")
        if outcome is None:
            outcome = job_events.infrastructure_error(502, "Model deployment ended without a result",
                                                      "runner_incomplete_response")
        self._complete(job, outcome)

    async def _consume(self, job: JobRecord) -> dict | None:
        job.dispatch_count += 1
        ctx = job_events.JobContext(job.request_id, job.base_url, job.endpoint_id).to_dict()
        stream = self._handle(job.deployment).options(stream=True).run_job.remote(job.payload, ctx)
        deadline_task = None
        if job.start_deadline is not None:
            deadline_task = asyncio.get_running_loop().call_later(
                max(0.0, job.start_deadline - time.time()), self._start_deadline_passed, job)
        try:
            async for event in stream:
                kind = event.get("type")
                if kind == "started":
                    if deadline_task is not None:
                        deadline_task.cancel()
                    self._mark_started(job)
                elif kind == "log":
                    self._add_log(job, event["log"])
                elif kind == "data":
                    self._add_data(job, event["data"])
                elif kind == "result":
                    return event
        finally:
            if deadline_task is not None:
                deadline_task.cancel()
            stream.cancel()
        return None

    def _start_deadline_passed(self, job: JobRecord) -> None:
        live = self._live.get(job.request_id)
        if job.started_at is None and live is not None and live.task is not None:
            live.task.cancel()

    def _mark_started(self, job: JobRecord) -> None:
        queued = self._queued.get(job.deployment)
        if queued is not None:
            queued.pop(job.request_id, None)
        job.status = "IN_PROGRESS"
        job.started_at = time.time()
        self._journal.save(job)
        self._notify(job)

    def _add_log(self, job: JobRecord, entry: dict) -> None:
        job.logs.append(entry)
        self._journal.append_log(job.request_id, len(job.logs) - 1, entry)
        self._notify(job)

    def _add_data(self, job: JobRecord, payload: dict) -> None:
        live = self._live[job.request_id]
        live.data.append(payload)
        live.data_count += 1
        self._notify(job)

    def _complete(self, job: JobRecord, outcome: dict) -> None:
        queued = self._queued.get(job.deployment)
        if queued is not None:
            queued.pop(job.request_id, None)
        now = time.time()
        job.status = "COMPLETED"
        job.started_at = job.started_at or now
        job.completed_at = now
        job.result_status = int(outcome.get("status_code", 200))
        job.result_body = outcome.get("body")
        job.result_headers = dict(outcome.get("headers") or {})
        self._stats["completed" if job.succeeded else "failed"] += 1
        self._journal.save(job)
        self._notify(job)
        live = self._live[job.request_id]
        live.task = None
        live.data.clear()
        self._remember_completed(job)
        if job.webhook_state == "pending":
            asyncio.get_running_loop().create_task(self._deliver_webhook(job))

    async def _deliver_webhook(self, job: JobRecord) -> None:
        from serve.fetch_guard import FetchPolicy
        from serve.webhooks import WebhookPolicy, deliver_webhook, webhook_payload

        ok = job.succeeded
        payload = webhook_payload(job.request_id, job.result_body if ok else None,
                                  None if ok else job.result_body, job.result_status or 500)
        try:
            delivered = await deliver_webhook(job.webhook_url, payload,
                                              FetchPolicy(**self._settings.get("fetch", {})),
                                              WebhookPolicy(**self._settings.get("webhooks", {})))
        except Exception:
            logger.exception("webhook for %s failed", job.request_id)
            delivered = False
        job.webhook_state = "delivered" if delivered else "failed"
        self._journal.save(job)
