"""AutoAWQ's "GEMM" layout, the file format AutoAWQ, vLLM and transformers read for AWQ models:
per quantized linear, qweight int32 (in, out/8), qzeros int32 (in/group, out/8) and scales fp16
(in/group, out), eight 4-bit codes per int32 in the interleaved order [0, 2, 4, 6, 1, 3, 5, 7].
The weights written are the AWQ-scaled float model's (awq.apply_awq) rounded with zero-point int4
groups: the codes are exactly the chapter's own quantizer's.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from einops import rearrange

from quantizers import QuantSpec, dequantize, quantize
from shared.errors import WorkbookError

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
