"""Redraw every plot of chapter 03 from its saved results JSON (never retrains).

    uv run chapters/03_attention/visualize.py            # the default run's results
    uv run chapters/03_attention/visualize.py --quick    # the quick run's results
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.patches import Rectangle

from shared import cli, plotting
from shared.results import load_json

# attention weights are mostly tiny with a few large ones: a square-root colour scale shows both
WEIGHT_NORM = dict(norm=PowerNorm(gamma=0.5, vmin=0, vmax=1), cmap="viridis")


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    r = load_json(results_path)
    return [
        draw_all_heads(r, plots_dir),
        draw_lookback(r, plots_dir),
        draw_head_stats(r, plots_dir),
        draw_causal(r, plots_dir),
        draw_scaling(r, plots_dir),
        draw_temperature(r, plots_dir),
        draw_timing(r, plots_dir),
    ]


# ----------------------------------------------------------------------------- helpers
def show_char(c: str) -> str:
    """Characters as axis labels: make the invisible ones visible."""
    return {" ": "␣", "\n": "⏎"}.get(c, c)


def unpack(rows: list[str]) -> np.ndarray:
    """Per-mille causal rows (as saved by main.pack) back to a (T, T) weight matrix."""
    T = len(rows)
    w = np.zeros((T, T))
    for i, row in enumerate(rows):
        w[i, :i + 1] = np.array(row.split(), dtype=float) / 1000
    return w


def sentence_lines(ax, spans: dict, rows: bool = True, cols: bool = True) -> None:
    """Thin white lines where the middle sentence and the ending start."""
    for at in (spans["opening"][1], spans["ending"][0]):
        if cols:
            ax.axvline(at - 0.5, color="white", lw=0.6, alpha=0.8)
        if rows:
            ax.axhline(at - 0.5, color="white", lw=0.6, alpha=0.8)


def char_ticks(ax, chars: list[str], axis: str, offset: int = 0, fontsize: float = 6) -> None:
    ticks = np.arange(len(chars))
    labels = [show_char(c) for c in chars]
    if axis in ("x", "both"):
        ax.set_xticks(ticks, labels, fontsize=fontsize, rotation=0)
    if axis in ("y", "both"):
        ax.set_yticks(ticks, labels, fontsize=fontsize)
    ax.grid(False)


# ----------------------------------------------------------------------------- trained model
def draw_all_heads(r: dict, plots_dir: Path) -> Path:
    """Every layer (rows) and head (columns) on the same story."""
    weights, spans = r["example"]["weights"], r["example"]["spans"]
    L, H = len(weights), len(weights[0])
    copy, prev = r["head_stats"]["copy_head"], r["head_stats"]["previous_head"]
    fig, axes = plt.subplots(L, H, figsize=(1.9 * H, 1.9 * L + 0.8), squeeze=False)
    for layer in range(L):
        for head in range(H):
            ax = axes[layer, head]
            im = ax.imshow(unpack(weights[layer][head]), **WEIGHT_NORM, interpolation="nearest")
            sentence_lines(ax, spans)
            ax.set_xticks([])
            ax.set_yticks([])
            tag = " copy" if [layer, head] == copy else " prev" if [layer, head] == prev else ""
            ax.set_title(f"L{layer} H{head}{tag}", fontsize=9, color="crimson" if tag else "black")
            if head == 0:
                ax.set_ylabel("query (reads)", fontsize=8)
            if layer == L - 1:
                ax.set_xlabel("key (is read)", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight (√ scale)")
    text = r["example"]["text"].strip()
    fig.suptitle(f"{r['model']['name']}: every layer × head on one story (lines: sentence starts)\n“{text}”",
                 fontsize=10)
    return plotting.save_fig(fig, plots_dir, "attention_all_heads", dpi=80)


def draw_lookback(r: dict, plots_dir: Path) -> Path:
    """The ending's rows of the copy head and the previous-token head, every character labelled."""
    text, spans = r["example"]["text"], r["example"]["spans"]
    e0, e1 = spans["ending"]
    chars = list(text)
    stats = r["head_stats"]
    picks = [("best copy candidate", stats["copy_head"]), ("previous-token", stats["previous_head"])]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.13 * len(chars)), 2 * max(3.5, 0.13 * (e1 - e0)) + 1.2))
    for ax, (name, (layer, head)) in zip(axes, picks):
        w = unpack(r["example"]["weights"][layer][head])[e0 - 1:e1 - 1]  # rows that predict the ending
        im = ax.imshow(w, **WEIGHT_NORM, aspect="auto", interpolation="nearest")
        char_ticks(ax, chars, "x", fontsize=6)
        ax.set_yticks(np.arange(e1 - e0), [f"{show_char(chars[i])}→{show_char(chars[i + 1])}"
                                            for i in range(e0 - 1, e1 - 1)], fontsize=5.5)
        for f in spans["words"].values():  # boxes around the opening's hero / colour / object
            a, b = f["opening"]
            ax.add_patch(Rectangle((a - 1.5, -0.5), b - a + 2, e1 - e0, fill=False, ec="crimson", lw=0.8))
        sentence_lines(ax, spans, rows=False)
        measured = {"best copy candidate": f"copy mass {stats['copy'][layer][head]:.1%} vs uniform "
                                           f"{stats['uniform']['copy']:.1%}",
                    "previous-token": f"previous-token mass {stats['previous'][layer][head]:.1%} vs uniform "
                                      f"{stats['uniform']['previous']:.1%}"}[name]
        ax.set_title(f"{name} head (layer {layer}, head {head}; {measured} over {stats['stories']} stories): "
                     "what each position of the ending reads", fontsize=10)
        ax.set_ylabel("query: current char → next char")
        fig.colorbar(im, ax=ax, pad=0.01, label="weight (√ scale)")
    axes[-1].set_xlabel("key position in the story (red boxes: hero, colour, object in the opening ±1 char)")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "attention_lookback")


def draw_head_stats(r: dict, plots_dir: Path) -> Path:
    s = r["head_stats"]
    panels = [("copy", "copy mass: ending → same word in opening", "Reds"),
              ("previous", "weight on the previous token", "Blues"),
              ("first", "weight on position 0 (the ⏎)", "Greens"),
              ("entropy", "row entropy (bits)", "Purples")]
    L, H = np.array(s["copy"]).shape
    fig, axes = plt.subplots(1, 4, figsize=(4.2 * 4, 0.5 * L + 2.2))
    for ax, (key, title, cmap) in zip(axes, panels):
        m = np.array(s[key])
        ax.imshow(m, cmap=cmap, aspect="auto", vmin=0, vmax=max(m.max(), 1e-9))
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 * m.max() else "black")
        ax.set_xticks(range(H), [f"H{h}" for h in range(H)], fontsize=8)
        ax.set_yticks(range(L), [f"L{l}" for l in range(L)], fontsize=8)
        ax.grid(False)
        ax.set_title(f"{title}\nuniform attention: {s['uniform'][key]:.2f}", fontsize=9)
    fig.suptitle(f"What each head of {r['model']['name']} does, averaged over {s['stories']} stories", fontsize=11)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "head_stats")


def draw_causal(r: dict, plots_dir: Path) -> Path:
    c = r["causal"]
    chars = c["tokens"]
    n = len(chars)
    scores = np.array(c["scores"])
    future = np.triu(np.ones((n, n), dtype=bool), k=1)
    fig, axes = plt.subplots(1, 3, figsize=(3 * max(4.5, 0.15 * n) + 1.5, max(4.5, 0.15 * n) + 0.8))
    lim = np.abs(scores).max()
    im0 = axes[0].imshow(scores, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[0].imshow(np.where(future, 1.0, np.nan), cmap="Greys", vmin=0, vmax=3, alpha=0.35, interpolation="nearest")
    axes[0].set_title("raw scores q·k/√d\n(shaded: the future)", fontsize=10)
    fig.colorbar(im0, ax=axes[0], shrink=0.7)
    unmasked = np.array(c["weights_unmasked"])
    axes[1].imshow(unmasked, **WEIGHT_NORM, interpolation="nearest")
    leak = (unmasked * future).sum(1)[:-1].mean()
    axes[1].set_title(f"softmax WITHOUT the mask\n{leak:.0%} of each row's weight on the future", fontsize=10)
    im2 = axes[2].imshow(np.array(c["weights_masked"]), **WEIGHT_NORM, interpolation="nearest")
    axes[2].set_title("softmax WITH the mask\n(what the model really uses)", fontsize=10)
    fig.colorbar(im2, ax=axes[2], shrink=0.7, label="weight (√ scale)")
    for ax in axes:
        char_ticks(ax, chars, "both", fontsize=5.5)
        ax.set_xlabel("key")
    axes[0].set_ylabel("query")
    fig.suptitle(f"The causal mask on one trained head (layer {c['layer']}, head {c['head']}): same scores, "
                 f"future keys set to −∞ before the softmax.  All heads, whole story: "
                 f"{c['mean_future_mass']:.0%} of the weight would leak to the future.", fontsize=10)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "causal_mask")


# ----------------------------------------------------------------------------- √d and temperature
def draw_scaling(r: dict, plots_dir: Path) -> Path:
    s = r["scaling"]
    d = np.array(s["dims"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in ((axes[0], "entropy", "softmax entropy (bits)"),
                           (axes[1], "max_weight", "largest weight in the row"),
                           (axes[2], "jacobian", "‖∂softmax/∂scores‖ (gradient that gets through)")):
        ax.plot(d, s[f"{key}_scaled"], "o-", label="scores ÷ √d")
        ax.plot(d, s[f"{key}_unscaled"], "s--", label="raw scores q·k")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("head dimension d")
        ax.set_title(title, fontsize=10)
    axes[0].axhline(s["uniform_entropy"], color="grey", ls=":", lw=1)
    axes[0].annotate(f"uniform over {s['keys']} keys", xy=(d[0], s["uniform_entropy"]), va="bottom", fontsize=8)
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(0, 1.05)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Why divide by √d: unit-variance q and k, {s['keys']} keys, mean over {s['samples']} rows",
                 fontsize=11)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "sqrt_d_scaling")


def draw_temperature(r: dict, plots_dir: Path) -> Path:
    t = r["temperature"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    chars = t["tokens"]
    x = np.arange(len(chars))
    colors = plt.cm.coolwarm(np.linspace(0, 1, len(t["multipliers"])))
    for m, row, col in zip(t["multipliers"], t["rows"], colors):
        label = f"×{m:g}" + (" (no ÷√d)" if m == t["root_head_dim"] else " (as trained)" if m == 1 else "")
        axes[0].plot(x, row, "-", color=col, lw=1.4, label=label)
    axes[0].set_xticks(x, [show_char(c) for c in chars], fontsize=5.5)
    axes[0].grid(axis="x", visible=False)
    axes[0].set_ylabel("attention weight")
    axes[0].set_title(f"one row of the copy head (layer {t['layer']}, head {t['head']}): the query that must "
                      f"predict the colour, scores × multiplier", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].plot(t["multipliers"], t["loss"], "o-", color="C3")
    for m, loss in zip(t["multipliers"], t["loss"]):
        if m in (1.0, t["root_head_dim"]):
            axes[1].annotate("as trained" if m == 1 else "no ÷√d", (m, loss), textcoords="offset points",
                             xytext=(4, 6), fontsize=8)
    plotting.entropy_floor(axes[1], t["floor"], label="exact floor")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("multiplier on every attention score (= 1 / temperature)")
    axes[1].set_ylabel("loss on whole stories (nats/char)")
    axes[1].set_title(f"a trained model is tuned to its temperature ({t['stories']} stories)", fontsize=10)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "temperature")


# ----------------------------------------------------------------------------- timing
def draw_timing(r: dict, plots_dir: Path) -> Path:
    rows = r["timing"]
    T = np.array([row["T"] for row in rows])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    axes[0].plot(T, [row["explicit_ms"] for row in rows], "o-", label="written out (step 3)")
    axes[0].plot(T, [row["sdpa_ms"] for row in rows], "s-", label="F.scaled_dot_product_attention")
    axes[0].set_ylabel("median ms per forward")
    axes[0].set_title("time", fontsize=10)
    axes[1].plot(T, [row["explicit_peak_MiB"] for row in rows], "o-", label="written out (step 3)")
    axes[1].plot(T, [row["sdpa_peak_MiB"] for row in rows], "s-", label="SDPA")
    axes[1].plot(T, [row["scores_MiB"] for row in rows], "k:", label="one T×T score matrix (fp32)")
    axes[1].set_ylabel("peak memory during the call (MiB)")
    axes[1].set_title(f"memory ({'CUDA max allocated' if r['meta']['device'].startswith('cuda') else 'process peak RSS growth'})",
                      fontsize=10)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog" if ax is axes[1] else "log", **({"linthresh": 1} if ax is axes[1] else {}))
        ax.set_xlabel("sequence length T")
        ax.legend(fontsize=8)
    c = r["config"]
    fig.suptitle(f"Causal attention forward, {c['bench_heads']} heads × {c['bench_head_dim']} dims, batch 1, "
                 f"on {r['meta']['machine']} ({r['meta']['threads']} threads)", fontsize=10)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "timing")


if __name__ == "__main__":
    def _main():
        p = cli.parser("03_attention", __doc__)
        p.add_argument("--model", default="wood-llama")   # accepted so main.py's flags work here too
        p.add_argument("--lengths", default=None)
        run = cli.setup(p, header=False)
        draw(run.results_path, run.plots_dir, run.animations_dir)

    cli.run_main(_main)
