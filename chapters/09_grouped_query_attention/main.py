"""09 · Grouped-query attention: a trained multi-head model is converted to fewer K/V heads
(GQA, then MQA) by mean-pooling heads within groups, loses some quality, and wins most of it
back with a short fine-tune. The cache shrinks exactly by heads/groups; what that buys in
speed depends on whether decoding is memory-bound. Then multi-head latent attention caches one
small latent vector per token instead of K and V.

Read `attention_variants.py` first (the conversions and the cache formula), then this file.
Run it whole with `uv run chapters/09_grouped_query_attention/main.py`, or cell by cell (# %%)
in VS Code / PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from attention_variants import effective_rank, greedy_decode_mla, kv_cache_bytes, latent_bytes_per_token, to_gqa, to_mla
from shared import bench, cli, zoo
from shared.corpus import HundredAcreWood
from shared.errors import self_check
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig, KVCache
from shared.train import TrainConfig, estimate_seconds, train


@dataclass(frozen=True)
class Config:
    uptrain_steps: int = 40          # fine-tune steps after each conversion ("uptraining")
    batch_size: int = 16
    seq_len: int = 256
    held_out_stories: int = 200      # quality = nats/char on these, next to their exact floor
    latent_fractions: tuple = (8, 4, 2)   # MLA d_latent = d_model / each (d_model itself is exact: --full)
    new_tokens: int = 128            # decode-speed measurement
    prompt_lengths: tuple = (64, 1024)


PRESETS = {
    "quick": Config(uptrain_steps=8, batch_size=8, seq_len=128, held_out_stories=24, latent_fractions=(4, 2),
                    new_tokens=16, prompt_lengths=(32,)),
    "default": Config(),
    "full": Config(uptrain_steps=400, batch_size=32, seq_len=1024, held_out_stories=2000,
                   latent_fractions=(8, 4, 2, 1), new_tokens=512, prompt_lengths=(256, 4096)),
}

run = cli.start(PRESETS, cli.flag("--uptrain-steps", type=cli.positive_int,
                                  help="fine-tune steps after each conversion"))
cfg = run.cfg


def quality(model: GPT) -> float:
    """Nats per character on whole held-out stories (the floor on the same stories is known)."""
    return story_loss(model, tok, held_out, run.device)["model_nats_per_char"]


def uptrain(model: GPT, seed: int) -> dict:
    """A short fine-tune of the converted model ("uptraining" in the GQA paper)."""
    tc = TrainConfig(steps=cfg.uptrain_steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=1e-3,
                     warmup=max(1, cfg.uptrain_steps // 10), eval_every=0, eval_batches=2, aligned=True, seed=seed)
    return train(model, data, tc, run.device, desc=f"uptrain kv_heads={model.cfg.n_kv_head}", progress=True,
                 measure_peak=False)


def decode_speed(model: GPT, prompt: torch.Tensor, new_tokens: int) -> float:
    """Decode tokens/s with the KV cache: time(n tokens) - time(1 token) removes the prefill."""
    t_n = bench.time_fn(lambda: model.generate(prompt, new_tokens, temperature=0), run.device, warmup=1, repeat=3)
    t_1 = bench.time_fn(lambda: model.generate(prompt, 1, temperature=0), run.device, warmup=1, repeat=3)
    return (new_tokens - 1) / max(t_n - t_1, 1e-9)


# %% The starting point: a trained multi-head (MHA) Llama-shaped model from the zoo
bundle = zoo.load("wood-llama", run)
mha, tok, data = bundle.model, bundle.tokenizer, bundle.data
mcfg = mha.cfg
held_out = HundredAcreWood().stories(cfg.held_out_stories, seed=run.seed + 9_009)
floor = story_loss(mha, tok, held_out, run.device)["floor_nats_per_char"]
groups = [g for g in range(mcfg.n_head, 0, -1) if mcfg.n_head % g == 0]      # MHA ... MQA
latents = [mcfg.d_model // f for f in cfg.latent_fractions if mcfg.d_model // f > 0]
probe = TrainConfig(steps=cfg.uptrain_steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len)
n_runs = len(groups) + len(latents)
run.estimate(n_runs * (estimate_seconds(mha, probe, run.device) + 2), what=f"{n_runs} conversions + uptraining")

# %% 1. MHA -> GQA -> MQA: quality straight after mean-pooling, then after a short uptraining
with run.section("1. MHA → GQA → MQA by mean-pooling, then uptraining"):
    rows, curves = [], {}
    for g in groups:
        model = to_gqa(mha, g)
        before = quality(model)
        history = uptrain(model, seed=run.seed + g)
        after = quality(model)
        rows.append({"kv_heads": g, "group_size": mcfg.n_head // g, "nats_per_char_converted": before,
                     "nats_per_char_uptrained": after, "cache_fraction": g / mcfg.n_head})
        curves[str(g)] = history["train_loss"]
        print(f"kv_heads={g}: {before:.4f} nats/char after mean-pooling, {after:.4f} after "
              f"{cfg.uptrain_steps} steps (floor {floor:.4f})")

# %% 2. The cache in bytes: measured tensors against 2 × layers × kv_heads × head_dim × tokens × 4
with run.section("2. Cache bytes: measured vs the formula"):
    cache_rows = []
    for g in groups:
        gcfg = GPTConfig(**{**mcfg.to_dict(), "n_kv_head": g})
        for tokens in (256, 1024, 4096, 16384):
            measured = KVCache(gcfg, 1, tokens, device="meta").nbytes     # meta: shapes only, no memory
            formula = kv_cache_bytes(mcfg.n_layer, g, mcfg.head_dim, tokens)
            self_check(measured == formula, f"cache bytes {measured} differ from the formula's {formula}")
            cache_rows.append({"kv_heads": g, "tokens": tokens, "measured_bytes": measured, "formula_bytes": formula})
    # the popular claim: "~4x smaller cache" with 4 K/V groups for 16 query heads
    big = dict(vocab_size=256, n_layer=1, n_head=16, d_model=1024)
    mha16 = KVCache(GPTConfig(**big), 1, 4096, device="meta").nbytes
    gqa4 = KVCache(GPTConfig(**big, n_kv_head=4), 1, 4096, device="meta").nbytes
    claim = {"heads": 16, "kv_heads": 4, "mha_bytes": mha16, "gqa_bytes": gqa4, "ratio": mha16 / gqa4}
    print(f"16 heads -> 4 K/V groups at 4096 tokens: {mha16:,} -> {gqa4:,} bytes ({claim['ratio']:.2f}x)")

# %% 3. Decode speed and peak memory on this device
with run.section("3. Decode speed per K/V head count"):
    speed_rows = []
    val = torch.as_tensor(data.val[: max(cfg.prompt_lengths)].astype("int64"))
    for g in tqdm(groups, desc="decode timing", leave=False):
        model = to_gqa(mha, g)
        for length in cfg.prompt_lengths:
            prompt = val[:length][None].to(run.device)
            with bench.peak_memory(run.device) as mem:
                model.generate(prompt, cfg.new_tokens, temperature=0)
            speed_rows.append({"kv_heads": g, "prompt_tokens": length,
                               "decode_tokens_per_s": decode_speed(model, prompt, cfg.new_tokens),
                               "peak_bytes": mem.bytes,
                               "cache_bytes": kv_cache_bytes(mcfg.n_layer, g, mcfg.head_dim, length + cfg.new_tokens)})

# %% 4. Multi-head latent attention: cache one d_latent vector per token
with run.section("4. Multi-head latent attention"):
    ranks = {f"layer{i}": effective_rank(torch.cat([b.attn.k_proj.weight, b.attn.v_proj.weight]).detach().cpu())
             for i, b in enumerate(mha.blocks)}
    mla_rows = []
    prompt = val[:32][None].to(run.device)
    for r in latents:
        model = to_mla(mha, r)
        before = quality(model)
        cached = greedy_decode_mla(model, prompt, 16)       # the latent cache must reproduce ...
        uncached = prompt                                   # ... the uncached model's greedy tokens
        with torch.no_grad():
            for _ in range(16):
                uncached = torch.cat([uncached, model(uncached)[:, -1:].argmax(-1)], dim=1)
        uptrain(model, seed=run.seed + 100 + r)
        after = quality(model)
        seconds = bench.time_fn(lambda: greedy_decode_mla(model, prompt, cfg.new_tokens), run.device,
                                warmup=1, repeat=3)
        mla_rows.append({"d_latent": r, "bytes_per_token": latent_bytes_per_token(mcfg.n_layer, r),
                         "mha_bytes_per_token": kv_cache_bytes(mcfg.n_layer, mcfg.n_head, mcfg.head_dim, 1),
                         "nats_per_char_converted": before, "nats_per_char_uptrained": after,
                         "cache_matches_uncached": bool(torch.equal(cached, uncached)),
                         "decode_tokens_per_s": cfg.new_tokens / seconds})
        print(f"MLA d_latent={r}: {before:.4f} -> {after:.4f} nats/char; cache "
              f"{mla_rows[-1]['bytes_per_token']} vs {mla_rows[-1]['mha_bytes_per_token']} bytes/token (MHA)")

# %% Results -> notes.md -> plots
run.finish({"model": mcfg.to_dict(), "held_out_stories": len(held_out), "floor": floor, "groups": rows,
            "uptrain_curves": curves, "cache": cache_rows, "seed_claim": claim, "decode": speed_rows,
            "mla": mla_rows, "kv_effective_rank_99": ranks})
