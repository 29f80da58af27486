"""Tricks that big training runs lean on, written small enough to read.

- gradient accumulation: k micro-batches of b rows give the gradient of one batch of k·b rows
  (when each micro-batch loss is divided by k);
- gradient (activation) checkpointing: keep only each block's input during the forward pass and
  recompute the inside during backward: less memory, one extra forward of time;
- GaLore (Zhao et al. 2024): keep Adam's moments for a rank-r projection of each weight matrix's
  gradient instead of the full matrix, so optimizer state shrinks from 2·m·n to 2·r·n (+ m·r);
- MinHash (Broder 1997): a fixed-size signature per document whose agreement rate estimates the
  Jaccard similarity of the documents' shingle sets, the standard near-duplicate filter.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from shared.model import GPT


# ------------------------------------------------------------------------------ accumulation
def accumulated_grads(model: GPT, x: torch.Tensor, y: torch.Tensor, micro_batches: int) -> list[torch.Tensor]:
    """Gradients from `micro_batches` equal slices of (x, y), each loss scaled by 1/k."""
    model.zero_grad(set_to_none=True)
    xs = rearrange(x, "(k b) t -> k b t", k=micro_batches)
    ys = rearrange(y, "(k b) t -> k b t", k=micro_batches)
    for xi, yi in zip(xs, ys):
        (model(xi, yi)[1] / micro_batches).backward()  # the mean over k·b rows = mean of k means
    return [p.grad.clone() for p in model.parameters()]


# ------------------------------------------------------------------------------ checkpointing
def forward_loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
    """The shared GPT's forward (rope, pre-norm), optionally checkpointing every block: its
    activations are dropped after the forward and recomputed during backward."""
    from shared.model import rope_cos_sin

    if model.cfg.pos != "rope":
        raise ValueError("forward_loss re-implements the rope path only")
    t = idx.shape[1]
    x = model.tok_emb(idx)
    kw = {"rope": rope_cos_sin(torch.arange(t, device=idx.device), model.cfg.head_dim, model.cfg.rope_theta),
          "cache": None, "pos0": 0}
    for block in model.blocks:
        if checkpointed:
            x = checkpoint(lambda h, b=block: b(h, **kw), x, use_reentrant=False)
        else:
            x = block(x, **kw)
    logits = model.lm_head(model.norm_f(x))
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


# ------------------------------------------------------------------------------ GaLore
class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW whose moments live in a low-rank subspace of each 2-D gradient.

    For a weight W (m x n) with gradient G: every `update_every` steps take P = the top-`rank`
    left singular vectors of G (m x r). Adam runs on R = P^T G (r x n); its normalised update
    N is projected back, W -= lr * scale * P N. Vectors (norm gains) and matrices whose smaller
    side is <= rank get ordinary AdamW. Decoupled weight decay as in AdamW."""

    def __init__(self, params, lr=1e-3, rank=8, update_every=50, scale=1.0, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0):
        super().__init__(params, dict(lr=lr, rank=rank, update_every=update_every, scale=scale, betas=betas,
                                      eps=eps, weight_decay=weight_decay))

    @staticmethod
    def projects(p: torch.Tensor, rank: int) -> bool:
        return p.dim() == 2 and min(p.shape) > rank

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, st = p.grad, self.state[p]
                low_rank = self.projects(p, group["rank"])
                if not st:
                    st["step"] = 0
                if low_rank and st["step"] % group["update_every"] == 0:
                    # a new subspace: the gradient's dominant directions right now
                    U, _, _ = torch.linalg.svd(g, full_matrices=False)
                    st["P"] = U[:, :group["rank"]].contiguous()
                r = st["P"].T @ g if low_rank else g
                if "m" not in st:
                    st["m"], st["v"] = torch.zeros_like(r), torch.zeros_like(r)
                st["step"] += 1
                st["m"].mul_(b1).add_(r, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(r, r, value=1 - b2)
                m_hat = st["m"] / (1 - b1 ** st["step"])
                v_hat = st["v"] / (1 - b2 ** st["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if low_rank:
                    update = group["scale"] * (st["P"] @ update)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if torch.is_tensor(t) and t.dim() > 0)


# ------------------------------------------------------------------------------ MinHash
_MERSENNE = (1 << 61) - 1


def shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of the lower-cased text (the unit near-duplicates share)."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _base_hash(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") % _MERSENNE


class MinHash:
    """`num_perm` random hash functions h_i(x) = (a_i x + b_i) mod p; a document's signature is
    the minimum of each over its shingles. P(min_i(A) == min_i(B)) = Jaccard(A, B), so the
    fraction of agreeing entries estimates it (standard error ~ sqrt(J(1-J)/num_perm))."""

    def __init__(self, num_perm: int = 128, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _MERSENNE, num_perm, dtype=np.uint64).astype(object)
        self.b = rng.integers(0, _MERSENNE, num_perm, dtype=np.uint64).astype(object)
        self.num_perm = num_perm

    def signature(self, shingle_set: set[str]) -> np.ndarray:
        if not shingle_set:
            return np.full(self.num_perm, _MERSENNE, dtype=np.int64)
        x = np.array([_base_hash(s) for s in shingle_set], dtype=object)
        h = (self.a[:, None] * x[None, :] + self.b[:, None]) % _MERSENNE  # python ints: no overflow
        return h.min(axis=1).astype(np.int64)

    @staticmethod
    def similarity(s1: np.ndarray, s2: np.ndarray) -> float:
        return float(np.mean(s1 == s2))


def dedup(docs: list[str], threshold: float = 0.7, num_perm: int = 64, bands: int = 16, n: int = 5,
          seed: int = 0) -> tuple[list[int], dict]:
    """Indices of documents to keep: exact duplicates (same normalised text) go first, then
    near-duplicates: LSH puts signatures into `bands` buckets of num_perm/bands rows, candidate
    pairs share a bucket, and a pair whose MinHash similarity >= threshold drops the later doc."""
    seen, keep, exact = set(), [], 0
    for i, d in enumerate(docs):
        key = hashlib.sha1(" ".join(d.lower().split()).encode()).hexdigest()
        if key in seen:
            exact += 1
            continue
        seen.add(key)
        keep.append(i)
    mh = MinHash(num_perm, seed)
    sigs = {i: mh.signature(shingles(docs[i], n)) for i in keep}
    rows = num_perm // bands
    buckets: dict = {}
    dropped = set()
    for i in keep:
        sig = sigs[i]
        candidates = set()
        for band in range(bands):
            key = (band, sig[band * rows:(band + 1) * rows].tobytes())
            candidates.update(buckets.get(key, []))
            buckets.setdefault(key, []).append(i)
        if any(MinHash.similarity(sig, sigs[j]) >= threshold for j in candidates if j not in dropped):
            dropped.add(i)
    kept = [i for i in keep if i not in dropped]
    return kept, {"exact_duplicates": exact, "near_duplicates": len(dropped), "kept": len(kept)}


def lsh_probability(similarity: float, bands: int, rows: int) -> float:
    """P(a pair with this Jaccard shares at least one band) = 1 - (1 - s^r)^b: the S-curve."""
    return 1 - (1 - similarity**rows) ** bands


def galore_state_formula(shape: tuple[int, int], rank: int) -> int:
    """Floats GaLore keeps for one m x n matrix: P (m x r) and two r x n moments."""
    m, n = shape
    return m * rank + 2 * rank * n


__all__ = ["accumulated_grads", "forward_loss", "GaLoreAdamW", "optimizer_state_bytes", "MinHash", "shingles",
           "jaccard", "dedup", "lsh_probability", "galore_state_formula"]
