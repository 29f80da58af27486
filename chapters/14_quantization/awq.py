"""AWQ (Lin et al. 2023, arXiv:2306.00978): activation-aware weight quantization.

A few input channels of each linear carry much larger activations than the rest. Their
weights matter more: an error there is multiplied by a big x. AWQ scales those weight
columns UP by s before rounding (so they get relatively finer steps) and the activations
DOWN by s (folded into the previous op, so the float model is unchanged):

    y = W x = (W diag(s)) (diag(s)^-1 x),      s = mean|x|^alpha,  alpha searched on a grid

alpha = 0 is plain round-to-nearest (RTN), so on the calibration data the search can only
help. Where the 1/s goes (exact in float, free at inference):
    q/k/v   <- attention RMSNorm weight      gate/up <- MLP RMSNorm weight
    o_proj  <- rows of v_proj (MHA only)     down    <- rows of up_proj

The second half writes the result in the AutoAWQ "GEMM" layout that AutoAWQ, vLLM and
transformers read: qweight int32 (in, out/8), qzeros int32 (in/group, out/8), scales fp16
(in/group, out), eight 4-bit codes per int32 in the interleaved order [0, 2, 4, 6, 1, 3, 5, 7].
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn
from einops import rearrange

from quantizers import QuantSpec, dequantize, quant_dequant, quantize
from shared.errors import WorkbookError

# which linears share one input (searched together) and where their 1/s is folded
GROUPS = (("qkv", ("attn.q_proj", "attn.k_proj", "attn.v_proj"), "attn_norm"),
          ("o", ("attn.o_proj",), "attn.v_proj"),
          ("gate_up", ("mlp.gate_proj", "mlp.up_proj"), "mlp_norm"),
          ("down", ("mlp.down_proj",), "mlp.up_proj"))


@torch.no_grad()
def collect_inputs(model, batches: list[torch.Tensor], max_rows: int = 4096) -> dict[str, torch.Tensor]:
    """The input activations of every block linear on calibration tokens: {name: (rows, in)}."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and ".blocks." in f".{name}":
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: seen.setdefault(name, []).append(
                    rearrange(inp[0].detach().float(), "b t d -> (b t) d"))))
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, xs in seen.items():
        x = torch.cat(xs)
        if len(x) > max_rows:  # a fixed random subset keeps the search cheap
            x = x[torch.randperm(len(x), generator=g)[:max_rows]]
        out[name] = x
    return out


def output_error(weights: list[torch.Tensor], x: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> float:
    """Mean squared error of the layer outputs when W diag(s) is quantized and x is divided by s."""
    err = 0.0
    for w in weights:
        w_hat = quant_dequant(w * s, spec) / s
        err += ((x @ (w_hat - w).T) ** 2).mean().item()
    return err


def search_scale(weights: list[torch.Tensor], x: torch.Tensor, spec: QuantSpec,
                 grid: int = 20) -> tuple[torch.Tensor, float, list[float]]:
    """Grid search alpha in [0, 1): s = mean|x|^alpha (normalised so max*min = 1).
    Returns the best s, its alpha, and the error curve (alpha = 0 is RTN)."""
    act = x.abs().mean(dim=0).clamp(min=1e-6)
    best, curve = None, []
    for i in range(grid):
        alpha = i / grid
        s = act.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = output_error(weights, x, s, spec)
        curve.append(err)
        if best is None or err < best[1]:
            best = (s, err, alpha)
    return best[0], best[2], curve


@torch.no_grad()
def apply_awq(model, inputs: dict[str, torch.Tensor], spec: QuantSpec, grid: int = 20):
    """A float copy of `model` with the AWQ scales folded in (same function, rescaled weights),
    plus what the search found. Quantizing that copy with plain RTN gives AWQ."""
    out = copy.deepcopy(model)
    report = []
    for i, block in enumerate(out.blocks):
        for group, names, fold_into in GROUPS:
            if group == "o" and block.attn.cfg.n_kv_head != block.attn.cfg.n_head:
                continue  # with GQA a v_proj row feeds several heads: no per-channel fold
            mods = [block.get_submodule(n) for n in names]
            x = inputs[f"blocks.{i}.{names[0]}"]
            s, alpha, curve = search_scale([m.weight.float() for m in mods], x, spec, grid)
            for m in mods:
                m.weight.mul_(s)                          # columns up
            prev = block.get_submodule(fold_into)
            if isinstance(prev, nn.Linear):
                prev.weight.div_(s[:, None])              # rows of the producer down
            else:
                prev.weight.div_(s)                       # the RMSNorm gain down
            report.append({"layer": i, "group": group, "alpha": alpha, "rtn_error": curve[0],
                           "awq_error": min(curve), "curve": curve})
    return out, report


# ----------------------------------------------------------------------------- AutoAWQ GEMM layout
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)          # column j of each 8 lands in nibble slot AWQ_ORDER.index(j)
AWQ_REVERSE = tuple(AWQ_ORDER.index(j) for j in range(8))   # = (0, 4, 1, 5, 2, 6, 3, 7)


def pack_awq(codes: torch.Tensor) -> torch.Tensor:
    """(rows, cols) 4-bit codes -> (rows, cols/8) int32: slot i (bits 4i..4i+3) holds column AWQ_ORDER[i]."""
    if codes.shape[-1] % 8:
        raise WorkbookError(f"AWQ packing needs a multiple of 8 columns, got {codes.shape[-1]}")
    c = rearrange(codes.to(torch.int64), "r (n eight) -> r n eight", eight=8)[..., list(AWQ_ORDER)]
    packed = (c << (4 * torch.arange(8))).sum(dim=-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)   # reinterpret as int32


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    slots = (packed.to(torch.int64)[..., None] >> (4 * torch.arange(8))) & 0xF
    return rearrange(slots[..., list(AWQ_REVERSE)], "r n eight -> r (n eight)")


def to_awq_gemm(weight: torch.Tensor, group: int) -> dict[str, torch.Tensor]:
    """Quantize W (out, in) with 4-bit zero-point groups along `in` and lay it out like
    AutoAWQ's WQLinear_GEMM: everything transposed to (in, out)."""
    qt = quantize(weight, QuantSpec(4, symmetric=False, group=group))
    return {"qweight": pack_awq(qt.q.T.contiguous()),                       # (in, out/8)
            "qzeros": pack_awq(qt.zero.T.contiguous().to(torch.int64)),     # (in/group, out/8)
            "scales": qt.scale.T.contiguous().half()}                       # (in/group, out)


def from_awq_gemm(t: dict[str, torch.Tensor], group: int) -> torch.Tensor:
    """Dequantize the GEMM layout back to W (out, in): (q - z) * s per group."""
    q = unpack_awq(t["qweight"]).float()                                   # (in, out)
    z = unpack_awq(t["qzeros"]).float().repeat_interleave(group, dim=0)
    s = t["scales"].float().repeat_interleave(group, dim=0)
    return ((q - z) * s).T.contiguous()


def awq_group_size(model, largest: int = 128) -> int:
    """The biggest power-of-two group <= `largest` dividing every quantized input width."""
    widths = [m.in_features for m in model.modules() if isinstance(m, nn.Linear)]
    g = largest
    while g > 1 and any(w % g for w in widths):
        g //= 2
    return g


@torch.no_grad()
def export_awq(folded_model, folder: Path, group: int) -> dict:
    """Write an AutoAWQ-style folder: config.json with quantization_config + model.safetensors
    holding qweight/qzeros/scales for every block linear and fp16 for the rest (HF Llama names)."""
    from safetensors.torch import save_file

    from shared.hf import to_hf_llama

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = to_hf_llama(folded_model)
    state, n_quant = {}, 0
    for name, t in hf.state_dict().items():
        if name.startswith("model.layers.") and name.endswith("_proj.weight"):
            for k, v in to_awq_gemm(t.float(), group).items():
                state[name.removesuffix("weight") + k] = v
            n_quant += 1
        else:
            state[name] = t.half().contiguous().clone()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = hf.config.to_dict()
    config["torch_dtype"] = "float16"
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group,
                                     "zero_point": True, "version": "gemm", "modules_to_not_convert": None}
    (folder / "config.json").write_text(json.dumps(config, indent=1, default=str))
    return {"folder": str(folder), "quantized_linears": n_quant,
            "bytes": (folder / "model.safetensors").stat().st_size}


def awq_rtn_reference(weight: torch.Tensor, group: int) -> torch.Tensor:
    """What the chapter's own quantizer gives for the same weight (for the round-trip check)."""
    return dequantize(quantize(weight, QuantSpec(4, symmetric=False, group=group)))
