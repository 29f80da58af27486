"""Entropy patching, as in the Byte Latent Transformer (Pagnoni et al., 2024).

Instead of a fixed vocabulary, BLT groups bytes into variable-length *patches*: a small
byte-level language model reads the text, and a new patch starts wherever the model is
unsure what comes next (the entropy of its next-byte distribution is high). Predictable
stretches (the rest of a word once its start is known) stay inside one patch; surprising
places (the start of a word, a number, random noise) get cut finely.

    H_t = -sum_v p(x_t = v | x_<t) log2 p(x_t = v | x_<t)     bits, for every byte t
    global rule:    a patch starts at t when H_t > theta
    monotonic rule: a patch starts at t when H_t - H_{t-1} > theta_r   (entropy jumps up)

Any model that gives H_t works. `NgramEntropy` is a transparent stand-in (counts of what
followed each context of k bytes) used by the tests; the chapter's main run uses a small
transformer trained on bytes (`byte_entropies`).
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import torch


def patch_starts(entropy: np.ndarray, threshold: float, rule: str = "global") -> np.ndarray:
    """Boolean mask: True where a new patch starts. Byte 0 always starts one."""
    entropy = np.asarray(entropy, dtype=np.float64)
    if rule == "global":
        starts = entropy > threshold
    elif rule == "monotonic":
        starts = np.zeros(len(entropy), dtype=bool)
        starts[1:] = np.diff(entropy) > threshold
    else:
        raise ValueError(f"unknown patching rule {rule!r} (global or monotonic)")
    if len(starts):
        starts[0] = True
    return starts


def patch_lengths(starts: np.ndarray) -> np.ndarray:
    """Lengths in bytes of the patches that a start mask defines."""
    idx = np.flatnonzero(starts)
    return np.diff(np.append(idx, len(starts)))


def threshold_for_mean(entropy: np.ndarray, mean_len: float, rule: str = "global") -> float:
    """The threshold whose patches average `mean_len` bytes: with N bytes we want N/mean_len
    starts, i.e. cut at the matching quantile of the (rule's) score."""
    score = np.asarray(entropy) if rule == "global" else np.diff(entropy, prepend=np.inf)
    frac = min(1.0, 1.0 / mean_len)
    return float(np.quantile(score[1:], 1 - frac)) if len(score) > 1 else 0.0


class NgramEntropy:
    """Next-byte entropy from counts: what followed each context of `order` bytes in the
    training bytes, add-`alpha` smoothed over all 256 values. An unseen context is
    uniform, 8 bits: exactly what makes random bytes look surprising."""

    def __init__(self, train: bytes, order: int = 3, alpha: float = 0.01):
        self.order, self.alpha = order, alpha
        self.table: dict[bytes, Counter] = defaultdict(Counter)
        for i in range(order, len(train)):
            self.table[train[i - order:i]][train[i]] += 1

    def entropy_of(self, context: bytes) -> float:
        counts = self.table.get(context)
        if not counts:
            return 8.0
        total = sum(counts.values()) + 256 * self.alpha
        seen = [(c + self.alpha) / total for c in counts.values()]
        unseen = (256 - len(counts)) * self.alpha / total  # mass spread over the other values
        h = -sum(p * math.log2(p) for p in seen)
        if unseen > 0:
            p = unseen / (256 - len(counts))
            h -= unseen * math.log2(p)
        return h

    def __call__(self, data: bytes) -> np.ndarray:
        return np.array([self.entropy_of(data[max(0, t - self.order):t]) if t >= self.order else 8.0
                         for t in range(len(data))])


@torch.no_grad()
def byte_entropies(model, data: bytes, block: int, device="cpu", batch_size: int = 64) -> np.ndarray:
    """H_t in bits for every byte of `data` under a causal byte model `model(idx) -> logits`.

    Windows of `block` bytes step by block/2; each window scores only its second half
    (except the very first window), so every byte is predicted with >= block/2 bytes of
    context, the way it would be when streaming through the text."""
    model.eval()
    x = torch.tensor(list(data), dtype=torch.long)
    n, half = len(x), block // 2
    out = np.full(n, 8.0)  # byte 0 has no context: call it maximally surprising
    if n < 2:
        return out
    starts = list(range(0, max(1, n - block) + 1, half))
    if starts[-1] + block < n:
        starts.append(n - block)
    starts = [max(0, s) for s in starts]
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        windows = torch.stack([x[s:s + block] if s + block <= n else
                               torch.nn.functional.pad(x[s:], (0, block - (n - s))) for s in chunk]).to(device)
        logp = torch.log_softmax(model(windows).float(), dim=-1)
        h = -(logp.exp() * logp).sum(-1) / math.log(2)   # (B, T): entropy of predicting byte t+1
        h = h.cpu().numpy()
        for row, s in zip(h, chunk):
            lo = 0 if s == 0 else half
            for j in range(lo, min(block, n - s - 1)):
                out[s + j + 1] = row[j]                      # position j predicts byte s+j+1
    return out
