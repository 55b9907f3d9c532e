"""The lifecycle every model deployment follows (LitServe-style): setup -> decode -> predict -> encode.

`run_job` is the streaming handle method the job queue and the streaming run consume (events of
`serve.job_events`); `run` is the sync-run method. Both share one execution path, and every
failure becomes a result event with an HTTP status: a bad request never crashes the replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, ClassVar

from pydantic import BaseModel, ValidationError

from deployments.model_settings import apply_thread_limit
from serve import job_events
from serve.fetch_guard import FetchPolicy
from serve.input_files import InputFileError, InputFileResolver
from serve.job_events import CancelFlag, JobCancelled, JobContext
from serve.storage import Storage

logger = logging.getLogger("visus.deployment")


class RequestError(Exception):
    """A user mistake found while serving: answered with `status_code` and a message naming the field."""

    def __init__(self, field_path: list[str | int], message: str, status_code: int = 422):
        super().__init__(message)
        self.field_path = field_path
        self.message = message
        self.status_code = status_code


@dataclass
class RunContext:
    """Per-request context handed to decode/predict/encode."""

    job: JobContext
    emit: Callable[[dict], None]
    cancel: CancelFlag = field(default_factory=CancelFlag)
    scratch: dict = field(default_factory=dict)  # decode() -> encode() hand-over within one request

    def log(self, message: str, level: job_events.LogLevel = "INFO") -> None:
        """Thread-safe: predict() runs in a worker thread."""
        self.emit(job_events.log(message, level))


@dataclass
class Platform:
    """The platform building blocks a deployment uses (storage, input files, limits)."""

    storage: Storage
    files: InputFileResolver
    settings: dict

    @classmethod
    def from_settings(cls, settings: dict) -> "Platform":
        storage = Storage(settings["storage_url"], settings["secret_key"].encode())
        policy = FetchPolicy(**settings.get("fetch", {}))
        return cls(storage, InputFileResolver(storage, policy, settings.get("own_origins", [])), settings)


class ModelDeployment:
    """Subclass and set `input_model`; implement setup, decode, predict and encode."""

    input_model: ClassVar[type[BaseModel]]

    def __init__(self, model: dict, platform: dict, workers: dict[str, Any] | None = None):
        apply_thread_limit()
        self.platform = Platform.from_settings(platform)
        # Handles of the helper deployments this one calls (config `workers`), by deployment name.
        self.workers = workers or {}
        # predict() runs in worker threads; the model itself is not re-entrant.
        self._model_lock = threading.Lock()
        self.setup(model)

    # ---- the lifecycle a model implements -------------------------------------------------
    def setup(self, model: dict) -> None:
        raise NotImplementedError

    async def decode(self, request: BaseModel, ctx: RunContext) -> Any:
        return request

    def predict(self, inputs: Any, ctx: RunContext) -> Any:
        raise NotImplementedError

    async def encode(self, outputs: Any, request: BaseModel, ctx: RunContext) -> dict:
        raise NotImplementedError

    # ---- helpers for implementations ------------------------------------------------------
    async def read_input_file(self, field_name: str, url: str, ctx: RunContext) -> tuple[bytes, str | None]:
        return await self.platform.files.resolve(field_name, url, ctx.job.base_url)

    def decode_image_field(self, field_name: str, data: bytes):
        """(H, W, 3) uint8 RGB from an input file's bytes; a bad or oversized image is a 4xx naming the field."""
        from models.image_io import ImageDecodeError, decode_image

        max_pixels = int(self.platform.settings.get("limits", {}).get("max_image_pixels", 40_000_000))
        try:
            return decode_image(data, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            raise RequestError([field_name], str(exc)) from None

    # ---- handle methods -------------------------------------------------------------------
    async def run_job(self, payload: dict, ctx: dict) -> AsyncIterator[dict]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict] = asyncio.Queue()
        run = RunContext(JobContext(**ctx), emit=lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        yield job_events.started()
        task = loop.create_task(self._execute(payload, run, events))
        try:
            while True:
                event = await events.get()
                yield event
                if event["type"] == "result":
                    break
        finally:
            if not task.done():
                run.cancel.set()
                task.cancel()

    async def run(self, payload: dict, ctx: dict) -> dict:
        """Sync run: the final result event (status_code, body, headers)."""
        async for event in self.run_job(payload, ctx):
            if event["type"] == "result":
                return event
        return job_events.infrastructure_error(502, "no result", "runner_incomplete_response")

    async def _execute(self, payload: dict, run: RunContext, events: asyncio.Queue) -> None:
        try:
            outcome = await self._lifecycle(payload, run)
        except ValidationError as exc:
            outcome = job_events.result({"detail": exc.errors(include_url=False, include_context=False)}, 422)
        except InputFileError as exc:
            outcome = job_events.field_error([exc.field], exc.message, status_code=exc.status_code)
        except RequestError as exc:
            outcome = job_events.field_error(exc.field_path, exc.message, status_code=exc.status_code)
        except (JobCancelled, asyncio.CancelledError):
            outcome = job_events.infrastructure_error(499, "Request was cancelled", "client_cancelled")
        except Exception as exc:
            logger.exception("request %s failed", run.job.request_id)
            outcome = job_events.infrastructure_error(500, f"{type(exc).__name__}: {exc}", "internal_error")
        events.put_nowait(outcome)

    async def _lifecycle(self, payload: dict, run: RunContext) -> dict:
        request = self.input_model.model_validate(payload)
        inputs = await self.decode(request, run)
        run.cancel.check()
        outputs = await asyncio.to_thread(self._locked_predict, inputs, run)
        run.cancel.check()
        return job_events.result(await self.encode(outputs, request, run))

    def _locked_predict(self, inputs: Any, run: RunContext) -> Any:
        with self._model_lock:
            run.cancel.check()
            return self.predict(inputs, run)
