"""Chapter 05's notes and headline, from its results JSON alone."""
from shared.report import markdown_table

SWEEP_COLUMNS = ("entropy_bits", "distinct_2", "distinct_4", "self_bleu", "repetition", "sentence_validity",
                 "story_wellformed", "story_validity", "complete_stories")


def rows_of(r: dict, family: str) -> dict:
    """temperature -> sweep row, for one family."""
    return {x["temperature"]: x for x in r["sweep"] if x["family"] == family}


def combination(r: dict) -> list[dict]:
    """top-k alone, top-p alone and both together at every temperature of the sweep."""
    k, p, both = rows_of(r, "top-k 5"), rows_of(r, "top-p 0.9"), rows_of(r, "top-k 5 + top-p 0.9")
    out = []
    for t in sorted(set(k) & set(p) & set(both)):
        row = {"T": t}
        for key in ("sentence_validity", "story_wellformed", "distinct_4"):
            row |= {f"{key} top-k": k[t][key], f"{key} top-p": p[t][key], f"{key} both": both[t][key]}
        out.append(row)
    return out


def headline(r: dict) -> dict:
    named = {x["preset"]: x for x in r["named"]}
    temp = rows_of(r, "temperature only")
    t_hi = max(temp)
    return {"model_nats_per_char": r["model"]["model_nats_per_char"],
            "floor_nats_per_char": r["model"]["floor_nats_per_char"],
            "greedy_repetition": r["repetition"]["rates"]["greedy"],
            "real_text_repetition": r["repetition"]["rates"]["real text"],
            f"sentence_validity_T{t_hi:g}": temp[t_hi]["sentence_validity"],
            f"sentence_validity_T{t_hi:g}_min_p_0.1": rows_of(r, "min-p 0.1")[t_hi]["sentence_validity"],
            **{f"{name}_story_wellformed": named[name]["story_wellformed"] for name in named},
            "dashboard_chars_in_tree_T1": min(x["T=1"] for x in r["dashboard"]["expected_chars"]),
            "dashboard_bytes": r["dashboard"]["bytes"]}


def notes(r: dict) -> str:
    m = r["model"]
    sweep = [{"rule": x["label"], **{k: x[k] for k in SWEEP_COLUMNS}} for x in r["sweep"]]
    named = [{"preset": x["preset"], "rule": x["label"], **{k: x[k] for k in SWEEP_COLUMNS}} for x in r["named"]]
    rep = r["repetition"]
    return "\n\n".join([
        f"Model: zoo `{m['name']}` ({m['params'] / 1e6:.2f}M parameters, context {m['block_size']}, "
        f"{m['vocab_size']} characters): {m['model_nats_per_char']:.4f} nats/char on {m['stories']} real stories, "
        f"where a perfect model scores {m['floor_nats_per_char']:.4f}.",
        "**Our samplers vs Hugging Face warpers and shared.model.sample_logits**\n\n" + markdown_table(r["checks"]),
        f"**Sweep** ({r['config']['n_samples']} stories per rule, {r['sweep_chars']} characters each, "
        "from a bare newline)\n\n" + markdown_table(sweep),
        "**Real text, same length**\n\n" + markdown_table(
            [{"rule": "real text", **{k: r["corpus_reference"][k] for k in SWEEP_COLUMNS}}]),
        "**Named presets**\n\n" + markdown_table(named),
        "**top-k 5, top-p 0.9, and both** (validity and diversity at each temperature)\n\n"
        + markdown_table(combination(r), floatfmt=".3g"),
        f"**Repetition**: share of word {rep['ngram']}-grams already said in the same text, continuing "
        f"{rep['prompts']} real story openings\n\n"
        + markdown_table([{"rule": k, "rate": v} for k, v in rep["rates"].items()]),
        f"**Dashboard** ({r['dashboard']['bytes'] / 1024:.0f} KiB): characters a sampled continuation stays "
        "inside the precomputed tree, on average, per prompt and rule\n\n"
        + markdown_table(r["dashboard"]["expected_chars"], floatfmt=".3g"),
    ])
