"""Redraw chapter 10's figures from its saved results (never retrains).

    uv run chapters/10_norms_and_activations/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from norm_bakeoff import BAKE_OFF, featured, recipe_runs
from shared import cli, diagrams, plotting

NAMES = {"gelu": "GELU (erf)", "gelu_tanh": "GELU (tanh approx.)", "silu": "SiLU / Swish", "relu": "ReLU"}
POSITION = {"pre": plotting.color("pre-norm"), "post": plotting.color("post-norm")}
SMALL = plotting.MIN_FONT_PT


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    return [plotting.save_fig(norm_placement(), plots_dir, "norm_placement"), draw_activations(r, plots_dir),
            draw_checks(r, plots_dir), draw_bake_off(r, plots_dir), draw_hidden(r, plots_dir),
            draw_residual(r, plots_dir), draw_gradient_flow(r, plots_dir), draw_sweep(r, plots_dir)]


# ----------------------------------------------------------------------------- the mechanism
def _stream_row(ax, y: float, post: bool) -> None:
    """One block drawn left to right on the residual stream at height y: two sublayers (attention,
    MLP), each with its norm before the branch (pre-norm) or on the stream after the add (post-norm)."""
    colour = POSITION["post" if post else "pre"]
    xs = 0.55
    ax.text(0.2, y, "xₗ", ha="center", va="center", fontsize=SMALL + 2, fontweight="bold")
    for name in ("Attention", "MLP"):
        split = xs + 0.35
        branch_y = y + 0.95
        add = diagrams.plus(ax, (split + 2.55, y))
        if post:
            sub = diagrams.box(ax, (split + 1.25, branch_y), 1.25, 0.5, name)
            diagrams.arrow(ax, (split, y), sub.left, via=[(split, branch_y)])
            diagrams.arrow(ax, sub.right, add.top, via=[(add.x, branch_y)])
            diagrams.arrow(ax, (xs, y), add.left)
            norm = diagrams.box(ax, (add.x + 0.85, y), 0.9, 0.46, "Norm", highlight=True, name="norm_on_stream")
            diagrams.arrow(ax, add.right, norm.left)
            xs = norm.x + norm.w / 2
        else:
            norm = diagrams.box(ax, (split + 0.55, branch_y), 0.8, 0.46, "Norm", color=plotting.color("layernorm"))
            sub = diagrams.box(ax, (split + 1.75, branch_y), 1.2, 0.5, name)
            diagrams.arrow(ax, (split, y), norm.left, via=[(split, branch_y)])
            diagrams.arrow(ax, norm.right, sub.left)
            diagrams.arrow(ax, sub.right, add.top, via=[(add.x, branch_y)])
            diagrams.arrow(ax, (xs, y), add.left, color=colour, lw=2.5)
            xs = add.x + add.w / 2
    end = 9.0
    diagrams.arrow(ax, (xs, y), (end, y), color=colour if not post else diagrams.NEUTRAL_EDGE,
                   lw=2.5 if not post else 1.5)
    ax.text(end + 0.3, y, "xₗ₊₁", ha="center", va="center", fontsize=SMALL + 2, fontweight="bold")
    # the gradient's way back down the stream, right to left
    diagrams.path(ax, [(end, y), (0.45, y)], color=colour, width=14, alpha=0.25)
    diagrams.arrow(ax, (end - 0.1, y - 0.42), (0.6, y - 0.42), color=colour, lw=1.8)
    words = ("gradient: crosses every Norm on the stream (each rescales by 1/σ and removes two directions)"
             if post else "gradient: unimpeded along the identity path (xₗ₊₁ = xₗ + F₁ + F₂): no norm on the stream")
    ax.text(4.8, y - 0.5, words, ha="center", va="top", fontsize=SMALL, color=colour)


def norm_placement():
    """Pre-norm vs post-norm: where the norm sits decides what the gradient must pass on its way down."""
    fig, ax = diagrams.canvas(9.8, 5.3)
    for y, post, title in ((3.7, False, "pre-norm (GPT-2 and since):  x ← x + F(Norm(x))"),
                           (0.95, True, "post-norm (2017):  x ← Norm(x + F(x))")):
        colour = POSITION["post" if post else "pre"]
        diagrams.frame(ax, (0.05, y - 0.9, 9.75, y + 1.55), title, color=colour)
        _stream_row(ax, y, post)
    return fig


# ----------------------------------------------------------------------------- part 1
def draw_activations(r, plots_dir):
    c = r["curves"]
    x = np.array(c["x"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    for name in ("relu", "gelu", "gelu_tanh", "silu"):
        ls, colour = (":", "black") if name == "gelu_tanh" else ("-", plotting.color(name))
        ax1.plot(x, c[name]["y"], ls, color=colour, lw=2, label=NAMES[name])
        ax2.plot(x, c[name]["dy"], ls, color=colour, lw=2, label=NAMES[name])
    ax1.set(title="the activations (hand-written forward)", xlabel="x", ylabel="f(x)", ylim=(-0.6, 4))
    ax2.set(title="their derivatives (hand-written backward)", xlabel="x", ylabel="f'(x)")
    ax2.axhline(0, color="grey", lw=0.8)
    ax1.legend(loc="upper left")
    ax2.annotate("ReLU: exactly 0\nfor every x < 0", xy=(-2.5, 0), xytext=(-4, 0.45),
                 arrowprops={"arrowstyle": "->", "color": "grey"})
    ax2.annotate("GELU, SiLU: > 1 just above 0,\nslightly negative below", xy=(1.5, 1.1), xytext=(1.0, 0.2),
                 arrowprops={"arrowstyle": "->", "color": "grey"})
    return plotting.save_fig(fig, plots_dir, "activations")


def draw_checks(r, plots_dir):
    rows = r["checks"]
    names = [row["function"] for row in rows]
    bottom = 1e-18  # log axis: an exact 0 is drawn at the bottom and marked "0"
    series = [("forward vs torch (fp32)", "forward_max_err_fp32", plotting.color("layernorm")),
              ("hand backward vs autograd (fp64)", "backward_max_err_vs_torch_fp64", plotting.color("gelu")),
              ("BUGGY backward vs autograd (fp64)", "buggy_backward_err_vs_torch_fp64", plotting.color("post-norm"))]
    fig, ax = plt.subplots(figsize=(10, 4.6), layout="constrained")
    xs = np.arange(len(names))
    for k, (label, key, colour) in enumerate(series):
        values = [row[key] for row in rows]
        bars = ax.bar(xs + (k - 1) * 0.27, values, width=0.27, label=label, color=colour, bottom=bottom / 2)
        for bar, v in zip(bars, values):
            if v == 0:
                ax.annotate("0", (bar.get_x() + bar.get_width() / 2, bottom), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", color="0.25")
    ax.axhline(1e-6, ls="--", color="black", lw=1, label="forward tolerance 1e-6")
    ax.set_yscale("log")
    ax.set_xticks(xs, names)
    ax.set(ylabel="max |difference|", title="a correct backward sits at round-off, a buggy one far off")
    for x, row in zip(xs, rows):
        ok = row["gradcheck"] and row["bug_caught_by_gradcheck"]
        ax.annotate("gradcheck ✓\nbug caught ✓" if ok else "CHECK\nFAILED", xy=(x, 30), ha="center", va="bottom")
    ax.set_ylim(bottom / 2, 1e7)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=SMALL)
    return plotting.save_fig(fig, plots_dir, "gradcheck")


# ----------------------------------------------------------------------------- part 2
def recipe_colour(recipe) -> str:
    return plotting.color("post-norm" if recipe.norm_position == "post" else recipe.activation)


def draw_bake_off(r, plots_dir):
    """The gap above the floor per recipe: one dot per seed, the bar spanning the seeds."""
    story = "gap_to_floor" in r["bake_off"][0]
    floor = r["entropy_floor_nats_per_char"]

    def gap(row):
        v = row.get("gap_to_floor") if story else row["final_val_nats_per_char"]
        return np.nan if v is None else v - (0 if story or floor is None else floor)

    fig, ax = plt.subplots(figsize=(10, 4.8), layout="constrained")
    y = np.arange(len(BAKE_OFF))
    reference = np.array([gap(b) for b in recipe_runs(r, BAKE_OFF[0].name)])
    if len(reference) >= 2 and np.isfinite(reference).all():   # the noise band every other row is read against
        ax.axvspan(reference.min(), reference.max(), color="0.88", zorder=0.5, label="GPT-2's seed spread")
    for i, recipe in enumerate(BAKE_OFF):
        gaps = np.array([gap(b) for b in recipe_runs(r, recipe.name)])
        colour = recipe_colour(recipe)
        ok = gaps[np.isfinite(gaps)]
        if len(ok):
            ax.plot([ok.min(), ok.max()], [i, i], color=colour, lw=9, alpha=0.35, solid_capstyle="butt")
            ax.plot(ok, np.full(len(ok), i), "o", color=colour, ms=8,
                    mec=plotting.color("rmsnorm") if recipe.norm == "rmsnorm" else "white", mew=2.2)
            ax.plot([ok.mean()], [i], "|", color="black", ms=18, mew=2)
            ax.annotate(f"{ok.mean():.3f}", (ok.max(), i), xytext=(8, 0), textcoords="offset points", va="center")
    ax.set_yticks(y, [recipe.name for recipe in BAKE_OFF])
    ax.invert_yaxis()
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo, hi + 0.12 * (hi - lo))
    what = "loss on whole held-out stories − the perfect model's on the same stories" if story else \
        "final validation loss − entropy floor" if floor is not None else "final validation loss"
    ax.set(xlabel=f"{what} (nats/char; lower is better)",
           title=f"one switch at a time, {r['config']['seeds']} seeds each: dots = seeds, bar = their spread, "
                 "| = mean")
    ax.title.set_fontsize(12)
    handles = [Patch(facecolor="0.88", label="GPT-2's seed spread"),
               Patch(facecolor="white", edgecolor=plotting.color("rmsnorm"), lw=2.2, label="RMSNorm (orange rim)")]
    ax.legend(handles=handles, loc="upper right")
    return plotting.save_fig(fig, plots_dir, "bake_off")


def violins(ax, samples_by_layer, positions, colour, width=0.35):
    parts = ax.violinplot(list(samples_by_layer), positions=positions, widths=width, showextrema=False,
                          showmedians=True)
    for body in parts["bodies"]:
        body.set_facecolor(colour)
        body.set_alpha(0.55)
    parts["cmedians"].set_color("black")


def draw_hidden(r, plots_dir):
    """Violins of the MLP hidden activations per layer at three moments, for four activations."""
    wanted = ["relu", "gelu", "silu", "swiglu"]
    rows = [next(b for b in r["bake_off"] if b["activation"] == a and b["norm"] == "layernorm"
                 and b["norm_position"] == "pre" and b["record"]["snapshots"]) for a in wanted]
    # each panel its own y-scale: SwiGLU's output is a product of two small numbers
    fig, axes = plotting.grid(4, ncols=2, panel_size=(5, 3.4))
    shades = [0.35, 0.65, 1.0]
    for ax, row in zip(axes, rows):
        snaps = row["record"]["snapshots"]
        n_layer = len(snaps[0]["layers"])
        colour = plotting.color(row["activation"])
        for k, snap in enumerate(snaps):
            pos = np.arange(n_layer) + (k - (len(snaps) - 1) / 2) * 0.28
            violins(ax, [layer["hidden_sample"] for layer in snap["layers"]], pos, colour, width=0.26)
            for body in ax.collections[-n_layer:]:
                body.set_alpha(shades[min(k, 2)] * 0.7)
        last = snaps[-1]["layers"]
        zero = np.mean([layer["hidden_frac_zero"] for layer in last])
        neg = np.mean([layer["hidden_frac_negative"] for layer in last])
        ax.set_title(row["recipe"].replace("LayerNorm + ", "").replace(" (GPT-2)", ""), loc="left")
        ax.text(0.98, 0.96, f"end: {zero:.0%} exactly 0, {neg:.0%} < 0", transform=ax.transAxes, ha="right",
                va="top", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        ax.set_xticks(range(n_layer), [f"layer {i}" for i in range(n_layer)])
        ax.axhline(0, color="grey", lw=0.8)
    steps = ", ".join(str(s["step"]) for s in rows[0]["record"]["snapshots"])
    axes[0].set_ylabel("MLP hidden value")
    axes[2].set_ylabel("MLP hidden value")
    fig.suptitle(f"MLP hidden units (input of down_proj): each layer's three violins = steps {steps}")
    return plotting.save_fig(fig, plots_dir, "hidden_activations")


def draw_residual(r, plots_dir):
    """The residual stream per layer: pre-norm lets it grow, post-norm pins it to unit scale."""
    fig, axes = plotting.grid(3, ncols=3, panel_size=(3.6, 3.6))
    for position in ("pre", "post"):
        snaps = featured(r, position, warm=True)["record"]["snapshots"]
        if not snaps:
            continue
        for j, snap in enumerate(snaps):
            rms = [layer["resid_rms"] for layer in snap["layers"]]
            axes[0].plot(range(1, len(rms) + 1), rms, "o-" if position == "pre" else "s--", color=POSITION[position],
                         alpha=0.3 + 0.7 * j / max(1, len(snaps) - 1), ms=4,
                         label=f"{position}-norm" if j == len(snaps) - 1 else None)
        last = snaps[-1]["layers"]
        pos = np.arange(1, len(last) + 1) + (-0.2 if position == "pre" else 0.2)
        violins(axes[1], [layer["resid_sample"] for layer in last], pos, POSITION[position], width=0.36)
    axes[0].set(xlabel="after block", ylabel="RMS of the residual stream",
                title=f"{r['deep_scale']['n_layer']}-layer stack: size\n(pale = earlier steps)")
    plotting.log_axis(axes[0], "y")
    axes[0].legend(loc="best")
    axes[1].set(xlabel="after block", ylabel="residual stream values",
                title="values at the end\n(pre left, post right)")
    # why RMSNorm could drop the mean: how far off-centre are the rows a norm sees?
    for name, norm in (("LayerNorm + GELU (GPT-2)", "layernorm"), ("RMSNorm + GELU", "rmsnorm")):
        row = next(b for b in recipe_runs(r, name) if b["record"]["snapshots"])
        last = row["record"]["snapshots"][-1]["layers"]
        axes[2].plot(range(1, len(last) + 1), [layer["resid_mean_over_rms"] for layer in last], "o-",
                     color=plotting.color(norm), label=name.replace(" (GPT-2)", ""))
    axes[2].set(xlabel="after block", ylabel="|row mean| / row RMS", ylim=(0, None),
                title="bake-off models: how\noff-centre the rows are")
    axes[2].legend(loc="upper left", fontsize=SMALL)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return plotting.save_fig(fig, plots_dir, "residual_stream")


def draw_gradient_flow(r, plots_dir):
    fig, axes = plotting.grid(3, ncols=3, panel_size=(3.6, 3.8))
    for position in ("pre", "post"):
        for warm in (False, True):
            c = featured(r, position, warm)
            g = c["early_gradients"]
            ls, label = ("-" if warm else "--"), f"{position}-norm, {'with' if warm else 'no'} warm-up"
            axes[0].plot(range(len(g["resid"])), g["resid"], ls, color=POSITION[position], marker="o", ms=3,
                         label=label)
            axes[1].plot(range(1, len(g["blocks"]) + 1), g["blocks"], ls, color=POSITION[position], marker="o",
                         ms=3, label=label)
            total = np.asarray(c["record"]["param_grad_norm"]).sum(axis=1)
            axes[2].plot(np.arange(1, len(total) + 1), total, ls, color=POSITION[position], lw=1.2, label=label)
    axes[0].set(xlabel="depth (0 = embeddings)", ylabel="‖dL/dx‖ per token",
                title="down the residual\nstream (first steps)")
    axes[1].set(xlabel="block", ylabel="‖grad of the block's weights‖",
                title="reaching each block's\nweights (first steps)")
    axes[2].set(xlabel="step", ylabel="sum over blocks of ‖grad‖",
                title=f"over training\n(lr {r['feature_lr']:g}, before clipping)")
    for ax in axes:
        plotting.log_axis(ax, "y")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2)
    return plotting.save_fig(fig, plots_dir, "gradient_flow")


def draw_sweep(r, plots_dir):
    lrs, warmups = sorted({c["lr"] for c in r["sweep"]}), r["warmups"]
    fig, axes = plotting.grid(3, ncols=3, panel_size=(3.6, 3.4))
    finite = [c["final_val_nats_per_char"] for c in r["sweep"] if c["final_val_nats_per_char"] is not None]
    vmin, vmax = (min(finite), max(finite)) if finite else (0, 1)
    unigram = r["unigram_nats_per_char"]
    cmap = plt.get_cmap("viridis_r").copy()
    cmap.set_bad("dimgray")
    for ax, position in zip(axes[:2], ("pre", "post")):
        grid = np.full((len(warmups), len(lrs)), np.nan)
        for c in (c for c in r["sweep"] if c["position"] == position):
            i, j = warmups.index(c["warmup"]), lrs.index(c["lr"])
            v = c["final_val_nats_per_char"]
            grid[i, j] = np.nan if v is None else v
            text = ("nan" if v is None else f"{v:.2f}") + ("" if c["status"] == "trains" else f"\n{c['status']}")
            dark = v is None or (v - vmin) / max(vmax - vmin, 1e-9) > 0.5   # viridis_r: high values are dark
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black", fontweight="bold")
        ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(warmups)), [str(w) for w in warmups])
        ax.grid(False)
        ax.set(xlabel="peak learning rate", ylabel="warm-up steps", title=f"{position}-norm: final val loss")
        ax.title.set_color(POSITION[position])
    top = max(lrs)   # the curves at the highest learning rate: what failing looks like
    for c in (c for c in r["sweep"] if c["lr"] == top):
        loss = c["record"]["loss"]
        axes[2].plot(range(1, len(loss) + 1), loss, "-" if c["warmup"] else "--", color=POSITION[c["position"]],
                     lw=1.2, label=f"{c['position']}, warm-up {c['warmup']}")
    axes[2].axhline(unigram, color="grey", ls=":", lw=1)
    axes[2].annotate("letter frequencies", (1, unigram), xycoords=("axes fraction", "data"), xytext=(-3, 3),
                     textcoords="offset points", ha="right", va="bottom", color="0.35")
    axes[2].set(xlabel="step", ylabel="train loss (nats/char)", title=f"train loss at lr {top:g}")
    fig.legend(*axes[2].get_legend_handles_labels(), loc="outside lower center", ncol=4)
    return plotting.save_fig(fig, plots_dir, "warmup_sweep")


if __name__ == "__main__":
    cli.visualize_main(draw)
