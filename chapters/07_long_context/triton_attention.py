"""The tiled forward pass of chapter 07 as one Triton GPU kernel.

Same algorithm as `tiled_attention.tiled_attention`, but each (query block, batch*head)
pair becomes one GPU *program* that keeps its running max `m`, running sum `l` and
accumulator `acc` in registers while it streams K/V blocks from GPU memory. The (T, S)
score matrix never exists anywhere, not even in fast on-chip memory: only one
(BLOCK_Q, BLOCK_K) tile of it at a time.

    out = triton_attention(q, k, v, causal=True)           # q, k, v: (B, H, T, D) on CUDA
    out, lse = triton_attention(q, k, v, return_lse=True)  # plus logsumexp per query

This module imports triton at the top: chapter 07's main.py only imports it once CUDA is
known to be there. Without a GPU you can still step through the kernel on the CPU with
Triton's interpreter (slow, numpy underneath; for reading and checking, not for speed):

    TRITON_INTERPRET=1 uv run python chapters/07_long_context/triton_attention.py
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

LOG2_E = tl.constexpr(1.4426950408889634)   # exp(x) == exp2(x * log2(e)); exp2 is the native instruction.
# (a kernel may read a global only when it is a tl.constexpr: Triton 3.6 refuses a plain float)
LN_2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _attention_forward(
    Q, K, V, Out, Lse,
    stride_qb, stride_qh, stride_qt,       # strides of q over batch, head, time (head_dim stride is 1)
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    n_heads, T, S, sm_scale,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    # which block of queries, and which (batch, head), this program owns
    q_block = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    offset = S - T                                     # queries are the last T of S positions

    q_idx = q_block * BLOCK_Q + tl.arange(0, BLOCK_Q)  # query rows (may run past T: masked)
    d_idx = tl.arange(0, HEAD_DIM)
    q_pos = q_idx + offset
    q_ptrs = Q + b * stride_qb + h * stride_qh + q_idx[:, None] * stride_qt + d_idx[None, :]
    q = tl.load(q_ptrs, mask=q_idx[:, None] < T, other=0.0)
    qk_scale = sm_scale * LOG2_E                       # scores in log2 units: one multiply per tile

    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)                 # running sum of exp2(score - m)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)       # running sum of exp2(score - m) * v

    # key blocks this query block can see at all: the rest are never loaded
    lo = 0
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, (q_block + 1) * BLOCK_Q + offset)
    if WINDOW > 0:
        lo = tl.maximum(0, q_block * BLOCK_Q + offset - WINDOW + 1)
        lo = (lo // BLOCK_K) * BLOCK_K

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for k0 in range(lo, hi, BLOCK_K):
        k_idx = k0 + tl.arange(0, BLOCK_K)
        k = tl.load(k_base + k_idx[:, None] * stride_kt + d_idx[None, :], mask=k_idx[:, None] < S, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale   # (BLOCK_Q, BLOCK_K), fp32

        visible = k_idx[None, :] < S
        if CAUSAL:
            visible = visible & (k_idx[None, :] <= q_pos[:, None])
        if WINDOW > 0:
            visible = visible & (q_pos[:, None] - k_idx[None, :] < WINDOW)
        scores = tl.where(visible, scores, float("-inf"))

        # the online-softmax update (see tiled_attention.online_softmax)
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.math.exp2(scores - m_safe[:, None])
        correction = tl.math.exp2(m_i - m_safe)
        l_i = l_i * correction + tl.sum(p, 1)
        v = tl.load(v_base + k_idx[:, None] * stride_vt + d_idx[None, :], mask=k_idx[:, None] < S, other=0.0)
        acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    l_i = tl.where(l_i > 0, l_i, 1.0)                  # only padding rows past T can have seen nothing
    acc = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + q_idx[:, None] * stride_ot + d_idx[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=q_idx[:, None] < T)
    tl.store(Lse + bh * T + q_idx, (m_i + tl.math.log2(l_i)) * LN_2, mask=q_idx < T)  # natural-log logsumexp


def launch_config(head_dim: int, dtype: torch.dtype) -> dict:
    """Tile sizes and launch settings. Half-precision tiles can be bigger (they take half the
    registers and shared memory); fp32 uses exact 'ieee' matmuls so it can be checked
    against torch to ~1e-6 (the default on NVIDIA GPUs would be TF32, ~1e-3)."""
    if dtype == torch.float32:
        return dict(BLOCK_Q=64, BLOCK_K=32, PRECISION="ieee", num_warps=4, num_stages=2)
    return dict(BLOCK_Q=128, BLOCK_K=64, PRECISION="tf32", num_warps=8 if head_dim >= 128 else 4, num_stages=3)


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                     window: int | None = None, return_lse: bool = False):
    """Exact attention with one Triton kernel launch. q: (B, H, T, D), k and v: (B, H, S, D),
    fp32/fp16/bf16, head_dim a power of two in 16..256; causal/window as in tiled_attention."""
    b, h, t, d = q.shape
    s = k.shape[2]
    if k.shape != v.shape or k.shape[:2] != (b, h) or k.shape[-1] != d or t > s:
        raise ValueError(f"want q (B,H,T,D), k and v (B,H,S,D) with T <= S; got {tuple(q.shape)}, {tuple(k.shape)}")
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim {d}: the kernel's tl.dot tiles need a power of two in 16..256")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share one dtype of fp32/fp16/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if window is not None and (window < 1 or not causal):
        raise ValueError("a window must be >= 1 and used with causal=True")
    q, k, v = (x.contiguous() for x in (q, k, v))  # the kernel assumes head_dim is the unit-stride axis
    out = torch.empty_like(q)
    lse = torch.empty(b * h, t, device=q.device, dtype=torch.float32)
    cfg = launch_config(d, q.dtype)
    grid = (triton.cdiv(t, cfg["BLOCK_Q"]), b * h)
    _attention_forward[grid](
        q, k, v, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, t, s, 1.0 / math.sqrt(d),
        CAUSAL=causal, WINDOW=window or 0, HEAD_DIM=d, **cfg)
    return (out, lse.view(b, h, t)) if return_lse else out


def _self_check(device: str) -> None:
    """Compare with torch's attention (exact fp32 softmax) on a few shapes and masks."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    for (t, s, d) in [(70, 70, 16), (33, 90, 32)]:
        q = torch.randn(2, 3, t, d, device=device)
        k, v = torch.randn(2, 3, s, d, device=device), torch.randn(2, 3, s, d, device=device)
        for causal, window in [(False, None), (True, None), (True, 9)]:
            qpos, kpos = torch.arange(s - t, s, device=device)[:, None], torch.arange(s, device=device)[None, :]
            ok = (kpos <= qpos) if causal else torch.ones(t, s, dtype=torch.bool, device=device)
            if window:
                ok &= (qpos - kpos) < window
            ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ok)
            out, lse = triton_attention(q, k, v, causal, window, return_lse=True)
            ref_lse = torch.logsumexp((q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(~ok, float("-inf")), -1)
            err, lse_err = (out - ref).abs().max().item(), (lse - ref_lse).abs().max().item()
            print(f"T={t} S={s} d={d} causal={causal} window={window}: max |out - torch| = {err:.1e}, "
                  f"max |lse - torch| = {lse_err:.1e}")
            assert err < 1e-4 and lse_err < 1e-4, "triton kernel disagrees with torch"
    print("triton kernel matches torch")


if __name__ == "__main__":
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interpret:
        raise SystemExit("no CUDA GPU: run with TRITON_INTERPRET=1 to execute the kernel on the CPU interpreter")
    _self_check("cuda" if torch.cuda.is_available() and not interpret else "cpu")
