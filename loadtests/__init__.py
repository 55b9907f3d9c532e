"""Load tests and benchmarks for Visus: Locust user classes (locustfile.py) and the benchmark driver (benchmark.py)."""
