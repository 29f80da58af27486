"""Five ways to turn a vector of logits into the next token, written out.

A language model hands us one score (logit) per vocabulary entry. `softmax(logits)` is the
model's belief about the next token; a *decoding rule* decides what to do with it:

    greedy        take the argmax                              (deterministic)
    temperature   softmax(logits / T): T < 1 sharpens, T > 1 flattens
    top-k         keep the k most likely tokens                (Fan et al. 2018)
    top-p         keep the smallest set whose mass reaches p   (Holtzman et al. 2020, "nucleus")
    min-p         keep tokens with prob >= min_p * max prob    (Nguyen et al. 2024)

The truncation rules never rescale anything themselves: they set the logits of the tokens
they drop to -inf, and the final softmax renormalises what is left. They are applied in the
order Hugging Face `generate` uses: temperature, then top-k, then top-p, then min-p, so
each later rule sees the distribution the earlier ones produced.

Every function takes logits of shape (..., vocab) and works row by row. `generate` at the end
is the decoding loop that uses them: one forward pass per new token, with a KV cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shared.errors import WorkbookError
from shared.model import KVCache

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplerConfig:
    """One decoding rule. The defaults switch every truncation off (plain sampling at T=1)."""

    temperature: float = 1.0   # 0 means greedy
    top_k: int = 0             # 0: off
    top_p: float = 1.0         # 1.0: off
    min_p: float = 0.0         # 0.0: off

    def __post_init__(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise WorkbookError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise WorkbookError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise WorkbookError(f"top_p must be in [0, 1] (1 = off), got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise WorkbookError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    def label(self) -> str:
        if self.is_greedy:
            return "greedy"
        parts = [f"T={self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k={self.top_k}")
        if self.top_p < 1:
            parts.append(f"top-p={self.top_p:g}")
        if self.min_p > 0:
            parts.append(f"min-p={self.min_p:g}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p}


# ----------------------------------------------------------------------------- the rules
def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row (ties: the lowest id, as torch.argmax does)."""
    return logits.argmax(dim=-1)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by T. softmax(z/T) has the same ranking as softmax(z); T->0 approaches greedy,
    T->inf approaches uniform. (T=0 itself is not a division: callers treat it as greedy.)"""
    if temperature <= 0:
        raise WorkbookError(f"temperature must be > 0 to divide by it (use greedy for 0), got {temperature}")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row. Tokens tied with the k-th are kept too (so the
    kept set can exceed k on exact ties, exactly like Hugging Face's TopKLogitsWarper)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability adds up to >= p.

    Sort descending and look at the mass *before* each token: a token is needed while the
    tokens ahead of it hold less than p. The first token is always kept, so p=0 is greedy."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # ties: lower id first, as the page
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens at least `min_p` times as likely as the most likely one. The bar moves
    with the model's confidence: a peaked distribution keeps few tokens, a flat one many."""
    if min_p <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, NEG_INF)  # the max itself always passes


# ----------------------------------------------------------------------------- putting them together
def warp(logits: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """Logits of the distribution we actually sample from (dropped tokens at -inf)."""
    logits = logits.float()
    if cfg.is_greedy:  # all mass on the argmax
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, greedy(logits)[..., None], True)
        return logits.masked_fill(~keep, NEG_INF)
    logits = apply_temperature(logits, cfg.temperature)
    logits = top_k_filter(logits, cfg.top_k)
    logits = top_p_filter(logits, cfg.top_p)
    return min_p_filter(logits, cfg.min_p)


def sampling_probs(logits: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """The final next-token distribution (each row sums to 1)."""
    return warp(logits, cfg).softmax(dim=-1)


def sample(logits: torch.Tensor, cfg: SamplerConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row, shape (B, 1) for (B, vocab) logits."""
    if cfg.is_greedy:
        return greedy(logits)[..., None]
    return torch.multinomial(sampling_probs(logits, cfg), 1, generator=generator)


def entropy_bits(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum p log2 p per row, with 0 log 0 = 0 (dropped tokens contribute nothing)."""
    logp = torch.log2(probs.clamp_min(1e-30))
    return -(probs * logp).sum(dim=-1)


# ----------------------------------------------------------------------------- the decoding loop
@torch.no_grad()
def generate(model, prompts: torch.Tensor, n_new: int, rule: SamplerConfig, generator: torch.Generator) -> dict:
    """Continue each row of `prompts` (B, T0) by `n_new` tokens, drawing every token with `rule`.

    The prompt is run once to fill a KV cache; after that every step feeds only the newest
    token. Besides the tokens we keep two entropies per step: of the distribution the token
    was actually drawn from (after temperature and truncation), and of the model's own
    distribution (softmax of the raw logits) at the same point."""
    model.eval()
    b, t0 = prompts.shape
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.cfg, b, t0 + n_new, device=prompts.device, dtype=dtype)
    logits = model(prompts, cache=cache)[:, -1].float()
    tokens, drawn_h, model_h = [], [], []
    for step in range(n_new):
        probs = sampling_probs(logits, rule)
        drawn_h.append(entropy_bits(probs))
        model_h.append(entropy_bits(logits.softmax(dim=-1)))
        nxt = greedy(logits)[:, None] if rule.is_greedy else torch.multinomial(probs, 1, generator=generator)
        tokens.append(nxt)
        if step < n_new - 1:
            logits = model(nxt, cache=cache)[:, -1].float()
    return {"tokens": torch.cat(tokens, dim=1), "entropy_bits": torch.stack(drawn_h, dim=1),
            "model_entropy_bits": torch.stack(model_h, dim=1)}


# ----------------------------------------------------------------------------- the reference
def hf_warpers(rule: SamplerConfig):
    """The same rule as a Hugging Face LogitsProcessorList, in the order `generate` builds it
    (the reference our functions are checked against; greedy has no warper)."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = LogitsProcessorList([TemperatureLogitsWarper(float(rule.temperature))])
    if rule.top_k:
        chain.append(TopKLogitsWarper(rule.top_k))
    if rule.top_p < 1:
        chain.append(TopPLogitsWarper(rule.top_p))
    if rule.min_p > 0:
        chain.append(MinPLogitsWarper(rule.min_p))
    return chain
