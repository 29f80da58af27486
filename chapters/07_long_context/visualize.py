"""07 · Long context: redraw every plot from the saved results JSON (never retrains)."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, plotting
from shared.results import load_json

COLORS = {"full": "C0", "window": "C1", "floor": "black", "english": "C2"}


def _log_bins(context: np.ndarray, values: np.ndarray, per_octave: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Average `values` over log-spaced bins of `context`: single positions are noisy, and a
    log axis gives the early positions (where most of the change is) the room they need."""
    edges = np.unique(np.round(2 ** np.arange(0, math.log2(context.max()) + 1 / per_octave, 1 / per_octave)))
    edges = np.append(edges, context.max() + 1)
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (context >= lo) & (context < hi)
        if sel.any():
            xs.append(context[sel].mean())
            ys.append(values[sel].mean())
    return np.array(xs), np.array(ys)


def draw_online_softmax(res, plots_dir):
    d = res["online_softmax"]
    x, block = np.array(d["x"]), d["block"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    ax.bar(np.arange(len(x)), x, color=[f"C{(i // block) % 10}" for i in range(len(x))])
    for i, (m, l) in enumerate(zip(d["running_max"], d["running_sum"])):
        end = (i + 1) * block - 0.5
        ax.hlines(m, -0.5, end, colors="black", lw=1, ls="--")
        ax.annotate(f"after block {i + 1}:\nm={m:.2f}, l={l:.2f}", xy=(end, m), xytext=(-4, 4),
                    textcoords="offset points", ha="right", va="bottom", fontsize=7)
    ax.set(title="Scores read one block at a time", xlabel="key index", ylabel="score")
    ax = axes[1]
    true = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    ax.bar(np.arange(len(x)), true, color="0.75", label="softmax of the whole vector")
    ax.plot(np.arange(len(x)), d["softmax"], "k.", label="online: exp(x - m) / l at the end")
    ax.set(title="Same softmax, never holding the whole row", xlabel="key index", ylabel="probability")
    ax.legend(fontsize=8)
    fig.suptitle("Online softmax: rescale the running sum by exp(m_old - m_new) whenever the max grows", fontsize=10)
    fig.tight_layout()
    plotting.save_fig(fig, plots_dir, "online_softmax")


def draw_scaling(res, plots_dir):
    rows = res["scaling"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    styles = {m: dict(color=f"C{i}", marker="os^Dv"[i % 5], ls="--" if m.startswith("full") else "-")
              for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    panels = [("seconds", "time per forward (s)", "Time"),
              ("peak_bytes", "peak memory growth (MiB, measured)", "Memory, measured"),
              ("largest_tensor_bytes", "largest tensor made (MiB)", "Memory, counted")]
    for ax, (key, ylabel, title) in zip(axes, panels):
        for m in methods:
            pts = [(r["T"], r[key]) for r in rows if r["method"] == m and r[key]]
            if not pts:
                continue
            t, y = np.array(pts, dtype=float).T
            scale = 1 if key == "seconds" else 2**20
            ax.plot(t, y / scale, label=m, **styles[m])
        ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel=ylabel, title=title)
        ax.set_xscale("log", base=2)
    # slope guides on the counted-memory panel: T and T^2 through the first full point
    ax = axes[2]
    first = min(r["T"] for r in rows)
    base = next(r for r in rows if r["T"] == first and r["method"].startswith("full"))["largest_tensor_bytes"] / 2**20
    t = np.array(sorted({r["T"] for r in rows}), dtype=float)
    ax.plot(t, base * (t / first) ** 2, color="0.6", lw=0.8, ls=":", label="∝ T²")
    ax.plot(t, base / 8 * (t / first), color="0.6", lw=0.8, ls="-.", label="∝ T")
    axes[0].legend(fontsize=7, loc="upper left")
    axes[2].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Attention cost vs length ({res['sizes']['bench_heads']} heads x {res['sizes']['bench_dim']} dims, "
                 f"float32, {res['meta']['device']}): a mask saves nothing, skipping tiles does", fontsize=10)
    fig.tight_layout()
    plotting.save_fig(fig, plots_dir, "attention_cost_vs_length")


def draw_checkpointing(res, plots_dir):
    ck = res["checkpointing"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    modes = ["plain", "checkpointed"]
    for ax, key, label, scale in ((axes[0], "peak_bytes", "peak memory growth (MiB)", 2**20),
                                  (axes[1], "seconds", "seconds per training step", 1)):
        vals = [ck[m][key] / scale for m in modes]
        ax.bar(modes, vals, color=["C0", "C3"])
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.3g}", xy=(i, v), ha="center", va="bottom", fontsize=9)
        ax.set(ylabel=label)
    fig.suptitle(f"Activation checkpointing: {ck['layers']}-layer GPT, batch {ck['batch']} x {ck['seq_len']} tokens "
                 f"(same gradients: max diff {ck['max_grad_diff']:.0e})", fontsize=10)
    fig.tight_layout()
    plotting.save_fig(fig, plots_dir, "checkpointing")


def draw_loss_vs_position(res, plots_dir):
    sz = res["sizes"]
    floor = res["floor"]
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, label in (("full", "full attention"), ("window", f"sliding window {sz['window']}")):
        d = res["wood"][name]["by_position"]
        x, y = _log_bins(np.array(d["context"]), np.array(d["loss"]))
        ax.plot(x, y, "o-", ms=3, color=COLORS[name], label=f"model, {label}")
    ax.plot(floor["context"], floor["nats_per_char"], color="black", lw=1.5,
            label="floor: perfect model seeing the last c chars")
    receptive = sz["n_layer"] * (sz["window"] - 1) + 1
    for x, text in ((sz["window"], "window"), (receptive, f"{sz['n_layer']} layers x window"),
                    (sz["seq_len"], "trained length")):
        ax.axvline(x, color="0.5", lw=0.8, ls=":")
        ax.annotate(text, xy=(x, 1), xycoords=("data", "axes fraction"), xytext=(2, -4),
                    textcoords="offset points", rotation=90, va="top", fontsize=8, color="0.35")
    full = np.array(res["wood"]["full"]["by_position"]["loss"])
    top = float(np.percentile(full[8:], 99)) if len(full) > 8 else float(full.max())
    ax.set(xscale="log", xlabel="context: characters the model can see (position + 1)", ylabel="loss (nats/char)",
           title="Hundred Acre Wood: loss at each context length vs the exact floor",
           ylim=(min(floor["nats_per_char"]) * 0.8, max(top * 1.25, max(floor["nats_per_char"]) * 1.5)))
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 0.1))   # clear of the curves, the floor and the labels
    fig.tight_layout()
    plotting.save_fig(fig, plots_dir, "loss_vs_context_wood")


def draw_ending(res, plots_dir):
    sz = res["sizes"]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    full, win = res["wood"]["full"]["ending"], res["wood"]["window"]["ending"]
    ax.plot(full["context"], full["floor_bits"], color="black", lw=1.5, label="floor (exact, per story)")
    ax.plot(full["context"], full["model_bits"], "o-", color=COLORS["full"], label="full attention")
    ax.plot(win["context"], win["model_bits"], "s-", color=COLORS["window"], label=f"sliding window {sz['window']}")
    ax.axvline(sz["seq_len"] - 50, color="0.5", lw=0.8, ls=":")
    ax.annotate("ending leaves the\ntrained length", xy=(sz["seq_len"] - 50, 1), xycoords=("data", "axes fraction"),
                xytext=(3, -4), textcoords="offset points", va="top", fontsize=8, color="0.35")
    ax.set(xlabel="characters of context before the ending sentence", ylabel="bits on 'hero verb the colour object.'",
           title=f"The story's ending: recalling the opening ({full['stories']} stories)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plotting.save_fig(fig, plots_dir, "ending_bits_vs_context")


def draw_english(res, plots_dir):
    sz = res["sizes"]
    d = res["english"]["by_position"]
    fig, ax = plt.subplots(figsize=(8, 4.4))
    x, y = _log_bins(np.array(d["context"]), np.array(d["loss"]))
    ax.plot(x, y, "o-", ms=3, color=COLORS["english"], label="char model, full attention")
    ax.axvline(sz["seq_len"], color="0.5", lw=0.8, ls=":")
    ax.annotate("trained length", xy=(sz["seq_len"], 1), xycoords=("data", "axes fraction"), xytext=(2, -4),
                textcoords="offset points", rotation=90, va="top", fontsize=8, color="0.35")
    ax.set(xscale="log", xlabel="context: characters the model can see", ylabel="loss (nats/char)",
           title="Natural English (Python's help text): loss vs position")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plotting.save_fig(fig, plots_dir, "loss_vs_context_english")


def draw_training(res, plots_dir):
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, h) in enumerate(res["histories"].items()):
        ax.plot(h["step"], h["train_loss"], color=f"C{i}", alpha=0.5, lw=0.8)
        ax.plot([v["step"] for v in h["val"]], [v["loss"] for v in h["val"]], "o-", color=f"C{i}", label=f"{name} (val)")
    plotting.entropy_floor(ax, res["floor"]["nats_per_char"][-1], label="wood floor, full context")
    ax.set(xlabel="step", ylabel="loss (nats/char)", title="Training the three char models", yscale="log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plotting.save_fig(fig, plots_dir, "training")


def draw_gpu(res, plots_dir):
    gpu = res.get("gpu", {})
    rows = [r for r in gpu.get("rows", []) if "TFLOP/s" in r]
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, causal in zip(axes, (True, False)):
        for i, m in enumerate(methods):
            pts = sorted((r["T"], r["TFLOP/s"]) for r in rows if r["method"] == m and r["causal"] == causal)
            if pts:
                t, y = zip(*pts)
                ax.plot(t, y, "o-", color=f"C{i}", label=m)
        ax.set(xlabel="sequence length T", ylabel="TFLOP/s (useful attention FLOPs)",
               title=f"{'causal' if causal else 'non-causal'}, {gpu['dtype']}, head_dim {gpu['head_dim']}")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
    fig.suptitle(f"Attention forward on {gpu['device_name']} (batch x T = {gpu['tokens']}, {gpu['heads']} heads)",
                 fontsize=10)
    fig.tight_layout()
    plotting.save_fig(fig, plots_dir, "gpu_attention_tflops")


def draw(results_path, plots_dir, animations_dir=None):
    plotting.use_style()
    res = load_json(results_path)
    draw_online_softmax(res, plots_dir)
    draw_scaling(res, plots_dir)
    draw_checkpointing(res, plots_dir)
    draw_loss_vs_position(res, plots_dir)
    draw_ending(res, plots_dir)
    draw_english(res, plots_dir)
    draw_training(res, plots_dir)
    draw_gpu(res, plots_dir)


if __name__ == "__main__":
    p = cli.parser("07_long_context", __doc__)
    p.add_argument("--window", type=int, default=None, help="(ignored here; main.py's flag)")
    p.add_argument("--block", type=int, default=None, help="(ignored here; main.py's flag)")
    run = cli.setup(p, header=False)
    cli.run_main(lambda: draw(run.results_path, run.plots_dir, run.animations_dir))
