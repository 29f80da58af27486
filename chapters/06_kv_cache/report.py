"""Chapter 06's notes and headline, from its results JSON alone."""
from shared.report import markdown_table


def quant_row(r: dict, bits: int) -> dict:
    return next(q for q in r["quantized"]["rows"] if q["bits"] == bits)


def race_row(r: dict, new_tokens: int) -> dict | None:
    return next((row for row in r["speed"]["rows"] if row["new_tokens"] == new_tokens), None)


def loss_row(r: dict, variant: str) -> dict:
    return next(row for row in r["long_text"]["summary"] if row["variant"] == variant)


def headline(r: dict) -> dict:
    longest = r["speed"]["rows"][-1]
    return {"identical_tokens": r["identical"]["identical"],
            f"speedup_at_{longest['new_tokens']}_tokens": round(longest["speedup"], 1),
            "int8_cache_smaller_by": round(quant_row(r, 32)["bytes_per_token"] / quant_row(r, 8)["bytes_per_token"], 2),
            "int8_story_loss_change": quant_row(r, 8)["story_loss_change"],
            "window_only_nats_per_char_beyond_training_length": loss_row(r, "window only")["beyond"],
            "full_attention_nats_per_char_beyond_training_length": loss_row(r, "full attention")["beyond"]}


def _columns(rows: list[dict], keys: tuple) -> list[dict]:
    return [{k: row[k] for k in keys if k in row} for row in rows]


def notes(r: dict) -> str:
    m, ident, speed, claim = r["model"], r["identical"], r["speed"], r["popular_claim"]
    q, lt = r["quantized"], r["long_text"]
    shape = dict(zip(("n_layer", "n_head", "d_model"), r["memory"]["peak_shape"]))
    race_keys = ("new_tokens", "uncached_s", "cached_s", "shared_generate_s", "rolling_s", "speedup",
                 "token_pass_ratio", "flop_ratio")
    return "\n\n".join([
        f"Model: zoo `{m['zoo']}` ({m['n_layer']} layers, {m['n_head']} heads × {m['head_dim']}, "
        f"{m['params']:,} parameters, trained on {m['block_size']}-character windows).",
        f"**1. Same tokens.** Greedy tokens identical (hand cached / uncached / shared generate with and "
        f"without cache, {ident['n_new']} tokens): **{ident['identical']}**. Hand cache vs "
        f"`shared.model.KVCache`: max |logit diff| {ident['max_abs_diff_vs_shared_kvcache']:.2e}.",
        f"**2. The race** (prompt {speed['prompt_tokens']} tokens; seconds per whole generation, median of 3 up "
        "to 100 new tokens, one run beyond)\n\n" + markdown_table(_columns(speed["rows"], race_keys)),
        f"The popular figure: ~{claim['quoted_speedup']}× from the cache. Measured here at {claim['new_tokens']} new "
        f"tokens: **{claim['measured']:.1f}×**; counting token passes predicts {claim['token_pass_ratio']:.0f}×.",
        "**3. Cache memory**, measured growth vs formula (fp32, shape "
        + ", ".join(f"{k}={v}" for k, v in shape.items()) + ")\n\n"
        + markdown_table(r["memory"]["measured_peak"], ".1f"),
        f"**4. Quantized cache** (one fp16 scale per token and head; {q['stories']} held-out stories, floor "
        f"{q['floor_nats_per_char']:.4f} nats/char; logits on one {m['block_size']}-character text; decode speed "
        f"over {q['decode_tokens']} greedy tokens)\n\n" + markdown_table(q["rows"]),
        f"**6. Loss on a long text** ({lt['chars']} chars, cache {lt['cache_size']} rows, {lt['sinks']} sinks; "
        f"nats/char inside positions {lt['cache_size']}..{lt['block_size'] - 1} and beyond the trained length "
        f"{lt['block_size']})\n\n" + markdown_table(lt["summary"]),
        "Attention on token 0 / uniform attention, per layer (rows) and head: "
        + "; ".join(", ".join(f"{v:.2f}" for v in layer) for layer in lt["sink_ratio"]),
    ])
