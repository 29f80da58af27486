"""Redraw chapter 08's plots from its results JSON (never retrains).

    uv run chapters/08_mixture_of_experts/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, plotting
from shared.results import load_json

LABELS = {"dense": "dense (matched active params)", "moe": "MoE + balancing loss",
          "moe_no_aux": "MoE, no balancing loss", "deepspeed_moe": "DeepSpeed MoE + its l_aux"}


def smooth(y, window: int):
    y = np.asarray(y, dtype=float)
    if len(y) < window or window < 2:
        return y
    kernel = np.ones(window) / window
    return np.convolve(np.pad(y, (window - 1, 0), mode="edge"), kernel, mode="valid")


def loss_curves(res, out):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    window = max(1, len(next(iter(res["runs"].values()))["train_loss"]) // 20)
    for i, (name, r) in enumerate(res["runs"].items()):
        color = f"C{i}"
        ax.plot(r["step"], smooth(r["train_loss"], window), color=color, lw=1.4,
                label=f"{LABELS.get(name, name)}: val {r['final_val']:.3f}")
        ax.plot([v["step"] for v in r["val"]], [v["loss"] for v in r["val"]], "o", color=color, ms=4)
    plotting.entropy_floor(ax, res["floor_nats_per_char"])
    ax.set(xlabel="step", ylabel="loss (nats/char)", title="Dense vs MoE at the same active parameters",
           ylim=(res["floor_nats_per_char"] - 0.1, None))
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, min(hi, 3.2))
    ax.legend(fontsize=8, title="train (line, smoothed) / val (dots)", title_fontsize=8)
    return plotting.save_fig(fig, out, "loss_curves")


def utilisation(res, out):
    """Heatmap per (run, layer): rows = training step, columns = experts, colour = share of routing."""
    names = [n for n in ("moe", "moe_no_aux") if res["runs"].get(n, {}).get("snapshots")]
    n_layer = len(res["runs"][names[0]]["snapshots"][0]["layers"])
    E = res["config"]["n_experts"]
    fig, axes = plt.subplots(len(names), n_layer, figsize=(3.2 * n_layer + 1, 3.4 * len(names)), squeeze=False)
    vmax = max(max(l["fractions"]) for n in names for s in res["runs"][n]["snapshots"] for l in s["layers"])
    for r, name in enumerate(names):
        snaps = res["runs"][name]["snapshots"]
        steps = [s["step"] for s in snaps]
        for layer in range(n_layer):
            ax = axes[r][layer]
            grid = np.array([s["layers"][layer]["fractions"] for s in snaps])
            im = ax.imshow(grid, aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks(range(E), [f"e{e}" for e in range(E)] if r == len(names) - 1 else [])
            ticks = np.linspace(0, len(steps) - 1, min(6, len(steps))).astype(int)
            ax.set_yticks(ticks, [steps[t] for t in ticks])
            ax.set_title(f"{LABELS[name]}\nlayer {layer}", fontsize=9)
            ax.grid(False)
            if layer == 0:
                ax.set_ylabel("training step")
    fig.subplots_adjust(hspace=0.3)
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"share of routing decisions (balanced = 1/{E} = {1 / E:.2f})")
    fig.suptitle("Expert utilisation during training", fontweight="bold")
    return plotting.save_fig(fig, out, "expert_utilisation")


def imbalance(res, out):
    """Max expert load / balanced load over training, and the balancing loss itself."""
    E, cf = res["config"]["n_experts"], res["config"]["capacity_factor"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(n for n in ("moe", "moe_no_aux") if res["runs"].get(n, {}).get("snapshots")):
        snaps = res["runs"][name]["snapshots"]
        steps = [s["step"] for s in snaps]
        for layer in range(len(snaps[0]["layers"])):
            style = ["-", "--", ":", "-."][layer % 4]
            ax1.plot(steps, [E * max(s["layers"][layer]["fractions"]) for s in snaps], style, color=f"C{i + 1}",
                     label=f"{LABELS[name]}, layer {layer}")
            ax2.plot(steps, [s["layers"][layer]["balance_loss"] for s in snaps], style, color=f"C{i + 1}",
                     label=f"{LABELS[name]}, layer {layer}")
    ax1.axhline(cf, color="crimson", lw=1, ls="--")
    ax1.annotate(f"capacity factor {cf}: above this, tokens are dropped", xy=(0.01, cf), xycoords=("axes fraction", "data"),
                 xytext=(0, 3), textcoords="offset points", fontsize=8, color="crimson")
    ax1.axhline(1.0, color="gray", lw=1)
    ax1.set(xlabel="step", ylabel="busiest expert's load / balanced load", title="Load imbalance")
    ax2.axhline(1.0, color="gray", lw=1)
    ax2.set(xlabel="step", ylabel="E · Σ f_e · P_e", title="Switch balancing loss (1 = balanced)")
    ax1.legend(fontsize=7)
    return plotting.save_fig(fig, out, "load_imbalance")


def capacity(res, out):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, rows) in enumerate(res["capacity_sweep"].items()):
        limited = [r for r in rows if r["capacity_factor"] is not None]
        unlimited = [r for r in rows if r["capacity_factor"] is None][0]
        cfs = [r["capacity_factor"] for r in limited]
        ax1.plot(cfs, [100 * r["dropped"] for r in limited], "o-", color=f"C{i + 1}", label=LABELS[name])
        ax2.plot(cfs, [r["val_loss"] for r in limited], "o-", color=f"C{i + 1}", label=LABELS[name])
        ax2.axhline(unlimited["val_loss"], color=f"C{i + 1}", ls=":", lw=1)
    trained = res["config"]["capacity_factor"]
    for ax in (ax1, ax2):
        ax.axvline(trained, color="gray", lw=1, ls="--")
        ax.set_xlabel("capacity factor at evaluation (trained at dashed line)")
    ax1.set(ylabel="routing decisions dropped (%)", title="Tokens over capacity skip the expert")
    ax2.set(ylabel="val loss (nats/char)", title="What dropping costs (dotted: unlimited capacity)")
    ax1.legend(fontsize=8)
    return plotting.save_fig(fig, out, "capacity")


def categories(res, out, name="moe"):
    table = res["categories"][name]
    cats, tables, counts = table["categories"], table["tables"], table["chars_per_category"]
    fig, axes = plt.subplots(1, len(tables), figsize=(3.3 * len(tables) + 1.5, 0.42 * len(cats) + 1.6), squeeze=False)
    for layer, (ax, t) in enumerate(zip(axes[0], tables)):
        t = np.array(t)
        im = ax.imshow(t, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (r, c), v in np.ndenumerate(t):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
        ax.set_xticks(range(t.shape[1]), [f"e{e}" for e in range(t.shape[1])])
        ax.set_yticks(range(len(cats)), [f"{c} ({int(n)})" for c, n in zip(cats, counts)] if layer == 0 else [])
        ax.set_title(f"layer {layer}", fontsize=10)
        ax.grid(False)
    fig.colorbar(im, ax=axes, shrink=0.8, label="share of the category's characters (first choice)")
    fig.suptitle(f"Which expert reads which kind of word? ({LABELS[name]})", fontweight="bold")
    return plotting.save_fig(fig, out, f"categories_{name}")


def costs(res, out):
    rows = res["costs"]
    names = [r["model"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    x = np.arange(len(rows))
    axes[0].bar(x - 0.2, [r["total_params"] / 1e3 for r in rows], 0.4, label="total")
    axes[0].bar(x + 0.2, [r["active_params"] / 1e3 for r in rows], 0.4, label="active per token")
    axes[0].set(ylabel="parameters (thousands)", title="Stored vs used")
    axes[0].legend(fontsize=8)
    axes[1].bar(x, [r["train_flops_per_token"] / 1e6 for r in rows], color="C2")
    axes[1].set(ylabel="MFLOP / token (6N + attention)", title="Counted training FLOPs")
    axes[2].bar(x, [r["forward_us_per_token"] for r in rows], color="C3")
    axes[2].set(ylabel="µs / token (median)", title=f"Measured forward time ({res['meta']['device']})")
    for ax in axes:
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    fig.suptitle("Dense vs sparse: same FLOPs on paper, not the same time", fontweight="bold")
    return plotting.save_fig(fig, out, "cost")


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    results_path = Path(results_path)
    res = load_json(results_path)
    plotting.use_style()
    paths = [loss_curves(res, plots_dir), utilisation(res, plots_dir), imbalance(res, plots_dir),
             capacity(res, plots_dir), costs(res, plots_dir)]
    paths += [categories(res, plots_dir, name) for name in res["categories"]]
    return paths


if __name__ == "__main__":
    def _main():
        p = cli.parser("08_mixture_of_experts", __doc__)
        run = cli.setup(p, header=False)
        draw(run.results_path, run.plots_dir, run.animations_dir)

    cli.run_main(_main)
