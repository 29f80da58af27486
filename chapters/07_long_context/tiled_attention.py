"""Attention three ways, written out by hand for chapter 07.

    full_attention(q, k, v)      materialises every score: a (T, S) matrix per head
    tiled_attention(q, k, v)     FlashAttention's idea in plain PyTorch: walk over K/V in
                                 blocks, keep a running max and a running sum per query
                                 (the "online softmax"), never hold more than one
                                 (block_q, block_k) tile of scores
    online_softmax(x, block)     the same recurrence on one vector, with its trace, to read

All three take (batch, heads, T, head_dim) tensors, like torch's
`F.scaled_dot_product_attention`, and share one masking rule:

    query i (at absolute position i + S - T) sees key j  iff
        causal:  j <= i + S - T                 (no peeking ahead)
        window:  (i + S - T) - j < window       (itself and window-1 keys before it)

which is the rule `shared.model.Attention.mask` uses for `GPTConfig(window=W)`. When S > T
(queries are the newest tokens, as with a KV cache) the queries line up with the *last*
T keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from shared.errors import WorkbookError


# ----------------------------------------------------------------------------- masking
def allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor:
    """Boolean (len(q_pos), len(k_pos)): may the query at q_pos see the key at k_pos?"""
    q_pos, k_pos = q_pos[:, None], k_pos[None, :]
    ok = torch.ones(q_pos.shape[0], k_pos.shape[1], dtype=torch.bool, device=q_pos.device)
    if causal:
        ok &= k_pos <= q_pos
    if window is not None:
        ok &= (q_pos - k_pos) < window
    return ok


def attention_mask(t: int, s: int, causal: bool = True, window: int | None = None, device="cpu") -> torch.Tensor:
    """The full (t, s) mask: queries are the last t of s positions."""
    return allowed(torch.arange(s - t, s, device=device), torch.arange(s, device=device), causal, window)


def _check(q, k, v, causal, window):
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise WorkbookError(f"attention wants q (B,H,T,D) and k, v (B,H,S,D); got {tuple(q.shape)}, "
                            f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] > k.shape[2]:
        raise WorkbookError(f"more queries ({q.shape[2]}) than keys ({k.shape[2]}): queries must be the newest tokens")
    if window is not None and window < 1:
        raise WorkbookError(f"window={window}: a query must at least see itself (window >= 1)")
    if window is not None and not causal:
        raise WorkbookError("a sliding window here looks backwards only: use it with causal=True")


# ----------------------------------------------------------------------------- the reference
def full_attention(q, k, v, causal: bool = True, window: int | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d), masked) V with the whole (T, S) score matrix in memory.

    A sliding window here is only a mask: every score is still computed and stored, so
    it costs exactly what full attention costs. Saving work needs the tiled version."""
    _check(q, k, v, causal, window)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])        # (B, H, T, S): the O(T^2) tensor
    if causal or window is not None:
        scores = scores.masked_fill(~attention_mask(q.shape[2], k.shape[2], causal, window, q.device), float("-inf"))
    return scores.softmax(dim=-1) @ v


# ----------------------------------------------------------------------------- online softmax
@dataclass
class OnlineSoftmaxTrace:
    running_max: list[float]     # m after each block
    running_sum: list[float]     # l after each block: sum_j exp(x_j - m) over the blocks seen
    softmax: torch.Tensor        # exp(x - m_final) / l_final, the exact softmax


def online_softmax(x: torch.Tensor, block: int) -> OnlineSoftmaxTrace:
    """Softmax of a 1-D `x` read `block` numbers at a time, never looking back.

    After each block:  m_new = max(m, max(block))
                       l_new = l * exp(m - m_new) + sum(exp(block - m_new))
    The factor exp(m - m_new) rescales the old sum to the new maximum: that one line is
    what lets FlashAttention stream over keys."""
    m, l = float("-inf"), 0.0
    trace = OnlineSoftmaxTrace([], [], x)
    for i in range(0, len(x), block):
        chunk = x[i:i + block].double()
        m_new = max(m, chunk.max().item())
        l = l * math.exp(m - m_new) + torch.exp(chunk - m_new).sum().item()
        m = m_new
        trace.running_max.append(m)
        trace.running_sum.append(l)
    trace.softmax = (torch.exp(x.double() - m) / l).to(x.dtype)
    return trace


# ----------------------------------------------------------------------------- tiled attention
def key_block_range(q0: int, q1: int, s: int, offset: int, causal: bool, window: int | None,
                    block_k: int) -> range:
    """Start indices of the key blocks that queries q0..q1-1 can see at all; the others are
    skipped outright (causal: those right of the diagonal; window: those left of the band).
    This skipping, not the mask, is where causal attention saves half its work and a sliding
    window turns O(T^2) into O(T * window)."""
    hi = min(s, q1 + offset) if causal else s                    # last query sees up to key q1-1+offset
    lo = 0 if window is None else max(0, q0 + offset - window + 1)  # first query sees back to here
    return range(lo // block_k * block_k, hi, block_k)


def tiled_attention(q, k, v, causal: bool = True, window: int | None = None, block_q: int = 64,
                    block_k: int = 64, return_lse: bool = False):
    """Exact attention, one (block_q x block_k) tile of scores at a time.

    For each block of queries keep, per query row:
        m    the largest score seen so far            (running max, for a safe exp)
        l    sum of exp(score - m) over keys seen     (running softmax denominator)
        acc  sum of exp(score - m) * v over keys seen (running numerator)
    and fold in one block of keys at a time with the online-softmax rescaling. At the end
    out = acc / l. Memory: the output plus one tile: O(T*d + block_q*block_k), not O(T*S).
    With return_lse also give logsumexp per query (m + ln l): what FlashAttention keeps for
    its backward pass, so it can recompute the tiles instead of storing them."""
    _check(q, k, v, causal, window)
    if block_q < 1 or block_k < 1:
        raise WorkbookError(f"block sizes must be >= 1, got block_q={block_q}, block_k={block_k}")
    b, h, t, d = q.shape
    s = k.shape[2]
    offset = s - t                                   # query i sits at absolute position i + offset
    scale = 1.0 / math.sqrt(d)
    out = torch.empty_like(q)
    lse = torch.empty(b, h, t, device=q.device, dtype=torch.float32) if return_lse else None
    k_pos_all = torch.arange(s, device=q.device)
    for q0 in range(0, t, block_q):
        q1 = min(q0 + block_q, t)
        q_blk = q[:, :, q0:q1] * scale               # scale once per query block, not per tile
        q_pos = torch.arange(q0, q1, device=q.device) + offset
        m = torch.full((b, h, q1 - q0, 1), float("-inf"), device=q.device, dtype=q.dtype)
        l = torch.zeros(b, h, q1 - q0, 1, device=q.device, dtype=q.dtype)
        acc = torch.zeros(b, h, q1 - q0, d, device=q.device, dtype=q.dtype)
        for k0 in key_block_range(q0, q1, s, offset, causal, window, block_k):
            k1 = min(k0 + block_k, s)
            scores = q_blk @ k[:, :, k0:k1].transpose(-2, -1)          # (B, H, bq, bk): one tile
            if _tile_needs_mask(q0 + offset, q1 - 1 + offset, k0, k1 - 1, causal, window):
                ok = allowed(q_pos, k_pos_all[k0:k1], causal, window)
                scores = scores.masked_fill(~ok, float("-inf"))
            m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
            # a row that has seen no visible key yet has m_new = -inf; exp(-inf - -inf) would be
            # nan, so shift such rows by 0 instead (their p and correction are then exactly 0)
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(scores - m_safe)                              # unnormalised probabilities
            correction = torch.exp(m - m_safe)                          # rescale what we had so far
            l = l * correction + p.sum(dim=-1, keepdim=True)
            acc = acc * correction + p @ v[:, :, k0:k1]
            m = m_new
        out[:, :, q0:q1] = acc / l
        if return_lse:
            lse[:, :, q0:q1] = (m + torch.log(l)).squeeze(-1).float()
    return (out, lse) if return_lse else out


def _tile_needs_mask(q_first: int, q_last: int, k_first: int, k_last: int, causal: bool, window: int | None) -> bool:
    """Tiles wholly inside the visible region skip building a mask (most of them, for long T)."""
    if causal and k_last > q_first:                        # some key is right of some query
        return True
    return window is not None and q_last - k_first >= window  # some key is out of some query's window


# ----------------------------------------------------------------------------- measuring
def attention_flops(b: int, h: int, t: int, s: int, d: int, causal: bool = False, window: int | None = None) -> float:
    """Useful matmul FLOPs of one attention forward: 2 matmuls (QK^T and PV) of 2*d FLOPs per
    visible (query, key) pair. Causal halves the pairs; a window caps them at `window`."""
    positions = torch.arange(s - t, s, dtype=torch.float64)          # each query's absolute position
    visible = positions + 1 if causal else torch.full_like(positions, float(s))
    if window is not None:
        visible = visible.clamp(max=window)
    return 4.0 * b * h * d * float(visible.sum())


class LargestTensor(TorchFunctionMode):
    """`with LargestTensor() as lt: f()` then `lt.bytes` is the size of the largest tensor any
    torch function called inside returned: a deterministic, allocator-independent view of
    memory growth (full attention's (T, S) scores vs the tiled version's one tile)."""

    def __init__(self):
        super().__init__()
        self.bytes, self.shape = 0, ()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor) and x.numel() * x.element_size() > self.bytes:
                self.bytes, self.shape = x.numel() * x.element_size(), tuple(x.shape)
        return out
