"""The same model in bitsandbytes' layers (what `load_in_8bit` / `load_in_4bit` in transformers use),
and the chapter's own round-to-nearest in bitsandbytes' 4-bit layout, so the two can be compared.

- `Linear8bitLt` is LLM.int8 (Dettmers et al. 2022): int8 weights with one scale per row, int8
  activations with one scale per token, and with `threshold=6` every activation column holding a
  value above 6 is multiplied in float instead (the mixed-precision decomposition).
- `Linear4bit` cuts the FLATTENED weight into blocks of 64 consecutive numbers with one absmax each,
  and stores codes as NF4 (16 levels at normal-distribution quantiles, QLoRA) or FP4 (a tiny float).
  Its absmax values are themselves quantized to 8 bits ("double quantization"), hence 4.125 bits/weight.

bitsandbytes 0.50 runs these layers on CPU; `stacks.require("bitsandbytes")` raises StackMissing when
it is not installed, and an unsupported device raises NotImplementedError from torch's dispatcher
(no kernel registered for that device) — the only two failures the chapter treats as "skipped".
"""
from __future__ import annotations

import copy
import logging

import torch

import quantizers as Q
from shared import stacks

KINDS = ("int8", "int8+outliers", "nf4", "fp4")
BNB_BLOCK = 64          # Linear4bit's default blocksize


def bnb_model(model, kind: str):
    """A CPU copy of `model` whose block linears are bitsandbytes layers of `kind` (one of KINDS)."""
    bnb = stacks.require("bitsandbytes")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)   # "inputs will be cast to fp16" per call

    def make(lin, _):
        w = lin.weight.data.detach().cpu().clone()
        if kind.startswith("int8"):
            layer = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=False, has_fp16_weights=False,
                                        threshold=6.0 if kind == "int8+outliers" else 0.0)
            layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, quant_type=kind,
                                      compute_dtype=torch.float32)
            layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=kind)
            if lin.in_features % BNB_BLOCK:
                # bitsandbytes 0.50's AVX512-BF16 CPU path repacks the absmax per row and fails on rows
                # that are not a whole number of blocks (down_proj: 352 = 5.5 x 64); the generic path works
                layer.support_avx512bf16_for_cpu = False
        return layer.to("cpu")   # moving to a device is what quantizes the weights

    return Q.replace_linears(copy.deepcopy(model).cpu(), make).eval()


def bnb_bits(model) -> float:
    """Stored bits per weight of bitsandbytes' linears, codes + quantization constants."""
    n = stored = 0
    for m in model.modules():
        if type(m).__name__ == "Linear8bitLt":
            n += m.in_features * m.out_features
            stored += m.weight.numel() * m.weight.element_size() + 4 * m.out_features   # int8 codes + fp32 row scale
        elif type(m).__name__ == "Linear4bit":
            qs = m.weight.quant_state
            n += m.in_features * m.out_features
            stored += m.weight.numel() * m.weight.element_size() + qs.absmax.numel() * qs.absmax.element_size()
    return 8 * stored / max(n, 1)


@torch.no_grad()
def blockwise_model(model, bits: int = 4, block: int = BNB_BLOCK):
    """The chapter's absmax round-to-nearest in Linear4bit's layout: blocks of `block` consecutive
    numbers of the flattened weight (so a block may span two rows), one absmax each."""
    out = copy.deepcopy(model)
    for _, lin in Q.quantizable(out):
        w = lin.weight
        lin.weight.copy_(Q.quant_dequant(w.reshape(-1, block), Q.QuantSpec(bits, True, "channel")).reshape(w.shape))
    return out


def blockwise_bits(bits: int = 4, block: int = BNB_BLOCK) -> float:
    """Codes plus one fp16 absmax per block."""
    return bits + 16 / block
