"""The four positional schemes, written out by hand.

Attention compares every query with every key by a dot product, and a dot product does
not care where the two tokens sit. Each scheme below is one way of putting "where" back:

    sinusoidal   add a fixed pattern of sines and cosines to each token's embedding
    learned      add a trained vector per position (a lookup table with block_size rows)
    RoPE         rotate queries and keys by an angle proportional to their position
    ALiBi        subtract slope * distance from the attention scores

`position_checks.py` checks every function here against `shared.model` (the versions the rest
of the workbook trains with); `length_extrapolation.py` trains with them and measures what
happens past the training length. Everything is plain PyTorch and meant to be read.
"""
from __future__ import annotations

import math

import torch
from einops import einsum, rearrange

from shared.errors import WorkbookError


# ----------------------------------------------------------------------------- sinusoidal
def sinusoidal(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(p / base^(2i/dim)).

    Pair i turns at angular speed w_i = base^(-2i/dim): the first pair once every 2*pi
    tokens, the last almost not at all, like the hands of a clock with dim/2 hands.
    Angles are float32, as in the model: at position p an angle carries a rounding error of
    about p * 6e-8, so two implementations only agree to 1e-6 if they round the same way."""
    if dim % 2:
        raise WorkbookError(f"the sinusoidal table pairs up dimensions, so dim must be even (got {dim})")
    p = torch.arange(n_positions, dtype=torch.float32)[:, None]         # (P, 1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float32)[None, :]        # (1, dim/2)
    angle = p * (1.0 / base ** (two_i / dim))                            # (P, dim/2)
    table = torch.stack([angle.sin(), angle.cos()], dim=-1)              # (P, dim/2, 2)
    return rearrange(table, "p i two -> p (i two)")                      # sin, cos, sin, cos, ...


# ----------------------------------------------------------------------------- learned
def learned_lookup(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A learned position embedding is nothing but row `p` of a trained (block_size, d) matrix.
    There is no row for a position it was never given, so we refuse instead of guessing."""
    if int(positions.max()) >= table.shape[0]:
        raise WorkbookError(f"position {int(positions.max())} has no row in the learned table "
                            f"(it has {table.shape[0]} rows, one per trained position)")
    return table[positions]


# ----------------------------------------------------------------------------- RoPE
def rope_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """w_i = theta^(-2i/head_dim) for i = 0 .. head_dim/2 - 1: one angular speed per pair
    (float32, like the model, so both round the angles p * w_i identically)."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def rope_matrix(position: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The (head_dim, head_dim) rotation RoPE applies at `position`, in the rotate-half layout
    (Llama / GPT-NeoX / Hugging Face): dimension i is paired with dimension i + head_dim/2,
    and each pair is turned by the angle position * w_i:

        [x_i      ]    [cos a  -sin a] [x_i      ]
        [x_(i+d/2)] <- [sin a   cos a] [x_(i+d/2)]
    """
    half = head_dim // 2
    R = torch.zeros(head_dim, head_dim, dtype=torch.float64)
    angles = position * rope_frequencies(head_dim, theta)               # float32, like the model
    for i, a in enumerate(angles.tolist()):
        j = i + half
        R[i, i], R[i, j] = math.cos(a), -math.sin(a)
        R[j, i], R[j, j] = math.sin(a), math.cos(a)
    return R


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate x (..., T, head_dim) so that row t is turned by rope_matrix(positions[t]).
    Written with explicit matrices to keep the math visible; shared.model.apply_rope does the
    same with elementwise cos/sin (no d x d matrix), which is how real models do it."""
    if x.shape[-1] % 2:
        raise WorkbookError(f"RoPE rotates pairs of dimensions, so head_dim must be even (got {x.shape[-1]})")
    R = torch.stack([rope_matrix(int(p), x.shape[-1], theta) for p in positions])  # (T, d, d)
    return einsum(R.to(x.dtype), x, "t i j, ... t j -> ... t i")


def rope_interleaved(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """The same rotation in the original RoFormer / Meta Llama layout: neighbours (2i, 2i+1)
    form a pair, read as one complex number z_i and multiplied by e^(i * p * w_i).
    A rotation in the plane IS multiplication by a unit complex number."""
    z = torch.view_as_complex(rearrange(x.double(), "... (i two) -> ... i two", two=2).contiguous())
    angle = (positions.float()[:, None] * rope_frequencies(x.shape[-1], theta)[None, :]).double()  # (T, d/2)
    rotated = torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle))
    return rearrange(rotated, "... i two -> ... (i two)").to(x.dtype)


def rope_plane_view(q: torch.Tensor, k: torch.Tensor, pair: int, distance: int, key_positions: list[int],
                    theta: float = 10000.0) -> list[dict]:
    """RoPE seen in ONE rotation plane: the key at position n and the query at n + distance, both
    rotated by `rope`, projected onto dimension pair `pair` (dims pair and pair + head_dim/2).

    Both arrows turn by the same angle per step of n, so the angle between them -- and their dot
    product, in this plane and over the whole head -- stays the same: it depends on `distance` only."""
    half = q.shape[-1] // 2
    out = []
    for n in key_positions:
        qr = rope(q[None], torch.tensor([n + distance]), theta)[0]
        kr = rope(k[None], torch.tensor([n]), theta)[0]
        q2, k2 = qr[[pair, pair + half]], kr[[pair, pair + half]]
        cos = (q2 @ k2) / (q2.norm() * k2.norm())
        out.append({"key_position": n, "query_position": n + distance, "q": q2.tolist(), "k": k2.tolist(),
                    "angle_deg": math.degrees(math.acos(float(cos.clamp(-1, 1)))),
                    "dot_in_plane": float(q2 @ k2), "dot_whole_head": float(qr @ kr)})
    return out


def interleaved_to_half(x: torch.Tensor) -> torch.Tensor:
    """Reorder the last dim from (x0, x1, x2, x3, ...) pairs-as-neighbours to
    (x0, x2, ..., x1, x3, ...) pairs-as-halves: the two layouts differ only by this permutation."""
    return rearrange(x, "... (i two) -> ... (two i)", two=2)


# ----------------------------------------------------------------------------- ALiBi
def alibi_slopes(n_head: int) -> torch.Tensor:
    """Press et al. 2022: head k (k = 1..n) pays m_k = 2^(-8k/n) per token of distance, so
    with 8 heads the slopes are 1/2, 1/4, ..., 1/256. When n is not a power of two, take the
    slopes of the power of two just below n, then fill up with every other slope of the
    power of two above it (so the slopes still spread evenly between steep and flat)."""
    def geometric(n: int) -> list[float]:
        return [2 ** (-8 * k / n) for k in range(1, n + 1)]

    below = 2 ** int(math.floor(math.log2(n_head)))
    slopes = geometric(below)
    if below < n_head:
        slopes += geometric(2 * below)[0::2][: n_head - below]
    return torch.tensor(slopes)


def alibi_bias(n_head: int, n_positions: int) -> torch.Tensor:
    """(heads, query, key) additive bias: -m_h * (query position - key position) for keys at or
    before the query; keys after it are hidden by the causal mask anyway (we put 0 there)."""
    pos = torch.arange(n_positions)
    distance = (pos[:, None] - pos[None, :]).clamp(min=0)               # (T, T), 0 above the diagonal
    return -alibi_slopes(n_head)[:, None, None] * distance[None].float()


# ----------------------------------------------------------------------------- attention, by hand
def causal_attention_weights(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) with future keys masked: (B, h, T, d) x2 -> (B, h, T, T)."""
    T = q.shape[-2]
    scores = einsum(q, k, "b h t d, b h s d -> b h t s") / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)
