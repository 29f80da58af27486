"""Chapter 13's notes and headline, from its results JSON alone (any part may be missing)."""
import numpy as np

from shared.report import markdown_table

PART_KEYS = {"ladder": ("ladder",), "at_scale": ("launches", "tricks", "resume"),
             "data": ("duplicates", "early_stopping", "synthetic_vs_real", "noise")}


def _mib(b) -> float:
    return round(b / 2**20, 2)


# ------------------------------------------------------------------------------ headline
def headline(r: dict) -> dict:
    h = {}
    if "ladder" in r:
        h.update(ladder_headline(r["ladder"]))
    if "launches" in r:
        ok = [x for x in r["launches"]["runs"] if not x.get("failed")]
        h["launches_ok"] = len(ok)
        h["max_loss_diff_vs_single"] = max((x["max_abs_loss_diff_vs_single"] for x in ok), default=None)
    if "resume" in r:
        h["resume_max_abs_loss_diff"] = r["resume"]["max_abs_loss_diff"]
    if "early_stopping" in r:
        es = r["early_stopping"]
        h.update(early_stop_best_step=es["best_step"], early_stop_best_val=es["best_val"],
                 early_stop_final_val=es["final_val"])
    if "noise" in r:
        h.update({f"noise_{c['trained_on']}_on_{c['scored_on']}".replace(" ", "_"): c["nats_per_char"]
                  for c in r["noise"]["cells"]})
    if "synthetic_vs_real" in r:
        runs = r["synthetic_vs_real"]["runs"]
        h.update(english_loss_english_only=runs["0% wood"]["final"]["english"],
                 english_loss_wood_only=runs["100% wood"]["final"]["english"])
    return h


def ladder_headline(lad: dict) -> dict:
    held, ff, n_opt = lad["held_out"], lad.get("frontier_fit") or {}, lad.get("n_opt") or {}
    return {"floor_nats_per_char": lad["floor"], "frontier_exponent": ff.get("a"), "n_opt_exponent": n_opt.get("a"),
            "frontier_local_slopes": [x["a"] for x in lad.get("frontier_slopes", [])],
            "held_out_gap_measured": held["gap"],
            **{f"held_out_error_{k}_pct": None if e is None else 100 * e for k, e in held["errors"].items()}}


# ------------------------------------------------------------------------------ notes
def notes(r: dict) -> str:
    blocks = []
    if "ladder" in r:
        blocks.append(ladder_notes(r["ladder"]))
    if "launches" in r:
        blocks.append(launches_notes(r["launches"]))
    if "tricks" in r:
        blocks.append(tricks_notes(r["tricks"]))
    if "resume" in r:
        blocks.append(resume_notes(r["resume"]))
    if "duplicates" in r:
        blocks.append(duplicates_notes(r["duplicates"]))
    if "early_stopping" in r:
        blocks.append(early_stopping_notes(r["early_stopping"]))
    if "synthetic_vs_real" in r:
        blocks.append(synthetic_notes(r["synthetic_vs_real"]))
    if "noise" in r:
        blocks.append(noise_notes(r["noise"]))
    missing = [p for p, keys in PART_KEYS.items() if not any(k in r for k in keys)]
    if missing:
        blocks.append("Not run yet with this preset: part " + ", ".join(f"`{p}`" for p in missing)
                      + " (`main.py --part NAME`).")
    return "\n\n".join(blocks)


def _g(x, fmt=".4f"):
    return "-" if x is None else format(x, fmt)


def ladder_notes(lad: dict) -> str:
    c, budgets = lad["config"], lad["config"]["budgets"]
    rows = []
    for sz in lad["sizes"]:
        by = {p["budget"]: p for p in sz["points"]}
        rows.append({"model (L, d, heads)": str(tuple(sz["size"])), "non-emb params N": f"{sz['params']:,}",
                     **{f"C={C:.0e}: steps / gap": (f"{by[C]['steps']} / {by[C]['gap']:.4f}" if C in by else "-")
                        for C in budgets}, "CPU s": round(sz["cpu_s"], 1)})
    iso = [{"budget C": f"{x['budget']:.0e}", "N* (vertex)": _g(x.get("vertex_params"), ",.0f"),
            "gap at N*": _g(x.get("vertex_gap")), "minimum inside the grid": "yes" if x.get("interior") else "no"}
           for x in lad["isoflop"]]
    front = [{"C (FLOPs)": f"{p['flops']:.3g}", "N": f"{p['params']:,}", "gap to floor": round(p["gap"], 4)}
             for p in lad["frontier"]]
    ff, n_opt, ch, held = lad.get("frontier_fit"), lad.get("n_opt"), lad.get("chinchilla_gap"), lad["held_out"]
    laws = []
    if ff:
        laws.append(f"frontier: gap = {ff['k']:.3g} · C^{ff['a']:.3f} (r² = {ff['r2']:.3f})")
    if lad.get("frontier_slopes"):
        slopes = [f"{x['a']:.2f} ({x['from']:.2g} → {x['to']:.2g} FLOPs)" for x in lad["frontier_slopes"]]
        laws.append("the frontier's slope between neighbouring budgets: " + ", then ".join(slopes)
                    + " (a power law keeps one slope)")
    if n_opt:
        laws.append(f"compute-optimal size from the isoFLOP vertices: N* ∝ C^{n_opt['a']:.2f}")
    if ch:
        laws.append(f"Chinchilla form on the gap, E = floor: A = {ch['A']:.3g}, α = {ch['alpha']:.3f}, "
                    f"B = {ch['B']:.3g}, β = {ch['beta']:.3f}")
    pred = [{"predictor": k, "predicted gap": _g(v), "measured gap": round(held["gap"], 4),
             "error": "-" if held["errors"][k] is None else f"{100 * held['errors'][k]:+.1f}%"}
            for k, v in held["predicted"].items()]
    return "\n\n".join([
        f"**The isoFLOP ladder**: exact floor on the {c['eval_stories']} evaluation stories "
        f"**{lad['floor']:.4f} nats/char**; a perfect model that looks back only 32 characters sits "
        f"{lad['long_range_gap']:.4f} above it. Batch {c['batch_size']} × {c['seq_len']} characters, peak lr "
        f"{c['lr']:g} for every size, WSD with a {c['cooldown']:.0%} linear cooldown; one trunk per size, a cooled "
        f"copy per budget (D = C / 6N); a cell with fewer than {c['min_steps']} steps is not trained. "
        f"{lad['cpu_s']:.0f} CPU s in all.",
        markdown_table(rows), "**IsoFLOP minima** (a parabola in ln N through each budget's gaps)\n\n"
        + markdown_table(iso), "**Compute-efficient frontier** (the best gap at each compute)\n\n"
        + markdown_table(front), "; ".join(laws) + ".",
        f"**Held-out budget** C = {held['budget']:.0e}: model {tuple(held['size'])} (N = {held['params']:,}, "
        f"{held['steps']} steps), predicted before it trained:\n\n" + markdown_table(pred)])


def launches_notes(d: dict) -> str:
    rows = []
    for x in d["runs"]:
        if x.get("failed"):
            rows.append({"launch": x["label"], "processes": "-", "final loss": f"failed (exit {x['returncode']})"})
            continue
        rank0, rss = x["per_rank"][0], max(p["peak_rss_growth_bytes"] for p in x["per_rank"])
        rows.append({"launch": x["label"], "processes": x["world_size"], "final loss": round(x["losses"][-1], 6),
                     "max abs loss - single": f"{x['max_abs_loss_diff_vs_single']:.1e}",
                     "params / rank MiB": _mib(rank0["param_bytes"]),
                     "Adam state / rank MiB": _mib(rank0["optimizer_state_bytes"]),
                     "peak RSS growth / rank MiB": round(rss / 2**20, 1),
                     "launch + train s": round(x["launch_wall_s"], 1)})
    return (f"**One step, four launchers** (2 CPU processes over gloo, {d['steps']} steps, global batch 8)\n\n"
            + markdown_table(rows))


def tricks_notes(t: dict) -> str:
    c, pr, g, acc = t["checkpointing"], t["precision"], t["galore"], t["grad_accumulation"]
    opts = [k for k, v in g.items() if isinstance(v, dict)]
    rows = [{"trick": f"activation checkpointing, model {tuple(c['size'])}",
             "without": f"{c['plain']['peak_memory_bytes'] / 2**20:.0f} MiB, {c['plain']['step_s']:.2f} s/step",
             "with": f"{c['checkpointed']['peak_memory_bytes'] / 2**20:.0f} MiB, "
                     f"{c['checkpointed']['step_s']:.2f} s/step"},
            {"trick": "bf16 autocast on this CPU (step; 1024² matmul)",
             "without": f"fp32 {pr['fp32']['step_s']:.2f} s; {pr['matmul_gflops']['fp32']:.1f} GFLOP/s",
             "with": f"bf16 {pr['bf16 autocast']['step_s']:.2f} s; {pr['matmul_gflops']['bf16']:.1f} GFLOP/s"},
            {"trick": "gradient accumulation k = 2, 4, 8: max abs(g_accum - g_big)", "without": "-",
             "with": ", ".join(f"{v:.1e}" for v in acc["max_abs_grad_diff_by_k"].values())},
            {"trick": f"optimizer state of a {g['params']:,}-param model (held-out nats/char)",
             "without": f"{opts[0]}: {_mib(g[opts[0]]['optimizer_state_bytes'])} MiB ({g[opts[0]]['eval_loss']:.3f})",
             "with": f"{opts[1]}: {_mib(g[opts[1]]['optimizer_state_bytes'])} MiB ({g[opts[1]]['eval_loss']:.3f})"}]
    return (f"**Tricks, measured small** (this CPU's bf16 units: {pr['cpu_bf16_units']})\n\n" + markdown_table(rows))


def resume_notes(s: dict) -> str:
    val = ", ".join(f"{a:.4f} / {b:.4f}" for a, b in zip(s["val_uninterrupted"], s["val_resumed"]))
    return (f"**Checkpoint and resume**: model {tuple(s['size'])}, {s['steps']} steps, stopped after step "
            f"{s['stop_at']} and resumed from a {s['checkpoint_bytes'] / 2**10:.0f} KiB checkpoint (weights, AdamW "
            f"moments, step, RNG states) in a new model object: largest difference of the per-step training loss "
            f"from the uninterrupted run **{s['max_abs_loss_diff']:.1e}** over {len(s['resumed'])} steps; "
            f"validation losses uninterrupted / resumed: {val}. The uninterrupted run trained at "
            f"{s['tokens_per_s']:,.0f} tokens/s, MFU {s['mfu']:.1%} of a {s['peak_flops'] / 1e9:.0f} GFLOP/s fp32 "
            "matmul peak (probed before and after, the best kept: never above 100%).")


def duplicates_notes(d: dict) -> str:
    names = [k for k, v in d.items() if isinstance(v, dict) and "eval_loss" in v]
    st = d["dedup_on_first_1500_of_repeated"]
    rows = [{"training data": k, "held-out nats/char": round(d[k]["eval_loss"], 4),
             "train loss, last 10 steps": round(float(np.mean(d[k]["train_loss"][-10:])), 4)} for k in names]
    return (f"**Duplicated vs fresh data**: model {tuple(d['size'])}, {d['steps']} steps, the same tokens; "
            f"the repeated corpus holds {d['unique_in_repeated']} distinct stories among {d['documents']:,}.\n\n"
            + markdown_table(rows) + f"\n\nDedup of the first 1,500 documents of the repeated corpus: "
            f"{st['exact_duplicates']:,} exact and {st['near_duplicates']} near duplicates removed, {st['kept']} kept.")


def early_stopping_notes(es: dict) -> str:
    rows = [{"step": c["step"], "train loss (chunk mean)": round(c["train_loss"], 4),
             "validation loss": round(c["val_loss"], 4),
             "": "best" if c["step"] == es["best_step"] else "early stopping ends here" if c["step"] == es["stopped_at"]
             else ""} for c in es["curve"]]
    return (f"**Early stopping**: model {tuple(es['size'])} on {es['train_chars']:,} training characters "
            f"(validation: {es['val_chars']:,} other characters), validation loss every {es['check_every']} steps, "
            f"patience {es['patience']}. Best {es['best_val']:.4f} at step {es['best_step']}; the run stops at step "
            f"{es['stopped_at']} and hands back the best weights ({es['restored_val']:.4f}); "
            f"trained on to step {es['steps']} it ends at {es['final_val']:.4f}.\n\n" + markdown_table(rows))


def synthetic_notes(sv: dict) -> str:
    rows = [{"training data": k, "English held-out (nats/char)": round(v["final"]["english"], 3),
             "wood held-out (nats/char)": round(v["final"]["wood"], 3)} for k, v in sv["runs"].items()]
    return (f"**Synthetic vs real data**: model {tuple(sv['size'])}, {sv['steps']} steps of {sv['batch']} x "
            f"{sv['seq_len']} characters, lr {sv['lr']:g}, one character tokenizer ({sv['vocab_size']} symbols) for "
            f"both texts; losses on fixed held-out windows of each.\n\n" + markdown_table(rows))


def noise_notes(nz: dict) -> str:
    floor = nz["floor_nats_per_char"]
    rows = [{"trained on": x["name"], **{f"scored on {k}": round(v, 3) for k, v in x["scored"].items()},
             "train loss, last 10 steps": round(float(np.mean(x["train_loss"][-10:])), 3)} for x in nz["runs"]]
    return (f"**Noise injection**: model {tuple(nz['size'])}, {nz['steps']} steps of {nz['batch']} x "
            f"{nz['seq_len']} characters, lr {nz['lr']:g}; every model scored on {nz['eval_stories']} whole held-out "
            f"stories, clean and under each noise. Exact floor of the clean stories: **{floor:.4f} nats/char** "
            "(the noisy stories' floor is higher and not computed).\n\n" + markdown_table(rows)
            + "\n\nThe 2x2 design (nats/char, minus the clean floor in brackets):\n\n"
            + markdown_table([{"trained on": c["trained_on"], "scored on": c["scored_on"],
                               "nats/char": round(c["nats_per_char"], 4),
                               "minus clean floor": round(c["minus_clean_floor"], 4)} for c in nz["cells"]]))
