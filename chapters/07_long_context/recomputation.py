"""Activation checkpointing for chapter 07: trade compute for training memory.

Training keeps every layer's activations for the backward pass. A checkpointed block keeps only
its *input*; during backward it runs its forward a second time to get the activations back
(Chen et al. 2016). Same gradients, less memory, about one extra forward of time.
FlashAttention does the same inside attention: it keeps only each query's logsumexp and
recomputes the score tiles in its backward pass.

    with activation_checkpointing(model):     # every block of a shared GPT, same parameters
        loss = training_step(model, x, y)
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from shared import bench
from shared.model import GPT


class Checkpointed(nn.Module):
    """A block whose forward keeps no activations for backward: only its input is kept, and
    backward runs the block's forward a second time to get them back."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x, **kwargs):
        return checkpoint(self.block, x, use_reentrant=False, **kwargs)


@contextmanager
def activation_checkpointing(model: GPT):
    """Inside the `with`, every block of `model` is checkpointed (same parameters)."""
    plain = model.blocks
    model.blocks = nn.ModuleList(Checkpointed(b) for b in plain)
    try:
        yield model
    finally:
        model.blocks = plain


def training_step(model: GPT, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward and backward (no optimizer step): the part whose memory checkpointing changes."""
    model.zero_grad(set_to_none=True)
    loss = model(x, y)[1]
    loss.backward()
    return loss.item()


def measure_checkpointing(model: GPT, x: torch.Tensor, y: torch.Tensor, device, repeat: int = 5) -> dict:
    """Peak memory and time of one training step, plain and with every block checkpointed,
    and the largest gradient difference between the two (recomputing is exact). The two are
    timed in turns and each keeps its fastest step: on a busy machine the fastest run is the
    one least slowed by other work, and taking turns gives both the same conditions."""
    modes = {"plain": nullcontext, "checkpointed": lambda: activation_checkpointing(model)}
    out, grads = {}, {}
    for mode, wrap in modes.items():
        with wrap():
            training_step(model, x, y)                                   # warm-up (allocates the grads)
            with bench.peak_memory(device) as mem:
                training_step(model, x, y)
            grads[mode] = [p.grad.detach().clone() for p in model.parameters()]
        out[mode] = {"peak_bytes": mem.bytes, "seconds": float("inf")}
    for _ in range(repeat):
        for mode, wrap in modes.items():
            with wrap():
                seconds = bench.time_fn(lambda: training_step(model, x, y), device, warmup=0, repeat=1)
            out[mode]["seconds"] = min(out[mode]["seconds"], seconds)
    out["max_grad_diff"] = max((a - b).abs().max().item() for a, b in zip(grads["plain"], grads["checkpointed"]))
    return out
