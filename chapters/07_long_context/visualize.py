"""Redraw chapter 07's figures from its saved results (never retrains).

    uv run chapters/07_long_context/visualize.py [--quick|--full]
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from key_value_recall import band
from report import model_named
from shared import cli, diagrams, plotting

# Okabe-Ito hues (the book's palette) for this chapter's own concepts; the book has no family for them yet
FULL_SHORT, FULL_LONG, WINDOW = "#56B4E9", "#0072B2", "#E69F00"
METHODS = {"full (T x T scores)": ("#0072B2", "o", "--"), "full + window": ("#56B4E9", "s", "--"),
           "SDPA (torch fused)": ("#7F7F7F", "D", ":"), "tiled (online softmax)": ("#D55E00", "^", "-"),
           "tiled + window": ("#009E73", "v", "-")}


def method_style(name: str) -> tuple:
    return next(style for prefix, style in METHODS.items() if name.startswith(prefix))


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    paths = [plotting.save_fig(tiled_attention_diagram(r["online_softmax"]), plots_dir, "tiled_attention_diagram"),
             draw_online_softmax(r, plots_dir), draw_scaling(r, plots_dir), draw_checkpointing(r, plots_dir),
             draw_loss_vs_context(r, plots_dir), draw_context_worth(r, plots_dir), draw_training(r, plots_dir)]
    if "rows" in r["gpu"]:
        paths.append(draw_gpu(r, plots_dir))
    return paths


# ----------------------------------------------------------------------------- the mechanism
def tiled_attention_diagram(demo: dict):
    """Blocks of K/V streaming past one block of queries; the running max m and sum l after each
    block (the numbers of main.py's online-softmax demo), rescaled by exp(m_old - m_new)."""
    n, tile = 4, 0.62
    fig, ax = diagrams.canvas(9.75, 5.0)                      # + the save padding: <= 10 in, text >= 9 pt
    x0, y_top = 1.0, 4.1                                      # the score grid's top-left corner
    ax.text(x0 + n * tile / 2 - 0.2, 4.88, "scores Q·Kᵀ, one tile at a time", ha="center", va="center",
            fontsize=diagrams.FONT + 1, fontweight="bold")
    for j in range(n):                                        # K/V blocks along the top
        diagrams.box(ax, (x0 + (j + 0.5) * tile, y_top + 0.3), tile - 0.06, 0.4, f"KV{j + 1}", rounding=0.04,
                     color="#0072B2")
    for i in range(n):                                        # query blocks down the side, tiles along each row
        diagrams.box(ax, (x0 - 0.4, y_top - (i + 0.5) * tile), 0.5, tile - 0.06, f"Q{i + 1}", rounding=0.04,
                     highlight=i == n - 1)
        for j in range(n):
            x, y = x0 + j * tile, y_top - (i + 1) * tile
            skipped, current = j > i, i == n - 1
            face = "white" if skipped else diagrams.HIGHLIGHT_FILL if current else diagrams.NEUTRAL_FILL
            edge = "0.75" if skipped else diagrams.HIGHLIGHT if current else diagrams.NEUTRAL_EDGE
            ax.add_patch(plt.Rectangle((x + 0.03, y + 0.03), tile - 0.06, tile - 0.06, facecolor=face, edgecolor=edge,
                                       hatch="//" if skipped else None, lw=1.8 if current else 1.0, zorder=2))
            text = f"{j + 1}" if current else ""
            text += ("\nmask" if current else "mask") if j == i else ""
            if text:
                ax.text(x + tile / 2, y + tile / 2, text, ha="center", va="center", fontsize=diagrams.FONT,
                        color=diagrams.HIGHLIGHT if current else diagrams.TEXT, zorder=3, linespacing=1.0,
                        fontweight="bold" if current else "normal")
    bottom = y_top - n * tile
    diagrams.arrow(ax, (x0, bottom - 0.18), (x0 + n * tile, bottom - 0.18), color=diagrams.HIGHLIGHT)
    ax.text(x0 + n * tile / 2, bottom - 0.3, "KV1 … KV4 stream past Q4", ha="center", va="top",
            fontsize=diagrams.FONT, color=diagrams.HIGHLIGHT)
    ax.text(0.15, 0.62, "hatched: right of the causal diagonal,\nskipped (never computed, not masked)",
            ha="left", va="center", fontsize=diagrams.FONT, color=diagrams.MUTED)
    ax.text(0.15, 0.12, "one tile of scores at a time:\nmemory O(T·d + tile²), not O(T²)", ha="left",
            va="center", fontsize=diagrams.FONT, color=diagrams.TEXT)

    # the running state of one query row, block by block
    mx, ms = demo["running_max"], demo["running_sum"]
    cx, w, h, step = 6.05, 3.3, 0.5, 0.85
    ax.text(cx + 0.6, 4.88, "one row of Q4: the running max m and sum l", ha="center", va="center",
            fontsize=diagrams.FONT + 1, fontweight="bold")
    for j in range(len(mx)):
        y = 4.3 - j * step
        diagrams.box(ax, (cx, y), w, h, f"after KV{j + 1}:   m = {mx[j]:.2f}   l = {ms[j]:.2f}",
                     highlight=j == len(mx) - 1)
        if j + 1 < len(mx):
            factor = math.exp(mx[j] - mx[j + 1])
            label = (f"max grew: l, acc × e^({mx[j]:.2f} − {mx[j + 1]:.2f}) = {factor:.2f}" if factor < 1
                     else "max unchanged: × 1")
            diagrams.arrow(ax, (cx, y - h / 2), (cx, y - step + h / 2), label=label, label_pos="right",
                           color=diagrams.HIGHLIGHT if factor < 1 else diagrams.NEUTRAL_EDGE)
    y_out = 4.3 - len(mx) * step + 0.25
    ax.text(cx, y_out, "out = acc / l", ha="center", va="center", fontsize=diagrams.FONT + 1, fontweight="bold",
            color=diagrams.TEXT)
    rules = ("per tile of scores s:\n  m_new = max(m, max s)\n  l_new = l·e^(m − m_new) + Σ e^(s − m_new)\n"
             "  acc_new = acc·e^(m − m_new) + Σ e^(s − m_new)·v")
    ax.text(4.4, y_out - 0.3, rules, ha="left", va="top", fontsize=diagrams.FONT, color=diagrams.TEXT, linespacing=1.25)
    return fig


def draw_online_softmax(r, plots_dir):
    d = r["online_softmax"]
    x, block = np.array(d["x"]), d["block"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    ax = axes[0]
    shades = ["#0072B2", "#56B4E9"]
    ax.bar(np.arange(len(x)), x, color=[shades[(i // block) % 2] for i in range(len(x))])
    for i, m in enumerate(d["running_max"]):
        end = (i + 1) * block - 0.5
        ax.hlines(m, -0.5, end, colors="black", lw=1.2, ls="--")
        ax.annotate(f"m{i + 1}={m:.2f}", xy=(end, m), xytext=(-2, 3), textcoords="offset points", ha="right",
                    va="bottom", fontsize=plotting.MIN_FONT_PT)
    ax.set(title="Scores read one block at a time", xlabel="key index", ylabel="score",
           ylim=(min(0, x.min()) * 1.1, x.max() * 1.35))
    ax = axes[1]
    true = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    ax.bar(np.arange(len(x)), true, color="0.75", label="softmax of the whole row")
    ax.plot(np.arange(len(x)), d["softmax"], "k.", ms=9, label="online: e^(x − m) / l at the end")
    ax.set(title="The same softmax", xlabel="key index", ylabel="probability")
    ax.legend(loc="upper left")
    return plotting.save_fig(fig, plots_dir, "online_softmax")


# ----------------------------------------------------------------------------- what it costs
def draw_scaling(r, plots_dir):
    rows = r["scaling"]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.4), layout="constrained")
    panels = [("seconds", 1, "ms per forward", "Time", 1e3), ("peak_bytes", 2**20, "MiB", "Memory, measured", 1),
              ("largest_tensor_bytes", 2**20, "MiB", "Largest tensor, counted", 1)]
    for ax, (key, unit, ylabel, title, factor) in zip(axes, panels):
        for m in methods:
            pts = [(row["T"], row[key]) for row in rows if row["method"] == m and row[key]]
            if pts:
                t, y = np.array(pts, dtype=float).T
                colour, marker, ls = method_style(m)
                ax.plot(t, y / unit * factor, marker=marker, ls=ls, color=colour, label=m, ms=5)
        plotting.log_axis(ax, "x", base=2)
        plotting.log_axis(ax, "y")
        ax.set(xlabel="sequence length T", ylabel=ylabel, title=title)
    ax = axes[2]                                           # slope guides through the first full point
    first = min(row["T"] for row in rows)
    base = next(row for row in rows if row["T"] == first and row["method"].startswith("full"))
    t = np.array(sorted({row["T"] for row in rows}), dtype=float)
    y0 = base["largest_tensor_bytes"] / 2**20
    ax.plot(t, y0 * (t / first) ** 2, color="0.6", lw=1, ls=":")
    ax.plot(t, y0 / 8 * (t / first), color="0.6", lw=1, ls="-.")
    ax.annotate("∝ T²", (t[len(t) // 2], y0 * (t[len(t) // 2] / first) ** 2), xytext=(-6, 4),
                textcoords="offset points", ha="right", fontsize=plotting.MIN_FONT_PT, color="0.4")
    ax.annotate("∝ T", (t[-1], y0 / 8 * t[-1] / first), xytext=(0, -14), textcoords="offset points", ha="right",
                fontsize=plotting.MIN_FONT_PT, color="0.4")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(f"Causal attention, {r['config']['bench_heads']} heads × {r['config']['bench_dim']} dims, float32, "
                 f"{r['meta']['device']}: a mask saves nothing, skipping tiles does")
    return plotting.save_fig(fig, plots_dir, "attention_cost_vs_length")


def draw_checkpointing(r, plots_dir):
    ck = r["checkpointing"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), layout="constrained")
    modes = ["plain", "checkpointed"]
    for ax, key, label, scale in ((axes[0], "peak_bytes", "peak memory growth (MiB)", 2**20),
                                  (axes[1], "seconds", "seconds per training step", 1)):
        values = [ck[m][key] / scale for m in modes]
        bars = ax.bar(modes, values, color=["#0072B2", "#D55E00"])
        for i, v in enumerate(values):
            ax.annotate(f"{v:.3g}", xy=(i, v), ha="center", va="bottom", fontsize=plotting.MIN_FONT_PT)
        plotting.mark_zero_bars(ax, bars)
        ax.set(ylabel=label, ylim=(0, max(values) * 1.2 or 1))
    diff = "exactly 0" if ck["max_grad_diff"] == 0 else f"{ck['max_grad_diff']:.0e}"
    fig.suptitle(f"Checkpointing a {ck['layers']}-layer GPT, batch {ck['batch']} × {ck['seq_len']}\n"
                 f"(same gradients: largest difference {diff}; time: fastest of 5 steps)")
    return plotting.save_fig(fig, plots_dir, "checkpointing")


# ----------------------------------------------------------------------------- what it buys
def binned(by_context: dict, key: str = "loss", per_octave: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Means over log-spaced context bands: single positions are noisy, and a log axis gives the
    short contexts (where most of the change is) the room they need."""
    c = np.array(by_context["context"], dtype=float)
    edges = np.unique(np.round(2 ** np.arange(0, math.log2(c.max()) + 1e-9, 1 / per_octave))).tolist() + [c.max() + 1]
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (c >= lo) & (c < hi)
        if sel.any():
            xs.append(np.exp(np.log(c[sel]).mean()))
            ys.append(np.array(by_context[key])[sel].mean())
    return np.array(xs), np.array(ys)


def floor_curve(ax, r, window=None, label="floor: best possible", **kw):
    task_floor = model_named(r, r["config"]["long_len"])["by_context"]
    c = np.array(task_floor["context"], dtype=float)
    keys, values = r["recall"]["keys"], r["recall"]["values"]
    view = c if window is None else np.minimum(c, window)
    floor = math.log(values) * (1 - 1 / keys) ** (view // 2)
    return ax.plot(c, floor, color=plotting.color("floor"), label=label, zorder=1.5, **kw)


def context_axis(ax, eval_len: int):
    plotting.log_axis(ax, "x", base=2)
    ticks = [t for t in (1, 4, 16, 64, 256, 1024, 4096, 16384) if t <= eval_len]
    ax.set_xticks(ticks, [plotting.plain_number(t, base=2) for t in ticks])
    ax.set_xlim(0.8, eval_len * 1.1)


def mark_length(ax, x, text):
    ax.axvline(x, color="0.45", lw=1, ls=":")
    ax.annotate(text, xy=(x, 1), xycoords=("data", "axes fraction"), xytext=(3, -4), textcoords="offset points",
                rotation=90, va="top", ha="left", fontsize=plotting.MIN_FONT_PT, color="0.3")


def draw_loss_vs_context(r, plots_dir):
    c = r["config"]
    short, window = model_named(r, c["short_len"]), model_named(r, c["short_len"], c["window"])
    long = model_named(r, c["long_len"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True, layout="constrained")
    panels = [(axes[0], f"Past the trained length ({c['short_len']} tokens)",
               [(short, FULL_SHORT, "full attention"), (window, WINDOW, f"window {c['window']}")]),
              (axes[1], f"Train on {c['short_len']} or on {c['long_len']} tokens",
               [(short, FULL_SHORT, f"trained on {c['short_len']}"), (long, FULL_LONG, f"trained on {c['long_len']}")])]
    for ax, title, curves in panels:
        floor_curve(ax, r, ls="-", lw=2.5, alpha=0.35)
        for m, colour, label in curves:
            x, y = binned(m["by_context"])
            ax.plot(x, y, "o-", ms=4, color=colour, label=label)
        mark_length(ax, c["short_len"], "trained length" if ax is axes[0] else f"{c['short_len']}")
        context_axis(ax, c["eval_len"])
        ax.set(title=title, xlabel="context: tokens before the answer", ylim=(-0.05, math.log(c["values"]) * 1.08))
    floor_curve(axes[0], r, window=c["window"], label=f"floor with {c['window']} tokens", ls="--", lw=1.2)
    mark_length(axes[1], c["long_len"], f"{c['long_len']}")
    axes[0].set_ylabel("loss per answer (nats)")
    for ax in axes:
        plotting.label_lines(ax)
    fig.suptitle(f"Key-value recall ({r['recall']['keys']} keys): loss against context, next to the exact floor")
    return plotting.save_fig(fig, plots_dir, "loss_vs_context")


def draw_context_worth(r, plots_dir):
    """The floor read backwards: how many tokens of context a perfect model would need to match
    each model's loss. A model that uses everything it sees sits on the diagonal."""
    c, keys, values = r["config"], r["recall"]["keys"], r["recall"]["values"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    top = 0.0
    for m, colour, label in ((model_named(r, c["short_len"]), FULL_SHORT, f"full, trained on {c['short_len']}"),
                             (model_named(r, c["short_len"], c["window"]), WINDOW, f"window {c['window']}"),
                             (model_named(r, c["long_len"]), FULL_LONG, f"full, trained on {c['long_len']}")):
        x, y = binned(m["by_context"])
        worth = [0.0 if v >= math.log(values) else 2 * math.log(max(v, 1e-9) / math.log(values))
                 / math.log(1 - 1 / keys) for v in y]
        worth = np.clip(worth, 1, None)
        top = max(top, max(worth))
        ax.plot(x, worth, "o-", ms=4, color=colour, label=label)
    x = np.array([1, c["eval_len"]], dtype=float)
    ax.plot(x, x, color=plotting.color("floor"), lw=1.2, ls="--")
    ax.annotate("uses all it sees", (5, 5), xytext=(-6, 6), textcoords="offset points", ha="right",
                fontsize=plotting.MIN_FONT_PT, color=plotting.color("floor"))
    mark_length(ax, c["short_len"], f"{c['short_len']}")
    mark_length(ax, c["long_len"], f"{c['long_len']}")
    context_axis(ax, c["eval_len"])
    plotting.log_axis(ax, "y", base=2)
    ax.set(xlabel="context: tokens before the answer", ylabel="tokens a perfect model needs\nto do as well",
           title="The context each model really uses", ylim=(1, top * 2.5))
    plotting.label_lines(ax)
    return plotting.save_fig(fig, plots_dir, "context_used")


def draw_training(r, plots_dir):
    c = r["config"]
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    colours = {(c["short_len"], None): FULL_SHORT, (c["short_len"], c["window"]): WINDOW,
               (c["long_len"], None): FULL_LONG}
    for name, m in r["recall"]["models"].items():
        colour = colours.get((m["trained_len"], m["window"]), "0.4")
        h = m["history"]
        ax.plot(h["step"], h["train_loss"], color=colour, alpha=0.35, lw=1)
        ax.plot([v["step"] for v in h["val"]], [v["loss"] for v in h["val"]], "o-", ms=4, color=colour, label=name)
        b = band(m["by_context"], 1, m["trained_len"])        # the floor of the training sequences, for this view
        ax.axhline(b["floor"], color=colour, ls="--", lw=1.2, label=f"its floor = {b['floor']:.3f}")
    ax.set(xlabel="step", ylabel="loss per answer (nats)", ylim=(0, 2.6),
           title="Training the three recall models (faint: train, dots: validation)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
    return plotting.save_fig(fig, plots_dir, "training")


def draw_gpu(r, plots_dir):
    gpu = r["gpu"]
    rows = [row for row in gpu["rows"] if "TFLOP/s" in row]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained", sharey=True)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    palette = ["#D55E00", "#0072B2", "#009E73", "#E69F00", "#7F7F7F", "#CC79A7"]
    for ax, causal in zip(axes, (True, False)):
        for i, m in enumerate(methods):
            pts = sorted((row["T"], row["TFLOP/s"]) for row in rows if row["method"] == m and row["causal"] == causal)
            if pts:
                t, y = zip(*pts)
                ax.plot(t, y, "o-", color=palette[i % len(palette)], label=m)
        plotting.log_axis(ax, "x", base=2)
        ax.set(xlabel="sequence length T", title=f"{'causal' if causal else 'non-causal'}, {gpu['dtype']}")
    axes[0].set_ylabel("TFLOP/s (useful attention FLOPs)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(f"Attention forward on {gpu['device_name']} (batch × T = {gpu['tokens']}, {gpu['heads']} heads × "
                 f"{gpu['head_dim']})")
    return plotting.save_fig(fig, plots_dir, "gpu_attention_tflops")


if __name__ == "__main__":
    cli.visualize_main(draw)
