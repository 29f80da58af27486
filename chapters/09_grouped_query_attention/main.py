"""09 · Grouped-query attention: a trained multi-head model is converted to fewer K/V heads
(GQA, then MQA) by mean-pooling heads within groups, loses some quality, and wins most of it
back with a short fine-tune. The cache shrinks exactly by heads/groups; what that buys in
speed depends on whether decoding is memory-bound. Then multi-head latent attention caches one
small latent vector per token instead of K and V."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from attention_variants import effective_rank, greedy_decode_mla, kv_cache_bytes, latent_bytes_per_token, to_gqa, to_mla
from shared import bench, cli, zoo
from shared.corpus import HundredAcreWood
from shared.errors import WorkbookError
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig, KVCache
from shared.train import TrainConfig, estimate_seconds, train


def quality(model: GPT, tok, stories, device) -> float:
    """Nats per character on whole held-out stories (the floor on the same stories is known)."""
    return story_loss(model, tok, stories, device)["model_nats_per_char"]


def uptrain(model: GPT, data, run, steps: int, seed: int) -> dict:
    """A short fine-tune of the converted model ("uptraining" in the GQA paper)."""
    cfg = TrainConfig(steps=steps, batch_size=run.pick(8, 16, 32), seq_len=run.pick(128, 256, 1024), lr=1e-3,
                      warmup=max(1, steps // 10), eval_every=0, eval_batches=2, aligned=True, seed=seed)
    return train(model, data, cfg, run.device, desc=f"uptrain kv_heads={model.cfg.n_kv_head}", progress=True,
                 measure_peak=False)


def decode_speed(model: GPT, prompt: torch.Tensor, new_tokens: int, device) -> float:
    """Decode tokens/s with the KV cache: time(n tokens) - time(1 token) removes the prefill."""
    t_n = bench.time_fn(lambda: model.generate(prompt, new_tokens, temperature=0), device, warmup=1, repeat=3)
    t_1 = bench.time_fn(lambda: model.generate(prompt, 1, temperature=0), device, warmup=1, repeat=3)
    return (new_tokens - 1) / max(t_n - t_1, 1e-9)


def main(argv=None):
    p = cli.parser("09_grouped_query_attention", __doc__)
    p.add_argument("--uptrain-steps", type=int, default=None, help="fine-tune steps after each conversion")
    run = cli.setup(p, argv)
    steps = run.pick(8, 40, 400) if run.args.uptrain_steps is None else run.args.uptrain_steps
    if steps < 1:
        raise WorkbookError(f"--uptrain-steps must be at least 1 (got {steps})")

    # --- the starting point: a trained multi-head (MHA) Llama-shaped model from the zoo -----------
    bundle = zoo.load("wood-llama", run)
    mha, tok, data = bundle.model, bundle.tokenizer, bundle.data
    cfg = mha.cfg
    wood = HundredAcreWood()
    held_out = wood.stories(run.pick(24, 200, 2000), seed=run.seed + 9_009)
    floor = story_loss(mha, tok, held_out, run.device)["floor_nats_per_char"]
    groups = [g for g in range(cfg.n_head, 0, -1) if cfg.n_head % g == 0]  # MHA ... MQA
    # d_latent = d_model is exact (the tests prove it), so only the full preset spends a run on it;
    # quick keeps two sizes, enough to check the plumbing
    latents = [r for r in run.pick([cfg.d_model // 4, cfg.d_model // 2],
                                   [cfg.d_model // 8, cfg.d_model // 4, cfg.d_model // 2],
                                   [cfg.d_model // 8, cfg.d_model // 4, cfg.d_model // 2, cfg.d_model]) if r > 0]
    n_runs = len(groups) + len(latents)
    probe = TrainConfig(steps=steps, batch_size=run.pick(8, 16, 32), seq_len=run.pick(128, 256, 1024))
    run.estimate(n_runs * (estimate_seconds(mha, probe, run.device) + 2), what=f"{n_runs} conversions + uptraining")

    # --- 1. MHA -> GQA -> MQA: quality before and after a short uptraining -------------------------
    rows, curves = [], {}
    for g in groups:
        model = to_gqa(mha, g)
        before = quality(model, tok, held_out, run.device)
        history = uptrain(model, data, run, steps, seed=run.seed + g)
        after = quality(model, tok, held_out, run.device)
        rows.append({"kv_heads": g, "group_size": cfg.n_head // g, "nats_per_char_converted": before,
                     "nats_per_char_uptrained": after, "cache_fraction": g / cfg.n_head})
        curves[str(g)] = history["train_loss"]
        print(f"kv_heads={g}: {before:.4f} nats/char after mean-pooling, {after:.4f} after {steps} steps "
              f"(floor {floor:.4f})")

    # --- 2. cache bytes: measured tensors vs 2 × layers × kv_heads × head_dim × tokens × bytes ------
    contexts = [256, 1024, 4096, 16384]
    cache_rows = []
    for g in groups:
        gcfg = GPTConfig(**{**cfg.to_dict(), "n_kv_head": g})
        for ctx in contexts:
            measured = KVCache(gcfg, 1, ctx, device="meta").nbytes  # meta: shapes only, no memory
            formula = kv_cache_bytes(cfg.n_layer, g, cfg.head_dim, ctx)
            cache_rows.append({"kv_heads": g, "tokens": ctx, "measured_bytes": measured, "formula_bytes": formula})
            if measured != formula:
                raise WorkbookError(f"cache bytes {measured} differ from the formula's {formula}")
    # the seed's claim: "~4x smaller cache" with 4 K/V groups for 16 query heads
    claim_cfg = dict(vocab_size=256, n_layer=1, n_head=16, d_model=1024)
    mha16 = KVCache(GPTConfig(**claim_cfg), 1, 4096, device="meta").nbytes
    gqa4 = KVCache(GPTConfig(**claim_cfg, n_kv_head=4), 1, 4096, device="meta").nbytes
    claim = {"heads": 16, "kv_heads": 4, "mha_bytes": mha16, "gqa_bytes": gqa4, "ratio": mha16 / gqa4}

    # --- 3. decode speed and peak memory on this device -------------------------------------------
    new_tokens = run.pick(16, 128, 512)
    prompt_lengths = run.pick([32], [64, 1024], [256, 4096])
    speed_rows = []
    val = torch.as_tensor(data.val[: max(prompt_lengths)].astype("int64"))
    for g in tqdm(groups, desc="decode timing", leave=False):
        model = to_gqa(mha, g)
        for length in prompt_lengths:
            prompt = val[:length][None].to(run.device)
            with bench.peak_memory(run.device) as mem:
                model.generate(prompt, new_tokens, temperature=0)
            speed_rows.append({"kv_heads": g, "prompt_tokens": length, "decode_tokens_per_s":
                               decode_speed(model, prompt, new_tokens, run.device), "peak_bytes": mem.bytes,
                               "cache_bytes": kv_cache_bytes(cfg.n_layer, g, cfg.head_dim, length + new_tokens)})

    # --- 4. multi-head latent attention: cache a d_latent vector per token --------------------------
    ranks = {f"layer{i}": effective_rank(torch.cat([b.attn.k_proj.weight, b.attn.v_proj.weight]).detach().cpu())
             for i, b in enumerate(mha.blocks)}
    mla_rows = []
    prompt = val[:32][None].to(run.device)
    for r in latents:
        model = to_mla(mha, r)
        before = quality(model, tok, held_out, run.device)
        # the latent cache must reproduce the uncached model's greedy tokens exactly
        cached = greedy_decode_mla(model, prompt, 16)
        uncached = prompt
        with torch.no_grad():
            for _ in range(16):
                uncached = torch.cat([uncached, model(uncached)[:, -1:].argmax(-1)], dim=1)
        uptrain(model, data, run, steps, seed=run.seed + 100 + r)
        after = quality(model, tok, held_out, run.device)
        t0 = bench.time_fn(lambda: greedy_decode_mla(model, prompt, new_tokens), run.device, warmup=1, repeat=3)
        mla_rows.append({"d_latent": r, "bytes_per_token": latent_bytes_per_token(cfg.n_layer, r),
                         "mha_bytes_per_token": kv_cache_bytes(cfg.n_layer, cfg.n_head, cfg.head_dim, 1),
                         "nats_per_char_converted": before, "nats_per_char_uptrained": after,
                         "cache_matches_uncached": bool(torch.equal(cached, uncached)),
                         "decode_tokens_per_s": new_tokens / t0})
        print(f"MLA d_latent={r}: {before:.4f} → {after:.4f} nats/char; cache "
              f"{mla_rows[-1]['bytes_per_token']} vs {mla_rows[-1]['mha_bytes_per_token']} bytes/token (MHA)")

    mha_row, mqa_row = rows[0], rows[-1]
    headline = {"floor_nats_per_char": floor, "mha_nats_per_char": mha_row["nats_per_char_uptrained"],
                "mqa_converted_nats_per_char": mqa_row["nats_per_char_converted"],
                "mqa_uptrained_nats_per_char": mqa_row["nats_per_char_uptrained"],
                "seed_claim_cache_ratio": claim["ratio"]}
    run.save_results({"headline": headline, "config": cfg.to_dict(), "uptrain_steps": steps, "floor": floor,
                      "groups": rows, "uptrain_curves": curves, "cache": cache_rows, "seed_claim": claim,
                      "decode": speed_rows, "mla": mla_rows, "kv_effective_rank_99": ranks})
    run.record_notes(
        f"Model: zoo `wood-llama` ({cfg.n_layer} layers, {cfg.n_head} heads × {cfg.head_dim}, d_model {cfg.d_model}); "
        f"{len(held_out)} held-out stories; floor on them {floor:.4f} nats/char; uptraining {steps} steps.\n\n"
        "**MHA → GQA → MQA** (mean-pooled K/V heads, then uptrained)\n\n" + cli.markdown_table(rows) +
        "\n\n**Decode speed** (greedy, KV cache, this device)\n\n" + cli.markdown_table(speed_rows) +
        f"\n\n**Seed claim** — 16 heads, 4 K/V groups, 4096 tokens: cache {claim['mha_bytes']:,} → "
        f"{claim['gqa_bytes']:,} bytes, ratio {claim['ratio']:.2f}×.\n\n"
        "**Multi-head latent attention** (SVD-initialised, then uptrained)\n\n" + cli.markdown_table(mla_rows) +
        f"\n\nK/V projection effective rank (99% energy) per layer: {ranks}")

    import visualize
    visualize.draw(run.results_path, run.plots_dir)


if __name__ == "__main__":
    cli.run_main(main)
