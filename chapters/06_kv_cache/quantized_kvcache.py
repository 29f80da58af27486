"""A KV cache stored in 8 or 4 bits instead of 32.

The cache is the memory that grows with every token (kvcache.cache_bytes), so its number
format is the cheapest place to save: store each cached key/value row as small integers and
one scale, and turn them back into floats when attention reads them.

    x  ≈  scale · q        q = round(x / scale),  scale = max|x| / qmax
    int8: q in [-127, 127], one byte each
    int4: q in [-7, 7], two per byte (packed below)

One fp16 scale per (token, head): per token, because a row is quantized once, when it is
written, and never touched again (schemes that share a scale across tokens, such as KIVI's
per-channel keys, must wait for a group of tokens); per head, because heads differ in range.
The scales are not free: per token and layer the cache holds

    2 × kv_heads × (head_dim × bits / 8 + 2 bytes of scale)

so with this chapter's 16-dimensional heads int8 saves 3.6×, not 4× (with 128-dim heads: 3.9×).

What this leaves out: the fused kernels that make a quantized cache *fast* (they read the
small integers straight into the attention matmul). Here `read` dequantizes every stored row
on every step in plain PyTorch, which costs time; the chapter measures how much.
"""
from __future__ import annotations

import torch

from kvcache import FullCache, forward
from shared.errors import WorkbookError
from shared.evaluate import story_nats
from shared.model import GPT, GPTConfig

QMAX = {8: 127, 4: 7}          # symmetric: -qmax..qmax, so 0.0 is stored exactly
SCALE_DTYPE = torch.float16
SCALE_BYTES = 2


def quantized_cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, tokens: int, bits: int,
                          scale_bytes: int = SCALE_BYTES, batch: int = 1) -> int:
    """K and V, every layer, K/V head and token: head_dim codes of `bits` bits plus one scale."""
    return 2 * n_layer * n_kv_head * tokens * batch * (head_dim * bits // 8 + scale_bytes)


# ----------------------------------------------------------------------------- the number format
def quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of x (..., head_dim) -> int8 codes (..., head_dim) and fp16 scales (..., 1)."""
    qmax = QMAX[bits]
    scale = (x.abs().amax(-1, keepdim=True).float() / qmax).to(SCALE_DTYPE)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)    # an all-zero row: any scale works
    q = torch.round(x.float() / scale.float()).clamp(-qmax, qmax)     # divide by the scale we will store
    return q.to(torch.int8), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return q.to(dtype) * scale.to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: (..., D) int8 in [-8, 7] -> (..., D/2) uint8 (even index low nibble)."""
    u = (q + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- the cache
class QuantizedCache(FullCache):
    """FullCache with every row stored as `bits`-bit codes + one fp16 scale per (token, head).
    Same update/advance/positions as FullCache; only `write`, `read` and the storage differ."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, bits: int = 8, device="cpu"):
        if bits not in QMAX:
            raise WorkbookError(f"QuantizedCache stores 8 or 4 bits, got bits={bits}")
        if bits == 4 and cfg.head_dim % 2:
            raise WorkbookError(f"int4 packs two codes per byte: head_dim must be even, got {cfg.head_dim}")
        width = cfg.head_dim * bits // 8
        code_dtype = torch.int8 if bits == 8 else torch.uint8

        def zeros(last, dtype):
            return [torch.zeros(batch, cfg.n_kv_head, max_len, last, device=device, dtype=dtype)
                    for _ in range(cfg.n_layer)]

        self.k_codes, self.v_codes = zeros(width, code_dtype), zeros(width, code_dtype)
        self.k_scale, self.v_scale = zeros(1, SCALE_DTYPE), zeros(1, SCALE_DTYPE)
        self.bits, self.window, self.max_len, self.length = bits, cfg.window, max_len, 0

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, scale = quantize(x, self.bits)
        return (pack_int4(q) if self.bits == 4 else q), scale

    def _decode(self, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return dequantize(unpack_int4(codes) if self.bits == 4 else codes, scale)

    def write(self, layer: int, rows: slice, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_codes[layer][:, :, rows], self.k_scale[layer][:, :, rows] = self._encode(k)
        self.v_codes[layer][:, :, rows], self.v_scale[layer][:, :, rows] = self._encode(v)

    def read(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantize every stored row: the new query attends over the *rounded* keys and values."""
        return (self._decode(self.k_codes[layer][:, :, :end], self.k_scale[layer][:, :, :end]),
                self._decode(self.v_codes[layer][:, :, :end], self.v_scale[layer][:, :, :end]))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k_codes + self.v_codes + self.k_scale + self.v_scale)


def make_cache(cfg: GPTConfig, batch: int, max_len: int, bits: int, device="cpu") -> FullCache:
    """bits=32: the plain fp32 FullCache; 8 or 4: a QuantizedCache."""
    if bits == 32:
        return FullCache(cfg, batch, max_len, device=device)
    return QuantizedCache(cfg, batch, max_len, bits=bits, device=device)


# ----------------------------------------------------------------------------- what it costs in quality
@torch.no_grad()
def logits_through_cache(model: GPT, ids: torch.Tensor, bits: int, n_prefill: int) -> torch.Tensor:
    """Logits at every position of ids (1, T): a prefill of n_prefill tokens, then one token per
    step, every step reading K/V back from a cache of `bits` bits."""
    cache = make_cache(model.cfg, 1, ids.shape[1], bits, ids.device)
    out = [forward(model, ids[:, :n_prefill], cache, last_only=False)]
    out += [forward(model, ids[:, j:j + 1], cache) for j in range(n_prefill, ids.shape[1])]
    return torch.cat(out, dim=1)[0].float()


def story_nats_through_cache(model: GPT, tokenizer, stories: list, bits: int, device="cpu",
                             batch_size: int = 32) -> tuple[torch.Tensor, list[int]]:
    """shared.evaluate.story_nats, but every prediction reads its keys and values from a cache of
    `bits` bits. One chunked pass per batch is enough: a row's codes depend on that row alone, so
    the chunk's queries see exactly what token-by-token decoding would see."""
    def through_cache(x):
        return forward(model, x, make_cache(model.cfg, x.shape[0], x.shape[1], bits, device), last_only=False)

    return story_nats(model, tokenizer, stories, device, batch_size=batch_size, logits_fn=through_cache)
