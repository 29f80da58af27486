"""Chapter 01's notes and headline, from its results JSON alone."""
from shared.report import markdown_table


def _row(r: dict, prefix: str) -> dict:
    return next(t for t in r["throughput"] if t["name"].startswith(prefix))


def headline(r: dict) -> dict:
    a, p, e = r["agreement"], r["patching"], r["embeddings"]["models"]
    return {
        "vocab_size": r["training"]["vocab_size"],
        "naive_vs_incremental_speedup": r["naive_vs_fast"]["speedup"],
        "train_time_ratio_ours_hf": r["training"]["t_ours"] / r["training"]["t_hf"],
        "bytes_per_token_bpe": _row(r, "workbook")["bytes_per_token"],
        "tokens_per_s_naive": _row(r, "naive")["tokens_per_s"],
        "tokens_per_s_ours": _row(r, "workbook")["tokens_per_s"],
        "tokens_per_s_tiktoken": _row(r, "tiktoken")["tokens_per_s"],
        "tokens_per_s_hf": _row(r, "HF")["tokens_per_s"],
        "tiktoken_ids_identical": r["checks"]["ids_identical"],
        "merges_same_rank_as_hf": a["default_ties"]["same_position_frac"],
        "merges_same_rank_as_hf_with_hf_ties": a["hf_ties"]["same_position_frac"],
        "bytes_per_token_superwords": r["superwords"][-1]["bytes_per_token"][-1],
        "heldout_bytes_per_token_bpe": p["bpe"]["bytes_per_unit"],
        "heldout_bytes_per_patch_entropy": p["entropy_global"]["bytes_per_unit"],
        "byte_model_val_loss": p["byte_model"]["val"][-1]["loss"],
        "embedding_category_gap_learned": e["learned"]["category_similarity"]["gap"],
        "embedding_category_gap_onehot": e["one-hot"]["category_similarity"]["gap"],
    }


def _speed_rows(r: dict) -> list[dict]:
    rows = []
    for t in r["throughput"]:
        quoted = t.get("quoted_tokens_per_s")
        rows.append({"tokenizer": t["name"], "vocab": t["vocab"], "tokens": t["tokens"],
                     "bytes/token": round(t["bytes_per_token"], 3), "tokens/s here": f"{t['tokens_per_s']:,.0f}",
                     "MB/s": round(t["mb_per_s"], 2),
                     "quoted tokens/s": f"{quoted:,} ({t['quoted_as']})" if quoted else "",
                     "here / quoted": f"{t['tokens_per_s'] / quoted:.1f}×" if quoted else ""})
    return rows


def notes(r: dict) -> str:
    nf, tr, a, c, p, e = (r["naive_vs_fast"], r["training"], r["agreement"], r["checks"], r["patching"],
                          r["embeddings"])
    sweep, sw = r["vocab_sweep"], r["superwords"]
    return "\n\n".join([
        f"Text: `{r['text']['source']}`, {r['text']['bytes']:,} bytes. BPE vocab {tr['vocab_size']} "
        f"({tr['merges']} merges, {tr['reused_ids']} reused ids).",
        f"**Naive vs incremental BPE** (the first {nf['chars']:,} characters, vocab {nf['vocab']}, "
        f"{nf['merges']} merges; naive timed once, incremental the median of 3 after a warm-up): naive "
        f"{nf['naive_s']:.2f} s, incremental {nf['fast_s']:.3f} s, **{nf['speedup']:.0f}× faster**; identical "
        f"merges and counts = {nf['identical_merges']}.",
        "**Training time on the whole text** (one warm-up, median of 3, same process)\n\n" + markdown_table([
            {"tokenizer": "workbook BPE (Python)", "seconds": round(tr["t_ours"], 3)},
            {"tokenizer": "HF tokenizers (Rust)", "seconds": round(tr["t_hf"], 3)},
            {"tokenizer": "ratio ours / HF", "seconds": round(tr["t_ours"] / tr["t_hf"], 2)}]),
        f"**Merges vs HF**: identical for the first {a['default_ties']['common_prefix']}; "
        f"{a['default_ties']['same_position']}/{a['default_ties']['merges']} at the same rank, "
        f"{a['default_ties']['shared_set']} learned by both. With HF's tie order: "
        f"{a['hf_ties']['same_position']}/{a['hf_ties']['merges']} at the same rank.",
        f"**tiktoken from our merges**: ids identical = {c['ids_identical']}, round trip exact = "
        f"{c['roundtrip_exact']} ({c['texts_checked']} texts). The naive encoder gives the same ids as "
        f"bpe.py on the whole text = {c['naive_encoder_ids_identical']}.",
        "**Encoding the whole text**, one thread (one warm-up, median of 3; the naive row: one call), beside "
        "the figures quoted in one popular guide (hardware, text and vocabulary not stated)\n\n"
        + markdown_table(_speed_rows(r)),
        "**Bytes per token vs vocab size** (whole text)\n\n" + markdown_table(
            [{"vocab": v, "workbook BPE": round(o, 3), "HF": round(f, 3)}
             for v, o, f in zip(sweep["sizes"], sweep["ours"], sweep["hf"])]),
        "**Superwords** (bytes per token on the whole text)\n\n" + markdown_table(
            [{"tokenizer": f"BPE {br['base']} + {t - br['base']} superwords", "vocab": t, "bytes/token": round(b, 3)}
             for br in sw for t, b in zip(br["totals"], br["bytes_per_token"]) if t in (br["base"], br["totals"][-1])]),
        f"**Held-out comparison** ({p['bytes']:,} bytes; tokenizers and byte model trained on the other 90%; "
        f"byte model {p['byte_model']['params']:,} params, {p['byte_model']['steps']} steps, "
        f"val loss {p['byte_model']['val'][-1]['loss']:.3f} nats/byte)\n\n" + markdown_table(
            [{"unit": name, "count": p[key]["count"], "bytes/unit": round(p[key]["bytes_per_unit"], 3),
              "longest": p[key]["max"]}
             for name, key in (("BPE tokens", "bpe"), ("BPE + superwords", "superwords"),
                               ("entropy patches, global θ", "entropy_global"),
                               ("entropy patches, monotonic θ", "entropy_monotonic"))]),
        f"Thresholds matched to BPE's mean length: global θ = {p['thresholds']['global']:.3f} bits, "
        f"monotonic θ = {p['thresholds']['monotonic']:.3f} bits.",
        f"**One-hot vs learned embeddings** (Hundred Acre Wood, vocab {e['vocab']}, {e['n_ctx']} words of "
        f"context, full-context floor {e['floor_nats']:.3f} nats/word)\n\n" + markdown_table(
            [{"model": n, "input params": m["params_input"], "total params": m["params_total"],
              "val nats/word": round(m["val_loss"], 3), "cos within": round(m["category_similarity"]["within"], 3),
              "cos across": round(m["category_similarity"]["across"], 3),
              "cos gap at init": round(m["category_similarity_at_init"]["gap"], 3),
              "train s": round(m["train_seconds"], 1)} for n, m in e["models"].items()]),
    ])
