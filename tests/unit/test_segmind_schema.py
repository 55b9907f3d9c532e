"""Segmind's coordinate strings and the sam-v2-image parameter checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.segmind_sam2_schema import SegmindSam2ImageInput, parse_coordinates


@pytest.mark.parametrize("text, points", [
    ("[834,74]", [(834, 74)]), ("[[839,74],[844,20]]", [(839, 74), (844, 20)]), (" [1.6, 2.2] ", [(2, 2)]),
    (None, []), ("", []), ("[]", []),
])
def test_coordinate_strings(text, points):
    assert parse_coordinates(text, "coordinates") == points


@pytest.mark.parametrize("text", ["[1,2", "[[1,2],[3]]", "[true,false]", '["a","b"]', "{}", "5"])
def test_malformed_coordinates_name_the_field(text):
    with pytest.raises(ValueError, match="remove_coordinates"):
        parse_coordinates(text, "remove_coordinates")


def test_points_with_labels_and_prompt_rules():
    body = SegmindSam2ImageInput(image="x", coordinates="[1,2]", remove_coordinates="[[3,4],[5,6]]")
    assert body.points() == ([(1, 2), (3, 4), (5, 6)], [1, 0, 0])
    assert SegmindSam2ImageInput(image="x", prompt="boy").overlay_mask is True
    for bad in ({"image": "x"}, {"image": "x", "prompt": "  "}, {"image": "x", "remove_coordinates": "[1,2]"},
                {"image": "x", "coordinates": "[1,2"}):
        with pytest.raises(ValidationError):
            SegmindSam2ImageInput(**bad)
