"""Pass/fail thresholds over Locust's statistics. Pure Python (no Locust import): unit-tested.

A run fails when, at its end:

* a request group's p95 latency is above its limit. Limits are ``PATTERN=MS`` pairs separated by
  commas, matched against the group's name with shell-style wildcards, first match wins; a bare
  number is the limit for every group (``*``). Groups no pattern matches are not checked. Example:
  ``"queue job *=30000, sync *=5000, *=10000"``;
* the failure ratio of all requests together is above ``max_fail_ratio``;
* one group's failure ratio is above ``max_group_fail_ratio`` (a broken endpoint would otherwise
  hide in the total of the others);
* a task raised an unexpected exception (a bug in a user, counted by Locust apart from failures);
* no request was made at all.

``evaluate`` takes anything shaped like Locust's ``StatsEntry`` (``name``, ``method``,
``num_requests``, ``num_failures``, ``get_response_time_percentile(q)``), so the locustfile passes
``environment.stats`` straight in and the tests pass small fakes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

DEFAULT_P95_MS = "queue job *=30000, sse *=30000, *=10000"
DEFAULT_MAX_FAIL_RATIO = 0.01
DEFAULT_MAX_GROUP_FAIL_RATIO = 0.05


class StatsLike(Protocol):
    name: str
    method: str | None
    num_requests: int
    num_failures: int

    def get_response_time_percentile(self, percent: float) -> float: ...


@dataclass(frozen=True)
class Violation:
    kind: str  # "p95", "fail ratio", "group fail ratio", "exceptions", "no requests"
    name: str  # the request group, or "all requests"
    value: float
    limit: float

    def __str__(self) -> str:
        if self.kind == "p95":
            return f"{self.name}: p95 {self.value:.0f} ms > {self.limit:.0f} ms"
        if self.kind in ("fail ratio", "group fail ratio"):
            return f"{self.name}: failure ratio {self.value:.3f} > {self.limit:.3f}"
        if self.kind == "exceptions":
            return f"{self.name}: {self.value:.0f} unexpected exception(s) in the users"
        return f"{self.name}: no requests were made"


def parse_limits(spec: str | None) -> list[tuple[str, float]]:
    """``"sync *=5000, *=10000"`` -> ``[("sync *", 5000.0), ("*", 10000.0)]``; a bare number means ``*``."""
    limits = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        pattern, sep, value = part.rpartition("=")
        pattern = pattern.strip() if sep else "*"
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"bad p95 limit {part!r}: use PATTERN=MILLISECONDS or a number") from None
        if ms <= 0 or not pattern:
            raise ValueError(f"bad p95 limit {part!r}: the pattern must be non-empty and the limit positive")
        limits.append((pattern, ms))
    return limits


def limit_for(name: str, limits: list[tuple[str, float]]) -> float | None:
    """The p95 limit of group `name`: the first pattern matching it, else None."""
    return next((ms for pattern, ms in limits if fnmatch.fnmatchcase(name, pattern)), None)


def _ratio(entry: StatsLike) -> float:
    return entry.num_failures / entry.num_requests if entry.num_requests else 0.0


def evaluate(entries: Iterable[StatsLike], total: StatsLike, p95_limits: list[tuple[str, float]],
             max_fail_ratio: float = DEFAULT_MAX_FAIL_RATIO,
             max_group_fail_ratio: float | None = DEFAULT_MAX_GROUP_FAIL_RATIO,
             exceptions: int = 0) -> list[Violation]:
    """Every threshold the run broke (empty: it passed), groups in name order."""
    violations: list[Violation] = []
    if total.num_requests == 0:
        violations.append(Violation("no requests", "all requests", 0, 0))
    for entry in sorted(entries, key=lambda e: (e.name, e.method or "")):
        if entry.num_requests == 0:
            continue
        limit = limit_for(entry.name, p95_limits)
        if limit is not None:
            p95 = float(entry.get_response_time_percentile(0.95))
            if p95 > limit:
                violations.append(Violation("p95", entry.name, p95, limit))
        if max_group_fail_ratio is not None and _ratio(entry) > max_group_fail_ratio:
            violations.append(Violation("group fail ratio", entry.name, _ratio(entry), max_group_fail_ratio))
    if total.num_requests and _ratio(total) > max_fail_ratio:
        violations.append(Violation("fail ratio", "all requests", _ratio(total), max_fail_ratio))
    if exceptions:
        violations.append(Violation("exceptions", "users", exceptions, 0))
    return violations
