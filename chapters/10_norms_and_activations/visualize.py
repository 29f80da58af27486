"""Redraw chapter 10's plots from its saved results (never retrains).

    uv run chapters/10_norms_and_activations/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from shared import cli, plotting
from shared.results import load_json

NAMES = {"gelu": "GELU (erf)", "gelu_tanh": "GELU (tanh approx.)", "silu": "SiLU / Swish", "relu": "ReLU"}


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    results_path = Path(results_path)
    plotting.use_style()
    r = load_json(results_path)
    return [draw_activations(r, plots_dir), draw_checks(r, plots_dir), draw_bake_off(r, plots_dir),
            draw_hidden(r, plots_dir), draw_residual(r, plots_dir), draw_gradient_flow(r, plots_dir),
            draw_sweep(r, plots_dir)]


def smooth(values, width: int = 10) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < width:
        return v
    return np.convolve(v, np.ones(width) / width, mode="valid")


# ----------------------------------------------------------------------------- part 1
def draw_activations(r, plots_dir):
    c = r["curves"]
    x = np.array(c["x"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("relu", "gelu", "gelu_tanh", "silu"):
        ls = ":" if name == "gelu_tanh" else "-"
        ax1.plot(x, c[name]["y"], ls, lw=2, label=NAMES[name])
        ax2.plot(x, c[name]["dy"], ls, lw=2, label=NAMES[name])
    ax1.set(title="the activations (hand-written forward)", xlabel="x", ylabel="f(x)", ylim=(-0.6, 4))
    ax2.set(title="their derivatives (hand-written backward)", xlabel="x", ylabel="f'(x)")
    ax2.axhline(0, color="grey", lw=0.8)
    ax1.legend(fontsize=8)
    ax2.annotate("ReLU: gradient exactly 0\nfor every x < 0", xy=(-2.5, 0), xytext=(-3.9, 0.55), fontsize=8,
                 arrowprops={"arrowstyle": "->", "color": "grey"})
    ax2.annotate("GELU/SiLU: > 1 just above 0,\nslightly negative below", xy=(1.5, 1.1), xytext=(0.8, 0.35),
                 fontsize=8, arrowprops={"arrowstyle": "->", "color": "grey"})
    return plotting.save_fig(fig, plots_dir, "activations")


def draw_checks(r, plots_dir):
    rows = r["checks"]
    names = [row["function"] for row in rows]
    floor = 1e-18  # log axis: an exact 0 is drawn at the bottom
    series = [("forward vs torch (fp32)", "forward_max_err_fp32"),
              ("hand backward vs autograd (fp64)", "backward_max_err_vs_torch_fp64"),
              ("BUGGY backward vs autograd (fp64)", "buggy_backward_err_vs_torch_fp64")]
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = np.arange(len(names))
    for k, (label, key) in enumerate(series):
        ax.bar(xs + (k - 1) * 0.27, [max(row[key], floor) for row in rows], width=0.27, label=label)
    ax.axhline(1e-6, ls="--", color="black", lw=1)
    ax.annotate("tolerance 1e-6", xy=(len(names) - 0.5, 1e-6), ha="right", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(xs, names)
    ax.set(ylabel="max |difference|", title="hand-written vs torch: correct backward at round-off, a buggy one far off")
    for x, row in zip(xs, rows):
        mark = "gradcheck ✓\nbug caught ✓" if row["gradcheck"] and row["bug_caught_by_gradcheck"] else "CHECK\nFAILED"
        ax.annotate(mark, xy=(x, 20), ha="center", va="bottom", fontsize=7)
    ax.set_ylim(floor / 2, 1e5)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    return plotting.save_fig(fig, plots_dir, "gradcheck")


# ----------------------------------------------------------------------------- part 2
def draw_bake_off(r, plots_dir):
    bake = r["bake_off"]
    floor, unigram = r["headline"]["entropy_floor_nats_per_char"], r["headline"]["unigram_nats_per_char"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [1.2, 1]},
                                   layout="constrained")
    for row in bake:
        loss = row["record"]["loss"]
        ls = "--" if row["norm_position"] == "post" else "-"
        w = min(10, max(1, len(loss) // 10))
        ax1.plot(np.arange(len(smooth(loss, w))) + w, smooth(loss, w), ls, lw=1.4, label=row["recipe"])
    ax1.axhline(unigram, color="grey", ls=":", lw=1)
    ax1.annotate(f"letter frequencies only = {unigram:.2f}", xy=(1, unigram), xycoords=("axes fraction", "data"),
                 ha="right", va="bottom", fontsize=8, color="grey")
    if floor is not None:
        plotting.entropy_floor(ax1, floor)
    ax1.set(xlabel="step", ylabel="train loss (nats/char, smoothed)", title="identical models, one switch each")
    ax1.legend(fontsize=7)
    labels = [row["recipe"] for row in bake]
    y = np.arange(len(bake))
    val = [row["final_val_nats_per_char"] or np.nan for row in bake]
    ax2.barh(y - 0.2, val, height=0.4, label="validation windows")
    if "story_nats_per_char" in bake[0]:
        ax2.barh(y + 0.2, [row.get("story_nats_per_char", np.nan) for row in bake], height=0.4,
                 label="whole held-out stories")
        ax2.plot([row.get("story_floor_nats_per_char", np.nan) for row in bake], y + 0.2, "k|", ms=12,
                 label="perfect model on the same stories")
    ax2.set_yticks(y, labels, fontsize=8)
    ax2.invert_yaxis()
    finite = [v for v in val if np.isfinite(v)]
    if finite:
        ax2.set_xlim(0, max(finite) * 1.15)
    ax2.set(xlabel="final loss (nats/char)", title="where each ends up")
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    return plotting.save_fig(fig, plots_dir, "bake_off")


def violins(ax, samples_by_layer, positions, color, width=0.35):
    parts = ax.violinplot([s for s in samples_by_layer], positions=positions, widths=width, showextrema=False,
                          showmedians=True)
    for body in parts["bodies"]:
        body.set_facecolor(color)
        body.set_alpha(0.55)
    parts["cmedians"].set_color("black")


def draw_hidden(r, plots_dir):
    """Violins of the MLP hidden activations per layer, at the snapshots, for a few activations."""
    wanted = ["relu", "gelu", "silu", "swiglu"]
    rows = [next(b for b in r["bake_off"] if b["activation"] == a and b["norm"] == "layernorm"
                 and b["norm_position"] == "pre") for a in wanted]
    # each panel its own y-scale: SwiGLU's output is a product of two small numbers
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, row in zip(axes, rows):
        snaps = row["record"]["snapshots"]
        n_layer = len(snaps[0]["layers"])
        for k, snap in enumerate(snaps):
            pos = np.arange(n_layer) + (k - (len(snaps) - 1) / 2) * 0.28
            violins(ax, [layer["hidden_sample"] for layer in snap["layers"]], pos, colors[k], width=0.26)
            ax.plot([], [], color=colors[k], lw=6, alpha=0.55, label=f"step {snap['step']}")
        last = snaps[-1]["layers"]
        zero = np.mean([layer["hidden_frac_zero"] for layer in last])
        dead = np.mean([layer["hidden_dead_units"] for layer in last])
        neg = np.mean([layer["hidden_frac_negative"] for layer in last])
        ax.set_title(row["recipe"].replace("LayerNorm + ", ""), fontsize=11)
        ax.text(0.02, 0.97, f"end: {zero:.0%} exactly 0, {neg:.0%} < 0\n{dead:.0%} units dead on the batch",
                transform=ax.transAxes, va="top", fontsize=8)
        ax.set_xticks(range(n_layer), [f"L{i}" for i in range(n_layer)])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("layer")
    axes[0].set_ylabel("MLP hidden activation (input of down_proj)")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("what the MLP's hidden units output, per layer, as training goes on", fontweight="bold")
    return plotting.save_fig(fig, plots_dir, "hidden_activations")


def featured(r, position, warm: bool):
    cells = [c for c in r["sweep"] if c["featured"] and c["position"] == position and (c["warmup"] > 0) == warm]
    return cells[0] if cells else None


def draw_residual(r, plots_dir):
    """The residual stream per layer: pre-norm lets it grow, post-norm pins it to unit scale."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, position in zip((0, 3), ("pre", "post")):
        cell = featured(r, position, warm=True)
        if cell is None or not cell["record"]["snapshots"]:
            continue
        snaps = cell["record"]["snapshots"]
        for j, snap in enumerate(snaps):
            rms = [layer["resid_rms"] for layer in snap["layers"]]
            axes[0].plot(range(1, len(rms) + 1), rms, "o-" if position == "pre" else "s--", color=colors[k],
                         alpha=0.35 + 0.65 * j / max(1, len(snaps) - 1),
                         label=f"{position}-norm, step {snap['step']}")
        last = snaps[-1]["layers"]
        pos = np.arange(1, len(last) + 1) + (-0.2 if position == "pre" else 0.2)
        violins(axes[1], [layer["resid_sample"] for layer in last], pos, colors[k], width=0.36)
        axes[1].plot([], [], color=colors[k], lw=6, alpha=0.55, label=f"{position}-norm")
    axes[0].set(xlabel="after block", ylabel="RMS of the residual stream", yscale="log",
                title=f"{r['deep_scale']['n_layer']}-layer stack: residual stream size")
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="after block", ylabel="residual stream values", title="their distribution at the end")
    axes[1].legend(fontsize=8)
    # why RMSNorm could drop the mean: how far off-centre are the rows a norm sees?
    for row in (b for b in r["bake_off"] if b["activation"] == "gelu" and b["norm_position"] == "pre"
                                    and "seed" not in b["recipe"]):
        last = row["record"]["snapshots"][-1]["layers"]
        axes[2].plot(range(1, len(last) + 1), [layer["resid_mean_over_rms"] for layer in last], "o-",
                     label=row["recipe"])
    axes[2].set(xlabel="after block", ylabel="mean |row mean| / row RMS", ylim=(0, None),
                title="what LayerNorm's mean-subtraction removes")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return plotting.save_fig(fig, plots_dir, "residual_stream")


def draw_gradient_flow(r, plots_dir):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # colour = where the norm sits, line style = with (solid) or without (dashed) warm-up
    styles = {("pre", True): (colors[0], "-"), ("pre", False): (colors[0], "--"), ("post", True): (colors[3], "-"),
              ("post", False): (colors[3], "--")}
    for (position, warm), (color, ls) in styles.items():
        cell = featured(r, position, warm)
        if cell is None:
            continue
        g = np.array(cell["record"]["resid_grad_norm"])   # (steps, depth 0..L)
        if g.size == 0:
            continue
        n = max(1, min(10, len(g) // 4))
        label = f"{position}-norm, warm-up {cell['warmup']}"
        axes[0].plot(range(g.shape[1]), g[:n].mean(0), ls, color=color, marker="o", ms=3, label=label)
        pg = np.array(cell["record"]["param_grad_norm"])    # (steps, L)
        axes[1].plot(range(1, pg.shape[1] + 1), pg[:n].mean(0), ls, color=color, marker="o", ms=3, label=label)
        axes[2].plot(np.arange(1, len(pg) + 1), pg.sum(1) if pg.ndim == 2 else pg, ls, color=color, lw=1, label=label)
    axes[0].set(xlabel="depth (0 = embeddings, L = last block's output)", ylabel="‖dL/dx‖ per token", yscale="log",
                title="gradient down the residual stream\n(first steps)")
    axes[1].set(xlabel="block", ylabel="‖grad of the block's weights‖", yscale="log",
                title="gradient reaching each block's weights\n(first steps)")
    axes[2].set(xlabel="step", ylabel="sum over blocks of ‖grad‖", yscale="log",
                title=f"over training (lr {r['feature_lr']:g}, before clipping)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return plotting.save_fig(fig, plots_dir, "gradient_flow")


def draw_sweep(r, plots_dir):
    lrs, warmups = r["lrs"], r["warmups"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), gridspec_kw={"width_ratios": [1, 1, 1.3]},
                             layout="constrained")
    finite = [c["final_val_nats_per_char"] for c in r["sweep"] if c["final_val_nats_per_char"] is not None]
    vmin, vmax = (min(finite), max(finite)) if finite else (0, 1)
    unigram = r["headline"]["unigram_nats_per_char"]
    for ax, position in zip(axes[:2], ("pre", "post")):
        grid = np.full((len(warmups), len(lrs)), np.nan)
        for c in r["sweep"]:
            if c["position"] == position:
                i, j = warmups.index(c["warmup"]), lrs.index(c["lr"])
                grid[i, j] = c["final_val_nats_per_char"] if c["final_val_nats_per_char"] is not None else np.nan
                text = f"{grid[i, j]:.2f}" if np.isfinite(grid[i, j]) else "nan"
                if c["status"] != "trains":
                    text += f"\n{c['status']}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if c["status"] != "trains" else "black")
        cmap = plt.get_cmap("viridis_r").copy()
        cmap.set_bad("dimgray")
        im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(warmups)), [f"{w} steps" for w in warmups])
        ax.grid(False)
        ax.set(xlabel="peak learning rate", ylabel="warm-up",
               title=f"{position}-norm, {r['deep_scale']['n_layer']} layers: final val loss")
    fig.colorbar(im, ax=axes[1], label="nats/char (lower is better)")
    # curves of the highest-lr cells: the divergence itself
    top = max(lrs)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c in (c for c in r["sweep"] if c["lr"] == top):
        loss = c["record"]["loss"]
        ls = "-" if c["warmup"] else "--"
        color = colors[0] if c["position"] == "pre" else colors[3]
        axes[2].plot(range(1, len(loss) + 1), loss, ls, color=color, lw=1.2,
                     label=f"{c['position']}-norm, warm-up {c['warmup']} ({c['status']})")
        if c["status"] == "diverged":
            axes[2].plot(len(loss), loss[-1] if loss else unigram, "x", color=color, ms=10, mew=2)
    axes[2].axhline(unigram, color="grey", ls=":", lw=1)
    axes[2].set(xlabel="step", ylabel="train loss (nats/char)", title=f"at the highest learning rate, {top:g}")
    axes[2].legend(fontsize=7)
    return plotting.save_fig(fig, plots_dir, "warmup_sweep")


if __name__ == "__main__":
    p = cli.parser("10_norms_and_activations", __doc__)
    run = cli.setup(p, header=False)
    cli.run_main(lambda: draw(run.results_path, run.plots_dir, run.animations_dir))
