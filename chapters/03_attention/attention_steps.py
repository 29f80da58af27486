"""Scaled dot-product attention, built up in four steps, each a few lines of plain PyTorch.

    step 1  one query against every key: scores, softmax, a weighted average of the values;
            `hand_example` does it on 4 tokens with d = 4 and small integers, keeping every number
    step 2  every query at once: the same thing as two matrix multiplies, softmax(Q Kᵀ/√d) V
    step 3  the causal mask: query i may not look at keys after i
    step 4  multi-head: cut d_model into heads, attend in each, glue them back, mix

Each step is checked against torch's fused `F.scaled_dot_product_attention` (SDPA), and step 4
also against `nn.MultiheadAttention` holding the same weights (`check_single_head`,
`check_multihead`). The last part shows why the scores are divided by √d (`scaling_experiment`).

What it leaves out: dropout on the weights, the KV cache (chapter 06), the tiled "flash"
algorithm (chapter 07), shared K/V heads (chapter 09) and positions (chapter 02: here every
token is just a vector).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from shared.errors import WorkbookError

TOLERANCE = 1e-5  # every hand-written step must match its reference this closely


# ============================================================================ step 1: one query
def attend_one(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One query q (d,) looks at S keys K (S, d) and reads S values V (S, dv).

    The answer is a weighted average of the values; the weights say how well each key
    matches the query. Dividing by √d keeps the scores' spread independent of d (part 5)."""
    scores = K @ q / math.sqrt(q.shape[-1])   # (S,) one similarity per key
    weights = scores.softmax(dim=-1)          # (S,) positive, sums to 1
    return weights @ V, weights               # (dv,) the values mixed by those weights


# ============================================================================ step 1, by hand
# Four words of a real corpus sentence ("On a happy day, Pooh had a red kite."), each given a
# made-up 4-number query, key and value. Integers, so q·k is an integer and ÷√4 is a halving.
HAND_TOKENS = ["Pooh", "had", "red", "kite"]
HAND_Q = [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 2, 2]]
HAND_K = [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]]
HAND_V = [[2, 0, 0, 1], [0, 2, 0, 0], [0, 0, 2, 1], [0, 1, 0, 2]]


def hand_example() -> dict:
    """Every number of attention on the hand-sized example, as a pencil would produce them:
    the last token's query against all four keys (step 1), then all queries at once with the
    causal mask (steps 2-3). Plain Python floats, ready to print or save."""
    Q, K, V = (torch.tensor(m, dtype=torch.float64) for m in (HAND_Q, HAND_K, HAND_V))
    d = Q.shape[-1]
    q = Q[-1]                                            # "kite" asks ...
    dots = K @ q                                         # ... how well each key matches: q·k
    scaled = dots / math.sqrt(d)                         # ÷ √4 = ÷ 2
    exps = scaled.exp()                                  # softmax, written out: exp, then ...
    weights = exps / exps.sum()                          # ... divide by the sum
    contributions = weights[:, None] * V                 # each value scaled by its weight
    output = contributions.sum(0)                        # the weighted sum: kite's new vector
    scores = Q @ K.T / math.sqrt(d)                      # steps 2-3: every query's row at once
    mask = causal_mask(len(HAND_TOKENS))
    masked = scores.masked_fill(~mask, float("-inf"))
    all_weights = masked.softmax(-1)
    return {
        "tokens": HAND_TOKENS, "d": d, "Q": HAND_Q, "K": HAND_K, "V": HAND_V, "query": HAND_TOKENS[-1],
        "dots": dots.tolist(), "scaled": scaled.tolist(), "exps": exps.tolist(), "exp_sum": exps.sum().item(),
        "weights": weights.tolist(), "contributions": contributions.tolist(), "output": output.tolist(),
        "scores_matrix": scores.tolist(), "mask": mask.int().tolist(),
        "weights_matrix": all_weights.tolist(), "outputs_matrix": (all_weights @ V).tolist(),
    }


# ============================================================================ step 2: all queries
def attend(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, mask: torch.Tensor | None = None,
           scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query at once: softmax(Q Kᵀ · scale) V, scale = 1/√d unless given.

    Q (..., T, d), K (..., S, d), V (..., S, dv); `mask` (T, S) is True where a query may look.
    Row i of Q Kᵀ is exactly step 1's scores for query i, so this is step 1 stacked T times,
    done as two matrix multiplies (which is what makes it fast)."""
    scale = 1 / math.sqrt(Q.shape[-1]) if scale is None else scale
    scores = Q @ K.transpose(-2, -1) * scale                 # (..., T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))    # exp(-inf) = 0: exactly no weight
    weights = scores.softmax(dim=-1)
    return weights @ V, weights


# ============================================================================ step 3: the mask
def causal_mask(t: int, s: int | None = None, device=None) -> torch.Tensor:
    """(T, S) bool, True on and below the diagonal: token i may look at tokens 0..i only.
    (With S > T the queries are the last T positions, as when a cache holds earlier keys.)"""
    s = t if s is None else s
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


# ============================================================================ step 4: heads
@dataclass(frozen=True)
class AttentionConfig:
    d_model: int = 64
    n_head: int = 4
    causal: bool = True

    def __post_init__(self):
        if self.n_head < 1 or self.d_model % self.n_head:
            raise WorkbookError(f"d_model={self.d_model} must split evenly into n_head={self.n_head} heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class MultiHeadAttention(nn.Module):
    """H heads, each attending in its own d_model/H-dimensional slice, side by side.

    The reshape is the whole trick: project once to d_model, cut the last axis into
    (heads, head_dim), move heads next to the batch axis, run step 3, glue the heads back."""

    def __init__(self, cfg: AttentionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(d, d, bias=False)  # mixes what the heads found

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cfg.n_head
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=h)   # split: head h owns slice h
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=h)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=h)
        mask = causal_mask(x.shape[1], device=x.device) if self.cfg.causal else None
        y, weights = attend(q, k, v, mask)              # heads ride along as a batch axis
        y = rearrange(y, "b h t d -> b t (h d)")        # merge: concatenate the heads
        return self.o_proj(y), weights


# ============================================================================ the references
def sdpa_multihead(m: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """The same layer with torch's fused kernel doing the attention."""
    def split(z):
        return rearrange(z, "b t (h d) -> b h t d", h=m.cfg.n_head)

    y = F.scaled_dot_product_attention(split(m.q_proj(x)), split(m.k_proj(x)), split(m.v_proj(x)),
                                       is_causal=m.cfg.causal)
    return m.o_proj(rearrange(y, "b h t d -> b t (h d)"))


def torch_multihead(m: MultiHeadAttention) -> nn.MultiheadAttention:
    """torch.nn.MultiheadAttention holding our weights: a second, independent reference
    that also returns per-head weights."""
    ref = nn.MultiheadAttention(m.cfg.d_model, m.cfg.n_head, bias=False, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([m.q_proj.weight, m.k_proj.weight, m.v_proj.weight]))
        ref.out_proj.weight.copy_(m.o_proj.weight)
    return ref.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _row(step: str, what: str, reference: str, diff: float) -> dict:
    return {"step": step, "what": what, "reference": reference, "max_abs_diff": diff, "ok": diff <= TOLERANCE}


@torch.no_grad()
def check_single_head(T: int, d: int, gen: torch.Generator) -> list[dict]:
    """Steps 1-3 on random tensors, each against SDPA: one row per comparison, `ok` = within TOLERANCE."""
    Q, K, V = (torch.randn(T, d, generator=gen) for _ in range(3))
    sdpa = F.scaled_dot_product_attention
    shape = f"Q K V ({T}, {d})"
    y2, w2 = attend(Q, K, V)
    stacked = torch.stack([attend_one(Q[i], K, V)[0] for i in range(T)])
    mask = causal_mask(T)
    y3, w3 = attend(Q, K, V, mask)
    return [
        _row("1 one query", f"q ({d},) vs K, V ({T}, {d})", "SDPA", max_diff(attend_one(Q[-1], K, V)[0],
                                                                              sdpa(Q[-1:], K, V)[0])),
        _row("2 matrix form", shape, "step 1 stacked", max_diff(y2, stacked)),
        _row("2 matrix form", shape, "SDPA", max_diff(y2, sdpa(Q, K, V))),
        _row("3 causal mask", shape, "SDPA is_causal", max_diff(y3, sdpa(Q, K, V, is_causal=True))),
        _row("3 causal mask", "bool mask", "SDPA attn_mask", max_diff(y3, sdpa(Q, K, V, attn_mask=mask))),
        _row("3 causal mask", "each row of the weights", "sums to 1", max((w2.sum(-1) - 1).abs().max().item(),
                                                                           (w3.sum(-1) - 1).abs().max().item())),
        _row("3 causal mask", "weights above the diagonal", "exactly 0", w3[~mask].abs().max().item()),
    ]


@torch.no_grad()
def check_multihead(T: int, d: int, head_counts, gen: torch.Generator) -> list[dict]:
    """Step 4 for each head count, against SDPA and against nn.MultiheadAttention (outputs and weights)."""
    x = torch.randn(2, T, d, generator=gen)
    rows = []
    for h in head_counts:
        mha = MultiHeadAttention(AttentionConfig(d_model=d, n_head=h)).eval()
        y, w = mha(x)
        ref_y, ref_w = torch_multihead(mha)(x, x, x, attn_mask=~causal_mask(T), need_weights=True,
                                            average_attn_weights=False)
        shape = f"x (2, {T}, {d}), {h} head{'s' * (h > 1)} of {d // h}"
        rows += [_row("4 multi-head", shape, "SDPA", max_diff(y, sdpa_multihead(mha, x))),
                 _row("4 multi-head", shape, "nn.MultiheadAttention", max_diff(y, ref_y)),
                 _row("4 multi-head", shape + " (weights)", "nn.MultiheadAttention", max_diff(w, ref_w))]
    return rows


@torch.no_grad()
def causal_leak(T: int, d: int, gen: torch.Generator) -> dict:
    """Change only the LAST token and see how far the outputs at earlier positions move.
    With the mask they cannot move at all (so training on 'predict the next token' is honest);
    without it every position reads the future."""
    x = torch.randn(1, T, d, generator=gen)
    x2 = x.clone()
    x2[0, -1] = torch.randn(d, generator=gen)
    out = {}
    for causal in (True, False):
        torch.manual_seed(0)  # same weights for both layers
        m = MultiHeadAttention(AttentionConfig(d_model=d, n_head=4, causal=causal)).eval()
        out["masked" if causal else "unmasked"] = max_diff(m(x)[0][:, :-1], m(x2)[0][:, :-1])
    return out


# ============================================================================ why √d
def entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of p (bits); 0·log 0 counts as 0."""
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(dim=-1)


def softmax_jacobian_norm(p: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of ∂softmax/∂scores = diag(p) - p pᵀ, in closed form:
    ‖J‖² = Σ p_i² - 2 Σ p_i³ + (Σ p_i²)²."""
    s2, s3 = (p**2).sum(-1), (p**3).sum(-1)
    return (s2 - 2 * s3 + s2**2).clamp_min(0).sqrt()


@torch.no_grad()
def scaling_experiment(dims, keys: int, samples: int, gen: torch.Generator) -> dict:
    """Queries and keys with unit-variance entries: q·k then has variance d, so unscaled scores
    spread out as √d and the softmax saturates to one-hot; dividing by √d keeps the spread at 1.
    The softmax Jacobian J = diag(p) - p pᵀ is what backprop multiplies the incoming gradient
    by; its size goes to 0 as p becomes one-hot, so saturated heads stop learning."""
    names = ("score_std", "entropy", "max_weight", "jacobian")
    out = {f"{k}_{s}": [] for k in names for s in ("scaled", "unscaled")}
    for d in dims:
        q = torch.randn(samples, 1, d, generator=gen)
        k = torch.randn(samples, keys, d, generator=gen)
        raw = (q @ k.transpose(-2, -1))[:, 0]                      # (samples, keys)
        for name, scores in (("scaled", raw / math.sqrt(d)), ("unscaled", raw)):
            p = scores.softmax(dim=-1)
            out[f"score_std_{name}"].append(scores.std().item())
            out[f"entropy_{name}"].append(entropy_bits(p).mean().item())
            out[f"max_weight_{name}"].append(p.max(dim=-1).values.mean().item())
            out[f"jacobian_{name}"].append(softmax_jacobian_norm(p).mean().item())
    return {"dims": list(dims), "keys": keys, "samples": samples, "uniform_entropy": math.log2(keys), **out}
