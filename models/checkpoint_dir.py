"""A Hugging Face-style checkpoint folder: its JSON files, its safetensors (one file or shards), and a
strict load of those tensors into a module. Shared by the EVF-SAM2 and Sa2VA loaders."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"


def read_json_object(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors file(s) of ``directory``: one file, or the shards its index lists."""
    directory = Path(directory)
    index = directory / SAFETENSORS_INDEX_FILE
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map'")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"shards listed in {index.name} are missing: {missing}")
        return files
    single = directory / SAFETENSORS_FILE
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE} in {directory}"
    )


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in ``directory``, on CPU, in their stored dtypes."""
    from safetensors.torch import load_file

    directory = Path(directory)
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        shard = load_file(str(path), device="cpu")
        repeated = state.keys() & shard.keys()
        if repeated:
            raise ValueError(f"{path.name} repeats keys of another shard: {sorted(repeated)[:5]}")
        state.update(shard)

    index = directory / SAFETENSORS_INDEX_FILE
    if index.is_file():
        listed = set(read_json_object(index)["weight_map"])
        if listed != state.keys():
            diff = sorted(listed ^ state.keys())[:5]
            raise ValueError(f"{index.name} and the shards disagree on the key set, e.g. {diff}")
    return state


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``: every key present, none extra, every shape equal.

    Stored dtypes may differ from the module's (real checkpoints mix fp16 and fp32); they are cast
    to the module's on copy. A module built on the meta device gets memory first. Raises
    ``ValueError`` starting with ``what`` and naming the offending keys.
    """
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    extra = sorted(state.keys() - expected.keys())
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & state.keys())
        if state[k].shape != expected[k].shape
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_head(missing)}")
        if extra:
            parts.append(f"{len(extra)} unexpected key(s): {_head(extra)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_head(shapes)}")
        raise ValueError(f"{what}: " + "; ".join(parts))
    # Meta tensors get memory of their own first, and load_state_dict copies into it. Adopting
    # the loaded tensors (assign=True) would keep views into the file's buffer at arbitrary
    # offsets, and misaligned weights change the CPU kernels' summation order: the numbers
    # would then depend on the file layout (1e-5 level).
    for sub in module.modules():
        own = [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]
        if any(t.is_meta for t in own):
            sub.to_empty(device="cpu", recurse=False)
    module.load_state_dict(state, strict=True)
    left = [name for name, buf in module.named_buffers() if buf.is_meta]
    if left:
        raise ValueError(f"{what}: buffers that are not in the checkpoint were never initialised: {left[:5]}")


def _head(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")
