"""Chapter 02's notes and headline, from its results JSON alone."""
from shared.report import markdown_table


def headline(r: dict) -> dict:
    h = {}
    for scheme, s in r["schemes"].items():
        h[f"{scheme}_loss_in_range"] = round(s["bands"]["in_range"], 4)
        if "beyond" in s["bands"]:
            h[f"{scheme}_loss_beyond"] = round(s["bands"]["beyond"], 4)
    return h


def loss_rows(r: dict) -> list[dict]:
    T, L = r["config"]["train_len"], r["eval_len"]
    rows = []
    for scheme, s in r["schemes"].items():
        b = s["bands"]
        rows.append({"scheme": scheme,
                     f"loss, positions 0-{T - 1}": b["in_range"],
                     f"loss, positions {T}-{L - 1}": b.get("beyond", "error (no table rows)"),
                     f"whole {2 * T}-char window": b.get(f"whole_{2 * T}", "error"),
                     f"whole {L}-char window": b.get(f"whole_{L}", "error"),
                     "final val loss (train length)": s["history"]["val"][-1]["loss"],
                     "trained params": s["params"], "train s": round(s["train_seconds"]),
                     "tokens/s": round(s["tokens_per_s"])})
    return rows


def check_rows(r: dict) -> list[dict]:
    rows = [{"check": k, "max abs diff": v} for k, v in r["checks"]["vs_shared"].items()]
    rows += [{"check": f"layer-0 attention, {k}", "max abs diff": v}
             for k, v in r["checks"]["layer0_attention_vs_shared"].items()]
    return rows


def shuffle_rows(r: dict) -> list[dict]:
    rows = [{"model": "1-layer, no positions (random init)",
             "max change of last log-probs": r["checks"]["one_layer_nope_shuffle"]}]
    for scheme in ("none", "rope"):
        if scheme in r["schemes"]:
            rows.append({"model": f"{r['config']['n_layer']}-layer {scheme}, trained",
                         "max change of last log-probs": r["schemes"][scheme]["shuffle_sensitivity"]})
    return rows


def rope_view_rows(r: dict) -> list[dict]:
    v = r["rope_view"]
    rows = []
    for dist, view in v["views"].items():
        angles = [p["angle_deg"] for p in view]
        dots = [p["dot_whole_head"] for p in view]
        rows.append({"query - key distance": int(dist), "key positions": f"{view[0]['key_position']}-"
                     f"{view[-1]['key_position']}", "angle in the plane (deg), min": min(angles),
                     "max": max(angles), "q·k whole head, min": min(dots), "q·k whole head, max": max(dots)})
    return rows


def notes(r: dict) -> str:
    c = r["config"]
    T, L = c["train_len"], r["eval_len"]
    v = r["rope_view"]
    parts = [
        f"Model: {c['n_layer']} layers, {c['n_head']} heads, d_model {c['d_model']}, char-level (vocab "
        f"{r['vocab_size']}, text `{r['source']}`), trained {c['steps']} steps × {c['batch_size']} windows of {T} "
        f"chars; evaluated on {c['eval_windows']} fixed validation windows of {L} chars. Loss in nats/char.",
        markdown_table(loss_rows(r), ".3f"),
    ]
    if r["floor"]:
        parts.append(f"Entropy floor of the text (full context): {r['floor']['entropy_nats_per_char']:.3f} nats/char.")
    parts += [
        "**Hand-written vs shared**\n\n" + markdown_table(check_rows(r), ".1e"),
        "**Shuffling the prefix** (order blindness)\n\n" + markdown_table(shuffle_rows(r), ".2e"),
        f"**RoPE in one rotation plane** (pair {v['pair']}, ω = {v['omega']:.4g} rad/token, head_dim "
        f"{v['head_dim']})\n\n" + markdown_table(rope_view_rows(r), ".4f"),
    ]
    return "\n\n".join(parts)
