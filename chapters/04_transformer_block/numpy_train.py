"""04b · Training the NumPy LM the way a real small LM is trained, still in NumPy alone.

    opt = AdamW(params, lr=1e-2)                       # decoupled weight decay, as torch's
    for step in range(steps):
        opt.lr = lr_at(step, steps, peak=1e-2, warmup=50)    # linear warm-up, then cosine
        loss, grads = loss_and_grads(params, cfg, *get_batch(tokens, 16, 64, rng))
        clip_by_global_norm(grads, 1.0)                 # one bad batch cannot throw the weights away
        opt.step(grads)
    text_ids = generate(params, cfg, prompt, 200, rng, top_k=5)
    save(path, params, cfg); params, cfg = load(path)

Why each piece: warm-up keeps Adam's first, badly estimated steps small; the cosine lets the last
steps settle into a minimum instead of bouncing around it; clipping caps the rare huge gradient;
top-k sampling never picks one of the many characters a small model still gives a little
probability to. Weight tying is in numpy_lm (`tie_weights`).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np

from numpy_lm import NumpyLMConfig, forward, softmax
from shared.files import atomic_path


# ----------------------------------------------------------------------------- optimizer
class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), step for step what
    torch.optim.AdamW does: decay the weight, update both moments, bias-correct, step.
    Weight decay applies to matrices only (not gains, biases), as shared.train does."""

    def __init__(self, params: dict, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, trainable=None):
        self.params, self.lr, self.betas, self.eps, self.wd = params, lr, betas, eps, weight_decay
        self.trainable = list(trainable) if trainable is not None else list(params)
        self.m = {k: np.zeros_like(params[k]) for k in self.trainable}   # optimizer memory exists
        self.v = {k: np.zeros_like(params[k]) for k in self.trainable}   # only for what trains
        self.t = 0

    def step(self, grads: dict) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        for k in self.trainable:
            p, g = self.params[k], grads[k]
            if p.ndim >= 2 and self.wd:
                p *= 1 - self.lr * self.wd
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            denom = np.sqrt(self.v[k]) / math.sqrt(bc2) + self.eps
            p -= (self.lr / bc1) * self.m[k] / denom


def lr_at(step: int, steps: int, peak: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine down to peak * min_ratio."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def clip_by_global_norm(grads: dict, max_norm: float) -> float:
    """Scale every gradient by one factor so that their joint L2 norm is at most `max_norm`
    (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping."""
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    if norm > max_norm:
        for g in grads.values():
            g *= max_norm / (norm + 1e-6)
    return norm


# ----------------------------------------------------------------------------- data + sampling
def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator):
    """Random windows x = tokens[i:i+T], y = tokens[i+1:i+T+1] for every valid start
    i = 0 .. n-T-1 (the last one ends on the last token)."""
    if len(tokens) < seq_len + 1:
        raise ValueError(f"{len(tokens)} tokens are fewer than seq_len+1 = {seq_len + 1}")
    ix = rng.integers(0, len(tokens) - seq_len, size=batch_size)  # high is exclusive
    x = np.stack([tokens[i:i + seq_len] for i in ix]).astype(np.int64)
    y = np.stack([tokens[i + 1:i + seq_len + 1] for i in ix]).astype(np.int64)
    return x, y


def top_k_probs(logits: np.ndarray, top_k: int | None, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) over the k largest logits only; every other token gets probability 0."""
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < len(z):
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    return softmax(z)


def generate(params, cfg, prompt: list[int], n_new: int, rng: np.random.Generator, temperature: float = 1.0,
             top_k: int | None = None) -> list[int]:
    ids = list(prompt)
    for _ in range(n_new):
        ctx = np.array([ids[-cfg.block_size:]])
        logits = forward(params, cfg, ctx)[0][0, -1]
        ids.append(int(rng.choice(len(logits), p=top_k_probs(logits, top_k, temperature))))
    return ids


# ----------------------------------------------------------------------------- save / load
def save(path, params: dict, cfg: NumpyLMConfig) -> None:
    """One .npz: every array plus the config as JSON (written atomically: a crash leaves the old file)."""
    with atomic_path(path, keep_suffix=True) as tmp:
        np.savez(tmp, __config__=np.array(json.dumps(asdict(cfg))), **params)


def load(path) -> tuple[dict, NumpyLMConfig]:
    with np.load(path) as f:
        cfg = NumpyLMConfig(**json.loads(str(f["__config__"])))
        return {k: f[k].copy() for k in f.files if k != "__config__"}, cfg
