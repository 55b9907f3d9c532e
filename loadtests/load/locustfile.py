"""Visus load test: every endpoint family under a load shape, with pass/fail thresholds.

    .venv/bin/python loadtests/run_loadtest.py                 # what `make loadtest` runs (reports, key, host)
    .venv/bin/locust -f loadtests/load/locustfile.py --headless --shape step \
        --csv loadtests/results/mine --html loadtests/results/mine.html

Users (one module each): ``FalSyncUser`` (fal_sync.py), ``FalQueueUser`` (fal_queue.py),
``SegmindUser`` (segmind.py), ``SseUser`` (sse.py), ``Sa2vaUser`` (sa2va.py). At start the server's
``/openapi.json`` decides which of their tasks run: endpoints it does not serve are skipped.

Options (each also an environment variable):

  --shape steady|step|spike       LOADTEST_SHAPE (steady); see schedules.py
  --shape-users N                 LOADTEST_USERS (6): the peak number of users
  --shape-seconds S               LOADTEST_DURATION_S (60): the whole run; every stage scales with it
  --p95-ms SPEC                   LOADTEST_P95_MS: p95 limits per request group, see thresholds.py
  --max-fail-ratio R              LOADTEST_MAX_FAIL_RATIO (0.01): failures / requests, all together
  --max-group-fail-ratio R        LOADTEST_MAX_GROUP_FAIL_RATIO (0.05): the same, per request group
  --summary-json PATH             LOADTEST_SUMMARY_JSON: write the figures and the verdict there

Host: ``--host`` or ``LOADTEST_HOST`` (http://127.0.0.1:8000); key: ``VISUS_API_KEY`` or
``.visus/api_key`` (settings.py). The thresholds are checked when Locust quits and set its exit
code: 0 when every one holds, 1 otherwise. Never import ray here (gevent and ray crash together).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from locust import LoadTestShape, events  # noqa: E402
from locust import log as locust_log  # noqa: E402

from loadtests.load import schedules, settings, stages, thresholds  # noqa: E402
from loadtests.load.common import filter_user_classes, openapi_paths  # noqa: E402
from loadtests.load.fal_queue import FalQueueUser  # noqa: E402,F401
from loadtests.load.fal_sync import FalSyncUser  # noqa: E402,F401
from loadtests.load.sa2va import Sa2vaUser  # noqa: E402,F401
from loadtests.load.segmind import SegmindUser  # noqa: E402,F401
from loadtests.load.sse import SseUser  # noqa: E402,F401

__all__ = ["FalQueueUser", "FalSyncUser", "Sa2vaUser", "SegmindUser", "SseUser", "VisusShape"]  # what Locust finds
log = logging.getLogger("visus.loadtest")
PERCENTILES = (0.5, 0.95, 0.99)
STAGES = stages.StageLog()


@events.init_command_line_parser.add_listener
def _arguments(parser):
    group = parser.add_argument_group("Visus load test")
    group.add_argument("--shape", choices=schedules.SHAPES, default="steady", env_var="LOADTEST_SHAPE",
                       help="load shape: steady, step or spike")
    group.add_argument("--shape-users", type=int, default=schedules.DEFAULT_USERS, env_var="LOADTEST_USERS",
                       help="peak number of users")
    group.add_argument("--shape-seconds", type=float, default=schedules.DEFAULT_SECONDS,
                       env_var="LOADTEST_DURATION_S", help="length of the whole run, seconds")
    group.add_argument("--p95-ms", default=thresholds.DEFAULT_P95_MS, env_var="LOADTEST_P95_MS",
                       help="p95 limits per request group: 'PATTERN=MS, ...' (first match wins) or one number")
    group.add_argument("--max-fail-ratio", type=float, default=thresholds.DEFAULT_MAX_FAIL_RATIO,
                       env_var="LOADTEST_MAX_FAIL_RATIO", help="highest failures/requests over all requests")
    group.add_argument("--max-group-fail-ratio", type=float, default=thresholds.DEFAULT_MAX_GROUP_FAIL_RATIO,
                       env_var="LOADTEST_MAX_GROUP_FAIL_RATIO", help="highest failures/requests of one group")
    group.add_argument("--summary-json", default="", env_var="LOADTEST_SUMMARY_JSON",
                       help="write the run's figures and verdict to this JSON file")


class VisusShape(LoadTestShape):
    """The schedule picked by --shape / LOADTEST_SHAPE, sized by --shape-users and --shape-seconds."""

    _schedule = None

    def schedule(self):
        if self._schedule is None:
            o = self.runner.environment.parsed_options
            self._schedule = schedules.make_schedule(o.shape, o.shape_users, o.shape_seconds)
        return self._schedule

    def tick(self):
        target = self.schedule().tick(self.get_run_time())
        if target is None:
            STAGES.close(time.time())
        else:
            STAGES.enter(target[0], time.time())
        return target


@events.request.add_listener
def _per_stage(request_type, name, response_time, exception=None, **_):
    STAGES.record(name, request_type, response_time, exception is not None)


@events.init.add_listener
def _discover(environment, **_):
    """Drop the tasks (and users) whose endpoints the server does not serve; stop when it cannot be reached."""
    options = environment.parsed_options
    if options is None or getattr(options, "worker", False):
        return
    host = environment.host or settings.host()
    try:
        paths = openapi_paths(host)
    except Exception as exc:
        log.error("cannot read %s/openapi.json (%s): is Visus running? (`make serve`, or set LOADTEST_HOST)", host, exc)
        sys.exit(2)
    kept, dropped = filter_user_classes(list(environment.user_classes), paths)
    for line in dropped:
        log.warning("skipped: %s", line)
    if not kept:
        log.error("%s serves none of the endpoints the load test knows", host)
        sys.exit(2)
    environment.user_classes[:] = kept
    environment.visus_skipped = dropped
    log.info("load shape %s against %s; users: %s", schedules.describe(schedules.make_schedule(
        options.shape, options.shape_users, options.shape_seconds)), host, ", ".join(c.__name__ for c in kept))


def figures(entry) -> dict:
    return {"name": entry.name, "type": entry.method, "requests": entry.num_requests, "failures": entry.num_failures,
            "rps": round(entry.total_rps, 3), "avg_ms": round(entry.avg_response_time, 1),
            "max_ms": round(entry.max_response_time or 0, 1),
            **{f"p{round(q * 100)}_ms": entry.get_response_time_percentile(q) for q in PERCENTILES}}


@events.quitting.add_listener
def _verdict(environment, **_):
    """Check the thresholds, print the verdict, set the exit code (and write the summary JSON)."""
    options, stats = environment.parsed_options, environment.stats
    if options is None or getattr(options, "worker", False):
        return
    limits = thresholds.parse_limits(options.p95_ms)
    exceptions = sum(e["count"] for e in environment.runner.exceptions.values()) if environment.runner else 0
    # A user that crashed outside a task (on_start, a bad override) is only logged by Locust: count it too.
    exceptions += int(bool(locust_log.unhandled_greenlet_exception))
    violations = thresholds.evaluate(stats.entries.values(), stats.total, limits, options.max_fail_ratio,
                                     options.max_group_fail_ratio, exceptions)
    environment.process_exit_code = 1 if violations else 0
    print(f"\nThresholds: p95 {options.p95_ms!r}; failure ratio <= {options.max_fail_ratio:g} overall, "
          f"<= {options.max_group_fail_ratio:g} per group")
    print("\n".join(f"  BROKEN {v}" for v in violations) if violations else "  all thresholds hold")
    if options.summary_json:
        entries = sorted(stats.entries.values(), key=lambda e: (e.name, e.method or ""))
        summary = {
            "host": environment.host, "shape": options.shape, "users": options.shape_users,
            "seconds": options.shape_seconds,
            "schedule": schedules.describe(schedules.make_schedule(options.shape, options.shape_users,
                                                                   options.shape_seconds)),
            "user_classes": [c.__name__ for c in environment.user_classes],
            "skipped": getattr(environment, "visus_skipped", []),
            "thresholds": {"p95_ms": options.p95_ms, "max_fail_ratio": options.max_fail_ratio,
                           "max_group_fail_ratio": options.max_group_fail_ratio},
            "entries": [{**figures(e), "p95_limit_ms": thresholds.limit_for(e.name, limits)} for e in entries],
            "total": figures(stats.total), "stages": STAGES.summary(time.time()), "exceptions": exceptions,
            "violations": [str(v) for v in violations], "passed": not violations,
        }
        Path(options.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.summary_json).write_text(json.dumps(summary, indent=2))
