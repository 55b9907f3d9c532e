"""Sa2VA's grounding SAM 2: the sam2 package's SAM 2.0 video predictor with Sa2VA's two changes.

Sa2VA prompts SAM 2 with each ``[SEG]`` embedding appended to the "no points" sparse prompt (see
``ObjectPrompt.embedding`` in ``models.sam2_video``), and its copy of SAM 2 has the object-score
mask suppression commented out (models.md 3.9): a mask whose object score is below zero is kept,
not replaced by -1024. The object pointer's no-object blend is left as upstream has it.
"""

from __future__ import annotations

import torch

from models.sa2va_config import Sa2vaConfig
from models.sam2_embedded import rebuild_sam_heads

# SAM2VideoPredictor settings of Sa2VA's grounding encoder (parity pack: video_predictor_kwargs).
# The decoder arguments build_sam2(apply_postprocessing=True) would add; Sa2VA's model has them.
_DECODER_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]
PREDICTOR_SETTINGS = {"fill_hole_area": 0, "non_overlap_masks": False,
                      "binarize_mask_from_pts_for_mem_enc": False, "clear_non_cond_mem_around_input": False}


def _predictor_class():
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    class Sa2vaVideoPredictor(SAM2VideoPredictor):
        def _forward_sam_heads(self, *args, **kwargs):
            # With pred_obj_scores off, the parent skips both the mask suppression and the pointer
            # blend; the blend is then applied here exactly as the parent would have.
            self.pred_obj_scores = False
            try:
                out = super()._forward_sam_heads(*args, **kwargs)
            finally:
                self.pred_obj_scores = True
            *masks, obj_ptr, object_score_logits = out
            if self.soft_no_obj_ptr:
                appearing = object_score_logits.sigmoid()
            else:
                appearing = (object_score_logits > 0).float()
            if self.fixed_no_obj_ptr:
                obj_ptr = appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - appearing) * self.no_obj_ptr
            return (*masks, obj_ptr, object_score_logits)

    return Sa2vaVideoPredictor


def build_predictor(config: Sa2vaConfig, device: str | torch.device = "cpu"):
    """A random-weight Sa2VA grounding predictor for ``config`` (load the checkpoint's SAM state next)."""
    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(
        config.sam2_config, ckpt_path=None, device="cpu", mode="eval",
        hydra_overrides_extra=[*config.sam2_overrides, *_DECODER_OVERRIDES], apply_postprocessing=False,
    )
    rebuild_sam_heads(predictor, config.sam_heads)
    if not predictor.pred_obj_scores:
        raise ValueError("Sa2VA's SAM 2.0 predicts object scores; this configuration does not")
    predictor.__class__ = _predictor_class()
    for name, value in PREDICTOR_SETTINGS.items():
        setattr(predictor, name, value)
    return predictor.to(device).eval()
