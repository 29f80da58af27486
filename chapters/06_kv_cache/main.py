"""06 · The KV cache: generate one token at a time without redoing the past.

A decoder-only model re-reads its whole prefix to predict the next token. But the only thing
later tokens need from earlier ones is each layer's keys and values, and those never change.
Keep them (the KV cache) and each new token costs one row per layer instead of a full pass.
On a trained Hundred Acre Wood model this chapter checks that cached and uncached decoding give
the same tokens, races them, measures the cache's bytes against the formula, stores it in 8 and
4 bits, draws which rows each step computes, and bounds it (rolling window, attention sinks) on
a text longer than the model was trained on.

Read `kvcache.py` first (the caches and the decode loops), then `quantized_kvcache.py`, then
`cache_measures.py`, then this file. Run it whole with `uv run chapters/06_kv_cache/main.py`,
or cell by cell (# %%) in VS Code / PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
import statistics
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

import cache_measures as cm
import kvcache as kc
import quantized_kvcache as qk
from shared import cli, zoo
from shared.corpus import HundredAcreWood
from shared.errors import WorkbookError, self_check
from shared.evaluate import story_loss
from shared.model import GPTConfig


@dataclass(frozen=True)
class Config:
    prompt: str = "\nOn a happy day, "
    greedy_tokens: int = 200                 # 1. tokens compared cached vs uncached
    lengths: tuple = (10, 30, 100, 300, 1000)   # 2. new tokens per race
    peak_shape: tuple = (4, 8, 512)          # 3. (layers, heads, d_model) of the cache filled in memory
    peak_tokens: tuple = (2048, 8192, 16384)
    kv_bits: tuple = (8, 4)                  # 4. quantized cache formats
    held_out_stories: int = 200
    quant_tokens: int = 300                  # decode-speed run per cache format
    speed_rounds: int = 5                    # timed decodes per format, the formats taking turns
    trace_chars: int = 32                    # 5. hit/miss pictures
    cache_size: int = 64                     # 6. rows of the rolling cache
    sinks: int = 4
    long_chars: int = 2048


PRESETS = {
    "quick": Config(greedy_tokens=40, lengths=(5, 20, 60), peak_shape=(2, 8, 256), peak_tokens=(512, 2048),
                    held_out_stories=24, quant_tokens=40, speed_rounds=2, trace_chars=20, cache_size=24,
                    long_chars=400),
    "default": Config(),
    "full": Config(greedy_tokens=400, lengths=(10, 30, 100, 300, 1000, 3000), peak_shape=(8, 8, 512),
                   held_out_stories=2000, quant_tokens=1000, cache_size=128, long_chars=8192),
}
run = cli.start(PRESETS,
                cli.flag("--prompt", help="text the generations start from"),
                cli.flag("--lengths", type=cli.int_list, help="new-token counts to race, e.g. 10,100,1000"),
                cli.flag("--cache-size", type=cli.positive_int, help="rows of the rolling cache"),
                cli.flag("--sinks", type=cli.nonneg_int, help="attention-sink rows kept at the front of the ring"),
                cli.flag("--long-chars", type=cli.positive_int, help="characters of the long text the caches read"))
cfg = run.cfg
kc.check_ring(cfg.cache_size, cfg.sinks)        # before anything slow

bundle = zoo.load("wood-llama", run)            # trained once (about a minute on 2 cores), then cached
torch.set_grad_enabled(False)                   # inference only from here on
model, tok = bundle.model.float().to(run.device).eval(), bundle.tokenizer
mcfg = model.cfg
if not cfg.cache_size < mcfg.block_size < cfg.long_chars - 1:
    raise WorkbookError(f"need --cache-size < {mcfg.block_size} (the trained length) < --long-chars - 1, "
                        f"got {cfg.cache_size} and {cfg.long_chars}")
prompt = torch.tensor([tok.encode(cfg.prompt)], device=run.device)
P = prompt.shape[1]
window_model = cm.window_copy(model, cfg.cache_size)   # same weights, sliding-window attention
print(f"model: {bundle.entry.about}; {mcfg.n_layer} layers, {mcfg.n_head} heads × {mcfg.head_dim} dims, "
      f"{model.num_params() / 1e6:.2f}M params, trained on {mcfg.block_size}-token windows")

# %% 1. Cached and uncached decoding must agree token for token
with run.section("1. Same tokens with and without the cache"):
    n = cfg.greedy_tokens
    outs = {"hand cached": kc.generate_cached(model, prompt, n, kc.FullCache(mcfg, 1, P + n, device=run.device)),
            "hand uncached": kc.generate_uncached(model, prompt, n),
            "shared cached": model.generate(prompt, n, temperature=0, use_cache=True),
            "shared uncached": model.generate(prompt, n, temperature=0, use_cache=False)}
    identical = all(torch.equal(outs["hand cached"], o) for o in outs.values())
    self_check(identical, f"greedy tokens differ between {list(outs)}")
    sample_ids = torch.tensor([tok.encode("\n" + HundredAcreWood().text(300, seed=run.seed + 7)[:mcfg.block_size - 1])],
                              device=run.device)
    vs_shared = cm.compare_with_shared_cache(model, sample_ids, n_prefill=16)
    self_check(vs_shared["max_abs_diff_vs_shared_kvcache"] < 1e-4,
               f"hand cache vs shared KVCache logits differ by {vs_shared['max_abs_diff_vs_shared_kvcache']:.2e}")
    print(f"{n} greedy tokens identical four ways; hand cache vs shared KVCache: max |logit diff| "
          f"{vs_shared['max_abs_diff_vs_shared_kvcache']:.1e}")
    print("sample:", repr(cfg.prompt + tok.decode(outs["hand cached"][0, P:P + 160].tolist())))

# %% 2. The race: time a whole generation of n new tokens with and without the cache
with run.section("2. The race: cached vs uncached decoding"):
    run.estimate(sum(1.1e-4 * cm.token_passes(P, n, cached=False) * (3 if n <= 100 else 1) for n in cfg.lengths),
                 what="the uncached decoding race")
    race, step_ms = [], {}
    for n in tqdm(cfg.lengths, desc="race", leave=False):
        seconds, step_ms = cm.time_generations({
            "cached": lambda clock: kc.generate_cached(
                model, prompt, n, kc.FullCache(mcfg, 1, P + n, device=run.device), on_step=clock),
            "shared generate": lambda clock: model.generate(prompt, n, temperature=0, use_cache=True),
            "rolling": lambda clock: kc.generate_cached(
                window_model, prompt, n, kc.RollingCache(window_model.cfg, 1, cfg.cache_size, device=run.device),
                on_step=clock, prefill_chunk=False),
            "uncached": lambda clock: kc.generate_uncached(model, prompt, n, on_step=clock),
        }, run.device, repeat=3 if n <= 100 else 1)
        race.append({"new_tokens": n, **{f"{k.replace(' ', '_')}_s": v for k, v in seconds.items()},
                     "speedup": seconds["uncached"] / seconds["cached"],
                     "token_pass_ratio": cm.token_passes(P, n, False) / cm.token_passes(P, n, True),
                     "flop_ratio": cm.decode_flops(model, P, n, False) / cm.decode_flops(model, P, n, True),
                     "cached_ms_per_token": 1e3 * seconds["cached"] / n})
        tqdm.write(f"  {n:5d} new tokens: uncached {seconds['uncached']:7.3f} s, cached {seconds['cached']:6.3f} s "
                   f"-> {race[-1]['speedup']:5.1f}× (token passes predict {race[-1]['token_pass_ratio']:.0f}×)")
    longest = race[-1]
    print(f"popular guides quote ~100× from the cache; here, at {longest['new_tokens']} new tokens: "
          f"{longest['speedup']:.1f}× measured, {longest['token_pass_ratio']:.0f}× predicted by counting")

# %% 3. Memory: 2 × layers × kv_heads × head_dim × tokens × bytes
with run.section("3. Cache memory vs the formula"):
    model_table = cm.memory_table(mcfg, [256, 1024, 4096, 16384])
    self_check(all(r["matches"] for r in model_table), "a cache's bytes differ from the formula")
    layers, heads, d_model = cfg.peak_shape
    peak_cfg = GPTConfig(n_layer=layers, n_head=heads, d_model=d_model, pos="rope")
    peak_rows = cm.measured_peak(peak_cfg, list(cfg.peak_tokens), run.device)
    for r in peak_rows:
        print(f"  {r['n_kv_head']} KV heads × {r['tokens']:6d} tokens: formula {r['formula_MiB']:7.1f} MiB, "
              f"memory grew {r['peak_growth_MiB']:7.1f} MiB")
    real_rows = cm.real_model_table([4096, 32768, 131072])

# %% 4. A quantized cache: the same rows in 8 and 4 bits
with run.section("4. Quantized cache: bytes, logits, story loss, speed"):
    stories = HundredAcreWood().stories(cfg.held_out_stories, seed=run.seed + 6_006)
    reference = story_loss(model, tok, stories, run.device)        # shared.evaluate, no cache
    base_nats, kept = qk.story_nats_through_cache(model, tok, stories, 32, run.device)
    chars = sum(len(stories[i].text) for i in kept)
    self_check(abs(base_nats.sum().item() / chars - reference["model_nats_per_char"]) < 1e-4,
               "story loss through the fp32 cache differs from shared.evaluate.story_loss")
    base_logits = qk.logits_through_cache(model, sample_ids, 32, n_prefill=16)
    tokens, n, formats = {}, cfg.quant_tokens, (32, *cfg.kv_bits)
    quant = []

    def decode(bits: int) -> None:   # greedy decoding that reads every K/V row back from a `bits`-bit cache
        tokens[bits] = kc.generate_cached(model, prompt, n, qk.make_cache(mcfg, 1, P + n, bits, run.device))

    seconds = cm.time_interleaved({bits: lambda bits=bits: decode(bits) for bits in formats}, run.device,
                                  cfg.speed_rounds)
    for bits in tqdm(formats, desc="cache formats", leave=False):
        measured = qk.make_cache(mcfg, 1, 1024, bits).nbytes / 1024
        formula = (kc.cache_bytes(mcfg.n_layer, mcfg.n_kv_head, mcfg.head_dim, 1) if bits == 32 else
                   qk.quantized_cache_bytes(mcfg.n_layer, mcfg.n_kv_head, mcfg.head_dim, 1, bits))
        self_check(measured == formula, f"{bits}-bit cache holds {measured} bytes/token, formula {formula}")
        logits = qk.logits_through_cache(model, sample_ids, bits, n_prefill=16)
        nats, _ = qk.story_nats_through_cache(model, tok, stories, bits, run.device)
        same = (tokens[bits][0, P:] == tokens[32][0, P:]).long()
        quant.append({"bits": bits, "bytes_per_token": measured, "formula_bytes_per_token": formula,
                      "max_abs_logit_change": (logits - base_logits).abs().max().item(),
                      "mean_abs_logit_change": (logits - base_logits).abs().mean().item(),
                      "argmax_agreement": (logits.argmax(-1) == base_logits.argmax(-1)).float().mean().item(),
                      "story_nats_per_char": nats.sum().item() / chars,
                      "story_loss_change": (nats - base_nats).sum().item() / chars,
                      "greedy_tokens_before_first_difference": int(same.cumprod(0).sum()),
                      "decode_ms_per_token": 1e3 * statistics.median(seconds[bits]) / n,
                      "decode_time_vs_fp32": statistics.median(t / f for t, f in zip(seconds[bits], seconds[32]))})
        q = quant[-1]
        print(f"  {bits:2d} bits: {measured:5.0f} B/token, max |Δlogit| {q['max_abs_logit_change']:.3f}, "
              f"Δ story loss {q['story_loss_change']:+.5f} nats/char, {q['decode_ms_per_token']:.2f} ms/token")

# %% 5. Hits and misses: which K/V rows each step computes, which it reads back
with run.section("5. Hit / miss traces"):
    trace_ids = torch.tensor([tok.encode("\nOn a sleepy day, Owl had a kite."[:cfg.trace_chars])], device=run.device)
    ring, ring_sinks = 8, 2
    traces = {
        "no cache": cm.trace(model, trace_ids, None),
        "full cache": cm.trace(model, trace_ids, lambda: kc.FullCache(mcfg, 1, trace_ids.shape[1], device=run.device)),
        f"rolling cache ({ring} rows)": cm.trace(
            model, trace_ids, lambda: kc.RollingCache(mcfg, 1, ring, device=run.device)),
        f"{ring_sinks} sinks + {ring - ring_sinks} rolling": cm.trace(
            model, trace_ids, lambda: kc.RollingCache(mcfg, 1, ring, n_sink=ring_sinks, device=run.device)),
    }

# %% 6. A long text: full attention vs a rolling window vs attention sinks
with run.section("6. Long text: window and sinks"):
    long_text = "\n" + HundredAcreWood().text(cfg.long_chars, seed=run.seed + 1000)[:cfg.long_chars - 1]
    long_ids = torch.tensor([tok.encode(long_text)], device=run.device)
    run.estimate(4 * long_ids.shape[1] * 2e-3, what=f"streaming {long_ids.shape[1]} tokens through 3 caches")
    nll, ring_vs_window = cm.long_text_nll(model, long_ids, cfg.cache_size, cfg.sinks)
    self_check(ring_vs_window < 1e-3, f"the ring differs from GPT(window={cfg.cache_size}) by {ring_vs_window:.1e}")
    summary = cm.summarize_nll(nll, mcfg.block_size, cfg.cache_size)
    sink_ratio = cm.sink_ratio(model, long_ids[:, :mcfg.block_size], from_query=cfg.cache_size)
    for r in summary:
        print(f"  {r['variant']:<24} inside {r['inside']:.3f}, beyond the trained length {r['beyond']:.3f} nats/char")
    print(f"attention on token 0 / uniform: at most {max(map(max, sink_ratio)):.1f}× in any head")

# %% Results -> notes.md -> plots
run.finish({
    "model": {**mcfg.to_dict(), "head_dim": mcfg.head_dim, "params": model.num_params(), "zoo": bundle.entry.name},
    "identical": {"n_new": cfg.greedy_tokens, "identical": identical, **vs_shared},
    "speed": {"prompt_tokens": P, "rows": race, "step_ms": step_ms, "ring_size": cfg.cache_size},
    "popular_claim": {"quoted_speedup": 100, "new_tokens": longest["new_tokens"], "measured": longest["speedup"],
                      "token_pass_ratio": longest["token_pass_ratio"]},
    "memory": {"model_table": model_table, "measured_peak": peak_rows, "peak_shape": list(cfg.peak_shape),
               "real_models": real_rows, "ring_bytes": kc.RollingCache(mcfg, 1, cfg.cache_size, device="meta").nbytes},
    "quantized": {"rows": quant, "stories": len(kept), "floor_nats_per_char": reference["floor_nats_per_char"],
                  "decode_tokens": cfg.quant_tokens},
    "trace": {"tokens": [tok.decode([i]) for i in trace_ids[0].tolist()], "steps": traces, "ring": ring,
              "sinks": ring_sinks},
    "long_text": {"chars": long_ids.shape[1], "cache_size": cfg.cache_size, "sinks": cfg.sinks,
                  "block_size": mcfg.block_size, "nll": nll, "summary": summary,
                  "ring_vs_window_model_max_diff": ring_vs_window, "sink_ratio": sink_ratio,
                  "from_query": cfg.cache_size,
                  "floor_nats_per_char": HundredAcreWood().entropy()["nats_per_char"]},
})
