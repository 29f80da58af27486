"""Redraw chapter 08's figures from its saved results (never retrains).

    uv run chapters/08_mixture_of_experts/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from report import NAMES, busiest, study_groups
from shared import cli, diagrams, plotting

NO_AUX = "#3A3A3A"   # "no balancing loss" beside the book's MoE colour (with it)
STYLE = {"dense": (plotting.color("dense"), "-"), "moe": (plotting.color("moe"), "-"),
         "moe_no_aux": (NO_AUX, "--"), "hybrid": (plotting.color("hybrid"), "-"),
         "deepspeed_moe": (plotting.color("moe"), ":")}


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    return [plotting.save_fig(routing_diagram(r["gating_demo"]), plots_dir, "moe_routing"),
            loss_curves(r, plots_dir), utilisation(r, plots_dir), collapse(r, plots_dir), capacity(r, plots_dir),
            *[categories(r, plots_dir, name) for name in r["categories"]], costs(r, plots_dir)]


# ----------------------------------------------------------------------------- the mechanism
def routing_diagram(demo: dict):
    """tokens → router probabilities → top-k → experts with `capacity` slots → weighted combine, drawn
    from the worked example's own numbers; the choice that finds its expert full is marked dropped."""
    probs, top_i, top_p, keep = demo["probs"], demo["top_i"], demo["top_p"], demo["keep"]
    n_tok, n_exp, cap = len(probs), len(probs[0]), demo["capacity"]
    k = len(top_i[0])
    fig, ax = diagrams.canvas(9.8, 4.9)
    row_y = [3.75 - 0.8 * t for t in range(n_tok)]
    mid = (row_y[0] + row_y[-1]) / 2
    heads = ((0.1, "tokens"), (1.35, f"router: softmax(x · W_r),\ntop-{k} outlined"),
             (5.05, f"experts, {cap} slots each"), (7.8, "weighted combine"))
    for x, title in heads:
        ax.text(x, 4.8, title, fontsize=diagrams.FONT, fontweight="bold", va="top")
    cell, x0 = 0.62, 1.45
    for e in range(n_exp):
        ax.text(x0 + cell * (e + 0.5), row_y[0] + 0.4, f"e{e}", ha="center", fontsize=diagrams.FONT)
    for t, y in enumerate(row_y):
        diagrams.box(ax, (0.5, y), 0.75, 0.5, f"t{t}")
        diagrams.arrow(ax, (0.9, y), (x0 - 0.05, y))
        for e in range(n_exp):
            chosen = e in top_i[t]
            dropped = chosen and not keep[t][top_i[t].index(e)]
            edge = diagrams.HIGHLIGHT if dropped else plotting.color("moe") if chosen else diagrams.MUTED
            ax.add_patch(plt.Rectangle((x0 + cell * e, y - cell / 2 + 0.05), cell, cell - 0.1,
                                       facecolor=diagrams.tint(plotting.color("moe"), 1 - 0.8 * probs[t][e]),
                                       edgecolor=edge, lw=3 if chosen else 0.6, zorder=2 + chosen + dropped))
            ax.text(x0 + cell * (e + 0.5), y, f"{probs[t][e]:.2f}", ha="center", va="center",
                    fontsize=diagrams.FONT, zorder=4)
        kept = " + ".join(f"{w:.2f}·e{i}" for w, i, ok in zip(top_p[t], top_i[t], keep[t]) if ok)
        lost = [f"{w:.2f}·e{i}" for w, i, ok in zip(top_p[t], top_i[t], keep[t]) if not ok]
        diagrams.box(ax, (8.77, y), 2.02, 0.62 if lost else 0.5,
                     f"y{t} = {kept or '0'}" + (f"\n{lost[0]} dropped" if lost else ""), fontsize=diagrams.FONT,
                     color=diagrams.HIGHLIGHT if lost else None)
    queue = [(t, slot) for slot in range(k) for t in range(n_tok)]   # all first choices, then second ones
    for e, y in enumerate(row_y[:n_exp]):
        diagrams.box(ax, (5.4, y), 0.6, 0.5, f"e{e}", color=plotting.color("moe"))
        arrivals = [(t, keep[t][slot]) for t, slot in queue if top_i[t][slot] == e]
        served = [t for t, ok in arrivals if ok]
        for s in range(cap):
            diagrams.box(ax, (6.05 + 0.5 * s, y), 0.44, 0.44, f"t{served[s]}" if s < len(served) else "",
                         rounding=0.02)
        over = [t for t, ok in arrivals if not ok]
        if over:
            ax.text(6.05 + 0.5 * cap - 0.2, y, " ← " + ", ".join(f"t{t} ✗" for t in over), ha="left",
                    va="center", fontsize=diagrams.FONT, color=diagrams.HIGHLIGHT, fontweight="bold")
    diagrams.frame(ax, (4.95, row_y[-1] - 0.4, 7.55, row_y[0] + 0.4))
    diagrams.arrow(ax, (x0 + cell * n_exp + 0.08, mid), (4.95, mid), "dispatch:\n1st choices\nqueue first")
    diagrams.arrow(ax, (7.55, mid), (7.74, mid))
    ax.text(0.1, 0.3, "A dropped choice adds nothing: the block's residual x + moe(x) carries the token on.\n"
            f"Switch balancing loss E·Σ f·P = {demo['balance_loss']:.2f} here (1 = balanced).",
            fontsize=diagrams.FONT, va="center", color=diagrams.TEXT)
    return fig


# ----------------------------------------------------------------------------- training
def smooth(y, window: int):
    y = np.asarray(y, dtype=float)
    if len(y) < window or window < 2:
        return y
    return np.convolve(np.pad(y, (window - 1, 0), mode="edge"), np.ones(window) / window, mode="valid")


def loss_curves(r, plots_dir):
    fig, ax = plt.subplots(figsize=(9, 5))
    window = max(1, len(next(iter(r["runs"].values()))["train_loss"]) // 15)
    lines = []
    for name, run in r["runs"].items():
        color, ls = STYLE.get(name, ("0.5", "-"))
        (line,) = ax.plot(run["step"], smooth(run["train_loss"], window), color=color, ls=ls, lw=1.6,
                          label=f"{NAMES.get(name, name)}: {run['final_val']:.3f}")
        ax.plot([v["step"] for v in run["val"]], [v["loss"] for v in run["val"]], "o", color=color, ms=4)
        lines.append(line)
    plotting.entropy_floor(ax, r["floor_nats_per_char"])
    plotting.log_axis(ax, "y")
    ax.set_ylim(0.9 * r["floor_nats_per_char"], None)
    ax.set(xlabel="step", ylabel="loss (nats/char, log scale)",
           title="Equal active parameters: train loss (lines), val cross-entropy (dots)")
    plotting.label_lines(ax, lines)
    return plotting.save_fig(fig, plots_dir, "loss_curves")


def utilisation(r, plots_dir):
    """Heatmaps of each expert's load / its fair share over training, on a log2 scale centred on
    balanced (white): twice the fair share is as red as half of it is blue."""
    c = r["config"]
    panels = [(f"top-{c['top_k']} of {c['experts']}, no balancing loss", r["runs"]["moe_no_aux"]["snapshots"]),
              (f"top-{c['top_k']} of {c['experts']}, with balancing loss", r["runs"]["moe"]["snapshots"])]
    for aux in (0.0, c["aux_weight"]):
        first = next(s for s in r["study"] if s["top_k"] == 1 and s["aux_weight"] == aux)   # the first seed
        panels.append((f"top-1 of {c['study_experts']}, {'with' if aux else 'no'} balancing loss", first["snapshots"]))
    n_layer = len(panels[0][1][0]["layers"])
    fig, axes = plt.subplots(len(panels), n_layer, figsize=(9.5, 2.1 * len(panels) + 0.8), squeeze=False,
                             layout="constrained")
    for row, (title, snaps) in enumerate(panels):
        steps = [s["step"] for s in snaps]
        for layer in range(n_layer):
            ax = axes[row][layer]
            load = np.array([len(s["layers"][layer]["fractions"]) * np.array(s["layers"][layer]["fractions"])
                             for s in snaps])
            im = ax.imshow(np.log2(np.clip(load, 1 / 8, 8)), aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3,
                           interpolation="nearest")
            n_exp = load.shape[1]
            ax.set_xticks(range(n_exp), [str(e) for e in range(n_exp)])
            ticks = np.linspace(0, len(steps) - 1, min(3, len(steps))).astype(int)
            ax.set_yticks(ticks, [steps[t] for t in ticks] if layer == 0 else [])
            if layer == 0:
                ax.set_title(title, fontsize=plotting.MIN_FONT_PT, fontweight="bold", loc="left")
            ax.set_title(f"layer {layer}", fontsize=plotting.MIN_FONT_PT, fontweight="normal", loc="right")
            ax.grid(False)
            if layer == 0:
                ax.set_ylabel("step")
            if row == len(panels) - 1:
                ax.set_xlabel("expert")
    bar = fig.colorbar(im, ax=axes, shrink=0.5, pad=0.02, ticks=range(-3, 4))
    bar.ax.set_yticklabels(["≤ 1/8", "1/4", "1/2", "1", "2", "4", "≥ 8"])
    bar.set_label("load / fair share (1 = balanced)")
    fig.suptitle("Expert load during training: red overloaded, blue starved, white balanced")
    return plotting.save_fig(fig, plots_dir, "expert_utilisation")


def collapse(r, plots_dir):
    """The collapse study: busiest expert's load over training per seed, and the tokens a capacity limit drops."""
    c = r["config"]
    groups = study_groups(r)
    ks = sorted({g["top_k"] for g in groups}, reverse=True)
    fig, axes = plt.subplots(1, len(ks) + 1, figsize=(10, 4.2), layout="constrained",
                             gridspec_kw={"width_ratios": [1] * len(ks) + [0.9]})
    top = max(busiest(s["layers"]) for run in r["study"] for s in run["snapshots"])
    for ax, k in zip(axes, ks):
        for run in (s for s in r["study"] if s["top_k"] == k):
            aux = run["aux_weight"] > 0
            ax.plot([s["step"] for s in run["snapshots"]], [busiest(s["layers"]) for s in run["snapshots"]],
                    color=plotting.color("moe") if aux else NO_AUX, ls="-" if aux else "--", lw=1.4, alpha=0.85)
        ax.axhline(1, color="0.6", lw=1)
        ax.axhline(c["capacity_factor"], color=diagrams.HIGHLIGHT, lw=1, ls=":")
        ax.annotate(f"capacity {c['capacity_factor']}", (0.99, c["capacity_factor"]),
                    xycoords=("axes fraction", "data"), xytext=(0, -3), textcoords="offset points", ha="right",
                    va="top", fontsize=plotting.MIN_FONT_PT, color=diagrams.HIGHLIGHT)
        ax.set_ylim(0, top * 1.08)
        ax.set(title=f"top-{k} of {c['study_experts']}" + (" (Switch)" if k == 1 else ""), xlabel="step")
        for aux, color, y in ((False, NO_AUX, 0.93), (True, plotting.color("moe"), 0.84)):
            g = next(g for g in groups if g["top_k"] == k and (g["aux_weight"] > 0) == aux)
            ax.text(0.97, y, f"{'with' if aux else 'no'} balancing loss: {g['busiest_load']:.2f}×",
                    transform=ax.transAxes, ha="right", va="top", color=color, fontsize=plotting.MIN_FONT_PT)
    axes[0].set_ylabel("busiest expert / fair share\n(worst layer; one line per seed)")
    ax = axes[-1]
    labels = [f"top-{g['top_k']}\n{'with' if g['aux_weight'] else 'no'}" for g in groups]
    bars = ax.bar(range(len(groups)), [100 * g["dropped_at_capacity"] for g in groups],
                  color=[plotting.color("moe") if g["aux_weight"] else NO_AUX for g in groups])
    ax.bar_label(bars, fmt="%.0f%%", padding=2, fontsize=plotting.MIN_FONT_PT)
    ax.margins(y=0.15)
    plotting.mark_zero_bars(ax, bars)
    ax.set_xticks(range(len(groups)), labels)
    ax.set(title=f"dropped at capacity {c['capacity_factor']}", ylabel="routing decisions dropped (%)",
           xlabel="balancing loss")
    return plotting.save_fig(fig, plots_dir, "collapse")


def capacity(r, plots_dir):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    for name, rows in r["capacity_sweep"].items():
        color, ls = STYLE[name]
        limited = [row for row in rows if row["capacity_factor"] is not None]
        unlimited = next(row for row in rows if row["capacity_factor"] is None)
        cfs = [row["capacity_factor"] for row in limited]
        ax1.plot(cfs, [100 * row["dropped"] for row in limited], "o", ls=ls, color=color, label=NAMES[name])
        ax2.plot(cfs, [row["val_loss"] for row in limited], "o", ls=ls, color=color, label=NAMES[name])
        ax2.axhline(unlimited["val_loss"], color=color, ls=":", lw=1)
    for ax in (ax1, ax2):
        ax.axvline(r["config"]["capacity_factor"], color="0.6", lw=1, ls="--")
        ax.set_xlabel("capacity factor at evaluation")
    ax1.annotate("trained here", (r["config"]["capacity_factor"], 0.97), xycoords=("data", "axes fraction"),
                 xytext=(4, 0), textcoords="offset points", va="top", color="0.4")
    ax1.set(ylabel="routing decisions dropped (%)", title="Over capacity: the expert is skipped")
    ax2.set(ylabel="val loss (nats/char)", title="What dropping costs (dotted: no limit)")
    ax2.legend(loc="upper right")
    return plotting.save_fig(fig, plots_dir, "capacity")


def categories(r, plots_dir, name):
    table = r["categories"][name]
    cats, tables, counts = table["categories"], table["tables"], table["chars_per_category"]
    fig, axes = plt.subplots(1, len(tables), figsize=(9.5, 0.42 * len(cats) + 1.6), squeeze=False,
                             layout="constrained")
    for layer, (ax, t) in enumerate(zip(axes[0], tables)):
        t = np.array(t)
        im = ax.imshow(t, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (row, col), v in np.ndenumerate(t):
            ax.text(col, row, f"{v:.2f}", ha="center", va="center", fontsize=plotting.MIN_FONT_PT,
                    color="white" if v < 0.6 else "black")
        ax.set_xticks(range(t.shape[1]), [f"e{e}" for e in range(t.shape[1])])
        ax.set_yticks(range(len(cats)), [f"{c} ({int(n)})" for c, n in zip(cats, counts)] if layer == 0 else [])
        ax.set_title(f"layer {layer}")
        ax.grid(False)
    fig.colorbar(im, ax=axes, shrink=0.8, label="share of the category's\ncharacters (first choice)")
    fig.suptitle(f"Which expert reads which kind of word? ({NAMES[name]})")
    return plotting.save_fig(fig, plots_dir, f"categories_{name}")


def costs(r, plots_dir):
    rows = r["costs"]
    names = [row["model"] for row in rows]
    colors = [plotting.color("dense" if n == "dense" else "hybrid" if n == "hybrid" else "moe") for n in names]
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(10, 0.5 * len(rows) + 2.2), sharey=True, layout="constrained")
    axes[0].barh(y, [row["total_params"] / 1e3 for row in rows], color=colors, alpha=0.35)
    axes[0].barh(y, [row["active_params"] / 1e3 for row in rows], 0.45, color=colors)
    axes[0].set(xlabel="thousand parameters", title="stored (pale) vs active")
    axes[1].barh(y, [row["train_flops_per_token"] / 1e6 for row in rows], color=colors)
    axes[1].set(xlabel="MFLOP / token (6N + attention)", title="counted training FLOPs")
    axes[2].barh(y, [row["forward_us_per_token"] for row in rows], color=colors)
    axes[2].set(xlabel="µs / token (median)", title=f"measured forward ({r['meta']['device']})")
    axes[0].set_yticks(y, names)
    for ax in axes:
        ax.grid(axis="y", visible=False)
    return plotting.save_fig(fig, plots_dir, "cost")


if __name__ == "__main__":
    cli.visualize_main(draw)
