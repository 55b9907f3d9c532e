"""Reading an endpoint's `model:` config block inside a replica: device, build keywords, threads."""

from __future__ import annotations

import os


def resolve_device(device: str | None) -> str:
    """`auto` (or unset) picks CUDA when the replica sees a GPU, else the CPU."""
    if device not in (None, "auto"):
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sam2_build_kwargs(model: dict) -> dict:
    """The SAM 2 checkpoint build settings a model block may carry (config, overrides, image_size)."""
    return {k: model[k] for k in ("config", "overrides", "image_size") if model.get(k) is not None}


def apply_thread_limit() -> None:
    """Torch threads follow the replica's CPU reservation (OMP_NUM_THREADS set by the app builder):
    oversubscribed threads cost far more than they give."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
