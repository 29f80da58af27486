"""Chapter 10's notes and headline, from its results JSON alone."""
from norm_bakeoff import BAKE_OFF, featured, recipe_mean, recipe_runs
from shared.report import markdown_table


def headline(r: dict) -> dict:
    failing = {}
    for position in ("pre", "post"):
        for warm in (False, True):
            lrs = [c["lr"] for c in r["sweep"] if c["position"] == position and bool(c["warmup"]) == warm
                   and c["status"] != "trains"]
            failing[f"first_failing_lr_{position}_{'warmup' if warm else 'no_warmup'}"] = min(lrs) if lrs else None
    spreads = [v for v in r["seed_spread"].values() if v is not None]
    return {"entropy_floor_nats_per_char": r["entropy_floor_nats_per_char"],
            "unigram_nats_per_char": r["unigram_nats_per_char"],
            "gpt2_val_nats_per_char": recipe_mean(r, BAKE_OFF[0].name),
            "llama_val_nats_per_char": recipe_mean(r, "RMSNorm + SwiGLU (Llama)"),
            "post_norm_val_nats_per_char": recipe_mean(r, "post-norm LayerNorm + GELU (2017)"),
            "largest_seed_spread_nats_per_char": max(spreads) if spreads else None,
            **failing, "hand_functions_match_torch": all(c["forward_ok"] and c["gradcheck"] for c in r["checks"])}


def check_rows(r: dict) -> list[dict]:
    return [{"function": c["function"], "forward max err (fp32)": c["forward_max_err_fp32"],
             "backward max err (fp64)": c["backward_max_err_vs_torch_fp64"],
             "gradcheck (fp64)": "pass" if c["gradcheck"] else "FAIL",
             "buggy backward": c["bug"], "its max err": c["buggy_backward_err_vs_torch_fp64"],
             "caught": "yes" if c["bug_caught_by_gradcheck"] else "NO"} for c in r["checks"]]


def _fmt(v) -> str:
    return "nan" if v is None else f"{v:.3f}"


def bake_rows(r: dict) -> list[dict]:
    rows = []
    for recipe in BAKE_OFF:
        runs = recipe_runs(r, recipe.name)
        spread = r["seed_spread"].get(recipe.name)
        row = {"recipe": recipe.name, "params": runs[0]["params"],
               "val per seed": " / ".join(_fmt(b["final_val_nats_per_char"]) for b in runs),
               "mean val": _fmt(recipe_mean(r, recipe.name)), "seed spread": _fmt(spread)}
        if "story_nats_per_char" in runs[0]:
            row.update({"story nats/char": _fmt(recipe_mean(r, recipe.name, "story_nats_per_char")),
                        "floor on same stories": _fmt(runs[0]["story_floor_nats_per_char"]),
                        "gap to floor": _fmt(recipe_mean(r, recipe.name, "gap_to_floor"))})
        row["status"] = ", ".join(sorted({b["status"] for b in runs}))
        rows.append(row)
    return rows


def sweep_rows(r: dict) -> list[dict]:
    rows, lrs = [], sorted({c["lr"] for c in r["sweep"]})
    for position in ("pre", "post"):
        for warmup in r["warmups"]:
            row = {"stack": f"{position}-norm, {r['deep_scale']['n_layer']} layers", "warm-up steps": warmup}
            for lr in lrs:
                c = next(c for c in r["sweep"] if c["position"] == position and c["warmup"] == warmup
                         and c["lr"] == lr)
                row[f"lr {lr:g}"] = _fmt(c["final_val_nats_per_char"]) + (
                    f" ({c['status']})" if c["status"] != "trains" else "")
            rows.append(row)
    return rows


def gradient_rows(r: dict) -> list[dict]:
    rows = []
    for position in ("pre", "post"):
        for warm in (False, True):
            c = featured(r, position, warm)
            g = c["early_gradients"]
            rows.append({"stack": f"{position}-norm", "warm-up steps": c["warmup"],
                         "‖dL/dx‖ after block 1 / after the last": g["resid"][1] / g["resid"][-1],
                         "block 1 weights' grad / last block's": g["blocks"][0] / g["blocks"][-1],
                         "grad late / early (sum over blocks)": c["late_over_early_gradient"], "status": c["status"]})
    return rows


def notes(r: dict) -> str:
    b, d = r["base_scale"], r["deep_scale"]
    clip = r["config"]["clip"]
    floor = r["entropy_floor_nats_per_char"]
    lines = (f"Entropy floor of the corpus: {floor:.4f} nats/char; " if floor is not None else "") + \
        f"letter-frequency (unigram) model: {r['unigram_nats_per_char']:.4f} nats/char."
    return "\n\n".join([
        "**Hand-written vs torch** (max |difference| against torch's function and autograd's gradient)\n\n"
        + markdown_table(check_rows(r), ".1e"),
        f"**Bake-off** ({b['n_layer']} layers, d_model {b['d_model']}, {b['steps']} steps of "
        f"{b['batch_size']}×{b['seq_len']} characters, lr {b['lr']:g}, warm-up {b['warmup']}, clip {clip:g}, "
        f"{r['config']['seeds']} seeds per recipe; nats/char). {lines}\n\n" + markdown_table(bake_rows(r)),
        f"**Pre-norm vs post-norm, {d['n_layer']} layers, d_model {d['d_model']}, {d['steps']} steps of "
        f"{d['batch_size']}×{d['seq_len']}:** final validation loss (nats/char); stuck = within 0.1 of the "
        "letter-frequency model, diverged = the loss became nan/inf\n\n" + markdown_table(sweep_rows(r)),
        f"**Gradients at lr {r['feature_lr']:g}** (where post-norm without warm-up first fails; means over the "
        "first steps, before clipping; \"late\" = the second half of training)\n\n"
        + markdown_table(gradient_rows(r), ".3g"),
    ])
