"""Give a small model the activation outliers of a big one, without changing what it computes.

Models past a few billion parameters grow a handful of input channels whose activations are 20-100×
the typical one (LLM.int8, Dettmers et al. 2022); that is what makes 4-bit round-to-nearest and int8
activations hurt there, and what AWQ and LLM.int8's decomposition exist for. The workbook's tiny
model has only mild outliers (a few × the median channel), so every quantizer looks nearly free on it.

This module plants big-model outliers with an exact rewrite: for a few channels c of each RMSNorm,

    gain[c] *= k          (the norm's output channel c is now k× louder)
    W[:, c] /= k          (every linear that reads it, so W x is unchanged)

and likewise for the SwiGLU hidden units: up_proj row j ×k, down_proj column j ÷k (silu(gate)·up is
linear in up). The float model computes the same function (up to float rounding; `plant` checks
it), but its weights now hold k× smaller numbers in exactly the columns that meet k× larger
activations — the situation the AWQ paper describes in large models. Round-to-nearest gives those
small weights the step of their neighbours, so their information is rounded away; AWQ's scales
undo the rewrite (s ≈ k^α scales those columns back up).
"""
from __future__ import annotations

import copy

import torch

from shared.errors import self_check

# (the norm or producer whose output channel gets louder, the linears that read those channels)
NORM_READERS = (("attn_norm", ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
                ("mlp_norm", ("mlp.gate_proj", "mlp.up_proj")))


def loudest_channels(model, batches: list[torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The n input channels with the largest mean |activation| of each norm (and of each down_proj's
    input), on calibration batches: real outliers grow where activations are already large."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(model.blocks):
        for norm, _ in NORM_READERS:
            hooks.append(getattr(block, norm).register_forward_hook(_mean_abs(seen, f"{i}.{norm}", out=True)))
        hooks.append(block.mlp.down_proj.register_forward_hook(_mean_abs(seen, f"{i}.down", out=False)))
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.topk(n).indices for k, v in seen.items()}


def _mean_abs(seen, key, out: bool):
    def hook(mod, inp, output):
        x = (output if out else inp[0]).detach().abs().flatten(0, -2).mean(0)
        seen[key] = seen.get(key, 0) + x
    return hook


@torch.no_grad()
def plant(model, channels: dict[str, torch.Tensor], factor: float, check_ids: torch.Tensor | None = None):
    """A copy of `model` whose chosen channels are `factor`× louder and whose reading weights are
    `factor`× smaller (same function). With `check_ids`, self-checks that the logits are unchanged."""
    out = copy.deepcopy(model)
    for i, block in enumerate(out.blocks):
        for norm, readers in NORM_READERS:
            c = channels[f"{i}.{norm}"]
            getattr(block, norm).weight[c] *= factor
            for name in readers:
                block.get_submodule(name).weight[:, c] /= factor
        c = channels[f"{i}.down"]
        block.mlp.up_proj.weight[c, :] *= factor          # hidden unit j = silu(gate_j) * up_j: linear in up_j
        block.mlp.down_proj.weight[:, c] /= factor
    if check_ids is not None:
        ref, new = model(check_ids), out(check_ids)
        diff = float((new - ref).abs().max())
        self_check(diff < 1e-3 * max(1.0, float(ref.abs().max())),
                   f"planting outliers changed the float model's logits by {diff:.2e}")
    return out.eval()
