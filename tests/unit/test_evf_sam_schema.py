"""The `fal-ai/evf-sam` schema's limits are the post-processing's own (kept apart so the gateway needs no models)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments import evf_sam_schema as schema
from models import mask_postprocess


def test_limits_match_the_post_processing():
    assert (schema.BLUR_MAX, schema.EXPAND_MAX) == (mask_postprocess.BLUR_MAX, mask_postprocess.EXPAND_MAX)


@pytest.mark.parametrize("field, value", [("blur_mask", 51), ("expand_mask", 101), ("prompt", "")])
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ValidationError) as error:
        schema.EvfSamInput(**{"prompt": "a", "image_url": "x", field: value})
    assert error.value.errors()[0]["loc"] == (field,)


def test_fal_defaults():
    body = schema.EvfSamInput(prompt="a", image_url="x")
    assert body.mask_only is True and body.blur_mask == 0 and body.expand_mask == 0 and not body.use_grounding_dino
