"""Figures per stage of a load shape (2 users, then 4, then 6...). Pure Python (no Locust import).

Locust's own statistics cover the whole run; a step or spike shape asks how latency moved as the users
changed. The locustfile calls ``enter(users, t)`` from the shape's tick and ``record(...)`` for every
request; ``summary()`` gives each stage's HTTP request rate, failures and, per endpoint family, the exact
p50/p95 of what a client waits for: the whole queue job (type ``JOB``) and the whole stream rather than
the submit/status/result steps they are made of.
"""

from __future__ import annotations

import math

FLOW_STEPS = ("submit", "status", "result")


def family_of(name: str) -> str:
    return name.split(" ", 1)[0]


def waits_for(name: str, request_type: str) -> bool:
    """True for the requests a client waits for; False for the steps of a queue flow (they are in its JOB)."""
    parts = name.split(" ")
    return request_type == "JOB" or len(parts) < 2 or parts[1] not in FLOW_STEPS


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class StageLog:
    def __init__(self):
        self.stages: list[dict] = []

    def enter(self, users: int, t: float) -> None:
        """The shape wants `users` from time `t` on: a new stage when that differs from the current one."""
        if self.stages and self.stages[-1]["users"] == users:
            return
        if self.stages:
            self.stages[-1]["end"] = t
        self.stages.append({"users": users, "start": t, "end": None, "http": 0, "failures": 0, "waits": {}})

    def close(self, t: float) -> None:
        """The shape is over at time `t` (requests still finishing are counted in the last stage)."""
        if self.stages and self.stages[-1]["end"] is None:
            self.stages[-1]["end"] = t

    def record(self, name: str, request_type: str, response_time_ms: float, failed: bool) -> None:
        if not self.stages:
            return
        stage = self.stages[-1]
        if request_type != "JOB":
            stage["http"] += 1
            stage["failures"] += int(failed)
        if waits_for(name, request_type) and not failed:
            stage["waits"].setdefault(family_of(name), []).append(response_time_ms)

    def summary(self, end: float) -> list[dict]:
        out = []
        for i, stage in enumerate(self.stages):
            seconds = (stage["end"] if stage["end"] is not None else end) - stage["start"]
            out.append({
                "stage": i + 1, "users": stage["users"], "seconds": round(seconds, 1), "requests": stage["http"],
                "rps": round(stage["http"] / seconds, 3) if seconds > 0 else 0.0, "failures": stage["failures"],
                "families": {fam: {"n": len(v), "p50_ms": percentile(v, 50), "p95_ms": percentile(v, 95)}
                             for fam, v in sorted(stage["waits"].items())},
            })
        return out
