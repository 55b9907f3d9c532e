"""The gateway's cache of finished jobs serves only COMPLETED views, per owner/alias, both log spellings."""

from serve.jobs.finished_cache import FinishedJobs


def test_only_completed_views_fetched_with_logs_are_kept():
    cache = FinishedJobs(capacity=2)
    running = {"status": "IN_PROGRESS", "logs": []}
    done = {"status": "COMPLETED", "logs": [{"message": "m"}], "metrics": {}}
    cache.remember_status("a", "fal-ai/sam2", running, True)
    assert cache.status("a", "fal-ai/sam2", True) is None
    cache.remember_status("b", "fal-ai/sam2", done, False)
    assert cache.status("b", "fal-ai/sam2", True) is None
    cache.remember_status("b", "fal-ai/sam2", done, True)
    assert cache.status("b", "fal-ai/sam2", True) == done
    assert cache.status("b", "fal-ai/sam2", False)["logs"] is None
    assert cache.status("b", "other/alias", True) is None


def test_results_and_lru_bound():
    cache = FinishedJobs(capacity=2)
    cache.remember_result("x", "o/a", {"ready": False})
    assert cache.result("x", "o/a") is None
    for rid in ("1", "2", "3"):
        cache.remember_result(rid, "o/a", {"ready": True, "status_code": 200, "body": rid})
    assert cache.result("1", "o/a") is None and cache.result("3", "o/a")["body"] == "3"
