"""Visus load tests: Locust users per endpoint family, load shapes and pass/fail thresholds.

Entry point: ``loadtests/load/locustfile.py`` (run it through ``loadtests/run_loadtest.py`` or
``make loadtest``). ``schedules`` and ``thresholds`` are pure Python (no Locust import), so the unit
tests can check them without gevent's monkey-patching; every other module here runs inside Locust
and must never import ray.
"""
