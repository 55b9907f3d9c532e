"""The load test's shapes (their tick() schedules) and its threshold verdict; no Ray, no network, no Locust.

`loadtests.load.schedules` and `loadtests.load.thresholds` are pure Python: importing Locust here would
gevent-patch the whole pytest process, which the Ray integration tests share.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.load import schedules, thresholds
from loadtests.load.schedules import Spike, Steady, Step, make_schedule

REPO = Path(__file__).resolve().parents[2]


def ticks(schedule, times):
    return [schedule.tick(t) for t in times]


def test_steady_ramps_then_holds_then_stops():
    s = Steady(users=6, seconds=60)
    assert ticks(s, [0, 5.9, 30, 59.9]) == [(6, 1.0)] * 4  # 6 users over the first 6 s (a tenth), then held
    assert s.tick(60) is None and s.tick(61) is None
    assert Steady(users=50, seconds=100).tick(0) == (50, 5.0)
    assert Steady(users=2, seconds=5).tick(0) == (2, 2.0)  # at least a second of ramp, at least 1 user/s


def test_step_adds_users_stage_by_stage():
    s = Step(users=6, seconds=60)
    assert [u for u, _ in ticks(s, [0, 19.9, 20, 39.9, 40, 59.9])] == [2, 2, 4, 4, 6, 6]
    assert all(rate == 6.0 for _, rate in ticks(s, [0, 30]))
    assert s.tick(60) is None
    assert [Step(users=5, seconds=30, steps=5).tick(t)[0] for t in range(0, 30, 6)] == [1, 2, 3, 4, 5]
    assert [Step(users=2, seconds=30).tick(t)[0] for t in (0, 10, 20)] == [1, 2, 2]  # never 0 users


def test_spike_jumps_for_a_fifth_of_the_run_and_comes_back():
    s = Spike(users=8, seconds=100)
    assert s.baseline == 2
    assert ticks(s, [0, 39.9]) == [(2, 1.0)] * 2
    assert ticks(s, [40, 59.9]) == [(8, 8.0)] * 2  # all spike users within a second
    assert ticks(s, [60, 99.9]) == [(2, 1.0)] * 2
    assert s.tick(100) is None
    assert Spike(users=1, seconds=10).tick(0) == (1, 1.0)


def test_every_shape_scales_with_its_length():
    for name in schedules.SHAPES:
        short, long = make_schedule(name, 6, 60), make_schedule(name, 6, 600)
        assert [short.tick(t) for t in range(0, 60, 3)] == [long.tick(t * 10) for t in range(0, 60, 3)]
        assert short.tick(60) is None and long.tick(600) is None and long.tick(599) is not None


def test_make_schedule_and_describe():
    assert make_schedule("step", 9, 90) == Step(users=9, seconds=90.0)
    assert schedules.describe(make_schedule("step", 6, 60)) == "step: 2 -> 4 -> 6 users, 20 s each"
    assert schedules.describe(make_schedule("steady", 6, 60)) == "steady: 6 users for 60 s"
    assert "8 for 12 s from 24 s" in schedules.describe(make_schedule("spike", 8, 60))
    for bad in [("ramp", 6, 60), ("steady", 0, 60), ("steady", 6, 0)]:
        with pytest.raises(ValueError):
            make_schedule(*bad)


class Entry:
    """Shaped like Locust's StatsEntry, with a fixed p95."""

    def __init__(self, name, requests, failures=0, p95=100.0, method="POST"):
        self.name, self.method, self.num_requests, self.num_failures, self.p95 = name, method, requests, failures, p95

    def get_response_time_percentile(self, percent):
        assert percent == 0.95
        return self.p95


def total(entries):
    return Entry("Aggregated", sum(e.num_requests for e in entries), sum(e.num_failures for e in entries), method=None)


def test_parse_limits():
    assert thresholds.parse_limits("queue job *=30000, sync *=5000,*=10000") == [
        ("queue job *", 30000.0), ("sync *", 5000.0), ("*", 10000.0)]
    assert thresholds.parse_limits("2500") == [("*", 2500.0)]
    assert thresholds.parse_limits("") == [] and thresholds.parse_limits(None) == []
    for bad in ["sync *=fast", "sync *=0", "=100"]:
        with pytest.raises(ValueError):
            thresholds.parse_limits(bad)


def test_first_matching_pattern_wins():
    limits = thresholds.parse_limits("queue job *=30000, queue *=2000")
    assert thresholds.limit_for("queue job fal-ai/svd", limits) == 30000
    assert thresholds.limit_for("queue status fal-ai/svd", limits) == 2000
    assert thresholds.limit_for("sync fal-ai/sam2/image", limits) is None


def test_a_run_within_its_thresholds_passes():
    entries = [Entry("sync fal-ai/sam2/image", 200, 1, p95=450), Entry("queue job fal-ai/svd", 20, 0, p95=9000)]
    limits = thresholds.parse_limits(thresholds.DEFAULT_P95_MS)
    assert thresholds.evaluate(entries, total(entries), limits) == []


def test_p95_above_its_group_limit_fails_and_unmatched_groups_are_not_checked():
    entries = [Entry("sync fal-ai/evf-sam", 50, p95=5200), Entry("sync fal-ai/sam2/image", 50, p95=4000),
               Entry("segmind points v1/sam-v2-image", 50, p95=99999)]
    violations = thresholds.evaluate(entries, total(entries), thresholds.parse_limits("sync *=5000"))
    assert [(v.kind, v.name, v.value, v.limit) for v in violations] == [("p95", "sync fal-ai/evf-sam", 5200, 5000)]
    assert str(violations[0]) == "sync fal-ai/evf-sam: p95 5200 ms > 5000 ms"


def test_failure_ratios_overall_and_per_group():
    entries = [Entry("sync fal-ai/sam2/image", 990, 0), Entry("sse run fal-ai/sam2/video", 10, 5)]
    found = thresholds.evaluate(entries, total(entries), [], max_fail_ratio=0.01, max_group_fail_ratio=0.05)
    assert [(v.kind, v.name) for v in found] == [("group fail ratio", "sse run fal-ai/sam2/video")]  # 0.5 % overall
    found = thresholds.evaluate(entries, total(entries), [], max_fail_ratio=0.001, max_group_fail_ratio=None)
    assert [(v.kind, v.name, v.value) for v in found] == [("fail ratio", "all requests", 0.005)]
    assert "failure ratio 0.005 > 0.001" in str(found[0])


def test_exceptions_and_an_empty_run_fail():
    entries = [Entry("sync fal-ai/sam2/image", 10)]
    assert [v.kind for v in thresholds.evaluate(entries, total(entries), [], exceptions=2)] == ["exceptions"]
    assert [v.kind for v in thresholds.evaluate([], total([]), [])] == ["no requests"]


def test_the_pure_modules_do_not_import_locust():
    code = ("import sys, loadtests.load.schedules, loadtests.load.thresholds, loadtests.load.settings; "
            "assert not {'locust', 'gevent', 'ray'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_stage_log_splits_a_step_run_by_users_and_keeps_what_clients_wait_for():
    from loadtests.load.stages import StageLog, percentile, waits_for

    s = Step(users=4, seconds=20, steps=2)
    log = StageLog()
    for t in range(0, 20):
        log.enter(s.tick(t)[0], float(t))
        log.record("sync fal-ai/sam2/image", "POST", 10.0 + t, failed=False)
        log.record("queue status fal-ai/svd", "GET", 5.0, failed=t == 15)
        log.record("queue job fal-ai/svd", "JOB", 500.0 + t, failed=False)
    log.close(20.0)
    first, second = log.summary(end=25.0)
    assert (first["users"], first["seconds"], second["users"], second["seconds"]) == (2, 10.0, 4, 10.0)
    assert (first["requests"], first["rps"], second["failures"]) == (20, 2.0, 1)  # JOBs are not HTTP requests
    assert set(first["families"]) == {"sync", "queue"}  # queue: the JOBs only, not the status polls
    assert first["families"]["queue"] == {"n": 10, "p50_ms": 504.0, "p95_ms": 509.0}
    assert second["families"]["sync"]["p95_ms"] == 29.0
    assert waits_for("sse run fal-ai/sam2/video", "POST") and not waits_for("sse submit fal-ai/svd", "POST")
    assert percentile([], 50) is None and percentile([3, 1, 2], 50) == 2 and percentile([1, 2, 3, 4], 100) == 4
