"""What chapter 08's README says about its measured results, checked against them (shared/claims.py)."""
from report import busiest, study_groups, study_row
from shared.claims import Claim


def _val(r, name):
    return r["runs"][name]["final_val"]


def _cost(r, model, key):
    return next(c[key] for c in r["costs"] if c["model"] == model)


def _dropped_ratio(r):
    """Dropped at the training capacity factor, without the loss / with it, the smaller over routings."""
    groups = study_groups(r)
    return min(study_row(r, k, False)["dropped_at_capacity"] / max(study_row(r, k, True)["dropped_at_capacity"], 1e-3)
               for k in {g["top_k"] for g in groups})


def _sweep(r, name, factor):
    return next(row for row in r["capacity_sweep"][name] if row["capacity_factor"] == factor)


CLAIMS = [
    Claim("the layer's output and balancing loss equal `shared.model.MoE` with the same weights",
          lambda r: max(r["checks"]["vs_shared_max_diff"], r["checks"]["aux_vs_shared_diff"]), below=1e-5,
          what="max |ours − shared.model.MoE|, output and balancing loss"),
    Claim("Both MoE models end below the dense one",
          lambda r: _val(r, "dense") - max(_val(r, "moe"), _val(r, "moe_no_aux")), above=0.03,
          what="dense val loss − the worse MoE's (nats/char)"),
    Claim("The hybrid lands between them",
          lambda r: (_val(r, "dense") - _val(r, "hybrid")) / (_val(r, "dense") - _val(r, "moe")), above=0.15,
          below=0.85, what="(dense − hybrid) / (dense − MoE with the loss), val loss"),
    Claim("at top-2 of 4 experts the model trained without the balancing loss stays balanced too",
          lambda r: busiest(r["runs"]["moe_no_aux"]["snapshots"][-1]["layers"]), below=1.6,
          what="busiest expert / fair share, worst layer, end of training (2 is the most possible)"),
    Claim("without the balancing loss the busiest expert ends up with well over twice its fair share",
          lambda r: study_row(r, 1, False)["busiest_load"], above=2.2,
          what="top-1 of 8, no loss: busiest / fair share, mean over seeds"),
    Claim("while with it, far less",
          lambda r: study_row(r, 1, False)["busiest_load"] / study_row(r, 1, True)["busiest_load"], above=1.25,
          what="top-1 of 8: busiest / fair share without the loss / with it, means over seeds"),
    Claim("Top-2 of 8 shows the same direction",
          lambda r: study_row(r, 2, False)["busiest_load"] / study_row(r, 2, True)["busiest_load"], above=1.1,
          what="top-2 of 8: busiest load without / with the loss, means over seeds"),
    Claim("the routers trained without the loss would drop far more of their routing decisions",
          _dropped_ratio, above=1.5, what="share dropped at the training capacity factor, without / with the loss"),
    Claim("the balancing loss does not lower the loss in the main run either",
          lambda r: _val(r, "moe") - _val(r, "moe_no_aux"), above=-0.02,
          what="val loss with the loss − without (nats/char; negative = the loss helped)"),
    Claim("At the factor it trained with (1.25) almost nothing is dropped",
          lambda r: _sweep(r, "moe", r["config"]["capacity_factor"])["dropped"], below=0.02,
          what="share of routing decisions dropped at the training capacity factor"),
    Claim("at 0.5 half of all routing decisions find their expert full and the loss climbs steeply",
          lambda r: _sweep(r, "moe", 0.5)["val_loss"] - _sweep(r, "moe", None)["val_loss"], above=0.2,
          what="val loss at capacity factor 0.5 − unlimited (nats/char)"),
    Claim("spaces and punctuation often get their own expert",
          lambda r: max(table[-1][e] for table in r["categories"]["moe"]["tables"] for e in range(len(table[-1]))),
          above=0.5, what="largest share of space/punct. characters on one expert (first choice, any layer)"),
    Claim("Dense and MoE are equal plus the router",
          lambda r: _cost(r, "moe (ours)", "train_flops_per_token") / _cost(r, "dense", "train_flops_per_token") - 1,
          below=0.01, what="counted FLOPs per token, MoE / dense − 1 (the router's share)"),
]
