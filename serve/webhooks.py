"""Webhook bodies in fal's documented shape, and their delivery with retries.

Delivery goes through the same SSRF guard as input fetches: a webhook URL is user input and must
not reach internal services. Connection errors, 5xx and 429 are retried with capped, jittered
exponential backoff; other answers are final.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic import BaseModel, Field

from serve.fetch_guard import (
    TRANSPORT_ERRORS,
    FetchPolicy,
    ForbiddenTarget,
    guarded_pool,
    parse_target,
    request_parts,
    response_header,
    timeout_extensions,
)

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"


class WebhookPolicy(BaseModel):
    attempts: int = Field(10, ge=1)
    first_backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(60.0, ge=0)
    timeout_s: float = Field(15.0, gt=0)


def webhook_payload(
    request_id: str, result: dict | None, error: dict | None, status_code: int
) -> dict:
    """The body fal POSTs to a webhook when a request finishes."""
    body: dict[str, Any] = {"request_id": request_id, "gateway_request_id": request_id}
    if error is not None or status_code >= 400:
        body.update(status="ERROR", error=f"Invalid status code: {status_code}", payload=error)
        return body
    try:
        # NaN/Infinity are not JSON, and strict receivers would reject the whole body.
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        body.update(status="OK", payload=None, error=None, payload_error=str(exc))
        return body
    body.update(status="OK", payload=result, error=None)
    return body


def backoff_delay(attempt: int, policy: WebhookPolicy, retry_after: str | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (from 1)."""
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after.strip()), policy.max_backoff_s)
    ceiling = min(policy.first_backoff_s * 2 ** (attempt - 1), policy.max_backoff_s)
    # Jitter spreads out the retries of many webhooks that failed together.
    return random.uniform(ceiling / 2, ceiling)


async def deliver_webhook(
    url: str,
    payload: dict,
    fetch_policy: FetchPolicy,
    policy: WebhookPolicy,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> bool:
    """POST `payload` as JSON to `url`; True once a 2xx answer is received."""
    try:
        target = parse_target(url)
    except ForbiddenTarget as exc:
        logger.warning("webhook %s not delivered: %s", url, exc)
        return False
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        REQUEST_ID_HEADER: str(payload.get("request_id", "")),
    }
    for attempt in range(1, policy.attempts + 1):
        retry_after = None
        try:
            status, retry_after = await _post_once(target, body, headers, fetch_policy, policy)
        except ForbiddenTarget as exc:
            logger.warning("webhook %s not delivered: %s", url, exc)
            return False
        except (TimeoutError, *TRANSPORT_ERRORS) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                return True
            if status != 429 and status < 500:
                logger.warning("webhook %s refused with HTTP %d; not retried", url, status)
                return False
            outcome = f"HTTP {status}"
        if attempt < policy.attempts:
            delay = backoff_delay(attempt, policy, retry_after)
            logger.info(
                "webhook %s attempt %d failed (%s); retry in %.1f s", url, attempt, outcome, delay
            )
            await sleep(delay)
    logger.warning(
        "webhook %s not delivered after %d attempts (%s)", url, policy.attempts, outcome
    )
    return False


async def _post_once(
    target: httpx.URL,
    body: bytes,
    headers: dict[str, str],
    fetch_policy: FetchPolicy,
    policy: WebhookPolicy,
) -> tuple[int, str | None]:
    """One POST; returns the status and any Retry-After. Redirects are not followed: a
    redirected POST is ambiguous, so a 3xx counts as a final refusal."""
    core_url, core_headers = request_parts(target, headers)
    extensions = timeout_extensions(fetch_policy, policy.timeout_s)
    async with asyncio.timeout(policy.timeout_s), guarded_pool(fetch_policy) as pool:
        # The receiver's body is never read: only the status matters, and it could be huge.
        async with pool.stream(
            "POST", core_url, headers=core_headers, content=body, extensions=extensions
        ) as response:
            return response.status, response_header(response, b"retry-after")
