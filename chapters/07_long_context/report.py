"""Chapter 07's notes and headline, from its results JSON alone."""
from key_value_recall import band
from shared.report import markdown_table


def octaves(eval_len: int) -> list[tuple[int, int]]:
    """[1, 4), [4, 8), [8, 16), ... up to the evaluated length: context bands, one per doubling."""
    edges = [1, 4]
    while edges[-1] < eval_len:
        edges.append(edges[-1] * 2)
    return list(zip(edges[:-1], edges[1:]))


def far_band(c: dict) -> tuple[int, int]:
    """The last doubling of context evaluated: [eval_len / 2, eval_len], far past every training length."""
    return c["eval_len"] // 2, c["eval_len"] + 1


def model_named(r: dict, trained_len: int, window=None) -> dict:
    return next(m for m in r["recall"]["models"].values() if m["trained_len"] == trained_len and m["window"] == window)


def headline(r: dict) -> dict:
    c, scaling = r["config"], {(row["method"], row["T"]): row for row in r["scaling"]}
    t_max = max(c["bench_lengths"])
    short, long = model_named(r, c["short_len"]), model_named(r, c["long_len"])
    far = far_band(c)
    return {
        "tiled_vs_full_max_abs_diff": max(row["max |tiled - full|"] for row in r["correctness"]),
        f"largest_tensor_MiB_full_T{t_max}": scaling["full (T x T scores)", t_max]["largest_tensor_bytes"] / 2**20,
        f"largest_tensor_MiB_tiled_T{t_max}": scaling["tiled (online softmax)", t_max]["largest_tensor_bytes"] / 2**20,
        "checkpointing_peak_ratio": r["checkpointing"]["checkpointed"]["peak_bytes"]
        / max(1, r["checkpointing"]["plain"]["peak_bytes"]),
        f"recall_gap_trained_{c['long_len']}_inside": band(long["by_context"], 1, c["long_len"] + 1)["gap"],
        f"recall_gap_trained_{c['short_len']}_far": band(short["by_context"], *far)["gap"],
        f"recall_gap_trained_{c['long_len']}_far": band(long["by_context"], *far)["gap"],
    }


def recall_table(r: dict) -> str:
    """Loss per context band for every model, with how far above the floor it is on these sequences."""
    models = r["recall"]["models"]
    first = next(iter(models.values()))["by_context"]
    rows = []
    for lo, hi in octaves(r["config"]["eval_len"]):
        row = {"context (tokens)": f"{lo}–{hi - 1}", "exact floor": round(band(first, lo, hi)["floor"], 3)}
        for name, m in models.items():
            b = band(m["by_context"], lo, hi)
            row[name] = f"{b['loss']:.3f} (+{b['gap']:.3f})" if b["gap"] >= 0 else f"{b['loss']:.3f} ({b['gap']:.3f})"
        rows.append(row)
    return markdown_table(rows)


def notes(r: dict) -> str:
    c, ck, rc = r["config"], r["checkpointing"], r["recall"]
    scaling = [{"method": row["method"], "T": row["T"],
                "ms": "(memory only)" if row["seconds"] is None else round(1e3 * row["seconds"], 2),
                "peak MiB (measured)": round(row["peak_bytes"] / 2**20, 1),
                "largest tensor MiB": ("(fused kernel)" if row["largest_tensor_bytes"] is None
                                       else round(row["largest_tensor_bytes"] / 2**20, 2))} for row in r["scaling"]]
    steps = [{"step": mode, "peak MiB": round(ck[mode]["peak_bytes"] / 2**20, 1),
              "seconds": round(ck[mode]["seconds"], 3)} for mode in ("plain", "checkpointed")]
    training = [{"model": name, "trained on (tokens)": m["trained_len"], "window": m["window"] or "none",
                 "sequences per step": c["tokens_per_step"] // m["trained_len"],
                 "final train loss": round(m["history"]["train_loss"][-1], 4),
                 "tokens/s": round(m["history"]["tokens_per_s"])} for name, m in rc["models"].items()]
    gpu = r["gpu"]
    parts = [
        "**Tiled attention == full attention == SDPA** (float32; largest absolute difference)\n\n"
        + markdown_table([{"T": row["T"], "S": row["S"], "mask": row["mask"],
                           "tiled vs full": row["max |tiled - full|"], "full vs SDPA": row["max |full - SDPA|"]}
                          for row in r["correctness"]], ".1e"),
        f"**Attention cost vs sequence length** (one sequence, {c['bench_heads']} heads × {c['bench_dim']} dims, "
        f"float32, tiles of {c['block']})\n\n" + markdown_table(scaling),
        f"**Activation checkpointing** ({ck['layers']} layers, batch {ck['batch']} × {ck['seq_len']} tokens; "
        f"max gradient difference {ck['max_grad_diff']:.1e})\n\n" + markdown_table(steps),
        f"**Key-value recall** ({rc['keys']} keys × {rc['values']} values, a fresh table per sequence; "
        f"{c['steps']} steps of {c['tokens_per_step']} tokens for every model; "
        f"{c['n_layer']} layer, {c['n_head']} heads, d_model {c['d_model']}, RoPE)\n\n" + markdown_table(training),
        f"Loss per answer (nats) by context, mean over {c['eval_sequences']} fresh sequences of {c['eval_len']} "
        "tokens; in brackets how far above the best possible loss on these same sequences, for what that model "
        "can see (a window model's floor is the floor at its window)\n\n" + recall_table(r),
        ("**GPU attention forward**\n\n" + markdown_table(gpu["rows"])) if "rows" in gpu
        else f"GPU part: {gpu.get('skipped', '')}",
    ]
    return "\n\n".join(parts)
