"""The measurements chapter 06 makes with the caches of kvcache.py: what counting predicts for
the decode race, what the caches hold byte for byte, which rows each step computes or reuses,
and what bounding the cache does to the loss on a text longer than the model was trained on.

    token_passes / decode_flops     the predictions the measured speed-up is compared with
    time_generations                one timed generation per decode loop, with per-step clocks
    time_interleaved                the same calls timed in turns, so a busy machine slows all alike
    compare_with_shared_cache       hand cache vs shared.model.KVCache, logit for logit
    memory_table / measured_peak    tensor bytes and process memory vs kvcache.cache_bytes
    trace                           hits and misses: the K/V rows each step computes or reads
    long_text_nll                   full attention vs rolling window vs attention sinks
    sink_ratio                      attention on token 0 relative to uniform attention
"""
from __future__ import annotations

import time

import numpy as np
import torch

import kvcache as kc
from shared import bench
from shared.model import GPT, GPTConfig, KVCache, attention_weights


# ----------------------------------------------------------------------------- what counting predicts
def token_passes(prompt_len: int, n_new: int, cached: bool) -> int:
    """Token positions pushed through the model. Uncached step i processes prompt+i tokens
    (sum ~ n^2/2); cached: the prompt once, then one token per step (~ n)."""
    if cached:
        return prompt_len + n_new - 1
    return n_new * prompt_len + n_new * (n_new - 1) // 2


def decode_flops(model: GPT, prompt_len: int, n_new: int, cached: bool) -> float:
    """Forward FLOPs of a whole generation: 2 per weight per token through the layers, plus
    attention's QK^T and AV (4 x d per visible key per layer), plus the head for one position."""
    c = model.cfg
    layer_weights = model.matmul_params() - model.lm_head.weight.numel()
    head = 2 * model.lm_head.weight.numel()

    def pass_flops(new: int, seen_before: int) -> float:  # `new` tokens after `seen_before` cached ones
        keys = new * seen_before + new * (new + 1) / 2      # causal: query i sees seen_before + i + 1 keys
        return 2 * layer_weights * new + 4 * c.n_layer * c.d_model * keys + head

    if cached:
        return pass_flops(prompt_len, 0) + sum(pass_flops(1, prompt_len + i) for i in range(n_new - 1))
    return sum(pass_flops(prompt_len + i, 0) for i in range(n_new))


# ----------------------------------------------------------------------------- timing
class StepClock:
    """Per-step wall times of the latest generation (the on_step hook of the decode loops)."""

    def __init__(self):
        self.times: list[float] = []
        self.last = 0.0

    def start(self):
        self.times, self.last = [], time.perf_counter()

    def __call__(self, step: int):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def time_generations(loops: dict, device, repeat: int) -> tuple[dict, dict]:
    """Median seconds of each decode loop in `loops` (name -> fn(on_step)), and the per-step
    milliseconds of its last run. A single long run is its own warm-up; short ones get one."""
    seconds, step_ms = {}, {}
    for name, loop in loops.items():
        clock = StepClock()

        def timed(loop=loop, clock=clock):
            clock.start()
            return loop(clock)

        seconds[name] = bench.time_fn(timed, device, warmup=int(repeat > 1), repeat=repeat)
        step_ms[name] = [1e3 * t for t in clock.times]
    return seconds, step_ms


def time_interleaved(calls: dict, device, rounds: int) -> dict[object, list[float]]:
    """Seconds of each call, `rounds` times, the calls taking turns (a, b, c, a, b, c, ...): a burst
    of other work on the machine then slows every contender alike, and per-round ratios stay fair."""
    for call in calls.values():      # warm-up
        call()
    seconds = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            bench.sync(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


# ----------------------------------------------------------------------------- same logits
@torch.no_grad()
def compare_with_shared_cache(model: GPT, ids: torch.Tensor, n_prefill: int) -> dict:
    """Feed the same tokens through the hand cache and shared.model.KVCache, prefill then one
    token per step; return the largest logit difference (and vs. a plain full forward)."""
    cfg, total, dev = model.cfg, ids.shape[1], ids.device
    hand, ref = kc.FullCache(cfg, 1, total, device=dev), KVCache(cfg, 1, total, device=dev)
    hand_logits = [kc.forward(model, ids[:, :n_prefill], hand, last_only=False)]
    ref_logits = [model(ids[:, :n_prefill], cache=ref)]
    for j in range(n_prefill, total):
        hand_logits.append(kc.forward(model, ids[:, j:j + 1], hand))
        ref_logits.append(model(ids[:, j:j + 1], cache=ref))
    hand_logits, ref_logits = torch.cat(hand_logits, 1), torch.cat(ref_logits, 1)
    full = model(ids)
    return {"tokens": total, "max_abs_diff_vs_shared_kvcache": (hand_logits - ref_logits).abs().max().item(),
            "max_abs_diff_vs_full_forward": (hand_logits - full).abs().max().item(),
            "cache_rows_equal": bool(torch.allclose(hand.k[0][:, :, :total], ref.k[0][:, :, :total], atol=1e-5))}


# ----------------------------------------------------------------------------- memory
def memory_table(cfg: GPTConfig, contexts: list[int]) -> list[dict]:
    """Tensor bytes of the hand cache and shared KVCache next to the formula, for MHA / GQA /
    MQA variants of one shape (n_kv_head = n_head, n_head/2, n_head/4, 1). On the meta device:
    shapes only, no memory."""
    rows = []
    for kv in sorted({cfg.n_head, cfg.n_head // 2, cfg.n_head // 4, 1} - {0}, reverse=True):
        c = GPTConfig(**{**cfg.to_dict(), "n_kv_head": kv})
        for t in contexts:
            hand = kc.FullCache(c, 1, t, device="meta").nbytes
            shared = KVCache(c, 1, t, device="meta").nbytes
            formula = kc.cache_bytes(c.n_layer, kv, c.head_dim, t, 4)
            rows.append({"n_kv_head": kv, "tokens": t, "formula_bytes": formula, "hand_cache_bytes": hand,
                         "shared_kvcache_bytes": shared, "matches": hand == shared == formula})
    return rows


def measured_peak(cfg: GPTConfig, contexts: list[int], device="cpu") -> list[dict]:
    """Memory growth while a cache of shape `cfg` is filled to each length (process RSS on a
    CPU, allocated bytes on CUDA), next to the formula. Rows go in 512 at a time, as a prefill."""
    rows = []
    for kv in (cfg.n_head, max(1, cfg.n_head // 4), 1):
        c = GPTConfig(**{**cfg.to_dict(), "n_kv_head": kv})
        for t in contexts:
            with bench.peak_memory(device) as peak:
                cache = kc.FullCache(c, 1, t, device=device)
                chunk = torch.randn(1, kv, min(512, t), c.head_dim, device=device)
                while cache.length < t:
                    n = min(512, t - cache.length)
                    for layer in range(c.n_layer):
                        cache.update(layer, chunk[:, :, :n], chunk[:, :, :n])
                    cache.advance(n)
            formula = kc.cache_bytes(c.n_layer, kv, c.head_dim, t)
            rows.append({"n_kv_head": kv, "tokens": t, "formula_MiB": formula / 2**20,
                         "tensor_MiB": cache.nbytes / 2**20, "peak_growth_MiB": peak.bytes / 2**20})
            del cache
    return rows


# Published shapes (layers, KV heads, head dim, sliding window), the formula applied at fp16:
# arithmetic, not measurements.
REAL_MODELS = [
    ("GPT-2 small (MHA)", 12, 12, 64, None),
    ("Llama-2-7B (MHA)", 32, 32, 128, None),
    ("Llama-3-8B (GQA, 8 KV heads)", 32, 8, 128, None),
    ("Mistral-7B (GQA + 4096 window)", 32, 8, 128, 4096),
    ("Falcon-7B (MQA, 1 KV head)", 32, 1, 64, None),
]


def real_model_table(contexts: list[int]) -> list[dict]:
    rows = []
    for name, layers, kv, hd, window in REAL_MODELS:
        row = {"model": name, "KiB_per_token": kc.cache_bytes(layers, kv, hd, 1, 2) / 1024}
        for t in contexts:
            row[f"GiB_at_{t // 1024}k"] = kc.cache_bytes(layers, kv, hd, min(t, window or t), 2) / 2**30
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- hits and misses
@torch.no_grad()
def trace(model: GPT, ids: torch.Tensor, make_cache) -> list[dict]:
    """Feed `ids` one token per step; after each, which text positions had K/V computed this
    step (misses), which were read from the cache (hits), and which row holds what."""
    steps = []
    cache = make_cache() if make_cache else None
    for j in range(ids.shape[1]):
        if cache is None:   # no cache: every position is recomputed, every step
            steps.append({"query": j, "computed": list(range(j + 1)), "reused": [], "slots": []})
            continue
        kc.forward(model, ids[:, j:j + 1], cache)
        slots = cache.positions()
        held = sorted(p for p in slots if p >= 0)
        steps.append({"query": j, "computed": [j], "reused": [p for p in held if p != j], "slots": slots})
    return steps


# ----------------------------------------------------------------------------- long text: windows and sinks
def window_copy(model: GPT, window: int) -> GPT:
    """The same weights on the same device, but every token attends to only the last `window` tokens."""
    windowed = GPT(GPTConfig(**{**model.cfg.to_dict(), "window": window}))
    windowed.load_state_dict(model.state_dict())
    return windowed.to(next(model.parameters()).device).eval()


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """-log p(ids[t+1] | ...) from logits (1, T, V) over ids (1, T): (T-1,)."""
    return -logits.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]


@torch.no_grad()
def recompute_window_nll(model: GPT, ids: torch.Tensor, window: int, batch: int = 64) -> torch.Tensor:
    """The expensive oracle: every prediction gets a FRESH forward over just the previous
    `window` tokens (positions 0..window-1), so the window's first token is always position 0."""
    targets = ids[0, 1:]
    head = model(ids[:, :window]).float().log_softmax(-1)[0, :window - 1]   # short prefixes: plain causal
    out = [head.gather(-1, targets[:window - 1, None])[:, 0]]
    windows = ids[0].unfold(0, window, 1)[:-1]       # (T-window, window): the context ending at each position
    for i in range(0, len(windows), batch):
        logits = model(windows[i:i + batch])[:, -1].float().log_softmax(-1)
        out.append(logits.gather(-1, targets[window - 1 + i: window - 1 + i + len(logits), None])[:, 0])
    return -torch.cat(out)


@torch.no_grad()
def long_text_nll(model: GPT, ids: torch.Tensor, cache_size: int, n_sink: int) -> tuple[dict, float]:
    """Loss at every position of a long text under each way of bounding the cache, and the largest
    difference between the window-only ring and shared.model's GPT(window=cache_size) (should be 0)."""
    nll = {"full attention": next_token_nll(model(ids), ids)}
    variants = {"window only": dict(n_sink=0),
                "sinks, cache positions": dict(n_sink=n_sink, sink_positions="cache"),
                "sinks, text positions": dict(n_sink=n_sink, sink_positions="text")}
    for name, kw in variants.items():
        nll[name] = -kc.stream_logprobs(model, ids, kc.RollingCache(model.cfg, 1, cache_size, device=ids.device, **kw))
    nll["recompute window"] = recompute_window_nll(model, ids, cache_size)
    reference = next_token_nll(window_copy(model, cache_size)(ids), ids)
    return {k: v.cpu().tolist() for k, v in nll.items()}, (nll["window only"] - reference).abs().max().item()


def summarize_nll(nll: dict, block_size: int, cache_size: int) -> list[dict]:
    """Mean loss inside the trained length (once the cache is full), beyond it, and overall."""
    rows = []
    for name, values in nll.items():
        v = np.asarray(values)
        rows.append({"variant": name, "inside": float(v[cache_size:block_size].mean()),
                     "beyond": float(v[block_size:].mean()), "all": float(v.mean())})
    return rows


def sink_ratio(model: GPT, ids: torch.Tensor, from_query: int) -> list[list[float]]:
    """Per (layer, head): attention on token 0, averaged over queries >= from_query, divided by
    what uniform attention would give those queries (1/(q+1)). 1 = no preference; a sink >> 1."""
    weights = attention_weights(model, ids)[:, :, from_query:, 0]            # (layers, heads, queries)
    uniform = 1.0 / torch.arange(from_query + 1, ids.shape[-1] + 1, dtype=torch.float32)
    return (weights.mean(-1) / uniform.mean()).tolist()
