"""The realtime session's pieces that need no server: newest-input-wins buffering and frame decoding."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest

from serve.gateway.realtime_routes import SessionRefused, decode_input, error_code, parse_buffering
from serve.realtime_buffer import BufferClosed, NewestInputWins


def test_full_buffer_drops_the_oldest_and_keeps_order():
    async def scenario():
        buffer = NewestInputWins(2)
        for item in "abcd":
            buffer.put(item)
        assert buffer.dropped == 2
        return [await buffer.get(1), await buffer.get(1)]

    assert asyncio.run(scenario()) == ["c", "d"]


def test_get_waits_for_input_times_out_when_idle_and_ends_when_closed():
    async def scenario():
        buffer = NewestInputWins(1)
        asyncio.get_running_loop().call_later(0.05, buffer.put, "x")
        assert await buffer.get(5) == "x"
        with pytest.raises(asyncio.TimeoutError):
            await buffer.get(0.05)
        buffer.put("last")
        buffer.close()
        assert await buffer.get(1) == "last"  # what was sent before the end is still served
        with pytest.raises(BufferClosed):
            await buffer.get(1)

    asyncio.run(scenario())


def test_buffer_needs_room_for_one_input():
    with pytest.raises(ValueError):
        NewestInputWins(0)


def test_decode_input_turns_raw_bytes_into_data_uris():
    frame = {"bytes": msgpack.packb({"image_url": b"\x89PNG", "x": 1}, use_bin_type=True)}
    assert decode_input(frame) == {"image_url": "data:application/octet-stream;base64,iVBORw==", "x": 1}
    assert decode_input({"text": json.dumps({"a": "b"})}) == {"a": "b"}
    for bad in ({"bytes": b"\xc1"}, {"text": "{"}, {"bytes": msgpack.packb("just a string")}):
        with pytest.raises(ValueError):
            decode_input(bad)


@pytest.mark.parametrize("value,expected", [(None, 3), ("1", 1), ("60", 60)])
def test_buffering_from_the_query(value, expected):
    assert parse_buffering(value, 3) == expected


@pytest.mark.parametrize("value", ["0", "61", "two", ""])
def test_buffering_outside_1_to_60_is_refused(value):
    with pytest.raises(SessionRefused):
        parse_buffering(value, 3)


def test_error_codes():
    # TIMEOUT is reserved for idle sessions: the JS client ignores it, so a slow model is REQUEST_TIMEOUT.
    assert [error_code(s) for s in (422, 413, 400, 504, 500, 503)] == [
        "BAD_REQUEST", "PAYLOAD_TOO_LARGE", "BAD_REQUEST", "REQUEST_TIMEOUT", "INTERNAL_ERROR", "INTERNAL_ERROR"]
