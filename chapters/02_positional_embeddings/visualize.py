"""02 · Redraw every positional-embedding plot from the saved results JSON (never retrains).

    uv run chapters/02_positional_embeddings/visualize.py [--quick|--full] [--out DIR]
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402  (after shared.plotting picked the Agg backend)
import numpy as np

from shared import cli, plotting
from shared.results import load_json

SCHEMES = ("learned", "sinusoidal", "rope", "alibi", "none", "sinusoidal_small")
LABELS = {"learned": "learned", "sinusoidal": "sinusoidal", "rope": "RoPE", "alibi": "ALiBi", "none": "none (NoPE)",
          "sinusoidal_small": "sinusoidal\n(rms 0.02)"}


def colors() -> dict:
    import seaborn as sns

    return dict(zip(SCHEMES, sns.color_palette(plotting.PALETTE, len(SCHEMES))))


def smooth(y, width: int) -> np.ndarray:
    """Running mean over `width` positions (per-position losses are noisy: a few hundred windows)."""
    y = np.asarray(y, dtype=float)
    if width <= 1 or len(y) < width:
        return y
    kernel = np.ones(width) / width
    out = np.convolve(y, kernel, mode="valid")
    return np.concatenate([np.full(width - 1, np.nan), out])  # value at p averages positions p-width+1..p


# ----------------------------------------------------------------------------- the encodings themselves
def plot_sinusoidal(res: dict, out: Path) -> Path:
    table = np.array(res["sinusoidal_table"])                   # (positions, d_model)
    sim = table @ table.T / (table.shape[1] / 2)                # PE(p).PE(q), 1.0 on the diagonal
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    im = a.imshow(table, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    a.set(xlabel="embedding dimension (sin, cos, sin, cos, ...)", ylabel="position",
          title="sinusoidal table: fast pairs on the left, slow on the right")
    a.grid(False)
    fig.colorbar(im, ax=a, fraction=0.04)
    im = b.imshow(sim, cmap="viridis", interpolation="nearest")
    b.set(xlabel="position q", ylabel="position p", title="PE(p) · PE(q) / (d/2): depends on |p - q| only")
    b.grid(False)
    fig.colorbar(im, ax=b, fraction=0.046)
    fig.tight_layout()
    return plotting.save_fig(fig, out, "sinusoidal_table")


def plot_similarity(res: dict, out: Path) -> Path:
    s, c = res["similarity"], colors()
    d = np.array(s["distance"])
    T = s["train_len"]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), sharex=True)
    panels = [
        ("sinusoidal", "PE(p) · PE(p+Δ), normalised", s["sinusoidal"]),
        ("learned", "cosine(table[p], table[p+Δ]) after training", s.get("learned")),
        ("rope", "q·k with k = q, Δ apart (mean over random q)", s["rope"]),
        ("alibi", "bias added to the score: -m·Δ", None),
        ("none", "no position signal at all", np.zeros(len(d))),
    ]
    for ax, (name, ylabel, y) in zip(axes, panels):
        ax.axvline(T, color="gray", ls=":", lw=1)
        if name == "alibi":
            for h, m in enumerate(s["alibi_slopes"]):
                ax.plot(d, -m * d, color=c[name], alpha=0.35 + 0.65 * (h + 1) / len(s["alibi_slopes"]), lw=1.5,
                        label=f"m = 1/{1 / m:g}")
            ax.legend(fontsize=7, loc="lower left")
            ax.set_ylim(-min(20, s["alibi_slopes"][0] * d[-1]) * 1.05, 0.5)
        elif y is None:
            ax.text(0.5, 0.5, "not trained in this run", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.plot(d[:len(y)], y, color=c[name], lw=1.5)
            if name == "learned":
                ax.text(0.97, 0.93, f"table ends at {len(y) - 1}:\nno rows beyond", ha="right", va="top",
                        transform=ax.transAxes, fontsize=8)
        ax.set_title(LABELS[name])
        ax.set_xlabel("distance Δ (tokens)")
        ax.set_ylabel(ylabel, fontsize=8)
    axes[0].annotate("training length", xy=(T, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                     textcoords="offset points", fontsize=7, color="gray")
    fig.suptitle("What a query 'sees' of a key Δ tokens away, from position information alone", y=1.03)
    fig.tight_layout()
    return plotting.save_fig(fig, out, "similarity_vs_distance")


def plot_alibi(res: dict, out: Path) -> Path:
    bias = np.array(res["alibi"]["bias"])                       # (heads, T, T)
    slopes = res["alibi"]["slopes"]
    n, T = bias.shape[0], bias.shape[1]
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    fig, axes = plt.subplots(2, math.ceil(n / 2), figsize=(13, 6.2))
    lo = bias.min()
    for h, ax in enumerate(axes.flat):
        im = ax.imshow(np.ma.masked_where(mask, bias[h]), cmap="magma", vmin=lo, vmax=0, interpolation="nearest")
        ax.set_title(f"head {h + 1}: m = 1/{1 / slopes[h]:g}", fontsize=10)
        ax.set_xticks([0, T - 1])
        ax.set_yticks([0, T - 1])
        ax.grid(False)
        if h % axes.shape[1] == 0:
            ax.set_ylabel("query position")
        if h >= n - axes.shape[1]:
            ax.set_xlabel("key position")
    fig.colorbar(im, ax=axes, fraction=0.02, label="bias added to the attention score")
    fig.suptitle("ALiBi with 8 heads: -m·(query - key), masked above the diagonal (future keys)")
    return plotting.save_fig(fig, out, "alibi_bias")


def draw_rope_animation(res: dict, out: Path) -> Path:
    """Three frequency pairs of one query and one key, rotated by RoPE as the position grows.
    Height is the position, so each pair's trail is a helix; the key sits `offset` below."""
    a = res["rope_animation"]
    q, k = np.array(a["query"]), np.array(a["key"])             # (positions, pairs, 2)
    off, n = a["offset"], len(q)
    r = 1.1 * max(np.linalg.norm(q, axis=-1).max(), np.linalg.norm(k, axis=-1).max())
    fig = plt.figure(figsize=(10, 3.9))
    axes = [fig.add_subplot(1, 3, j + 1, projection="3d") for j in range(len(a["pairs"]))]
    fig.subplots_adjust(left=0.0, right=0.97, bottom=-0.05, top=0.86, wspace=0.05)  # GIFs get no tight bbox
    c = colors()

    def update(m):
        for j, ax in enumerate(axes):
            ax.cla()
            ax.plot(q[:m + 1, j, 0], q[:m + 1, j, 1], np.arange(m + 1), color=c["rope"], lw=1, alpha=0.5)
            ax.plot([0, 0], [0, 0], [0, n], color="gray", lw=0.6)
            ax.plot([0, q[m, j, 0]], [0, q[m, j, 1]], [m, m], color=c["rope"], lw=2.5, label=f"q at {m}")
            if m >= off:
                kn = m - off
                ax.plot([0, k[kn, j, 0]], [0, k[kn, j, 1]], [kn, kn], color=c["alibi"], lw=2.5, label=f"k at {kn}")
                dot = float(q[m, j] @ k[kn, j])
                ax.set_title(f"pair {a['pairs'][j]}: ω = {a['freqs'][j]:.3g} rad/token\nq·k in this pair = {dot:+.3f}",
                             fontsize=9)
            else:
                ax.set_title(f"pair {a['pairs'][j]}: ω = {a['freqs'][j]:.3g} rad/token\n(key appears at position {off})",
                             fontsize=9)
            ax.set(xlim=(-r, r), ylim=(-r, r), zlim=(0, n), xticks=[], yticks=[])
            ax.set_zlabel("position", fontsize=8)
            ax.view_init(elev=22, azim=-60)
            if j == 0:
                ax.legend(loc="upper left", fontsize=7)
        fig.suptitle(f"RoPE: q and k turn together, so their angle (and q·k) depends only on the offset {off}",
                     fontsize=10)

    return plotting.save_animation(fig, update, n, out, "rope_rotation", fps=6)


# ----------------------------------------------------------------------------- the experiment
def plot_loss_vs_position(res: dict, out: Path) -> Path:
    cfg, c = res["config"], colors()
    T, L = cfg["train_len"], cfg["eval_len"]
    width = max(2, T // 8)
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.axvspan(T, L, color="gray", alpha=0.08)
    ax.axvline(T, color="gray", ls=":", lw=1)
    ax.text(T + 2, 0.98, f"beyond training length ({T}) →", transform=ax.get_xaxis_transform(), va="top",
            fontsize=9, color="dimgray")
    top = 0
    for s, r in res["schemes"].items():
        y = smooth(r["loss_by_position"], width)
        ax.plot(np.arange(len(y)), y, color=c[s], lw=1.8, label=LABELS[s])
        top = max(top, np.nanmax(y[:T]))
        if r.get("error_beyond_train_len"):
            ax.annotate("learned: no table rows\npast here (WorkbookError)", xy=(T - 1, y[-1]), xytext=(T + 6, y[-1] + 0.35),
                        fontsize=8, color=c[s], arrowprops={"arrowstyle": "->", "color": c[s]})
    f = res["floor"]
    if f:  # wood only
        ax.plot(np.array(f["context"]) - 1, f["nats_per_char"], color="black", ls="--", lw=1,
                label="floor for a model seeing positions 0..p (lower bound)")
    ax.set_ylim(0, max(2.2 * top, 1.0))
    ax.set(xlabel="position in the window (characters)", ylabel=f"loss (nats/char), running mean of {width}",
           title=f"Trained on {T}-character windows, evaluated on {L}: who survives past position {T}?", xlim=(0, L))
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the curves fill the axes
    return plotting.save_fig(fig, out, "loss_vs_position")


def plot_extrapolation(res: dict, out: Path) -> Path:
    cfg, c = res["config"], colors()
    T, L = cfg["train_len"], cfg["eval_len"]
    names = list(res["schemes"])
    fig, ax = plt.subplots(figsize=(10, 4.2))
    x = np.arange(len(names))
    w = 0.38
    inside = [res["schemes"][s]["bands"]["in_range"] for s in names]
    beyond = [res["schemes"][s]["bands"].get("beyond") for s in names]
    ax.bar(x - w / 2, inside, w, color=[c[s] for s in names], label=f"positions 0-{T - 1} (trained)")
    ax.bar(x + w / 2, [b or 0 for b in beyond], w, color=[c[s] for s in names], alpha=0.45, hatch="//",
           label=f"positions {T}-{L - 1} (never seen)")
    for i, (a, b) in enumerate(zip(inside, beyond)):
        ax.text(i - w / 2, a, f"{a:.2f}", ha="center", va="bottom", fontsize=8)
        ax.text(i + w / 2, b or 0, f"{b:.2f}" if b is not None else "refuses:\nno rows", ha="center", va="bottom",
                fontsize=8)
    if res["floor"]:
        ax.axhline(res["floor"]["entropy_nats_per_char"], color="black", ls="--", lw=1)
    ax.set_xticks(x, [LABELS[s] for s in names])
    ax.set(ylabel="mean loss (nats/char)", title="Loss inside vs beyond the training length")
    ax.set_ylim(0, max(b or 0 for b in [*inside, *beyond]) * 1.25)
    ax.legend(fontsize=8, loc="upper left")
    return plotting.save_fig(fig, out, "extrapolation")


def plot_attention_entropy(res: dict, out: Path) -> Path:
    cfg, c = res["config"], colors()
    T, L = cfg["train_len"], cfg["eval_len"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.axvline(T, color="gray", ls=":", lw=1)
    p = np.arange(L)
    ax.plot(p, np.log(p + 1), color="black", ls="--", lw=1, label="uniform over all visible keys: ln(p+1)")
    for s, r in res["schemes"].items():
        y = r["attention_entropy_by_position"]
        ax.plot(np.arange(len(y)), y, color=c[s], lw=1.6, label=LABELS[s])
    ax.set(xlabel="query position", ylabel="attention entropy (nats), mean over layers and heads", xlim=(0, L),
           title="How spread out is attention? Past the training length some schemes smear it out")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return plotting.save_fig(fig, out, "attention_entropy")


def plot_training(res: dict, out: Path) -> Path:
    c = colors()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for s, r in res["schemes"].items():
        v = r["history"]["val"]
        ax.plot([e["step"] for e in v], [e["loss"] for e in v], "o-", color=c[s], ms=3, label=LABELS[s])
    if res["floor"]:
        plotting.entropy_floor(ax, res["floor"]["entropy_nats_per_char"])
    ax.set(xlabel="training step", ylabel="validation loss (nats/char)", title="Training at the same length, same data")
    ax.legend(fontsize=8)
    return plotting.save_fig(fig, out, "training_curves")


def draw(results_path: Path, plots_dir: Path, animations_dir: Path) -> list[Path]:
    results_path = Path(results_path)
    res = load_json(results_path)
    plotting.use_style()
    return [plot_sinusoidal(res, plots_dir), plot_similarity(res, plots_dir), plot_alibi(res, plots_dir),
            plot_loss_vs_position(res, plots_dir), plot_extrapolation(res, plots_dir),
            plot_attention_entropy(res, plots_dir), plot_training(res, plots_dir),
            draw_rope_animation(res, animations_dir)]


if __name__ == "__main__":
    def _main():
        run = cli.setup(cli.parser("02_positional_embeddings", __doc__), header=False)
        draw(run.results_path, run.plots_dir, run.animations_dir)

    cli.run_main(_main)
