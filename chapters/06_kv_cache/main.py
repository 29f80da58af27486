"""06 · The KV cache: generate one token at a time without redoing the past.

A decoder-only model re-reads its whole prefix to predict the next token. But the only thing
later tokens need from earlier ones is each layer's keys and values, and those never change.
Keep them (the KV cache) and each new token costs one row per layer instead of a full pass.

This chapter writes the cache by hand (kvcache.py) on top of a trained Hundred Acre Wood
model and then:
  1. checks cached and uncached generation give identical tokens, and the hand cache gives
     the same logits as shared.model.KVCache;
  2. races them for 10 ... 1000 new tokens and compares the speedup with the token-pass count;
  3. measures cache memory against 2 x layers x kv_heads x head_dim x tokens x bytes, and
     shows how grouped-query (GQA) and multi-query (MQA) attention shrink it;
  4. draws which K/V rows are computed and which are reused at every step;
  5. runs a rolling ring buffer for a sliding-window model (memory stops growing) and
     attention sinks (StreamingLLM), measuring their loss on a long text.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

import kvcache as kc
from shared import bench, cli, zoo
from shared.corpus import HundredAcreWood
from shared.errors import WorkbookError
from shared.model import GPT, KVCache

CHAPTER = "06_kv_cache"


# ============================================================================ 1. same tokens
def check_identical(model: GPT, prompt: torch.Tensor, n_new: int) -> dict:
    """Greedy decoding four ways: the chapter's two loops and shared GPT.generate's two modes."""
    hand_cached = kc.generate_cached(model, prompt, n_new, kc.FullCache(model.cfg, 1, prompt.shape[1] + n_new))
    hand_uncached = kc.generate_uncached(model, prompt, n_new)
    shared_cached = model.generate(prompt, n_new, temperature=0, use_cache=True)
    shared_uncached = model.generate(prompt, n_new, temperature=0, use_cache=False)
    outs = [hand_cached, hand_uncached, shared_cached, shared_uncached]
    return {"n_new": n_new, "identical": all(torch.equal(outs[0], o) for o in outs[1:]),
            "tokens": hand_cached[0, prompt.shape[1]:].tolist()}


@torch.no_grad()
def compare_with_shared_cache(model: GPT, ids: torch.Tensor, n_prefill: int) -> dict:
    """Feed the same tokens through the hand cache and shared.model.KVCache, prefill then one
    token per step; return the largest logit difference (and vs. a plain full forward)."""
    cfg, total = model.cfg, ids.shape[1]
    hand, ref = kc.FullCache(cfg, 1, total), KVCache(cfg, 1, total)
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


# ============================================================================ 2. speed
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


def estimate_uncached_seconds(model: GPT, prompt: torch.Tensor, lengths: list[int], repeats) -> float:
    """Calibrate on one forward pass over the longest sequence, then scale by FLOPs."""
    longest = prompt.shape[1] + max(lengths)
    ids = torch.zeros(1, longest, dtype=torch.long, device=prompt.device)
    t_long = bench.time_fn(lambda: kc.forward(model, ids), prompt.device, warmup=1, repeat=1)
    per_flop = t_long / decode_flops(model, longest, 1, cached=False)
    return sum(per_flop * decode_flops(model, prompt.shape[1], n, cached=False) * (repeats(n) + (n <= 100))
               for n in lengths)


def race(run, model: GPT, window_model: GPT, prompt: torch.Tensor, lengths: list[int], ring_size: int) -> dict:
    """Time the same generation with and without the cache at every length."""
    p = prompt.shape[1]
    repeats = lambda n: 3 if n <= 100 else 1       # noqa: E731 - short runs: median of 3; long ones once
    warmup = lambda n: int(n <= 100)               # noqa: E731 - a long run is its own warm-up
    run.estimate(estimate_uncached_seconds(model, prompt, lengths, repeats), what="the uncached decoding race")
    clocks = {name: StepClock() for name in ("uncached", "cached", "rolling")}
    rows = []
    for n in tqdm(lengths, desc="race", leave=False):
        def uncached():
            clocks["uncached"].start()
            if n < 300:
                return kc.generate_uncached(model, prompt, n, on_step=clocks["uncached"])
            with tqdm(total=n, desc=f"uncached {n}", leave=False) as bar:   # the long one: show progress
                return kc.generate_uncached(model, prompt, n, on_step=lambda i: (clocks["uncached"](i), bar.update()))

        def cached():
            clocks["cached"].start()
            return kc.generate_cached(model, prompt, n, kc.FullCache(model.cfg, 1, p + n), on_step=clocks["cached"])

        def rolling():  # sliding-window model, ring of `ring_size` rows: memory never grows
            clocks["rolling"].start()
            return kc.generate_cached(window_model, prompt, n, kc.RollingCache(window_model.cfg, 1, ring_size),
                                      on_step=clocks["rolling"], prefill_chunk=False)

        dev = prompt.device
        t_cached = bench.time_fn(cached, dev, warmup=warmup(n), repeat=repeats(n))
        t_shared = bench.time_fn(lambda: model.generate(prompt, n, temperature=0, use_cache=True), dev,
                                 warmup=warmup(n), repeat=repeats(n))
        t_rolling = bench.time_fn(rolling, dev, warmup=warmup(n), repeat=repeats(n))
        t_uncached = bench.time_fn(uncached, dev, warmup=warmup(n), repeat=repeats(n))
        rows.append({
            "new_tokens": n, "uncached_s": t_uncached, "cached_s": t_cached, "shared_generate_cached_s": t_shared,
            "rolling_s": t_rolling, "speedup": t_uncached / t_cached,
            "token_pass_ratio": token_passes(p, n, False) / token_passes(p, n, True),
            "flop_ratio": decode_flops(model, p, n, False) / decode_flops(model, p, n, True),
            "cached_ms_per_token": 1e3 * t_cached / n, "uncached_ms_per_token": 1e3 * t_uncached / n,
        })
        tqdm.write(f"  {n:5d} new tokens: uncached {t_uncached:7.3f} s  cached {t_cached:6.3f} s  "
                   f"-> {rows[-1]['speedup']:5.1f}x  (token passes {rows[-1]['token_pass_ratio']:.0f}x)")
    # per-step latency of the longest run (the last generation each clock saw)
    step_ms = {name: [1e3 * t for t in clock.times] for name, clock in clocks.items()}
    return {"prompt_tokens": p, "rows": rows, "step_ms": step_ms, "ring_size": ring_size}


# ============================================================================ 3. memory
def memory_table(model: GPT, contexts: list[int]) -> list[dict]:
    """Tensor bytes of the hand cache and shared KVCache for the chapter's model, next to the
    formula, for MHA / GQA / MQA variants of the same shape (n_kv_head = n_head, ..., 1)."""
    rows = []
    for kv in sorted({model.cfg.n_head, model.cfg.n_head // 2, model.cfg.n_head // 4, 1}, reverse=True):
        cfg = type(model.cfg)(**{**model.cfg.to_dict(), "n_kv_head": kv})
        for t in contexts:
            hand = kc.FullCache(cfg, 1, t).nbytes
            shared = KVCache(cfg, 1, t).nbytes
            formula = kc.cache_bytes(cfg.n_layer, kv, cfg.head_dim, t, 4)
            rows.append({"n_kv_head": kv, "tokens": t, "formula_bytes": formula, "hand_cache_bytes": hand,
                         "shared_kvcache_bytes": shared, "matches": hand == shared == formula})
    return rows


def measured_peak(cfg_kwargs: dict, contexts: list[int]) -> list[dict]:
    """Process memory when a cache of a bigger model shape is filled to each length, next to
    the formula. Rows are written 512 at a time, as a prefill would."""
    from shared.model import GPTConfig

    rows = []
    for kv in (cfg_kwargs["n_head"], cfg_kwargs["n_head"] // 4, 1):
        cfg = GPTConfig(**{**cfg_kwargs, "n_kv_head": kv})
        for t in contexts:
            with bench.peak_memory("cpu") as peak:
                cache = kc.FullCache(cfg, 1, t)
                chunk = torch.randn(1, kv, min(512, t), cfg.head_dim)
                while cache.length < t:
                    n = min(512, t - cache.length)
                    for layer in range(cfg.n_layer):
                        cache.update(layer, chunk[:, :, :n], chunk[:, :, :n])
                    cache.advance(n)
            formula = kc.cache_bytes(cfg.n_layer, kv, cfg.head_dim, t, 4)
            rows.append({"n_kv_head": kv, "tokens": t, "formula_MiB": formula / 2**20,
                         "tensor_MiB": cache.nbytes / 2**20, "process_peak_growth_MiB": peak.bytes / 2**20})
            del cache
    return rows


# Published shapes (layers, KV heads, head dim, sliding window) the formula is applied to at
# fp16. These are arithmetic, not measurements.
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


# ============================================================================ 4. hits and misses
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


# ============================================================================ 5. long text: windows and sinks
def window_copy(model: GPT, window: int) -> GPT:
    """The same weights, but every token attends to only the last `window` tokens."""
    cfg = type(model.cfg)(**{**model.cfg.to_dict(), "window": window})
    windowed = GPT(cfg)
    windowed.load_state_dict(model.state_dict())
    return windowed.eval()


@torch.no_grad()
def recompute_window_logprobs(model: GPT, ids: torch.Tensor, window: int, batch: int = 64) -> torch.Tensor:
    """The expensive oracle: every prediction gets a FRESH forward over just the previous
    `window` tokens (positions 0..window-1), so the window's first token is always position 0."""
    targets = ids[0, 1:]
    head = model(ids[:, :window]).float().log_softmax(-1)[0, :window - 1]   # short prefixes: plain causal
    out = [head.gather(-1, targets[:window - 1, None])[:, 0]]
    windows = ids[0].unfold(0, window, 1)[:-1]       # (T-window, window): the context ending at each position
    for i in range(0, len(windows), batch):
        logits = model(windows[i:i + batch])[:, -1].float().log_softmax(-1)
        out.append(logits.gather(-1, targets[window - 1 + i: window - 1 + i + len(logits), None])[:, 0])
    return torch.cat(out)


@torch.no_grad()
def first_token_attention(model: GPT, ids: torch.Tensor, from_query: int) -> list[list[float]]:
    """Mean attention weight on position 0 per (layer, head), for queries >= from_query."""
    for b in model.blocks:
        b.attn.record = True
    model(ids)
    out = [b.attn.weights[0, :, from_query:, 0].mean(-1).tolist() for b in model.blocks]
    for b in model.blocks:
        b.attn.record, b.attn.weights = False, None
    return out


def long_text_losses(run, model: GPT, ids: torch.Tensor, cache_size: int, n_sink: int) -> dict:
    """Loss on every position of a long text under each way of bounding the cache."""
    cfg, t = model.cfg, ids.shape[1]
    run.estimate(seconds=3 * t * 1.5e-3 + t * cache_size * 2 * model.num_params() / 3e10,
                 what=f"streaming {t} tokens through 3 caches")
    nll = {}
    with torch.no_grad():
        nll["full attention"] = -model(ids).float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    variants = {
        f"window only ({cache_size} rows)": dict(n_sink=0),
        f"{n_sink} sinks + {cache_size - n_sink} window, cache positions": dict(n_sink=n_sink, sink_positions="cache"),
        f"{n_sink} sinks + {cache_size - n_sink} window, text positions": dict(n_sink=n_sink, sink_positions="text"),
    }
    bar = tqdm(variants.items(), desc="stream", leave=False)
    for name, kw in bar:
        cache = kc.RollingCache(cfg, 1, cache_size, **kw)
        nll[name] = -kc.stream_logprobs(model, ids, cache)
    nll[f"recompute last {cache_size} (no cache)"] = -recompute_window_logprobs(model, ids, cache_size)
    # the window-only ring IS a sliding-window model: check against shared.model with window=
    windowed = window_copy(model, cache_size)
    with torch.no_grad():
        ref = -windowed(ids).float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    ring_vs_window_model = (nll[f"window only ({cache_size} rows)"] - ref).abs().max().item()
    return {"nll": {k: v.tolist() for k, v in nll.items()}, "ring_vs_window_model_max_diff": ring_vs_window_model}


def summarize_losses(nll: dict, block_size: int, cache_size: int) -> list[dict]:
    """Mean loss inside the training length, beyond it, and overall, per variant."""
    rows = []
    for name, values in nll.items():
        v = np.asarray(values)
        rows.append({"variant": name, f"nats/char, positions {cache_size}..{block_size - 1}":
                     float(v[cache_size:block_size].mean()),
                     f"nats/char, positions {block_size}+": float(v[block_size:].mean()),
                     "nats/char, all": float(v.mean())})
    return rows


# ============================================================================ the lesson
def main(argv=None):
    p = cli.parser(CHAPTER, __doc__)
    p.add_argument("--prompt", default="\nOn a happy day, ", help="text the generations start from")
    p.add_argument("--lengths", default=None,
                   help="comma-separated new-token counts for the race (default: preset's, e.g. 10,30,100,300,1000)")
    p.add_argument("--cache-size", type=int, default=None, help="rows of the rolling cache (default: preset's)")
    p.add_argument("--sinks", type=int, default=4, help="attention-sink rows kept at the front of the rolling cache")
    p.add_argument("--long-chars", type=int, default=None, help="characters of the long text the caches read")
    run = cli.setup(p, argv)
    args = run.args
    lengths = ([int(x) for x in args.lengths.split(",")] if args.lengths
               else run.pick(quick=[5, 20, 60], default=[10, 30, 100, 300, 1000], full=[10, 30, 100, 300, 1000, 3000]))
    cache_size = args.cache_size or run.pick(quick=24, default=64, full=128)
    long_chars = args.long_chars or run.pick(quick=400, default=2048, full=8192)
    if min(lengths) < 1:
        raise WorkbookError(f"--lengths must be positive integers, got {args.lengths}")
    if not 0 <= args.sinks < cache_size:
        raise WorkbookError(f"--sinks must be in 0..{cache_size - 1} (below --cache-size), got {args.sinks}")

    bundle = zoo.load("wood-llama", run)   # trained once (about a minute on 2 cores), then cached
    torch.set_grad_enabled(False)          # inference only from here on
    model, tok = bundle.model.float().eval(), bundle.tokenizer
    if run.device.type != "cpu":
        model = model.to(run.device)
    cfg = model.cfg
    print(f"model: {bundle.entry.about}; {cfg.n_layer} layers, {cfg.n_head} heads x {cfg.head_dim} dims, "
          f"{model.num_params() / 1e6:.2f}M params, trained on {cfg.block_size}-token windows")
    try:
        prompt = torch.tensor([tok.encode(args.prompt)], device=run.device)
    except KeyError as e:
        raise WorkbookError(f"--prompt uses a character the model never saw: {e}") from None

    # 1. Cached and uncached generation must agree token for token ---------------------------
    same = check_identical(model, prompt, run.pick(quick=40, default=200, full=400))
    sample_ids = torch.tensor([tok.encode("\n" + HundredAcreWood().text(300, seed=run.seed + 7)[:cfg.block_size - 1])],
                              device=run.device)
    vs_shared = compare_with_shared_cache(model, sample_ids, n_prefill=16)
    print(f"identical tokens (hand cached/uncached, shared generate cached/uncached, {same['n_new']} greedy tokens): "
          f"{same['identical']}")
    print(f"hand cache vs shared KVCache: max |logit diff| {vs_shared['max_abs_diff_vs_shared_kvcache']:.2e}; "
          f"vs a plain full forward {vs_shared['max_abs_diff_vs_full_forward']:.2e}")
    print("sample:", repr(args.prompt + tok.decode(same["tokens"][:160])))

    # 2. The race -----------------------------------------------------------------------------
    window_model = window_copy(model, cache_size)
    speed = race(run, model, window_model, prompt, lengths, cache_size)

    # 3. Memory --------------------------------------------------------------------------------
    mem_rows = memory_table(model, run.pick(quick=[256, 1024], default=[256, 1024, 4096, 16384]))
    peak_shape = run.pick(quick=dict(n_layer=2, n_head=8, d_model=256),
                          default=dict(n_layer=4, n_head=8, d_model=512),
                          full=dict(n_layer=8, n_head=8, d_model=512))
    peak_rows = measured_peak({**peak_shape, "pos": "rope"}, run.pick(quick=[512, 2048], default=[2048, 8192, 16384]))
    real_rows = real_model_table([4096, 32768, 131072])
    ring_bytes = kc.RollingCache(window_model.cfg, 1, cache_size).nbytes
    for r in peak_rows:
        print(f"  cache {r['n_kv_head']} KV heads x {r['tokens']:6d} tokens: formula {r['formula_MiB']:7.1f} MiB, "
              f"process peak grew {r['process_peak_growth_MiB']:7.1f} MiB")

    # 4. Hit / miss traces -----------------------------------------------------------------------
    trace_text = "\nOn a sleepy day, Owl had a kite."[: run.pick(quick=20, default=32)]
    trace_ids = torch.tensor([tok.encode(trace_text)], device=run.device)
    small_ring, small_sinks = 8, 2
    traces = {
        "no cache": trace(model, trace_ids, None),
        "full cache": trace(model, trace_ids, lambda: kc.FullCache(cfg, 1, trace_ids.shape[1])),
        f"rolling cache ({small_ring} rows)": trace(model, trace_ids, lambda: kc.RollingCache(cfg, 1, small_ring)),
        f"{small_sinks} sinks + {small_ring - small_sinks} rolling": trace(
            model, trace_ids, lambda: kc.RollingCache(cfg, 1, small_ring, n_sink=small_sinks)),
    }

    # 5. Long text: full attention vs window vs sinks ------------------------------------------
    long_text = "\n" + HundredAcreWood().text(long_chars, seed=run.seed + 1000)[:long_chars - 1]
    long_ids = torch.tensor([tok.encode(long_text)], device=run.device)
    losses = long_text_losses(run, model, long_ids, cache_size, args.sinks)
    loss_rows = summarize_losses(losses["nll"], cfg.block_size, cache_size)
    sink_attention = first_token_attention(model, long_ids[:, :cfg.block_size], from_query=cache_size)
    print(f"ring cache vs shared GPT(window={cache_size}) without cache: max |loss diff| "
          f"{losses['ring_vs_window_model_max_diff']:.2e}")
    for r in loss_rows:
        print("  " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()))

    # results -------------------------------------------------------------------------------------
    longest = speed["rows"][-1]
    at_100 = next((r for r in speed["rows"] if r["new_tokens"] == 100), None)
    names = list(losses["nll"])
    headline = {
        "identical_tokens": same["identical"],
        f"speedup_at_{longest['new_tokens']}_tokens": round(longest["speedup"], 1),
        "speedup_at_100_tokens": round(at_100["speedup"], 1) if at_100 else None,
        "max_logit_diff_vs_shared_kvcache": vs_shared["max_abs_diff_vs_shared_kvcache"],
        "window_only_nats_per_char_beyond_training_length": loss_rows[1][f"nats/char, positions {cfg.block_size}+"],
        "sinks_nats_per_char_beyond_training_length": loss_rows[2][f"nats/char, positions {cfg.block_size}+"],
        "full_attention_nats_per_char_beyond_training_length": loss_rows[0][f"nats/char, positions {cfg.block_size}+"],
    }
    run.save_results({
        "headline": headline,
        "model": {"config": cfg.to_dict(), "params": model.num_params(), "zoo": bundle.entry.name},
        "identical": same, "vs_shared_kvcache": vs_shared,
        "speed": speed,
        "memory": {"model_table": mem_rows, "measured_peak": peak_rows, "peak_shape": peak_shape,
                   "real_models": real_rows, "ring_bytes": ring_bytes, "cache_size": cache_size},
        "trace": {"tokens": [tok.decode([i]) for i in trace_ids[0].tolist()], "steps": traces,
                  "ring": small_ring, "sinks": small_sinks},
        "long_text": {"chars": long_ids.shape[1], "cache_size": cache_size, "sinks": args.sinks, "names": names,
                      "block_size": cfg.block_size, "nll": losses["nll"], "summary": loss_rows,
                      "ring_vs_window_model_max_diff": losses["ring_vs_window_model_max_diff"],
                      "first_token_attention": sink_attention, "from_query": cache_size,
                      "floor_nats_per_char": HundredAcreWood().entropy()["nats_per_char"]},
    })
    speed_table = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                    if k in ("new_tokens", "uncached_s", "cached_s", "shared_generate_cached_s", "rolling_s",
                             "speedup", "token_pass_ratio", "flop_ratio")} for r in speed["rows"]]
    run.record_notes(
        f"Greedy tokens identical (hand cached / uncached / shared generate with and without cache, "
        f"{same['n_new']} tokens): **{same['identical']}**. Hand cache vs `shared.model.KVCache`: max |logit diff| "
        f"{vs_shared['max_abs_diff_vs_shared_kvcache']:.2e}.\n\n"
        f"### Race (prompt {speed['prompt_tokens']} tokens; seconds per whole generation, median)\n\n"
        + cli.markdown_table(speed_table)
        + "\n\n### Cache memory, measured process growth vs formula (fp32, shape "
        + ", ".join(f"{k}={v}" for k, v in peak_shape.items()) + ")\n\n"
        + cli.markdown_table(peak_rows, ".1f")
        + "\n\n### Loss on a long text (" + f"{long_ids.shape[1]} chars, cache {cache_size} rows, {args.sinks} sinks; "
        + f"trained on {cfg.block_size}-char windows)\n\n"
        + cli.markdown_table(loss_rows, ".3f") + "\n")

    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


if __name__ == "__main__":
    cli.run_main(main)
