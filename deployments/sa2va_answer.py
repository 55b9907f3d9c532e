"""What the Sa2VA image and video deployments share: loading, the prompt check, the streamed answer.

The answer's text is streamed as `data` events ({"output": text so far, "delta": new text}), which
the streaming run sends as SSE events before the final result: the first token at once, then each
token as it comes, except that tokens coming faster than one per `STREAM_INTERVAL_S` are sent
together (each event costs about a millisecond on its way through Ray and the gateway). The status
logs get the time to the first token and the rate.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from deployments.base import ModelDeployment, RequestError, RunContext
from deployments.model_settings import resolve_device
from models.sa2va import Generation, Prompt, Sa2VA
from serve import job_events

STREAM_INTERVAL_S = 0.01


class Sa2vaAnswerer(ModelDeployment):
    def setup(self, model: dict) -> None:
        device = resolve_device(model.get("device"))
        check_gpu_memory(device, model.get("gpu_memory_gb"))
        # bf16 where it pays off, on a GPU; the CPU stays fp32 (the parity-checked path).
        dtype = model.get("dtype", "bfloat16") if device != "cpu" else "float32"
        self.sa2va = Sa2VA.from_pretrained(model["checkpoint"], device=device, dtype=dtype)
        self.max_new_tokens = int(model.get("max_new_tokens", 2048))
        self.chunk_size = int(model.get("chunk_size", 16))

    @staticmethod
    def _send(ctx: RunContext, text: str, sent: str) -> str:
        delta = text[len(sent):] if text.startswith(sent) else text
        ctx.emit(job_events.data({"output": text, "delta": delta}))
        return text

    def prepare_prompt(self, text: str, image: np.ndarray | None = None,
                       frames: Sequence[np.ndarray] | None = None) -> Prompt:
        try:
            return self.sa2va.prepare(text, image=image, frames=frames)
        except ValueError as exc:  # PromptTooLong, or a prompt holding the image-context token
            raise RequestError(["prompt"], str(exc)) from None

    def answer(self, prompt: Prompt, ctx: RunContext) -> Generation:
        """Greedy answer, streamed as `data` events; cancellable between tokens."""
        started = time.perf_counter()
        first = None
        ids: list[int] = []
        text = sent = ""
        last_sent = float("-inf")
        generation = None
        for item in self.sa2va.stream(prompt, self.max_new_tokens):
            if isinstance(item, Generation):
                generation = item
                break
            ctx.cancel.check()
            ids.append(item)
            if first is None:
                first = time.perf_counter() - started
            # The whole answer is decoded each time: that keeps multi-token characters and the
            # InternLM2 tokenizer's spacing right, and answers are short next to the prompt.
            text = clean_answer(self.sa2va.tokenizer.decode(ids, skip_special_tokens=False), self.sa2va.stop_words)
            if text != sent and time.perf_counter() - last_sent >= STREAM_INTERVAL_S:
                sent = self._send(ctx, text, sent)
                last_sent = time.perf_counter()
        if text != sent:
            self._send(ctx, text, sent)
        elapsed = time.perf_counter() - started
        rate = (len(ids) - 1) / max(elapsed - (first or 0.0), 1e-9) if len(ids) > 1 else 0.0
        ctx.log(f"answered in {len(ids)} tokens, {elapsed:.2f} s (first token after {first or 0:.2f} s, "
                f"{rate:.1f} tokens/s after it); {generation.seg_hidden.shape[0]} [SEG]")
        return generation


def clean_answer(text: str, stop_words: Sequence[str]) -> str:
    """The answer without the trailing stop token the model's raw prediction carries."""
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for word in stop_words:
            if text.endswith(word):
                text = text[: -len(word)].rstrip()
                changed = True
    return text


def check_gpu_memory(device: str, needed_gb) -> None:
    """Fail at start, with the numbers, when the replica's GPU is smaller than the config says it needs."""
    if needed_gb is None or not str(device).startswith("cuda"):
        return
    import torch

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
    if total < float(needed_gb):
        raise RuntimeError(f"this model needs about {float(needed_gb):g} GiB of GPU memory; the GPU has {total:.1f} GiB")
