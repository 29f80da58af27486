"""Post-training quantization by hand: absmax and zero-point rounding at any bit width, per
tensor / per output channel / per group of input columns, bit-packing (two int4 per byte),
fake-quant with a straight-through estimator for QAT, and W8A8 (int8 weights AND int8
activations) with a real integer matmul kernel (`torch._int_mm`).

    qt = quantize(w, QuantSpec(bits=4, symmetric=False, group=32))
    w_hat = dequantize(qt)                     # |w - w_hat| <= scale/2 everywhere
    packed = pack_int4(qt.q)                   # two 4-bit codes per byte
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange

from shared.errors import WorkbookError

# the linears inside the transformer blocks are quantized; embeddings, norms (tiny) stay in fp16
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 8
    symmetric: bool = True          # absmax (zero at 0) vs zero-point (asymmetric: min..max)
    group: int | str = "channel"    # "tensor" | "channel" (one scale per output row) | an int group size

    def __post_init__(self):
        if not 1 < self.bits <= 8:
            raise WorkbookError(f"bits={self.bits}: this chapter quantizes to 2..8 bits")
        if isinstance(self.group, str) and self.group not in ("tensor", "channel"):
            raise WorkbookError(f"group={self.group!r}: use 'tensor', 'channel' or a group size")

    @property
    def label(self) -> str:
        g = self.group if isinstance(self.group, str) else f"g{self.group}"
        return f"int{self.bits} {'absmax' if self.symmetric else 'zero-point'} {g}"

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        # absmax uses the symmetric range -127..127 (not -128) so +x and -x round alike
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1


@dataclass
class QTensor:
    """Integer codes plus what is needed to map them back: w ≈ (q - zero) * scale."""
    q: torch.Tensor        # int16 codes, same shape as w (rows, cols)
    scale: torch.Tensor    # (rows or 1, groups or 1)
    zero: torch.Tensor     # same shape as scale (all zeros for absmax)
    spec: QuantSpec


def _grouped(w: torch.Tensor, group) -> torch.Tensor:
    """View w (rows, cols) as (row-blocks, groups, elements-per-group) for the granularity."""
    if w.dim() != 2:
        raise WorkbookError(f"quantize expects a 2-D weight, got shape {tuple(w.shape)}")
    if group == "tensor":
        return w.reshape(1, 1, -1)
    if group == "channel":
        return w.reshape(w.shape[0], 1, w.shape[1])
    if w.shape[1] % group:
        raise WorkbookError(f"group size {group} does not divide the {w.shape[1]} input columns")
    return rearrange(w, "r (g e) -> r g e", e=group)


def quantize(w: torch.Tensor, spec: QuantSpec) -> QTensor:
    """Round-to-nearest quantization. absmax: scale = max|w| / qmax, zero = 0.
    zero-point: scale = (max - min) / (2^b - 1), zero = round(-min / scale), so the grid
    covers exactly [min, max] and an all-positive row wastes no codes on negatives."""
    x = _grouped(w.detach().float(), spec.group)
    if spec.symmetric:
        scale = x.abs().amax(dim=-1).clamp(min=1e-8) / spec.qmax
        zero = torch.zeros_like(scale)
    else:
        lo = x.amin(dim=-1).clamp(max=0.0)   # keep 0 representable (padding, ReLU zeros)
        hi = x.amax(dim=-1).clamp(min=0.0)
        scale = (hi - lo).clamp(min=1e-8) / spec.qmax
        zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale[..., None]) + zero[..., None], spec.qmin, spec.qmax)
    return QTensor(q.reshape(w.shape).to(torch.int16), scale, zero, spec)


def dequantize(qt: QTensor) -> torch.Tensor:
    q = _grouped(qt.q.float(), qt.spec.group)
    return ((q - qt.zero[..., None]) * qt.scale[..., None]).reshape(qt.q.shape)


def quant_dequant(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return dequantize(quantize(w, spec)).to(w.dtype)


def element_scale(qt: QTensor) -> torch.Tensor:
    """The scale that applies to each element (for the |error| <= scale/2 check)."""
    x = _grouped(qt.q.float(), qt.spec.group)
    return qt.scale[..., None].expand_as(x).reshape(qt.q.shape)


# ----------------------------------------------------------------------------- packing
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: element 2i in the low nibble, 2i+1 in the high nibble.
    Signed codes (-7..7) are stored with an offset of 8 so every nibble is 0..15."""
    c = codes.to(torch.int16)
    if c.min() < 0:
        c = c + 8
    if c.min() < 0 or c.max() > 15 or c.shape[-1] % 2:
        raise WorkbookError("pack_int4 needs codes in 0..15 (or -8..7) and an even last dimension")
    pairs = rearrange(c, "... (n two) -> ... n two", two=2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, signed: bool = False) -> torch.Tensor:
    p = packed.to(torch.int16)
    codes = rearrange(torch.stack([p & 0xF, p >> 4], dim=-1), "... n two -> ... (n two)")
    return codes - 8 if signed else codes


def pack_bits(codes: torch.Tensor, bits: int) -> np.ndarray:
    """Any bit width as a dense little-endian bit stream (3-bit codes take 3 bits each)."""
    c = codes.to(torch.int64).flatten().cpu().numpy()
    c = c - c.min() if c.min() < 0 else c
    planes = ((c[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    planes = np.unpackbits(packed, bitorder="little")[: n * bits].reshape(n, bits).astype(np.int64)
    return (planes << np.arange(bits)).sum(axis=1)


# ----------------------------------------------------------------------------- whole models
def quantizable(model: nn.Module):
    """(name, Linear) for the block linears this chapter quantizes."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.split(".")[-1] in LINEARS:
            yield name, m


@torch.no_grad()
def quantize_model(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """A copy whose block linears hold round-to-nearest dequantized weights (weight-only
    PTQ: the integer codes are what would be stored; we compute with their float value)."""
    out = copy.deepcopy(model)
    for _, lin in quantizable(out):
        lin.weight.copy_(quant_dequant(lin.weight, spec))
    return out


def packed_state(model: nn.Module, spec: QuantSpec | None) -> dict[str, torch.Tensor]:
    """What a file of this model holds: packed codes + fp16 scales/zeros for quantized
    linears, fp16 for everything else (fp32 everywhere when spec is None)."""
    state = {}
    quant = {name + ".weight" for name, _ in quantizable(model)} if spec else set()
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if name not in quant:
            state[name] = t.detach().contiguous() if spec is None else t.detach().half().contiguous()
            continue
        qt = quantize(t, spec)
        codes = pack_int4(qt.q) if spec.bits == 4 else (qt.q.to(torch.int8) if spec.bits == 8 else
                                                          torch.from_numpy(pack_bits(qt.q, spec.bits)))
        state[name + ".codes"] = codes.contiguous()
        state[name + ".scale"] = qt.scale.half().contiguous()
        if not spec.symmetric:
            state[name + ".zero"] = qt.zero.to(torch.uint8).contiguous()
    return state


def bytes_on_disk(model: nn.Module, spec: QuantSpec | None) -> int:
    """Size of a real safetensors file of the packed model (header included)."""
    from safetensors.torch import save_file

    state = packed_state(model, spec)
    # tied weights share storage; safetensors wants distinct tensors
    state = {k: v.clone() for k, v in state.items()}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        save_file(state, path)
        return os.path.getsize(path)


# ----------------------------------------------------------------------------- QAT
class FakeQuant(torch.autograd.Function):
    """Forward: quantize-dequantize. Backward: pass the gradient straight through (STE),
    as if rounding were the identity; without it round() has zero gradient everywhere."""

    @staticmethod
    def forward(ctx, w, spec):
        return quant_dequant(w, spec)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class FakeQuantLinear(nn.Module):
    """Wraps a Linear: trains the float 'shadow' weight, always computes with its quantized value."""

    def __init__(self, lin: nn.Linear, spec: QuantSpec):
        super().__init__()
        self.lin, self.spec = lin, spec

    def forward(self, x):
        return nn.functional.linear(x, FakeQuant.apply(self.lin.weight, self.spec), self.lin.bias)


def replace_linears(model: nn.Module, make) -> nn.Module:
    """Swap every quantizable Linear for make(linear, name) in place; returns model."""
    for name, lin in list(quantizable(model)):
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        setattr(parent, name.rsplit(".", 1)[1], make(lin, name))
    return model


def unwrap_fake_quant(model: nn.Module) -> nn.Module:
    """After QAT: put plain Linears back, holding the quantized weights."""
    for name, m in list(model.named_modules()):
        if isinstance(m, FakeQuantLinear):
            with torch.no_grad():
                m.lin.weight.copy_(quant_dequant(m.lin.weight, m.spec))
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], m.lin)
    return model


# ----------------------------------------------------------------------------- W8A8
def int_mm_available() -> bool:
    """torch._int_mm: int8 x int8 -> int32 matmul (a real integer kernel; on CPU in recent torch)."""
    try:
        a = torch.ones(32, 32, dtype=torch.int8)
        return bool(torch.equal(torch._int_mm(a, a), torch.full((32, 32), 32, dtype=torch.int32)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class W8A8Linear(nn.Module):
    """int8 weights (absmax per output channel) AND int8 activations (absmax per token,
    computed on the fly). The matmul is done in integers with int32 accumulation, then
    rescaled: y = (x_q @ w_q^T) * s_x * s_w."""

    def __init__(self, lin: nn.Linear, use_int_mm: bool = True):
        super().__init__()
        qt = quantize(lin.weight, QuantSpec(8, True, "channel"))
        self.register_buffer("w_q_t", qt.q.to(torch.int8).t().contiguous())   # (in, out)
        self.register_buffer("w_scale", qt.scale.reshape(1, -1).float())      # (1, out)
        self.bias = lin.bias
        self.use_int_mm = use_int_mm

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        s_x = x2.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127
        x_q = torch.clamp(torch.round(x2 / s_x), -127, 127)
        if self.use_int_mm and x_q.shape[0] > 16:   # the kernel wants more than 16 rows
            acc = torch._int_mm(x_q.to(torch.int8), self.w_q_t).float()
        else:   # the same integers multiplied in float32 (exact while in_features * 127^2 < 2^24)
            acc = x_q @ self.w_q_t.float()
        y = acc * s_x * self.w_scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], -1).to(x.dtype)


def w8a8_model(model: nn.Module, use_int_mm: bool = True) -> nn.Module:
    return replace_linears(copy.deepcopy(model), lambda lin, _: W8A8Linear(lin, use_int_mm))
