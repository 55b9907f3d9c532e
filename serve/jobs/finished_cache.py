"""A gateway-side LRU of finished jobs: a COMPLETED status and its result never change again,
so polls for them (clients poll every 100-500 ms and once more after completion) skip the queue actor."""

from __future__ import annotations

from collections import OrderedDict


class FinishedJobs:
    def __init__(self, capacity: int = 10_000):
        self.capacity = capacity
        self._status: OrderedDict[str, tuple[str, dict]] = OrderedDict()
        self._result: OrderedDict[str, tuple[str, dict]] = OrderedDict()

    @staticmethod
    def _get(store: OrderedDict, request_id: str, queue_base: str) -> dict | None:
        hit = store.get(request_id)
        if hit is None or hit[0] != queue_base:
            return None
        store.move_to_end(request_id)
        return hit[1]

    def _put(self, store: OrderedDict, request_id: str, queue_base: str, value: dict) -> None:
        store[request_id] = (queue_base, value)
        store.move_to_end(request_id)
        while len(store) > self.capacity:
            store.popitem(last=False)

    def status(self, request_id: str, queue_base: str, with_logs: bool) -> dict | None:
        view = self._get(self._status, request_id, queue_base)
        if view is None:
            return None
        return view if with_logs else {**view, "logs": None}

    def remember_status(self, request_id: str, queue_base: str, view: dict, with_logs: bool) -> None:
        # Only a view fetched with logs can answer both spellings of the logs flag.
        if view.get("status") == "COMPLETED" and with_logs:
            self._put(self._status, request_id, queue_base, view)

    def result(self, request_id: str, queue_base: str) -> dict | None:
        return self._get(self._result, request_id, queue_base)

    def remember_result(self, request_id: str, queue_base: str, outcome: dict) -> None:
        if outcome.get("ready"):
            self._put(self._result, request_id, queue_base, outcome)
