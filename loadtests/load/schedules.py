"""Load schedules: how many users at which second of a run. Pure Python (no Locust import).

Each schedule answers ``tick(run_time)`` exactly as a Locust ``LoadTestShape.tick`` does:
``(user_count, spawn_rate)`` while the run lasts, ``None`` once it is over. The Locust shape in
``locustfile.py`` only forwards its run time here, so the unit tests check the real schedule.

* ``steady``: ramp to ``users`` over the first tenth of the run, hold until ``seconds``.
* ``step``:   ``steps`` equal stages, the users going up by ``users / steps`` at each stage.
* ``spike``:  a quarter of the users for 40 % of the run, all of them at once for 20 %, back to a
              quarter for the last 40 % (does the service recover, do queued jobs drain?).

``users`` is the peak and ``seconds`` the whole run; every stage scales with ``seconds``, so
``--shape-seconds 900`` turns the 60 s default into a 15 minute run of the same form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SHAPES = ("steady", "step", "spike")
DEFAULT_USERS = 6
DEFAULT_SECONDS = 60.0


@dataclass(frozen=True)
class Steady:
    users: int = DEFAULT_USERS
    seconds: float = DEFAULT_SECONDS

    def tick(self, run_time: float) -> tuple[int, float] | None:
        if run_time >= self.seconds:
            return None
        ramp_s = max(1.0, self.seconds / 10)
        return self.users, max(1.0, self.users / ramp_s)


@dataclass(frozen=True)
class Step:
    users: int = DEFAULT_USERS
    seconds: float = DEFAULT_SECONDS
    steps: int = 3

    def tick(self, run_time: float) -> tuple[int, float] | None:
        if run_time >= self.seconds:
            return None
        stage = min(self.steps - 1, int(run_time // (self.seconds / self.steps)))
        return max(1, math.ceil(self.users * (stage + 1) / self.steps)), float(self.users)


@dataclass(frozen=True)
class Spike:
    users: int = DEFAULT_USERS
    seconds: float = DEFAULT_SECONDS

    @property
    def baseline(self) -> int:
        return max(1, math.ceil(self.users / 4))

    def tick(self, run_time: float) -> tuple[int, float] | None:
        if run_time >= self.seconds:
            return None
        in_spike = 0.4 * self.seconds <= run_time < 0.6 * self.seconds
        # All spike users start within a second; the baseline ramps gently.
        return (self.users, float(self.users)) if in_spike else (self.baseline, max(1.0, self.baseline / 2))


def make_schedule(shape: str, users: int = DEFAULT_USERS, seconds: float = DEFAULT_SECONDS) -> Steady | Step | Spike:
    """The schedule called `shape` (one of SHAPES) peaking at `users` over `seconds`."""
    if users < 1:
        raise ValueError(f"users must be at least 1, got {users}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    kinds = {"steady": Steady, "step": Step, "spike": Spike}
    if shape not in kinds:
        raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    return kinds[shape](users=users, seconds=float(seconds))


def describe(schedule: Steady | Step | Spike) -> str:
    """One line for reports, e.g. ``step: 2 -> 4 -> 6 users, 20 s each``."""
    if isinstance(schedule, Step):
        counts = " -> ".join(str(schedule.tick(schedule.seconds * (i + 0.5) / schedule.steps)[0])
                             for i in range(schedule.steps))
        return f"step: {counts} users, {schedule.seconds / schedule.steps:g} s each"
    if isinstance(schedule, Spike):
        return (f"spike: {schedule.baseline} users, {schedule.users} for {0.2 * schedule.seconds:g} s from "
                f"{0.4 * schedule.seconds:g} s, then {schedule.baseline} again; {schedule.seconds:g} s in all")
    return f"steady: {schedule.users} users for {schedule.seconds:g} s"
