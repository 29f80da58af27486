"""Redraw every figure of chapter 03 from its saved results JSON (never retrains).

    uv run chapters/03_attention/visualize.py            # the default run's results
    uv run chapters/03_attention/visualize.py --quick    # the quick run's results
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.patches import Rectangle

from shared import cli, diagrams, plotting

# attention weights are mostly tiny with a few large ones: a square-root colour scale shows both
WEIGHTS = dict(norm=PowerNorm(gamma=0.5, vmin=0, vmax=1), cmap="viridis", interpolation="nearest")
SCALED, RAW = "#0072B2", "#D55E00"   # ÷√d and raw scores (Okabe-Ito blue / vermillion)
FACT_COLORS = {"hero": "#E69F00", "color": "#CC79A7", "object": "#56B4E9"}


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    return [draw_mechanism(plots_dir),
            plotting.save_fig(diagrams.transformer_block(highlight="attention"), plots_dir, "you_are_here"),
            draw_heatmap(r, plots_dir), draw_head_stats(r, plots_dir), draw_causal(r, plots_dir),
            draw_scaling(r, plots_dir), draw_temperature(r, plots_dir), draw_timing(r, plots_dir)]


# ----------------------------------------------------------------------------- helpers
def show_char(c: str) -> str:
    """Characters as axis labels: make the invisible ones visible."""
    return {" ": "␣", "\n": "⏎"}.get(c, c)


def unpack(rows: list[list[float]]) -> np.ndarray:
    """Causal rows (row i holds its i+1 visible weights) back to a (T, T) matrix."""
    w = np.zeros((len(rows), len(rows)))
    for i, row in enumerate(rows):
        w[i, :i + 1] = row
    return w


def word_ticks(ax, words: list, axis: str, upto: int | None = None) -> None:
    """One tick per word, at its middle, and faint lines where words start."""
    words = [w for w in words if (upto is None or w[0] < upto) and w[2] != "⏎"]  # ⏎ would crowd the first word
    centres = [(a + min(b, upto or b) - 1) / 2 for a, b, _ in words]
    labels = [w for _, _, w in words]
    if axis == "x":
        ax.set_xticks(centres, labels, rotation=90)
    else:
        ax.set_yticks(centres, labels)
    for a, _, _ in words[1:]:
        (ax.axvline if axis == "x" else ax.axhline)(a - 0.5, color="white", lw=0.4, alpha=0.35)
    ax.grid(False)


def head_name(r: dict, layer: int, head: int) -> str:
    """What the measurements allow us to call a head (never 'copy head' below 2x uniform)."""
    for key, what in (("copy", "copy head"), ("previous", "previous-token head")):
        h = r["named_heads"][key]
        if h["named"] and [h["layer"], h["head"]] == [layer, head]:
            return f"{what}, {h['over_uniform']:.1f}× uniform"
    return "no named pattern"


# ----------------------------------------------------------------------------- the mechanism
def draw_mechanism(plots_dir: Path) -> Path:
    """x → Q, K, V (split into heads) → scores → mask → softmax → weights·v → merge heads → W_o."""
    fig, ax = diagrams.canvas(10, 5.1)
    x = diagrams.box(ax, (0.55, 2.9), 0.9, 0.75, "x\nB×T×C", bold=True)
    proj, heads = {}, {}
    diagrams.frame(ax, (2.55, 0.75, 4.25, 4.75), "split into H heads")
    for name, y in (("q", 3.9), ("k", 2.85), ("v", 1.6)):
        proj[name] = diagrams.box(ax, (1.75, y), 0.75, 0.5, f"W_{name}")
        diagrams.arrow(ax, x.right, proj[name].left)
        heads[name] = diagrams.box(ax, (3.4, y), 1.35, 0.6, f"{name}  B×H×T×d", highlight=True)
        diagrams.arrow(ax, proj[name].right, heads[name].left)
    ax.text(3.4, 0.85, "d = C / H each", ha="center", va="bottom", fontsize=diagrams.FONT, color=diagrams.TEXT)
    scores = diagrams.box(ax, (5.2, 3.4), 1.25, 0.75, "q·kᵀ / √d\nB×H×T×T", highlight=True)
    diagrams.arrow(ax, heads["q"].right, scores.left, via=[(4.4, 3.9), (4.4, 3.55)])
    diagrams.arrow(ax, heads["k"].right, (scores.left[0], 3.25), via=[(4.4, 2.85), (4.4, 3.25)])
    mask = diagrams.box(ax, (6.85, 3.4), 1.5, 0.75, "mask: −∞\nabove diagonal", highlight=True)
    diagrams.arrow(ax, scores.right, mask.left)
    _mini_mask(ax, (6.85, 4.45))
    soft = diagrams.box(ax, (8.6, 3.4), 1.3, 0.75, "softmax\nrows sum to 1", highlight=True)
    diagrams.arrow(ax, mask.right, soft.left)
    mix = diagrams.box(ax, (6.2, 1.6), 1.3, 0.6, "weights · v\nB×H×T×d", highlight=True)
    diagrams.arrow(ax, heads["v"].right, mix.left)
    diagrams.arrow(ax, soft.bottom, mix.top, via=[(soft.x, 2.45), (mix.x, 2.45)])
    ax.text(7.45, 2.5, "weights B×H×T×T", ha="center", va="bottom", fontsize=diagrams.FONT, color=diagrams.TEXT)
    merge = diagrams.box(ax, (7.95, 1.6), 1.3, 0.6, "merge heads\nB×T×C")
    diagrams.arrow(ax, mix.right, merge.left)
    out = diagrams.box(ax, (9.4, 1.6), 0.8, 0.6, "W_o")
    diagrams.arrow(ax, merge.right, out.left)
    diagrams.arrow(ax, out.bottom, (9.4, 0.75))
    ax.text(9.4, 0.7, "out B×T×C", ha="center", va="top", fontsize=diagrams.FONT, color=diagrams.TEXT)
    ax.text(0.1, 0.2, "B batch · T tokens · C = d_model · H heads.  Highlighted: what each head does, all H at once.",
            ha="left", va="center", fontsize=diagrams.FONT, color=diagrams.TEXT)
    ax.text(5.0, 5.0, "Scaled dot-product attention, multi-head and causal", ha="center", va="top",
            fontsize=diagrams.FONT + 2, fontweight="bold", color=diagrams.TEXT)
    return plotting.save_fig(fig, plots_dir, "attention_mechanism")


def _mini_mask(ax, centre, n: int = 5, cell: float = 0.11) -> None:
    """A tiny T×T grid: allowed cells (key <= query) light, the future dark."""
    x0, y0 = centre[0] - n * cell / 2, centre[1] - n * cell / 2
    for i in range(n):          # query (row, top to bottom)
        for j in range(n):      # key (column)
            ax.add_patch(Rectangle((x0 + j * cell, y0 + (n - 1 - i) * cell), cell, cell, lw=0.5,
                                   facecolor="#FCE1CC" if j <= i else "#5A6672", edgecolor="white", zorder=2))
    ax.text(centre[0] + n * cell / 2 + 0.08, centre[1], "allowed / −∞", ha="left", va="center",
            fontsize=diagrams.FONT, color=diagrams.TEXT)


# ----------------------------------------------------------------------------- the trained model
def draw_heatmap(r: dict, plots_dir: Path) -> Path:
    """One head of the trained model on one real story, large, words on both axes."""
    ex = r["example"]
    w = unpack(ex["weights"])
    fig, ax = plt.subplots(figsize=(9.6, 9.2), layout="constrained")
    im = ax.imshow(w, **WEIGHTS)
    word_ticks(ax, ex["words"], "x")
    word_ticks(ax, ex["words"], "y")
    e0, e1 = ex["spans"]["ending"]
    boxes = []
    for field, f in ex["spans"]["words"].items():   # where the ending should read the opening's facts
        a, b = f["opening"]
        boxes.append(ax.add_patch(Rectangle((a - 0.5, e0 - 0.5), b - a, e1 - e0, fill=False, lw=2.2,
                                            ec=FACT_COLORS[field], label=f"the opening's {field} ({f['word']})")))
    ax.legend(handles=boxes, loc="upper right", title="ending rows reading ...", facecolor="white", framealpha=0.9)
    ax.set_xlabel("key: the character being read (ticks at word middles)")
    ax.set_ylabel("query: the character doing the reading")
    ax.set_title(f"{r['model']['name']}, layer {ex['layer']} head {ex['head']} "
                 f"({head_name(r, ex['layer'], ex['head'])})\nboxes: the ending's rows × the opening's facts")
    fig.colorbar(im, ax=ax, shrink=0.6, label="attention weight (√ scale)")
    return plotting.save_fig(fig, plots_dir, "attention_heatmap")


def draw_head_stats(r: dict, plots_dir: Path) -> Path:
    """Each statistic per (layer, head), coloured by its ratio to what uniform attention scores (log scale,
    white = uniform), so a value at uniform never looks "hot"; the cells print the values themselves."""
    s = r["head_stats"]
    panels = [("copy", "copy mass: ending → opening word"), ("previous", "weight on the previous token"),
              ("first", "weight on position 0 (the ⏎)"), ("entropy", "row entropy (bits)")]
    L, H = np.array(s["copy"]).shape
    fig, axes = plt.subplots(2, 2, figsize=(10, 2 * (0.55 * L + 1.6)), layout="constrained")
    for ax, (key, title) in zip(axes.ravel(), panels):
        m, u = np.array(s[key]), s["uniform"][key]
        ratio = np.log2(np.maximum(m, 1e-9) / u)
        lim = max(1.0, np.ceil(np.abs(ratio).max()))
        im = ax.imshow(ratio, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}" if key == "entropy" else f"{v:.3f}".lstrip("0"), ha="center", va="center",
                    fontsize=plotting.MIN_FONT_PT, color="white" if abs(ratio[i, j]) > 0.6 * lim else "black")
        ax.set_xticks(range(H), [f"H{h}" for h in range(H)])
        ax.set_yticks(range(L), [f"L{layer}" for layer in range(L)])
        ax.grid(False)
        ax.set_title(f"{title}\nuniform: {u:.3g}", fontsize=12)
        ticks = np.arange(-lim, lim + 1)
        bar = fig.colorbar(im, ax=ax, ticks=ticks, shrink=0.9)
        bar.ax.set_yticklabels(["uniform" if k == 0 else f"{'×' if k > 0 else '÷'}{2 ** abs(k):g}" for k in ticks])
    fig.suptitle(f"{r['model']['name']}'s heads over {s['stories']} stories: red = more than uniform, blue = less")
    return plotting.save_fig(fig, plots_dir, "head_stats")


def draw_causal(r: dict, plots_dir: Path) -> Path:
    c = r["causal"]
    chars = [show_char(ch) for ch in r["example"]["text"][:c["n_tokens"]]]
    scores = np.array(c["scores"])
    future = np.triu(np.ones_like(scores, dtype=bool), k=1)
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.3), layout="constrained")
    lim = np.abs(scores).max()
    im0 = axes[0].imshow(scores, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[0].imshow(np.where(future, 1.0, np.nan), cmap="Greys", vmin=0, vmax=1, alpha=0.55, interpolation="nearest")
    axes[0].set_title("raw scores q·k/√d\n(shaded: the future)", fontsize=12)
    fig.colorbar(im0, ax=axes[0], shrink=0.7, location="bottom", label="score")
    unmasked = np.array(c["weights_unmasked"])
    axes[1].imshow(unmasked, **WEIGHTS)
    axes[1].set_title(f"softmax without mask:\n{(unmasked * future).sum(1)[:-1].mean():.0%} on the future",
                      fontsize=12)
    im2 = axes[2].imshow(np.array(c["weights_masked"]), **WEIGHTS)
    axes[2].set_title("softmax with mask\n(what the model uses)", fontsize=12)
    fig.colorbar(im2, ax=axes[1:], shrink=0.7, location="bottom", label="weight (√ scale)")
    for ax in axes:
        ax.set_xticks(range(len(chars)), chars)
        ax.set_yticks(range(len(chars)), chars)
        ax.tick_params(length=0, pad=1)
        ax.grid(False)
        ax.set_xlabel("key")
    axes[0].set_ylabel("query")
    fig.suptitle(f"The causal mask on layer {c['layer']} head {c['head']}: the same scores, future keys set to −∞")
    return plotting.save_fig(fig, plots_dir, "causal_mask")


# ----------------------------------------------------------------------------- √d and temperature
def draw_scaling(r: dict, plots_dir: Path) -> Path:
    s = r["scaling"]
    d = np.array(s["dims"])
    fig, axes = plotting.grid(3, ncols=3, panel_size=(3.4, 3.4))
    for ax, key, title in ((axes[0], "entropy", "softmax entropy (bits)"), (axes[1], "max_weight", "largest weight"),
                           (axes[2], "jacobian", "‖∂softmax/∂scores‖")):
        ax.plot(d, s[f"{key}_scaled"], "o-", color=SCALED, label="÷ √d")
        ax.plot(d, s[f"{key}_unscaled"], "s--", color=RAW, label="raw q·k")
        plotting.log_axis(ax, "x", base=2)
        ax.set_xlabel("head dimension d")
        ax.set_title(title, fontsize=12)
    axes[0].axhline(s["uniform_entropy"], color="grey", ls=":", lw=1)
    axes[0].annotate(f"uniform over {s['keys']} keys", xy=(d[0], s["uniform_entropy"]), xytext=(0, 2),
                     textcoords="offset points", va="bottom")
    axes[0].set_ylim(0, s["uniform_entropy"] * 1.25)
    axes[1].set_ylim(0, 1.05)
    axes[2].set_ylim(0, max(s["jacobian_scaled"] + s["jacobian_unscaled"]) * 1.15)
    axes[2].set_title("‖∂softmax/∂scores‖\n(gradient that gets through)", fontsize=12)
    axes[1].legend(loc="center right")
    fig.suptitle(f"Why divide by √d: unit-variance q and k, {s['keys']} keys, {s['samples']} rows per d")
    return plotting.save_fig(fig, plots_dir, "sqrt_d_scaling")


def draw_temperature(r: dict, plots_dir: Path) -> Path:
    t, ex = r["temperature"], r["example"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained", gridspec_kw={"width_ratios": [1.6, 1]})
    n = t["query"] + 1
    x = np.arange(n)
    cool, warm = plt.cm.Blues, plt.cm.Reds
    for m, row in zip(t["multipliers"], t["rows"]):
        if m == 1:
            style = dict(color="black", lw=2.6, zorder=5, label="×1 (as trained)")
        else:
            shade = 0.45 + 0.5 * min(abs(np.log2(m)) / 2, 1)
            label = f"×{m:g}" + (" (no ÷√d)" if abs(m - t["root_head_dim"]) < 1e-9 else "")
            style = dict(color=(cool if m < 1 else warm)(shade), lw=1.5, label=label)
        axes[0].plot(x, row, "-", **style)
    word_ticks(axes[0], ex["words"], "x", upto=n)
    axes[0].set_xlim(-0.5, n - 0.5)
    axes[0].set_ylabel("attention weight")
    axes[0].set_title(f"layer {t['layer']} head {t['head']}: the row of the query that\npredicts the ending's colour, "
                      "scores × multiplier", fontsize=12)
    axes[0].legend(loc="upper left")
    axes[1].plot(t["multipliers"], t["loss"], "o-", color="black")
    for m, loss in zip(t["multipliers"], t["loss"]):
        if m == 1 or abs(m - t["root_head_dim"]) < 1e-9:
            axes[1].annotate("as trained" if m == 1 else "no ÷√d", (m, loss), textcoords="offset points",
                             xytext=(0, 9), ha="center" if m == 1 else "right", va="bottom")
    plotting.entropy_floor(axes[1], t["floor"], label="exact floor")
    plotting.log_axis(axes[1], "x", base=2)
    plotting.log_axis(axes[1], "y")
    axes[1].set_xlabel("multiplier on every score")
    axes[1].set_ylabel("loss on whole stories (nats/char)")
    axes[1].set_title(f"loss, {t['stories']} stories", fontsize=12)
    return plotting.save_fig(fig, plots_dir, "temperature")


# ----------------------------------------------------------------------------- timing
def draw_timing(r: dict, plots_dir: Path) -> Path:
    rows = r["timing"]
    T = np.array([row["T"] for row in rows])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3), layout="constrained")
    axes[0].plot(T, [row["explicit_ms"] for row in rows], "o-", color=RAW, label="written out")
    axes[0].plot(T, [row["sdpa_ms"] for row in rows], "s-", color=SCALED, label="SDPA")
    axes[0].set_ylabel("median ms per forward")
    axes[0].set_title("time", fontsize=12)

    def positive(key):  # a peak that did not grow the process reads 0: no point on a log axis
        return [row[key] if row[key] > 0 else np.nan for row in rows]

    axes[1].plot(T, positive("explicit_peak_MiB"), "o-", color=RAW, label="written out")
    axes[1].plot(T, positive("sdpa_peak_MiB"), "s-", color=SCALED, label="SDPA")
    axes[1].plot(T, [row["scores_MiB"] for row in rows], ":", color="black", label="one T×T\nscore matrix")
    axes[1].set_ylabel("peak memory during the call (MiB)")
    axes[1].set_title(f"memory ({r['memory_kind']})", fontsize=12)
    for ax in axes:
        plotting.log_axis(ax, "x", base=2)
        plotting.log_axis(ax, "y")
        ax.set_xlabel("sequence length T")
        plotting.label_lines(ax)
    c = r["config"]
    fig.suptitle(f"Causal attention forward, {c['bench_heads']} heads × {c['bench_head_dim']}, batch 1, "
                 f"{r['meta']['device']}, {r['meta']['threads']} threads")
    return plotting.save_fig(fig, plots_dir, "timing")


if __name__ == "__main__":
    cli.visualize_main(draw)
