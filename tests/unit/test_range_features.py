"""RangeFeatures: ranges requested in order, a bounded window ahead, already-encoded frames not encoded again."""

from __future__ import annotations

from deployments.range_features import LocalCall, RangeFeatures


def encoder(calls: list):
    def encode(start: int, stop: int):
        calls.append((start, stop))
        return LocalCall([f"f{i}" for i in range(start, stop)])
    return encode


def test_ranges_in_order_within_the_window():
    calls: list = []
    source = RangeFeatures(encoder(calls), [(0, 3), (3, 6), (6, 8)], window=2)
    assert source.next() == ["f0", "f1", "f2"]
    assert calls == [(0, 3), (3, 6), (6, 8)]  # the first two at once, the third when one was taken
    assert source.next() == ["f3", "f4", "f5"] and source.next() == ["f6", "f7"]


def test_known_frames_at_the_start_of_a_range_are_not_encoded_again():
    calls: list = []
    known = {0: "k0", 1: "k1", 3: "k3", 4: "k4", 7: "k7"}
    source = RangeFeatures(encoder(calls), [(0, 3), (3, 5), (5, 8)], window=1, known=known)
    assert source.next() == ["k0", "k1", "f2"]
    assert source.next() == ["k3", "k4"]  # wholly known: no call
    assert source.next() == ["f5", "f6", "f7"]  # frame 7 is known but not at the start: encoded
    assert calls == [(2, 3), (5, 8)]
