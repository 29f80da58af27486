"""Redraw chapter 11's figures from its saved results (never retrains).

    uv run chapters/11_pretraining_objectives/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from shared import cli, plotting

NAMES = {"mlm": "masked LM (BERT)", "clm": "causal LM (GPT)", "prefix": "prefix LM"}
# the style's colour-blind palette: C0 blue, C1 orange, C2 green (no book family covers objectives)
COLORS = {"mlm": "C0", "clm": "C1", "prefix": "C2", "chance": "0.75", "oracle": "0.3"}
FONT = plotting.MIN_FONT_PT


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    paths = [draw_masks(r, plots_dir), draw_losses(r, plots_dir), draw_fill(r, plots_dir),
             draw_suffix(r, plots_dir), draw_mask_rates(r, plots_dir)]
    if "concepts" in r:
        paths.append(draw_concepts(r, plots_dir))
    if "hyperbolic" in r:
        paths.append(draw_disk(r, plots_dir))
    return paths


# ----------------------------------------------------------------------------- the mechanism diagram
def _loss_positions(key: str, t: int, prefix_len: int, masked: set[int]) -> list[bool]:
    """Which positions carry a loss: the MLM at its masked tokens (predicting themselves), the causal
    LM everywhere (predicting the next token), the prefix LM from the last prefix token on."""
    if key == "mlm":
        return [i in masked for i in range(t)]
    if key == "clm":
        return [True] * t
    return [i >= prefix_len - 1 for i in range(t)]


def draw_masks(r, plots_dir):
    """The three attention masks side by side on one short opening, with the input each model reads
    (the masked LM's [MASK]s) and the positions whose prediction is scored."""
    m = r["masks"]
    tokens = [t.replace("\n", "⏎").strip() or "⏎" for t in m["tokens"]]
    t, s = len(tokens), m["prefix_len"]
    masked = {2, t - 2}  # a 15%-style example: two of the tokens replaced by [MASK]
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.9))
    titles = {"mlm": "masked LM: all pairs", "clm": "causal LM: lower triangle", "prefix": f"prefix LM: prefix {s}"}
    for ax, key in zip(axes, ("mlm", "clm", "prefix")):
        grid = np.array(m[key])
        inputs = ["[M]" if key == "mlm" and i in masked else tok for i, tok in enumerate(tokens)]
        for q in range(t):
            for k in range(t):
                ax.add_patch(Rectangle((k, q), 1, 1, fc=COLORS[key] if grid[q][k] else "white", ec="0.85", lw=0.6,
                                       alpha=0.85 if grid[q][k] else 1))
        for i, carries in enumerate(_loss_positions(key, t, s, masked)):   # the loss row under the grid
            ax.add_patch(Rectangle((i, t + 0.4), 1, 2.2, fc="0.2" if carries else "white", ec="0.6", lw=0.8))
            target = tokens[i] if key == "mlm" else tokens[i + 1] if i + 1 < t else "…"
            if carries:   # what this position is asked to predict
                ax.text(i + 0.5, t + 1.5, target, rotation=90, ha="center", va="center", color="white", fontsize=FONT)
        if key == "prefix":
            ax.plot([s, s], [0, t], color="C3", lw=2)
            ax.plot([0, t], [s, s], color="C3", lw=2)
        ax.set_xlim(0, t)
        ax.set_ylim(t + 2.7, 0)
        ax.set_aspect("equal")
        ax.grid(False)
        ax.set_xticks(np.arange(t) + 0.5, inputs, rotation=90, fontsize=FONT)
        ax.xaxis.tick_top()
        ax.set_yticks(np.arange(t) + 0.5, [""] * t)
        ax.set_xlabel(titles[key], fontsize=12, fontweight="bold")
        for side in ax.spines.values():
            side.set_visible(False)
    axes[0].set_yticks([*(np.arange(t) + 0.5), t + 1.5], [*tokens, "predicts"], fontsize=FONT)
    fig.suptitle("Same transformer, three masks. Row = query, column = the key it may read (coloured);\n"
                 "bottom row: the token each position is scored on (white = no loss there)", fontsize=12,
                 y=0.01, va="bottom", fontweight="normal")
    fig.subplots_adjust(wspace=0.08, bottom=0.16)
    return plotting.save_fig(fig, plots_dir, "objective_masks")


# ----------------------------------------------------------------------------- training and the fair tests
def smooth(y, k=15):
    y = np.asarray(y, dtype=float)
    if len(y) < k:
        return y
    return np.convolve(y, np.ones(k) / k, mode="valid")


def draw_losses(r, plots_dir):
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for key, h in r["histories"].items():
        y = smooth(h["train_loss"])
        ax.plot(np.arange(len(y)) + (len(h["train_loss"]) - len(y)) + 1, y, color=COLORS[key],
                label=f"{NAMES[key]} (train)")
        ax.plot([v["step"] for v in h["val"]], [v["loss"] for v in h["val"]], "o", ms=4, color=COLORS[key])
    ax.set(xlabel="step", ylabel="loss on its own objective\n(nats / predicted token)",
           title="Training losses (dots: validation): NOT comparable")
    ax.legend(loc="upper right")
    return plotting.save_fig(fig, plots_dir, "loss_curves")


def draw_fill(r, plots_dir):
    table = r["fill_in_the_blank"]["table"]
    cols = ["chance", "mlm", "clm", "prefix", "oracle"]
    labels = {"chance": "chance (1/#candidates)", "oracle": "Bayes-optimal (exact)"}
    x = np.arange(len(table))
    w = 0.16
    fig, ax = plt.subplots(figsize=(9, 5))
    for j, c in enumerate(cols):
        bars = ax.bar(x + (j - 2) * w, [row[c] for row in table], w, color=COLORS[c], label=labels.get(c, NAMES.get(c)))
        plotting.mark_zero_bars(ax, bars)
    ax.set_xticks(x, [f"blank in {row['blank in']}\n(n={row['n']})" for row in table])
    ax.set(ylabel="accuracy", ylim=(0, 1.05), title="Fill in the blank on held-out stories")
    ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return plotting.save_fig(fig, plots_dir, "fill_in_the_blank")


def draw_suffix(r, plots_dir):
    s = r["suffix_loss"]
    keys = list(s)
    fig, ax = plt.subplots(figsize=(6, 4.3))
    ax.bar([NAMES[k] for k in keys], [s[k]["nats_per_token"] for k in keys], color=[COLORS[k] for k in keys], width=0.5)
    plotting.entropy_floor(ax, s[keys[0]]["floor_nats_per_token"], "exact floor")
    ax.set(ylabel="nats per word token", title="Loss on the story after its opening")
    return plotting.save_fig(fig, plots_dir, "suffix_loss")


def draw_mask_rates(r, plots_dir):
    rows = r["mask_rate_ablation"]
    rates = [row["mask_rate"] for row in rows]
    evals = sorted(k for k in rows[0] if k.startswith("loss_at_"))
    overall = r["fill_in_the_blank"]["table"][-1]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.4))
    for j, k in enumerate(evals):
        shade = 0.4 + 0.6 * j / max(1, len(evals) - 1)
        ax.plot(rates, [row[k] for row in rows], "o-", color=COLORS["mlm"], alpha=shade,
                label=f"scored at {float(k[8:]):.0%} masked")
    ax.set(xlabel="masking rate in training", ylabel="masked-token loss (nats)", title="Loss on masked tokens")
    for a in (ax, ax2):
        a.set_xticks(rates)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.legend()
    ax2.plot(rates, [row["fill_all"] for row in rows], "o-", color=COLORS["mlm"], label="masked LM")
    ax2.axhline(overall["oracle"], color=COLORS["oracle"], ls="--", lw=1.5)
    ax2.axhline(overall["chance"], color=COLORS["chance"], ls=":", lw=2)
    for y, text in ((overall["oracle"], "Bayes-optimal"), (overall["chance"], "chance")):
        ax2.annotate(text, (1, y), xycoords=("axes fraction", "data"), xytext=(-4, 4), textcoords="offset points",
                     ha="right", va="bottom", fontsize=FONT, color="0.3")
    ax2.set(xlabel="masking rate in training", ylabel="fill-in-the-blank accuracy (all blanks)", ylim=(0, 1.05),
            title="Fill in the blank")
    ax2.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "mask_rate")


# ----------------------------------------------------------------------------- extras
def draw_concepts(r, plots_dir):
    c = r["concepts"]
    metrics = ["exact match", "exact match (endings)", "valid sentence", "possible here"]
    fig = plt.figure(figsize=(10, 8))
    ax = fig.add_subplot(2, 1, 1)
    x = np.arange(len(metrics))
    w = 0.8 / len(c["table"])
    colors = ["C4", "C3", COLORS["clm"]]   # decoded concept, snapped concept, the chapter's causal LM
    for j, row in enumerate(c["table"]):
        bars = ax.bar(x + (j - (len(c["table"]) - 1) / 2) * w, [row[m] for m in metrics], w, label=row["predictor"],
                      color=colors[j % len(colors)])
        plotting.mark_zero_bars(ax, bars)
    ax.set_xticks(x, [m.replace(" (", "\n(") for m in metrics])
    ax.set(ylabel="fraction of next-sentence\npredictions", ylim=(0, 1.05), title="Next sentence: concepts vs words")
    ax.legend(loc="upper left")
    for k, (key, name, what) in enumerate((("ae_losses", "sentence autoencoder", "cross-entropy (nats/word)"),
                                           ("lm_losses", "concept LM", "squared error"))):
        sub = fig.add_subplot(2, 2, 3 + k)
        sub.plot(smooth(c[key]), color="0.3")
        plotting.log_axis(sub, "y")
        sub.set(xlabel="step", ylabel=f"{what}, log", title=f"Training the {name}")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "large_concept_model")


def _square_limits(p: np.ndarray, pad: float = 0.12) -> tuple:
    """Equal x and y ranges around the points, so both panels have the same aspect."""
    lo, hi = p.min(0), p.max(0)
    mid, half = (lo + hi) / 2, (hi - lo).max() / 2 * (1 + pad)
    return (mid[0] - half, mid[0] + half), (mid[1] - half, mid[1] + half)


def draw_disk(r, plots_dir):
    h = r["hyperbolic"]
    nodes, depth, edges = h["nodes"], h["depth"], h["edges"]
    index = {n: i for i, n in enumerate(nodes)}
    rows = {(row["geometry"], row["dim"]): row for row in h["table"]}
    level_names = ["world", "homes", "characters", "favourite things"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.9))
    for ax, geometry in zip(axes, ("poincare", "euclidean")):
        p = np.array(h["points_2d"][geometry])
        centre = p[index[nodes[0]]]
        for a, b in edges:
            ax.plot(*p[[index[a], index[b]]].T, color="0.7", lw=0.8, zorder=1)
        for d, name in enumerate(level_names):
            pts = p[[index[n] for n in nodes if depth[n] == d]]
            ax.scatter(*pts.T, color=f"C{d}", s=36, zorder=2, label=name)
        # only the root and the characters are named (each character's favourite thing sits on it);
        # a label whose point is close to an already named one moves down a line instead of overprinting
        span = np.ptp(p, axis=0).max()
        placed: list[np.ndarray] = []
        for n in nodes:
            if depth[n] not in (0, 2):
                continue
            out = p[index[n]] - centre
            out = out / (np.linalg.norm(out) + 1e-9)
            crowd = sum(np.linalg.norm(p[index[n]] - q) < 0.15 * span for q in placed)
            placed.append(p[index[n]])
            ax.annotate(n.split()[0], p[index[n]], xytext=(out[0] * 9, out[1] * 9 - 14 * crowd),
                        textcoords="offset points", fontsize=FONT, zorder=3,
                        ha="left" if out[0] >= 0 else "right", va="bottom" if out[1] >= 0 else "top")
        row = rows[(geometry, 2)]
        ax.set_title(f"{'Poincaré disk' if geometry == 'poincare' else 'Euclidean plane'}\n"
                     f"MAP {row['mean average precision']:.2f}, distortion {row['distortion']:.2f}")
        if geometry == "poincare":
            ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="k", lw=1))
            ax.set(xlim=(-1.12, 1.12), ylim=(-1.12, 1.12))
        else:
            xlim, ylim = _square_limits(p, pad=0.3)
            ax.set(xlim=xlim, ylim=ylim)
        ax.set_aspect("equal", adjustable="box")
        ax.tick_params(labelbottom=False, labelleft=False)
        ax.grid(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("The wood's hierarchy embedded in two dimensions (2-D runs)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.94))
    return plotting.save_fig(fig, plots_dir, "poincare_disk")


if __name__ == "__main__":
    cli.visualize_main(draw)
