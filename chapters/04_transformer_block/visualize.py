"""Redraw chapter 04's plots from its results JSON (never retrains).

    uv run chapters/04_transformer_block/visualize.py            # from visualizations/results/
    uv run chapters/04_transformer_block/visualize.py --quick    # from the quick run's results
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shared import cli, plotting
from shared.results import load_json

plt = plotting.plt


def trailing_mean(values, window: int = 10) -> np.ndarray:
    """Mean of the last `window` values at each step (no look-ahead, honest at the start)."""
    v = np.asarray(values, dtype=float)
    return np.array([v[max(0, i - window + 1):i + 1].mean() for i in range(len(v))])


def draw_floor(r: dict, out: Path):
    curve, t = r["floor_curve"], r["train"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    ax.plot(t["step"], t["train_loss"], color="0.75", lw=0.8, label="train loss (one batch)")
    ax.plot(t["step"], trailing_mean(t["train_loss"]), color="C0", lw=1.5, label="train loss (10-step mean)")
    steps = [c["step"] for c in curve]
    ax.plot(steps, [c["model"] for c in curve], "o-", color="C1", ms=4, label="story loss (whole val stories)")
    ax.plot(steps, [c["floor"] for c in curve], ":", color="C2", label="exact floor on those stories")
    plotting.entropy_floor(ax, r["entropy_floor_nats_per_char"], "entropy rate of the corpus")
    ax.set(yscale="log", xlabel="optimizer step", ylabel="nats / char (log scale)",
           title=f"MiniFormer, {r['params'] / 1e6:.2f}M params, learning the Hundred Acre Wood")
    ax.legend(fontsize=8, loc="upper right")

    secs = [c["train_seconds"] for c in curve[1:]]
    ax2.plot(secs, [c["gap"] for c in curve[1:]], "o-", color="C1", ms=4, label="story loss - exact floor")
    ax2.axhline(0.05, ls="--", color="C3", lw=1.2)
    ax2.annotate("target: 0.05 nats/char", xy=(1, 0.05), xycoords=("axes fraction", "data"), xytext=(-4, 4),
                 textcoords="offset points", ha="right", fontsize=8, color="C3")
    ax2.set(yscale="log", xlabel="training seconds (evaluation time excluded)", ylabel="gap to the floor (nats/char)",
            title="Distance to the floor on the same stories")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    plotting.save_fig(fig, out, "loss_vs_floor")


def draw_samples(r: dict, out: Path):
    s = r["samples"]
    fig, (ax, tx) = plt.subplots(2, 1, figsize=(9, 3.6 + 0.2 * len(s)), gridspec_kw={"height_ratios": [3, 0.3 * len(s)]})
    steps = [x["step"] for x in s]
    ax.plot(steps, [100 * x["sentence_validity"] for x in s], "o-", label="sentences the grammar can produce")
    ax.plot(steps, [100 * x["story_validity"] for x in s], "s-", label="complete stories consistent end to end")
    ax.set(xlabel="optimizer step", ylabel="% of generated", ylim=(-3, 103),
           title="Are the samples Hundred Acre Wood? (temperature 1)")
    ax.legend(fontsize=8, loc="upper left")
    # what the model actually wrote at each checkpoint: the first line of its first sample
    tx.axis("off")
    lines = [f"step {x['step']:>5}: {x['sample'].split(chr(10))[0][:95]}" for x in s]
    tx.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=7.5, family="monospace",
            color="0.25", transform=tx.transAxes)
    fig.tight_layout()
    plotting.save_fig(fig, out, "samples_validity")


def draw_breaks(r: dict, out: Path):
    rows = r["breaks"]
    intact = rows[0]["story_loss"]
    fig, ax = plt.subplots(figsize=(10, 5.2))
    names = [b["break"] for b in rows][::-1]
    losses = [b["story_loss"] for b in rows][::-1]
    valid = [b["sentence_validity"] for b in rows][::-1]
    colors = plt.cm.RdYlGn(np.array(valid) * 0.85 + 0.1)
    ax.barh(names, losses, color=colors, edgecolor="0.3", lw=0.5)
    for i, (loss, v) in enumerate(zip(losses, valid)):
        ax.text(loss * 1.04, i, f"{loss:.2f}   ({v:.0%} valid sentences)", va="center", fontsize=8)
    ax.axvline(rows[0]["floor"], ls="--", color="black", lw=1)
    ax.text(rows[0]["floor"], len(rows) - 0.4, " exact floor", fontsize=8, va="bottom")
    ax.axvline(intact, ls=":", color="C0", lw=1)
    if "vocab_size" in r:  # a model that knows nothing: the same probability for every character
        uniform = float(np.log(r["vocab_size"]))
        ax.axvline(uniform, ls="-.", color="0.5", lw=1)
        ax.text(uniform, len(rows) - 0.4, f" uniform guess (ln {r['vocab_size']})", fontsize=8, va="bottom", color="0.4")
    ax.set(xscale="log", xlim=(rows[0]["floor"] * 0.8, max(losses) * 4),
           xlabel="story loss, nats/char (log scale; bar colour = share of valid sentences sampled)",
           title="Break one part of every block of the trained MiniFormer")
    fig.tight_layout()
    plotting.save_fig(fig, out, "break_it")


def draw_noise(r: dict, out: Path):
    sweep, intact = r["noise_sweep"], r["breaks"][0]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, which in enumerate(("Q", "K", "V")):
        pts = [s for s in sweep if s["tensor"] == which]
        ax.plot([p["noise"] for p in pts], [p["story_loss"] for p in pts], "o-", color=f"C{i}", label=f"noise on {which}")
    ax.axhline(intact["story_loss"], ls=":", color="0.4")
    ax.annotate("intact", xy=(0, intact["story_loss"]), xycoords=("axes fraction", "data"), xytext=(4, 4),
                textcoords="offset points", fontsize=8, color="0.4")
    plotting.entropy_floor(ax, intact["floor"], "exact floor")
    levels = sorted({p["noise"] for p in sweep})
    ax.set(xscale="log", yscale="log", xlabel="noise std, in units of the tensor's own std",
           ylabel="story loss (nats/char)", title="How much noise can Q, K and V take?")
    ax.set_xticks(levels, [f"{v:g}" for v in levels])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.legend(fontsize=8)
    plotting.save_fig(fig, out, "noise_sweep")


def draw_scratch(r: dict, out: Path):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, s in enumerate(r["scratch"]):
        steps = np.arange(1, len(s["train_loss"]) + 1)
        ax.plot(steps, trailing_mean(s["train_loss"], 5), color=f"C{i}",
                label=f"{s['break']}: story loss {s['story_loss']:.2f}")
    plotting.entropy_floor(ax, r["entropy_floor_nats_per_char"])
    c = r["scratch_config"]
    ax.set(yscale="log", xlabel="optimizer step", ylabel="train loss, 5-step mean (nats/char)",
           title=f"Trained from scratch with the break ({c['n_layer']} layers, d={c['d_model']})")
    ax.legend(fontsize=8)
    plotting.save_fig(fig, out, "from_scratch")


def draw_numpy(r: dict, out: Path):
    n = r["numpy"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    pre = n["pretrain"]
    ax.plot(np.arange(1, len(pre["train"]) + 1), trailing_mean(pre["train"]), color="C0", label="train (10-step mean)")
    ax.plot(pre["step"], pre["val"], "o-", color="C1", ms=4, label="validation")
    plotting.entropy_floor(ax, n["floor_at_context"], f"floor with {n['config']['block_size']} chars of context")
    ax.set(yscale="log", xlabel="step", ylabel="nats/char",
           title=f"NumPy-only LM ({n['params']:,} params)")
    ax.legend(fontsize=8)

    ax = axes[1]
    diffs = np.maximum(np.array(n["twin"]["loss_abs_diff"]), 1e-18)  # exact zeros would vanish on a log axis
    ax.semilogy(np.arange(1, len(diffs) + 1), diffs, "o-", color="C2", label="|loss NumPy - loss PyTorch|")
    ax.axhline(1e-6, ls="--", color="C3")
    ax.annotate("tolerance 1e-6", xy=(1, 1e-6), xycoords=("axes fraction", "data"), xytext=(-4, 4),
                textcoords="offset points", ha="right", fontsize=8, color="C3")
    ax.set(xlabel="AdamW step (float64, same batches)", ylabel="absolute difference", ylim=(1e-18, 1e-3),
           title="NumPy vs its PyTorch twin, step by step")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[2]
    lo = n["lora"]
    ax.plot(lo["step"], lo["val"], "o-", color="C4", ms=4, label="val loss on lowercase text")
    ax.set(xlabel="LoRA step", ylabel="nats/char",
           title=f"LoRA r={lo['rank']}: {lo['trainable']:,} trainable, {lo['frozen']:,} frozen")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plotting.save_fig(fig, out, "numpy_lm")


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    r = load_json(results_path)
    if "final" in r:
        draw_floor(r, plots_dir)
        draw_samples(r, plots_dir)
        draw_breaks(r, plots_dir)
        draw_noise(r, plots_dir)
        draw_scratch(r, plots_dir)
    if "numpy" in r:
        draw_numpy(r, plots_dir)
    return sorted(Path(plots_dir).glob("*.png"))


if __name__ == "__main__":
    p = cli.parser("04_transformer_block", __doc__)
    p.add_argument("--part", choices=["all", "block", "numpy"], default="all", help="ignored: draws what the results hold")
    run = cli.setup(p, header=False)
    cli.run_main(lambda: draw(run.results_path, run.plots_dir, run.animations_dir))
