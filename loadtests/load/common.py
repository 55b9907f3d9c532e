"""What every Visus user shares: auth, think time, response checks, request names, endpoint discovery.

Request names are ``"<family> <step> <endpoint>"`` (``sync fal-ai/sam2/image``, ``queue status
fal-ai/svd``...), so Locust's statistics group by endpoint family and the thresholds can match a
family with ``"queue job *"``. Whole jobs and whole streams are reported as their own requests
(types ``JOB`` and ``SSE``) next to the HTTP calls they are made of.

Endpoint discovery: each task names the routes it needs (``@requires``). At start, before any user
spawns, the server's ``/openapi.json`` says which routes exist; tasks whose routes are missing are
dropped, and so are users left with no task. An endpoint that is not deployed is skipped, not failed.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

from locust import FastHttpUser, between

from loadtests.load import settings

log = logging.getLogger("visus.loadtest")


class VisusUser(FastHttpUser):
    """Base of every Visus user: `Authorization: Key`, a think time between tasks, generous timeouts."""

    abstract = True
    host = settings.host()
    wait_time = between(0.5 * settings.THINK_S, 1.5 * settings.THINK_S)
    network_timeout = 300.0
    connection_timeout = 10.0
    default_headers = {"Authorization": f"Key {settings.api_key()}", "Content-Type": "application/json"}


def requires(*paths: str):
    """Mark a task as needing these OpenAPI paths (e.g. ``/queue/fal-ai/svd``); see `filter_user_classes`."""
    def mark(func):
        func.visus_requires = tuple(paths)
        return func
    return mark


def openapi_paths(host: str, timeout_s: float = 15.0) -> set[str]:
    request = urllib.request.Request(f"{host.rstrip('/')}/openapi.json",
                                     headers={"Authorization": f"Key {settings.api_key()}"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (our own server)
        return set(json.load(response).get("paths", {}))


def filter_user_classes(user_classes: list, paths: set[str]) -> tuple[list, list[str]]:
    """Keep the tasks whose routes exist and the users that still have a task; also say what was dropped."""
    kept, dropped = [], []
    for cls in user_classes:
        tasks = [t for t in cls.tasks if all(p in paths for p in getattr(t, "visus_requires", ()))]
        for t in dict.fromkeys(cls.tasks):
            if t not in tasks:
                missing = [p for p in t.visus_requires if p not in paths]
                dropped.append(f"{cls.__name__}.{t.__name__} (no {', '.join(missing)})")
        if tasks:
            cls.tasks = tasks
            kept.append(cls)
        else:
            dropped.append(f"{cls.__name__} (no endpoint of it is served)")
    return kept, dropped


def check_json(response, *keys: str) -> dict | None:
    """Mark `response` failed unless it is 200 JSON holding `keys`; return the body when it is good."""
    if response.status_code != 200:
        text = response.text[:200] if response.text else ""
        response.failure(f"HTTP {response.status_code}: {text}")
        return None
    try:
        body = response.json()
    except ValueError:
        response.failure("the answer is not JSON")
        return None
    if not isinstance(body, dict) or any(k not in body for k in keys):
        response.failure(f"the answer lacks {list(keys)}: {str(body)[:200]}")
        return None
    return body


def fire(user, request_type: str, name: str, start: float, exception: Exception | None, length: int = 0) -> None:
    """Report a synthetic request (a whole job or stream) that began at perf_counter() `start`."""
    elapsed = time.perf_counter() - start
    user.environment.events.request.fire(request_type=request_type, name=name, response_time=elapsed * 1000,
                                         response_length=length, exception=exception, context={},
                                         start_time=time.time() - elapsed)


def path_of(url: str) -> str:
    """The path (and query) of a URL the server returned, sent to the host under test."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def sse_events(response) -> Iterator[dict]:
    """The `data:` events of a text/event-stream response, as dicts, until the server ends the stream."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=4096, decode_content=False):
        buffer += chunk if isinstance(chunk, bytes) else chunk.encode()
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
            if data:  # comment lines (": keepalive") carry no data
                yield json.loads(b"\n".join(data))


def queue_job(user, family: str, endpoint: str, body: bytes, output_key: str) -> None:
    """fal's queue flow: submit, poll the status until COMPLETED, fetch the result; also the whole job as `JOB`."""
    client, start = user.client, time.perf_counter()
    job = f"{family} job {endpoint}"
    with client.post(f"/queue/{endpoint}", data=body, name=f"{family} submit {endpoint}", catch_response=True) as r:
        submitted = check_json(r, "status_url", "response_url")
    if submitted is None:
        return fire(user, "JOB", job, start, RuntimeError("submit failed"))
    status_path = path_of(submitted["status_url"]) + "?logs=0"
    deadline = start + settings.JOB_TIMEOUT_S
    while True:  # bounded by JOB_TIMEOUT_S
        with client.get(status_path, name=f"{family} status {endpoint}", catch_response=True) as r:
            status = check_json(r, "status")
        if status is None:
            return fire(user, "JOB", job, start, RuntimeError("status failed"))
        if status["status"] == "COMPLETED":
            break
        if time.perf_counter() > deadline:
            return fire(user, "JOB", job, start, TimeoutError(f"not COMPLETED after {settings.JOB_TIMEOUT_S:g} s"))
        time.sleep(settings.POLL_S)  # gevent-patched: the other users run meanwhile
    with client.get(path_of(submitted["response_url"]), name=f"{family} result {endpoint}", catch_response=True) as r:
        result = check_json(r, output_key)
    fire(user, "JOB", job, start, None if result is not None else RuntimeError("no result"))
