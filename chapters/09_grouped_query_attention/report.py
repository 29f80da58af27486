"""Chapter 09's notes and headline, from its results JSON alone."""
from shared.report import markdown_table


def headline(r: dict) -> dict:
    mha, mqa = r["groups"][0], r["groups"][-1]
    return {"floor_nats_per_char": r["floor"], "mha_nats_per_char": mha["nats_per_char_uptrained"],
            "mqa_converted_nats_per_char": mqa["nats_per_char_converted"],
            "mqa_uptrained_nats_per_char": mqa["nats_per_char_uptrained"],
            "seed_claim_cache_ratio": r["seed_claim"]["ratio"]}


def notes(r: dict) -> str:
    m, claim = r["model"], r["seed_claim"]
    return "\n\n".join([
        f"Model: zoo `wood-llama` ({m['n_layer']} layers, {m['n_head']} heads × {m['d_model'] // m['n_head']}, "
        f"d_model {m['d_model']}); {r['held_out_stories']} held-out stories; floor on them {r['floor']:.4f} "
        f"nats/char; uptraining {r['config']['uptrain_steps']} steps.",
        "**MHA → GQA → MQA** (mean-pooled K/V heads, then uptrained)\n\n" + markdown_table(r["groups"]),
        "**Decode speed** (greedy, KV cache, this device)\n\n" + markdown_table(r["decode"]),
        f"**The popular claim** — 16 heads, 4 K/V groups, 4096 tokens: cache {claim['mha_bytes']:,} → "
        f"{claim['gqa_bytes']:,} bytes, ratio {claim['ratio']:.2f}×.",
        "**Multi-head latent attention** (SVD-initialised, then uptrained)\n\n" + markdown_table(r["mla"]),
        f"K/V projection effective rank (99% energy) per layer: {r['kv_effective_rank_99']}",
    ])
