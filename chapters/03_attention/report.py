"""Chapter 03's notes and headline, from its results JSON alone."""
from shared.report import markdown_table


def sweep_value(r: dict, key: str, multiplier: float) -> float:
    """A temperature-sweep value at one score multiplier."""
    t = r["temperature"]
    return t[key][min(range(len(t["multipliers"])), key=lambda i: abs(t["multipliers"][i] - multiplier))]


def headline(r: dict) -> dict:
    s, n, longest = r["scaling"], r["named_heads"], r["timing"][-1]
    return {"max_abs_diff_vs_reference": max(c["max_abs_diff"] for c in r["checks"]),
            f"entropy_bits_d{s['dims'][-1]}_scaled": s["entropy_scaled"][-1],
            f"entropy_bits_d{s['dims'][-1]}_unscaled": s["entropy_unscaled"][-1],
            "previous_head_over_uniform": n["previous"]["over_uniform"],
            "best_copy_head_over_uniform": n["copy"]["over_uniform"],
            "future_mass_without_mask": r["causal"]["mean_future_mass"],
            "ending_fact_nats_per_story": r["ending_facts"]["fact_nats_per_story"],
            "loss_as_trained": sweep_value(r, "loss", 1.0),
            "loss_without_sqrt_d": sweep_value(r, "loss", r["temperature"]["root_head_dim"]),
            "floor": r["temperature"]["floor"], f"sdpa_speedup_T{longest['T']}": longest["speedup"]}


def _hand(h: dict) -> str:
    rows = [{"key": tok, "k": str(h["K"][i]), "q·k": h["dots"][i], f"÷√{h['d']}": h["scaled"][i],
             "exp": round(h["exps"][i], 3), "weight": round(h["weights"][i], 3),
             "weight × v": str([round(x, 3) for x in h["contributions"][i]])} for i, tok in enumerate(h["tokens"])]
    matrix = [{"query": tok, **{f"score·{k}": s for k, s in zip(h["tokens"], h["scores_matrix"][i])},
               **{f"weight·{k}": round(w, 3) for k, w in zip(h["tokens"], h["weights_matrix"][i])}}
              for i, tok in enumerate(h["tokens"])]
    return (f"**Step 1 by hand** — query {h['query']!r}, q = {h['Q'][-1]}, d = {h['d']}\n\n"
            + markdown_table(rows, floatfmt="g")
            + f"\n\nSum of exp = {h['exp_sum']:.3f}; output = {[round(x, 3) for x in h['output']]}.\n\n"
            "**Steps 2-3 on the same tokens** — every query at once: scores Q Kᵀ/√d, then the weights after "
            "the causal mask and the softmax\n\n" + markdown_table(matrix, floatfmt="g"))


def _heads(r: dict) -> str:
    s, named, f = r["head_stats"], r["named_heads"], r["ending_facts"]
    rows = [{"pattern": key, "layer": h["layer"], "head": h["head"], "value": h["value"],
             "uniform": s["uniform"][key], "× uniform": h["over_uniform"],
             "named": "yes" if h["named"] else "no (below 2× uniform)"} for key, h in named.items()]
    return (f"**Inside the trained model** ({r['model']['name']}, {s['stories']} stories): the head with the most "
            "weight on each pattern\n\n" + markdown_table(rows, floatfmt=".3f")
            + f"\n\nThe ending's hero, colour and object (determined by the opening: 0 nats for a perfect model) "
            f"cost the model {f['fact_nats_per_story']:.2f} nats per story (guessing each among 8: "
            f"{f['guess_nats_per_story']:.2f}), {f['fact_share_of_gap']:.0%} of its whole gap to the floor "
            f"({f['gap_nats_per_story']:.2f} nats per story, {f['stories']} stories)."
            + f"\n\nWithout the causal mask the trained heads would put {r['causal']['mean_future_mass']:.1%} of "
            "their weight (mean over layers, heads and rows of the example story) on future tokens.")


def notes(r: dict) -> str:
    s, t = r["scaling"], r["temperature"]
    scale_rows = [{"d": d, "std ÷√d": s["score_std_scaled"][i], "std raw": s["score_std_unscaled"][i],
                   "entropy ÷√d (bits)": s["entropy_scaled"][i], "entropy raw (bits)": s["entropy_unscaled"][i],
                   "max weight ÷√d": s["max_weight_scaled"][i], "max weight raw": s["max_weight_unscaled"][i],
                   "‖J‖ ÷√d": s["jacobian_scaled"][i], "‖J‖ raw": s["jacobian_unscaled"][i]}
                  for i, d in enumerate(s["dims"])]
    temp = [{"score multiplier": m, "loss nats/char": t["loss"][i], "mean entropy bits": t["entropy"][i]}
            for i, m in enumerate(t["multipliers"])]
    return "\n\n".join([
        _hand(r["hand"]),
        "**Steps checked against torch**\n\n" + markdown_table(r["checks"], floatfmt=".2e"),
        f"Changing only the last token moves earlier outputs by {r['leak']['masked']:g} with the causal mask "
        f"and by {r['leak']['unmasked']:.3g} without it.",
        f"**Why √d** ({s['keys']} keys, {s['samples']} samples per d)\n\n" + markdown_table(scale_rows, ".3g"),
        _heads(r),
        f"**Attention temperature after training** (loss on {t['stories']} stories; multiplier "
        f"{t['root_head_dim']:g} = √head_dim = no ÷√d)\n\n" + markdown_table(temp, floatfmt=".4g")
        + f"\n\nExact floor on the same stories: {t['floor']:.4f} nats/char.",
        f"**Causal attention forward: written out vs SDPA** (peak memory: {r['memory_kind']})\n\n"
        + markdown_table(r["timing"], floatfmt=".3g"),
    ])
