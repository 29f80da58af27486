"""Redraw chapter 11's plots from its saved results (never retrains).

    uv run chapters/11_pretraining_objectives/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, plotting
from shared.results import load_json

NAMES = {"mlm": "masked LM (BERT)", "clm": "causal LM (GPT)", "prefix": "prefix LM"}
COLORS = {"mlm": "C0", "clm": "C1", "prefix": "C2", "chance": "0.75", "oracle": "0.3"}


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    r = load_json(results_path)
    paths = [draw_masks(r, plots_dir), draw_losses(r, plots_dir), draw_fill(r, plots_dir), draw_suffix(r, plots_dir)]
    if "concepts" in r:
        paths.append(draw_concepts(r, plots_dir))
    if "hyperbolic" in r:
        paths.append(draw_disk(r, plots_dir))
    return paths


def draw_masks(r, plots_dir):
    m = r["masks"]
    labels = [t.replace("\n", "\\n") for t in m["tokens"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    titles = {"mlm": "masked LM: bidirectional", "clm": "causal LM: lower triangle",
              "prefix": f"prefix LM: first {m['prefix_len']} tokens both ways"}
    for ax, key in zip(axes, ("mlm", "clm", "prefix")):
        ax.imshow(np.array(m[key]), cmap="Blues", vmin=0, vmax=1.3)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("key (may be read)")
        ax.set_title(titles[key], fontsize=10)
        ax.grid(False)
        if key == "prefix":
            p = m["prefix_len"] - 0.5
            ax.axvline(p, color="C3", lw=1.5)
            ax.axhline(p, color="C3", lw=1.5)
    axes[0].set_ylabel("query (reading)")
    fig.suptitle("Same transformer, three attention masks (blue = may attend)", fontweight="bold")
    return plotting.save_fig(fig, plots_dir, "masks")


def smooth(y, k=15):
    y = np.asarray(y, dtype=float)
    if len(y) < k:
        return y
    return np.convolve(y, np.ones(k) / k, mode="valid")


def draw_losses(r, plots_dir):
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for key, h in r["histories"].items():
        y = smooth(h["train_loss"])
        ax.plot(np.arange(len(y)) + (len(h["train_loss"]) - len(y)) + 1, y, color=COLORS[key], label=f"{NAMES[key]} (train)")
        ax.plot([v["step"] for v in h["val"]], [v["loss"] for v in h["val"]], "o", ms=4, color=COLORS[key])
    ax.set(xlabel="step", ylabel="loss on its own objective (nats/predicted token)",
           title="Training losses (dots: validation) — NOT comparable")
    ax.text(0.98, 0.97, "MLM predicts 15% of tokens seeing BOTH sides;\nCLM predicts every token from the left;\n"
            "prefix LM only the suffix, after a two-way prefix.\nDifferent questions, different losses: compare with\n"
            "the fill-in-the-blank and suffix-loss plots instead.", transform=ax.transAxes, ha="right", va="top",
            fontsize=8, bbox=dict(boxstyle="round", fc="white", ec="0.7"))
    ax.legend(loc="lower left", fontsize=8)
    return plotting.save_fig(fig, plots_dir, "loss_curves")


def draw_fill(r, plots_dir):
    table = r["fill_in_the_blank"]["table"]
    cols = ["chance", "mlm", "clm", "prefix", "oracle"]
    x = np.arange(len(table))
    w = 0.16
    fig, ax = plt.subplots(figsize=(8, 4.4))
    for j, c in enumerate(cols):
        ax.bar(x + (j - 2) * w, [row[c] for row in table], w, color=COLORS[c],
               label={"chance": "chance (1/#candidates)", "oracle": "Bayes-optimal (exact)"}.get(c, NAMES.get(c)))
    ax.set_xticks(x, [f"blank in {row['blank in']}\n(n={row['n']})" for row in table])
    ax.set(ylabel="accuracy", ylim=(0, 1.05), title="Fill in the blank on held-out stories")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return plotting.save_fig(fig, plots_dir, "fill_in_the_blank")


def draw_suffix(r, plots_dir):
    s = r["suffix_loss"]
    keys = list(s)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar([NAMES[k] for k in keys], [s[k]["nats_per_token"] for k in keys], color=[COLORS[k] for k in keys], width=0.5)
    plotting.entropy_floor(ax, s[keys[0]]["floor_nats_per_token"], "exact floor")
    ax.set(ylabel="nats per word token", title="Loss on the story after its opening")
    return plotting.save_fig(fig, plots_dir, "suffix_loss")


def draw_concepts(r, plots_dir):
    c = r["concepts"]
    metrics = ["exact match", "exact match (endings)", "valid sentence", "possible here"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.6, 1]})
    x = np.arange(len(metrics))
    w = 0.8 / len(c["table"])
    for j, row in enumerate(c["table"]):
        ax.bar(x + (j - (len(c["table"]) - 1) / 2) * w, [row[m] for m in metrics], w, label=row["predictor"])
    ax.set_xticks(x, [m.replace(" (", "\n(") for m in metrics])
    ax.set(ylabel="fraction of next-sentence predictions", ylim=(0, 1.05),
           title="Next sentence: concepts vs words")
    ax.legend(fontsize=8)
    ax2.plot(smooth(c["ae_losses"]), label="autoencoder (cross-entropy)")
    ax2.plot(smooth(c["lm_losses"]), label="concept LM (squared error)")
    ax2.set(xlabel="step", ylabel="loss", yscale="log", title="Training the two parts")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "large_concept_model")


def draw_disk(r, plots_dir):
    h = r["hyperbolic"]
    nodes, depth, edges = h["nodes"], h["depth"], h["edges"]
    index = {n: i for i, n in enumerate(nodes)}
    rows = {(row["geometry"], row["dim"]): row for row in h["table"]}
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    for ax, geometry in zip(axes, ("poincare", "euclidean")):
        p = np.array(h["points_2d"][geometry])
        for a, b in edges:
            ax.plot(*p[[index[a], index[b]]].T, color="0.6", lw=0.8, zorder=1)
        for n in nodes:
            ax.scatter(*p[index[n]], color=f"C{depth[n]}", s=30, zorder=2)
            ax.annotate(n, p[index[n]], fontsize=7, xytext=(3, 3), textcoords="offset points")
        row = rows[(geometry, 2)]
        ax.set_title(f"{'Poincaré disk' if geometry == 'poincare' else 'Euclidean plane'} (2-D): "
                     f"MAP {row['mean average precision']:.2f}, distortion {row['distortion']:.2f}", fontsize=10)
        ax.set_aspect("equal")
        if geometry == "poincare":
            ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="k", lw=1))
            ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05))
    handles = [plt.Line2D([], [], marker="o", ls="", color=f"C{d}", label=lab)
               for d, lab in enumerate(["world", "homes", "characters", "favourite things"])]
    axes[1].legend(handles=handles, fontsize=8, loc="lower right")
    fig.suptitle("The wood's hierarchy embedded in two dimensions", fontweight="bold")
    return plotting.save_fig(fig, plots_dir, "poincare_disk")


if __name__ == "__main__":
    def _main():
        p = cli.parser("11_pretraining_objectives", __doc__)
        run = cli.setup(p, header=False)
        draw(run.results_path, run.plots_dir, run.animations_dir)

    cli.run_main(_main)
