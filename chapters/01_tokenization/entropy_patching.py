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
import random
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


# ----------------------------------------------------------------------------- comparisons
def length_stats(lens: list[int]) -> dict:
    arr = np.asarray(lens)
    counts = np.bincount(np.minimum(arr, 24), minlength=25)  # 24 means "24 or more"
    return {"count": int(len(arr)), "bytes_per_unit": float(arr.mean()), "max": int(arr.max()),
            "hist": counts.tolist()}


def patch_comparison(eval_bytes: bytes, entropy: np.ndarray, bpe, superwords) -> dict:
    """BPE tokens, superwords and entropy patches on the same held-out bytes. The entropy
    thresholds are chosen so patches average as many bytes as BPE tokens do: same
    compression, different places to cut."""
    text = eval_bytes.decode("utf-8", errors="replace")
    n = len(eval_bytes)
    bpe_lens = [len(bpe.token_bytes(i)) for i in bpe.encode(text)]
    sw_lens = [len(superwords.token_bytes(i)) for i in superwords.encode(text)]
    out = {"bytes": n, "bpe": length_stats(bpe_lens), "superwords": length_stats(sw_lens), "thresholds": {}}
    for rule in ("global", "monotonic"):
        theta = threshold_for_mean(entropy, n / len(bpe_lens), rule)
        out[f"entropy_{rule}"] = length_stats(patch_lengths(patch_starts(entropy, theta, rule)).tolist())
        out["thresholds"][rule] = theta
    # how compression moves with the global threshold: higher theta, fewer and longer patches
    thetas = np.linspace(float(np.quantile(entropy, 0.05)), float(np.quantile(entropy, 0.98)), 24)
    out["threshold_sweep"] = {"theta": thetas.tolist(),
                              "bytes_per_patch": [n / int(patch_starts(entropy, t).sum()) for t in thetas]}
    out["mean_entropy_bits"] = float(entropy[1:].mean())
    return out


def entropy_trace(model, block: int, device, seed: int) -> dict:
    """Entropy along one sentence with a planted random string: the model is sure inside
    words, unsure at their starts, and lost in the noise, where every byte becomes a patch."""
    rng = random.Random(seed)
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(14))
    text = f"Return the number of items in the container. The key is {noise} and the value is ignored."
    h = byte_entropies(model, text.encode("utf-8"), block, device)
    lo, hi = text.index(noise), text.index(noise) + len(noise)
    return {"text": text, "noise_span": [lo, hi], "entropy": h.tolist(),
            "mean_bits_noise": float(h[lo + 1:hi].mean()), "mean_bits_text": float(np.r_[h[1:lo], h[hi + 1:]].mean())}
