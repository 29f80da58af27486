"""Chapter 08's notes and headline, from its results JSON alone."""
from shared.report import markdown_table

NAMES = {"dense": "dense", "moe": "MoE + balancing loss", "moe_no_aux": "MoE, no balancing loss",
         "hybrid": "hybrid (layer 0 dense)", "deepspeed_moe": "DeepSpeed MoE + its l_aux"}


def busiest(snapshot_layers: list[dict]) -> float:
    """The busiest expert's load / the balanced load, in the worst layer."""
    return max(len(layer["fractions"]) * max(layer["fractions"]) for layer in snapshot_layers)


def starved(snapshot_layers: list[dict], below: float = 0.1) -> int:
    """Experts (all layers) that get under `below` of their fair share: practically unused."""
    return sum(len(layer["fractions"]) * f < below for layer in snapshot_layers for f in layer["fractions"])


def study_groups(r: dict) -> list[dict]:
    """The collapse study, one row per (routing, balancing loss), averaged over seeds."""
    rows = []
    for k in sorted({s["top_k"] for s in r["study"]}, reverse=True):
        for aux in sorted({s["aux_weight"] for s in r["study"]}):
            runs = [s for s in r["study"] if s["top_k"] == k and s["aux_weight"] == aux]
            finals = [s["snapshots"][-1]["layers"] for s in runs]
            rows.append({"top_k": k, "aux_weight": aux, "seeds": len(runs),
                         "busiest_load": sum(map(busiest, finals)) / len(runs),
                         "busiest_load_per_seed": [busiest(f) for f in finals],
                         "starved_experts": sum(map(starved, finals)) / len(runs),
                         "dropped_at_capacity": sum(s["dropped_at_capacity"] for s in runs) / len(runs),
                         "val_loss": sum(s["val_loss"] for s in runs) / len(runs)})
    return rows


def study_row(r: dict, top_k: int, aux: bool) -> dict:
    return next(g for g in study_groups(r) if g["top_k"] == top_k and (g["aux_weight"] > 0) == aux)


def headline(r: dict) -> dict:
    out = {f"val_loss_{name}": run["final_val"] for name, run in r["runs"].items()}
    out.update({f"busiest_load_{name}": busiest(r["runs"][name]["snapshots"][-1]["layers"])
                for name in ("moe", "moe_no_aux")})
    out.update({"study_top1_busiest_load_no_aux": study_row(r, 1, False)["busiest_load"],
                "study_top1_busiest_load_aux": study_row(r, 1, True)["busiest_load"],
                "our_moe_vs_shared_max_diff": r["checks"]["vs_shared_max_diff"],
                "total_over_active_params_moe": next(c["total_params"] / c["active_params"] for c in r["costs"]
                                                     if c["model"] == "moe (ours)")})
    return out


def notes(r: dict) -> str:
    c = r["config"]
    runs = [{"model": NAMES.get(name, name), "val loss (nats/char)": run["final_val"],
             "above the floor": run["final_val"] - r["floor_nats_per_char"], "train tok/s": run["tokens_per_s"],
             "busiest expert / fair share (worst layer, end)":
                 busiest(run["snapshots"][-1]["layers"]) if run["snapshots"] else "—"}
            for name, run in r["runs"].items()]
    study = [{"routing": f"top-{g['top_k']} of {c['study_experts']}" + (" (Switch: raw weight)" if g["top_k"] == 1
                                                                       else " (renormalised)"),
              "balancing loss": g["aux_weight"], "seeds": g["seeds"],
              "busiest / fair share (mean)": g["busiest_load"],
              "per seed": ", ".join(f"{v:.2f}" for v in g["busiest_load_per_seed"]),
              "experts under 10% of fair share": g["starved_experts"],
              f"dropped at capacity {c['capacity_factor']}": g["dropped_at_capacity"], "val loss": g["val_loss"]}
             for g in study_groups(r)]
    names = list(r["capacity_sweep"])
    sweep = [{"capacity factor": row["capacity_factor"] or "unlimited",
              **{f"{NAMES[n]}: val loss": r["capacity_sweep"][n][i]["val_loss"] for n in names},
              **{f"{NAMES[n]}: dropped": r["capacity_sweep"][n][i]["dropped"] for n in names}}
             for i, row in enumerate(r["capacity_sweep"][names[0]])]
    costs = [{k: (f"{v:,}" if isinstance(v, int) else v) for k, v in row.items()} for row in r["costs"]]
    return "\n\n".join([
        f"Models: {c['n_layer']} layers, d_model {c['d_model']}; MoE {c['experts']} experts {c['expert_ff']} wide, "
        f"top-{c['top_k']}, capacity factor {c['capacity_factor']}; dense MLP {c['top_k'] * c['expert_ff']} wide; "
        f"{c['steps']} steps of {c['batch_size']} × {c['seq_len']} characters; floor "
        f"{r['floor_nats_per_char']:.4f} nats/char.",
        "**Training** (same steps, same data, same initial draws)\n\n" + markdown_table(runs),
        f"**When does routing collapse?** {c['study_steps']} steps of {c['study_batch']} × {c['study_seq_len']}, "
        f"{c['study_experts']} experts, unlimited capacity while training; load on a fixed validation batch at the "
        "end, worst layer.\n\n" + markdown_table(study),
        "**Capacity factor after training**\n\n" + markdown_table(sweep),
        "**Dense vs sparse cost**\n\n" + markdown_table(costs),
        "**Checks** (max |difference| at unlimited capacity)\n\n"
        + markdown_table([{"check": k, "value": v} for k, v in r["checks"].items()]),
    ])
