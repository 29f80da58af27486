"""Redraw chapter 04's figures from its saved results (never retrains).

    uv run chapters/04_transformer_block/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, diagrams, plotting

CUT = diagrams.HIGHLIGHT


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    out = [plotting.save_fig(block_diagram(), plots_dir, "block_breaks")]
    if "final" in r:
        out += [draw_training(r, plots_dir), draw_layers(r, plots_dir), draw_breaks(r, plots_dir),
                draw_noise(r, plots_dir), draw_scratch(r, plots_dir)]
    if "numpy" in r:
        out.append(draw_numpy(r, plots_dir))
    return out


def cut(ax, xy, text, dx=0.0, dy=0.42):
    """A break-it marker: a red cross where the variant cuts, its name beside it."""
    ax.plot(*xy, marker="X", ms=13, color=CUT, mec="white", mew=1.2, zorder=6)
    ax.annotate(text, xy, xytext=(xy[0] + dx, xy[1] + dy), ha="center", va="center", fontsize=diagrams.FONT,
                color=CUT, zorder=6, arrowprops=dict(arrowstyle="-", color=CUT, lw=0.8))


def block_diagram():
    """One pre-norm block with every break-it variant marked where it cuts."""
    fig, ax = diagrams.canvas(9.6, 4.6)
    ys = 0.9
    add1, add2 = diagrams.plus(ax, (4.9, ys)), diagrams.plus(ax, (8.2, ys))
    diagrams.arrow(ax, (0.3, ys), add1.left)
    diagrams.arrow(ax, add1.right, add2.left)
    diagrams.arrow(ax, add2.right, (9.4, ys))
    ax.text(0.3, ys - 0.2, "residual stream x (B×T×C)", ha="left", va="top", fontsize=diagrams.FONT)
    n1 = diagrams.box(ax, (1.0, 2.3), 0.8, 0.5, "Norm")
    diagrams.arrow(ax, (n1.x, ys), n1.bottom)
    diagrams.frame(ax, (1.7, 1.5, 4.55, 3.95), "causal self-attention", dashed=False)
    qkv = {}
    for letter, y in (("Q", 3.3), ("K", 2.6), ("V", 1.9)):
        qkv[letter] = diagrams.box(ax, (2.3, y), 0.5, 0.42, letter)
        diagrams.arrow(ax, n1.right, qkv[letter].left)
    sc = diagrams.box(ax, (3.5, 3.0), 1.1, 0.55, "softmax(QKᵀ/√d)")
    mix = diagrams.box(ax, (3.5, 1.95), 1.1, 0.45, "weights · V")
    diagrams.arrow(ax, qkv["Q"].right, sc.left)
    diagrams.arrow(ax, qkv["K"].right, (sc.x - sc.w / 2, sc.y - 0.15))
    diagrams.arrow(ax, qkv["V"].right, mix.left)
    diagrams.arrow(ax, sc.bottom, mix.top)
    diagrams.arrow(ax, (mix.x + mix.w / 2, mix.y), add1.top, via=[(add1.x, mix.y)])
    n2 = diagrams.box(ax, (5.8, 2.3), 0.8, 0.5, "Norm")
    diagrams.arrow(ax, (n2.x, ys), n2.bottom)
    ffn = diagrams.box(ax, (7.2, 2.3), 1.3, 0.6, "FFN\n(4·C, GELU)")
    diagrams.arrow(ax, n2.right, ffn.left)
    diagrams.arrow(ax, ffn.right, add2.top, via=[(add2.x, ffn.y)])
    # where each variant cuts
    cut(ax, (2.62, 2.95), "swap Q↔K", dx=0.5, dy=1.3)
    cut(ax, (2.05, 3.3), "noise / = x / = 0\non Q, K or V", dx=-1.25, dy=0.55)
    cut(ax, (3.2, ys), "no residual: x = f(norm(x))", dx=0.0, dy=-0.45)
    cut(ax, (n2.x, n2.y + 0.25), "no LayerNorm (every Norm)", dx=0.3, dy=0.95)
    cut(ax, (8.75, ys), "remove this whole block\n(layer by layer)", dx=-0.35, dy=-0.55)
    ax.text(9.4, 4.4, "one pre-norm block; crosses = where each break cuts", ha="right", va="top",
            fontsize=diagrams.FONT + 1, fontweight="bold")
    return fig


def draw_training(r, plots_dir):
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = [c["step"] for c in r["curve"]]
    a.plot(steps, [c["gap"] for c in r["curve"]], "o-", color=plotting.color("learned"), label="gap to the floor")
    copy_cost = r["copy_bits_per_story"] * np.log(2) / r["chars_per_story"]
    a.axhline(copy_cost, color="0.4", ls="--", lw=1)
    a.annotate("cost of never copying the opening's facts", (0.98, copy_cost), xycoords=("axes fraction", "data"),
               xytext=(0, 4), textcoords="offset points", ha="right", fontsize=plotting.MIN_FONT_PT, color="0.3")
    a.set_yscale("log")   # the floor itself is gap 0: off a log axis, so the axis says "above the floor"
    a.set(xlabel="training step", ylabel="model − exact floor (nats/char, log)", title="Distance to the floor")
    cs = r["checkpoints"]
    x = [c["step"] for c in cs]
    for key, label, col in (("sentence_validity", "valid sentences", "top-k"),
                            ("recall_all_share", "endings with all 4 facts right", "temperature"),
                            ("story_validity", "consistent free stories", "top-p")):
        b.plot(x, [c[key] * 100 for c in cs], "o-", color=plotting.color(col), label=label)
    plotting.label_lines(b)
    b.set(xlabel="training step", ylabel="% (samples at temperature 1)", ylim=(-3, 103),
          title="Does it carry facts to the ending?")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "loss_vs_floor")


def draw_layers(r, plots_dir):
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ro = r["read_out"]
    ax.plot([x["after_blocks"] for x in ro], [x["nats_per_char"] for x in ro], "o-",
            color=plotting.color("learned"), label="read out after k blocks")
    rm = r["removed"]
    ax.plot([x["removed"] + 1 for x in rm], [x["nats_per_char"] for x in rm], "s--",
            color=plotting.color("alibi"), label="all blocks but block k")
    floor = r["final"]["floor_nats_per_char"]
    ax.axhline(floor, color=plotting.color("floor"), lw=1.5, ls="--")
    ax.text(0.02, floor, f"exact floor = {floor:.3f}", transform=ax.get_yaxis_transform(), va="top",
            fontsize=plotting.MIN_FONT_PT)
    ax.axhline(r["final"]["model_nats_per_char"], color="0.5", lw=1, ls=":")
    ax.text(0.02, r["final"]["model_nats_per_char"], "the whole model", transform=ax.get_yaxis_transform(),
            va="bottom", fontsize=plotting.MIN_FONT_PT, color="0.35")
    ax.set_yscale("log")
    plotting.log_axis(ax, "y")
    plotting.label_lines(ax)
    ax.set_xticks(range(len(ro)))
    ax.set_xlim(-0.2, len(ro) - 0.2)
    ax.set(xlabel="block k (0 = the embedding alone)", ylabel="nats/char (held-out stories, log)",
           title="What each block adds")
    return plotting.save_fig(fig, plots_dir, "layers")


def draw_breaks(r, plots_dir):
    rows = r["breaks"]
    fig, ax = plt.subplots(figsize=(9, 4.6))
    cmap = plt.get_cmap("viridis")
    vals = [b["story_loss"] for b in rows]
    bars = ax.bar(range(len(rows)), vals, color=[cmap(b["sentence_validity"]) for b in rows])
    ax.set_yscale("log")
    ax.axhline(rows[0]["story_loss"], color=plotting.color("learned"), ls=":", lw=1.5)
    ax.text(0, rows[0]["story_loss"] * 1.25, "intact model\n(dotted line)", ha="center", va="bottom",
            fontsize=plotting.MIN_FONT_PT, color=plotting.color("learned"))
    plotting.entropy_floor(ax, r["final"]["floor_nats_per_char"], "exact floor")
    plotting.log_axis(ax, "y")
    ax.set_xticks(range(len(rows)), [b["break"] for b in rows], rotation=35, ha="right")
    ax.set(ylabel="nats/char (log)", title="Break one part of every block of the trained model")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 100))
    fig.colorbar(sm, ax=ax, label="valid sentences in samples (%)", pad=0.01)
    del bars
    return plotting.save_fig(fig, plots_dir, "break_it")


def draw_noise(r, plots_dir):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "noise_whole", "noise in units of the whole tensor's std"),
                           (axes[1], "noise_varying", "in units of its token-to-token std")):
        for t, col in (("Q", "top-k"), ("K", "temperature"), ("V", "top-p")):
            pts = [x for x in r[key] if x["tensor"] == t]
            ax.plot([x["noise"] for x in pts], [x["story_loss"] for x in pts], "o-", color=plotting.color(col), label=t)
        ax.axhline(r["breaks"][0]["story_loss"], color="0.5", ls=":", lw=1)
        plotting.log_axis(ax, "x", base=2)
        plotting.label_lines(ax)
        ax.set(xlabel="noise (std units)", title=title)
    axes[0].set_ylabel("nats/char")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "noise_sweep")


def draw_scratch(r, plots_dir):
    fig, ax = plt.subplots(figsize=(8, 4.4))
    palette = ["#000000", "#0072B2", "#009E73", "#E69F00", "#D55E00", "#CC79A7"]
    for x, col in zip(r["scratch"], palette):
        loss = np.array(x["train_loss"])
        smooth = np.convolve(loss, np.ones(10) / 10, mode="valid") if len(loss) >= 10 else loss
        ax.plot(np.arange(len(smooth)) + 1, smooth, color=col, label=x["break"])
    plotting.entropy_floor(ax, r["scratch_setup"]["floor_at_64"], "floor (64-char context)")
    plotting.label_lines(ax)
    s = r["scratch_setup"]
    ax.set(xlabel="training step", ylabel="train loss (nats/char, 10-step mean)",
           title=f"Broken from step 0: {s['n_layer']} × {s['d_model']} model, {s['seq_len']}-char windows")
    return plotting.save_fig(fig, plots_dir, "from_scratch")


def draw_numpy(r, plots_dir):
    n = r["numpy"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 4.2))
    p = n["pretrain"]
    a.plot(p["step"], p["val"], "o-", color=plotting.color("val"), label="val loss")
    plotting.entropy_floor(a, n["floor_at_64"], "floor, 64-char context")
    a.set_yscale("log")
    plotting.log_axis(a, "y")
    a.set(xlabel="step", ylabel="val nats/char (log)", title="NumPy LM pre-training")
    a2 = a.twinx()
    a2.plot(np.arange(1, len(p["lr"]) + 1), p["lr"], color="0.6", lw=1)
    a2.set_ylabel("learning rate (grey)")
    a2.grid(False)
    ft = n["finetune"]
    w = 0.26
    groups = (("new_before", "new_after", "lowercase\n(new domain)"),
              ("old_before", "old_after", "original\n(forgetting)"))
    for g, (before, after, _) in enumerate(groups):
        heights = [ft["full"][before], ft["full"][after], ft["lora"][after]]
        colors = ["0.75", plotting.color("full"), plotting.color("lora")]
        for i, (hgt, col, name) in enumerate(zip(heights, colors, ("before", "full", "LoRA"))):
            b.bar(g + (i - 1) * w, hgt, w * 0.95, color=col)
            b.text(g + (i - 1) * w, hgt, f"{name}\n{hgt:.2f}", ha="center", va="bottom", fontsize=plotting.MIN_FONT_PT)
    b.set_xticks(range(2), [x[2] for x in groups])
    b.set_ylim(0, 1.3 * max(ft[k][x] for k in ft for x in ("new_before", "new_after", "old_before", "old_after")))
    b.set(ylabel="nats/char",
          title=f"Full fine-tune ({ft['full']['trainable']:,} trained)\nvs LoRA ({ft['lora']['trainable']:,})")
    for rank, col in ((4, "lora"), (8, "full")):
        rows = [x for x in n["lora_ratio"] if x["rank"] == rank]
        c.plot([x["d_model"] for x in rows], [x["ratio"] for x in rows], "o-", color=plotting.color(col),
               label=f"rank {rank}")
    c.axhline(100, color="0.4", ls="--", lw=1)
    c.annotate('"100× fewer"', (0.02, 100), xycoords=("axes fraction", "data"), xytext=(0, 4),
               textcoords="offset points", fontsize=plotting.MIN_FONT_PT, color="0.3")
    plotting.log_axis(c, "x", base=2)
    plotting.log_axis(c, "y")
    plotting.label_lines(c)
    c.set(xlabel="d_model", ylabel="full / LoRA trainable params", title="How the ratio grows with width")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "numpy_lm")


if __name__ == "__main__":
    cli.visualize_main(draw)
