"""Chapter 14's notes and headline, from its results JSON alone."""
from shared.report import markdown_table


def ptq_row(r: dict, model: str, method: str) -> dict:
    return next(row for row in r["ptq"][model] if row["method"] == method)


def awq_row(r: dict, model: str, granularity: str, bits: int) -> dict:
    return next(row for row in r["awq_vs_rtn"]["rows"]
                if (row["model"], row["granularity"], row["bits"]) == (model, granularity, bits))


def headline(r: dict) -> dict:
    g = f"g{r['config']['group_size']}"
    planted = awq_row(r, "planted", "channel", 4)
    return {"floor_nats_per_char": r["floor"], "fp32_nats_per_char": r["fp32"],
            f"plain_int4_zp_{g}_vs_fp32": ptq_row(r, "plain", f"RTN int4 zero-point {g}")["vs_fp32"],
            f"plain_int2_zp_{g}_vs_fp32": ptq_row(r, "plain", f"RTN int2 zero-point {g}")["vs_fp32"],
            "planted_int4_channel_rtn_vs_fp32": planted["rtn_vs_fp32"],
            "planted_int4_channel_awq_vs_fp32": planted["awq_vs_fp32"],
            "planted_int4_channel_awq_minus_rtn_se": planted["awq_minus_rtn_se"],
            "gguf_q8_0_ppl_ratio": r["gguf"]["checks"].get("q8_0_ppl_over_f32_ppl")}


def _ptq_table(r: dict) -> str:
    rows = []
    for plain, planted in zip(r["ptq"]["plain"], r["ptq"]["planted"]):
        rows.append({"method": plain["method"], "bits_per_weight": plain["bits_per_weight"],
                     "bytes_on_disk": plain["bytes_on_disk"], "plain nats/char": plain["nats_per_char"],
                     "plain vs fp32": plain["vs_fp32"], "planted nats/char": planted["nats_per_char"],
                     "planted vs fp32": planted["vs_fp32"]})
    return markdown_table(rows)


def _outlier_table(r: dict) -> str:
    rows = [{"input of": a["input_of"], "plain: loudest / median channel": a["max_over_median_channel"],
             "planted: loudest / median channel": b["max_over_median_channel"],
             "plain: int8 levels of the median value": a["int8_levels_used_by_median_value"],
             "planted: int8 levels of the median value": b["int8_levels_used_by_median_value"]}
            for a, b in zip(r["outliers"]["plain"], r["outliers"]["planted"])]
    return markdown_table(rows)


def notes(r: dict) -> str:
    m, c, a, q = r["model"], r["config"], r["awq_vs_rtn"], r["qat"]
    awq_keys = ["model", "granularity", "bits", "rtn_vs_fp32", "awq_scales_only_vs_fp32", "awq_vs_fp32",
                "awq_minus_rtn", "awq_minus_rtn_se", "module_error_ratio"]
    parts = [
        f"Model: zoo `wood-llama` ({m['n_layer']} layers, d_model {m['d_model']}, d_ff {m['d_ff']}, {r['params']:,} "
        f"parameters); {r['stories']} held-out stories (those that fit the context); exact floor {r['floor']:.4f} "
        f"nats/char, fp32 {r['fp32']:.4f}; group size {c['group_size']}. **Planted**: the same model with the "
        f"{r['planted']['channels']} loudest channels of every RMSNorm (and {r['planted']['channels']} SwiGLU hidden "
        f"units per block) made {r['planted']['factor']:g}× louder and the weights reading them "
        f"{r['planted']['factor']:g}× smaller: the same function in float.",
        "**Post-training quantization (round to nearest), both models**\n\n" + _ptq_table(r),
        f"**AWQ vs RTN** (zero-point; {a['stories']} stories, {a['chars']:,} characters, the tables' stories first; "
        f"fp32 scores {a['fp32_nats_per_char']:.4f} on them). Losses are nats/char relative to fp32 on the same "
        "stories; `awq_minus_rtn_se` is the standard error of the paired per-story difference.\n\n"
        + markdown_table([{k: row[k] for k in awq_keys} for row in a["rows"]]),
        f"**RTN vs QAT** (plain model, zero-point, group {c['group_size']}, {c['qat_steps']} fine-tune steps; the fp32 "
        f"model fine-tuned for the same steps scores {q['fp32_control']:.4f})\n\n" + markdown_table(q["rows"]),
        "**Activation outliers** (inputs of each linear on calibration text)\n\n" + _outlier_table(r)]
    if r["speed"]["matmul"]:
        parts.append("**int8 kernel speed** (`torch._int_mm` vs fp32 matmul)\n\n"
                     + markdown_table(r["speed"]["matmul"]))
    b = r["bitsandbytes"]
    parts.append("**bitsandbytes layers, and ours in their 64-weight block layout**\n\n" + markdown_table(b["rows"])
                 if b["rows"] else b["skipped"])
    parts.append("**GGUF exports** (plain model)\n\n" + markdown_table(r["gguf"]["rows"]) + "\n\nChecks: "
                 + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                             for k, v in r["gguf"]["checks"].items()))
    e = r["awq_export"]
    parts.append(f"**AutoAWQ GEMM export** (planted model, AWQ-scaled): {e['quantized_linears']} linears, group "
                 f"{e['group_size']}, {e['bytes']:,} bytes; codes round-trip exactly: {e['codes_roundtrip_exact']}; "
                 f"dequantized weights vs the chapter's RTN: max relative difference "
                 f"{e['dequant_max_rel_diff_vs_chapter_rtn']:.2e}.")
    return "\n\n".join(parts)
