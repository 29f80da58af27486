"""02 · Redraw every positional-embedding figure from the saved results JSON (never retrains).

    uv run chapters/02_positional_embeddings/visualize.py [--quick|--full] [--out DIR]
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Arc

from shared import cli, diagrams, plotting

LABELS = {"learned": "learned", "sinusoidal": "sinusoidal", "rope": "RoPE", "alibi": "ALiBi", "none": "none (NoPE)",
          "sinusoidal_small": "sinusoidal, rms 0.02"}
Q_COLOR, K_COLOR = plotting.color("rope"), "#444444"   # RoPE's query in its book colour, the key in dark grey


def color(scheme: str) -> str:
    """The book's colour per scheme; the rms-0.02 sinusoidal table is the sinusoidal scheme (dashed)."""
    return plotting.color("sinusoidal" if scheme == "sinusoidal_small" else scheme)


def style(scheme: str) -> dict:
    return {"color": color(scheme), "ls": "--" if scheme == "sinusoidal_small" else "-", "label": LABELS[scheme]}


def smooth(y, width: int) -> np.ndarray:
    """Running mean over `width` positions (per-position losses are noisy: a few hundred windows)."""
    y = np.asarray(y, dtype=float)
    if width <= 1 or len(y) < width:
        return y
    out = np.convolve(y, np.ones(width) / width, mode="valid")
    return np.concatenate([np.full(width - 1, np.nan), out])  # value at p averages positions p-width+1..p


def beyond_shading(ax, T: int, L: int, text: bool = True) -> None:
    ax.axvspan(T, L, color="0.5", alpha=0.08, lw=0)
    ax.axvline(T, color="0.4", ls=":", lw=1.2)
    if text:
        ax.text(T + 3, 0.98, f"never trained past {T} →", transform=ax.get_xaxis_transform(), va="top",
                color="0.3")


def floor_on_the_left(ax, value: float) -> None:
    """plotting.entropy_floor, with its label moved to the left end: the right end holds the lines' labels."""
    plotting.entropy_floor(ax, value)
    label = ax.texts[-1]
    label.xy = (0, value)
    label.set_horizontalalignment("left")
    label.xyann = (4, 4)


# ----------------------------------------------------------------------------- the mechanism
def draw_where_position_enters(r: dict, plots_dir: Path) -> Path:
    """Where each scheme enters the model: added to the embedding, rotating q and k, biasing the scores."""
    fig, ax = diagrams.canvas(9.8, 4.5)
    y = 3.0
    ax.text(0.1, y, "token\nids", ha="left", va="center", fontsize=diagrams.FONT, color=diagrams.TEXT)
    emb = diagrams.box(ax, (1.55, y), 1.1, 0.6, "Embedding")
    diagrams.arrow(ax, (0.62, y), emb.left)
    add_x = diagrams.plus(ax, (2.55, y))
    diagrams.arrow(ax, emb.right, add_x.left)
    proj = diagrams.box(ax, (3.85, y), 1.3, 0.85, "Norm, then\nq = W_q·x\nk = W_k·x")
    diagrams.arrow(ax, add_x.right, proj.left, "x")
    rot = diagrams.box(ax, (5.4, y), 1.2, 0.85, "rotate\nq and k", color=color("rope"))
    diagrams.arrow(ax, proj.right, rot.left)
    scores = diagrams.box(ax, (6.8, y), 1.05, 0.7, "scores\nq·kᵀ/√d")
    diagrams.arrow(ax, rot.right, scores.left)
    add_s = diagrams.plus(ax, (7.75, y))
    diagrams.arrow(ax, scores.right, add_s.left)
    soft = diagrams.box(ax, (8.9, y), 1.3, 0.7, "causal mask\n+ softmax")
    diagrams.arrow(ax, add_s.right, soft.left)
    diagrams.frame(ax, (3.05, 2.35, 9.7, 4.15), "attention, in every layer")
    ax.text(1.55, 3.9, "once, at the input", ha="center", va="center", fontsize=diagrams.FONT, color=diagrams.MUTED)

    yb = 1.35
    sin = diagrams.box(ax, (0.95, yb), 1.7, 0.8, "sinusoidal\nadd sin, cos(p·ωᵢ)", color=color("sinusoidal"))
    learned = diagrams.box(ax, (2.9, yb), 1.6, 0.8, "learned\nadd table[p]", color=color("learned"))
    rope = diagrams.box(ax, (5.05, yb), 1.95, 0.8, "RoPE\nturn pair i by p·ωᵢ", color=color("rope"))
    alibi = diagrams.box(ax, (7.2, yb), 1.85, 0.8, "ALiBi\nadd −m·(i − j)", color=color("alibi"))
    none = diagrams.box(ax, (9.05, yb), 1.1, 0.8, "none\nmask only", color=color("none"))
    for src, dst, c in ((sin, add_x.bottom, "sinusoidal"), (learned, add_x.bottom, "learned"),
                        (rope, rot.bottom, "rope"), (alibi, add_s.bottom, "alibi"), (none, soft.bottom, "none")):
        diagrams.arrow(ax, src.top, dst, color=color(c), lw=2)
    ax.text(0.1, 0.45, "Left: position p is added to the token vector once; the network must learn to read it.\n"
            "Right: RoPE and ALiBi act on every query–key pair and see only the distance i − j between them.",
            ha="left", va="center", fontsize=diagrams.FONT, color=diagrams.TEXT, linespacing=1.4)
    return plotting.save_fig(fig, plots_dir, "where_position_enters")


# ----------------------------------------------------------------------------- the encodings themselves
def plot_sinusoidal(r: dict, plots_dir: Path) -> Path:
    table = np.array(r["sinusoidal_table"])                     # (positions, d_model)
    sim = table @ table.T / (table.shape[1] / 2)                # PE(p)·PE(q), 1.0 on the diagonal
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.4), gridspec_kw={"width_ratios": [1.15, 1]}, layout="constrained")
    im = a.imshow(table, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    a.set(xlabel="dimension (sin, cos, sin, cos, …)", ylabel="position p", title="The table: fast pairs left")
    a.grid(False)
    fig.colorbar(im, ax=a, fraction=0.05)
    im = b.imshow(sim, cmap="viridis", interpolation="nearest")
    b.set(xlabel="position q", ylabel="position p", title="PE(p)·PE(q): a function of p − q")
    b.grid(False)
    fig.colorbar(im, ax=b, fraction=0.05)
    return plotting.save_fig(fig, plots_dir, "sinusoidal_table")


def _rope_panel(ax, point: dict, radius: float) -> None:
    """One rotation plane: the key at n and the query at n + Δ as arrows, the angle between them."""
    ax.add_patch(plt.Circle((0, 0), radius, fill=False, color="0.8", lw=1))
    q, k = np.array(point["q"]), np.array(point["k"])
    for vec, c in ((k, K_COLOR), (q, Q_COLOR)):
        ax.annotate("", xy=vec, xytext=(0, 0), arrowprops={"arrowstyle": "-|>", "color": c, "lw": 2.5,
                                                            "mutation_scale": 16})
    a_k, a_q = (math.degrees(math.atan2(v[1], v[0])) for v in (k, q))
    lo, hi = (a_k, a_q) if (a_q - a_k) % 360 <= 180 else (a_q, a_k)
    ax.add_patch(Arc((0, 0), 0.7 * radius, 0.7 * radius, theta1=lo, theta2=lo + (hi - lo) % 360, color="0.3", lw=1.5))
    ax.text(0, -1.18 * radius, f"angle {point['angle_deg']:.0f}°, q·k here {point['dot_in_plane']:+.2f}",
            ha="center", va="top", color="0.1")
    ax.set(xlim=(-1.25 * radius, 1.25 * radius), ylim=(-1.55 * radius, 1.2 * radius), aspect="equal",
           xticks=[], yticks=[])
    ax.grid(False)


def _rope_legend(fig, **kw) -> None:
    handles = [plt.Line2D([], [], color=Q_COLOR, lw=2.5), plt.Line2D([], [], color=K_COLOR, lw=2.5)]
    fig.legend(handles, ["query q at position n + Δ", "key k at position n"], ncols=2, frameon=False, **kw)


def _rope_radius(v: dict) -> float:
    return 1.05 * max(np.hypot(*p[key]) for view in v["views"].values() for p in view for key in ("q", "k"))


def plot_rope_relative(r: dict, plots_dir: Path, columns=(0, 3, 7, 12)) -> Path:
    """Static: for two distances Δ (rows), q and k at several absolute positions (columns)."""
    v = r["rope_view"]
    radius = _rope_radius(v)
    dists = list(v["views"])
    fig, axes = plt.subplots(len(dists), len(columns), figsize=(10, 2.9 * len(dists)), layout="constrained",
                             squeeze=False)
    for row, dist in zip(axes, dists):
        by_n = {p["key_position"]: p for p in v["views"][dist]}
        for ax, n in zip(row, columns):
            _rope_panel(ax, by_n[n], radius)
            ax.set_title(f"k at {n}, q at {n + int(dist)}", fontsize=plotting.MIN_FONT_PT + 1)
        row[0].set_ylabel(f"distance Δ = {dist}", fontsize=plotting.MIN_FONT_PT + 2, fontweight="bold")
    fig.suptitle(f"RoPE in one plane: q and k both turn ω = {math.degrees(v['omega']):.0f}° per token; "
                 "their angle stays Δ·ω")
    _rope_legend(fig, loc="outside lower center")
    return plotting.save_fig(fig, plots_dir, "rope_relative")


def draw_rope_animation(r: dict, animations_dir: Path) -> Path:
    """The same plane as rope_relative.png, turning: the key steps from position 0 to 24."""
    v = r["rope_view"]
    radius = _rope_radius(v)
    dists = list(v["views"])
    fig, axes = plt.subplots(1, len(dists), figsize=(4 * len(dists), 4.3))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.09, top=0.8, wspace=0.05)  # GIFs get no tight bbox
    _rope_legend(fig, loc="lower center")

    def update(i):
        for ax, dist in zip(axes, dists):
            ax.cla()
            point = v["views"][dist][i]
            _rope_panel(ax, point, radius)
            ax.set_title(f"Δ = {dist}: k at {point['key_position']}, q at {point['query_position']}")
        fig.suptitle(f"RoPE: each token turns q and k by ω = {math.degrees(v['omega']):.0f}°;\n"
                     "their angle (Δ·ω) and q·k depend only on Δ")

    return plotting.save_animation(fig, update, len(v["views"][dists[0]]), animations_dir, "rope_rotation", fps=4)


def plot_alibi(r: dict, plots_dir: Path) -> Path:
    bias = np.array(r["alibi"]["bias"])                         # (heads, T, T)
    slopes = r["alibi"]["slopes"]
    n, T = bias.shape[0], bias.shape[1]
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    fig, axes = plt.subplots(2, math.ceil(n / 2), figsize=(10, 5.6), layout="constrained")
    for h, ax in enumerate(axes.flat):
        im = ax.imshow(np.ma.masked_where(mask, bias[h]), cmap="magma", vmin=bias.min(), vmax=0,
                       interpolation="nearest")
        ax.set_title(f"head {h + 1}: m = 1/{1 / slopes[h]:g}", fontsize=plotting.MIN_FONT_PT + 1)
        ax.set_xticks([0, T - 1])
        ax.set_yticks([0, T - 1])
        ax.grid(False)
        if h % axes.shape[1] == 0:
            ax.set_ylabel("query i")
        if h >= n - axes.shape[1]:
            ax.set_xlabel("key j")
    fig.colorbar(im, ax=axes, fraction=0.03, label="bias added to the score")
    fig.suptitle("ALiBi, 8 heads: −m·(i − j) below the diagonal (future keys are masked)")
    return plotting.save_fig(fig, plots_dir, "alibi_bias")


def _label_alibi(ax, d, slopes, ymin):
    """Write each ALiBi line's slope where it leaves the panel (or at its end), alternately above and below
    the line, so the nearly flat ones do not overprint each other."""
    for h, m in enumerate(slopes):
        x = min(d[-1], 0.8 * abs(ymin) / m)
        ax.text(x, -m * x, f"m=1/{1 / m:g}", color=color("alibi"), ha="right" if x < d[-1] else "center",
                va="bottom" if h % 2 else "top")


def plot_similarity(r: dict, plots_dir: Path) -> Path:
    s, T = r["similarity"], r["config"]["train_len"]
    d = np.array(s["distance"])
    panels = [("sinusoidal", "PE(p)·PE(p+Δ), normalised", s["sinusoidal"]),
              ("rope", "q·(R_Δ q), random unit q", s["rope"]),
              ("learned", "cosine of table rows", s.get("learned")),
              ("alibi", "bias on the score: −m·Δ", None),
              ("none", "no position signal", np.zeros(len(d)))]
    fig, axes = plotting.grid(len(panels), ncols=3, panel_size=(3.4, 2.9), sharex=True)
    for ax, (name, ylabel, y) in zip(axes, panels):
        ax.axvline(T, color="0.4", ls=":", lw=1.2)
        if name == "alibi":
            ymin = -20
            for h, m in enumerate(s["alibi_slopes"]):
                ax.plot(d, -m * d, color=color("alibi"), ls=["-", "--", "-.", ":"][h % 4], lw=2)
            _label_alibi(ax, d, s["alibi_slopes"], ymin)
            ax.set_ylim(ymin * 1.05, 3)
        elif y is None:
            ax.text(0.5, 0.5, "not trained in this run", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.plot(d[:len(y)], y, color=color(name), lw=2)
            if name == "learned":
                ax.text(0.97, 0.95, f"no rows\npast {len(y) - 1}", ha="right", va="top", transform=ax.transAxes)
        ax.set_title(LABELS[name], color=color(name))
        ax.set_ylabel(ylabel)
        ax.set_xlabel("distance Δ (tokens)")
    axes[0].text(T + 4, 0.97, f"trained\nlength {T}", transform=axes[0].get_xaxis_transform(), va="top", color="0.3")
    fig.suptitle("What position alone tells a query about a key Δ tokens away")
    return plotting.save_fig(fig, plots_dir, "similarity_vs_distance")


# ----------------------------------------------------------------------------- the experiment
def plot_loss_vs_position(r: dict, plots_dir: Path) -> Path:
    T, L = r["config"]["train_len"], r["eval_len"]
    width = max(2, T // 8)
    fig, ax = plt.subplots(figsize=(9, 5.2))
    beyond_shading(ax, T, L)
    top, lines = 0.0, []
    for scheme, s in r["schemes"].items():
        y = smooth(s["loss_by_position"], width)
        (line,) = ax.plot(np.arange(len(y)), y, lw=2.2, **style(scheme))
        top = max(top, np.nanmax(y))
        if s.get("error_beyond_train_len"):
            ax.annotate("learned: no table rows\npast here (refuses)", xy=(T - 1, y[-1]), xytext=(0.4, 0.12),
                        textcoords="axes fraction", color=color(scheme), va="bottom",
                        arrowprops={"arrowstyle": "->", "color": color(scheme)})
        else:
            lines.append(line)
    if r["floor"]:
        (floor,) = ax.plot(np.array(r["floor"]["context"]) - 1, r["floor"]["nats_per_char"], color="black", ls="--",
                           lw=1.3, label="floor, seeing 0..p")
        lines.append(floor)
    ax.set_ylim(0, top * 1.08)
    ax.set(xlabel="position in the window (characters)", ylabel=f"loss (nats/char), mean of {width} positions",
           title=f"Trained on {T} characters, read {L}: who survives past {T}?", xlim=(0, L))
    plotting.label_lines(ax, lines)
    return plotting.save_fig(fig, plots_dir, "loss_vs_position")


def plot_extrapolation(r: dict, plots_dir: Path) -> Path:
    T, L = r["config"]["train_len"], r["eval_len"]
    names = list(r["schemes"])
    fig, ax = plt.subplots(figsize=(9.5, 4.4))
    x, w = np.arange(len(names)), 0.38
    inside = [r["schemes"][s]["bands"]["in_range"] for s in names]
    beyond = [r["schemes"][s]["bands"].get("beyond") for s in names]
    ax.bar(x - w / 2, inside, w, color=[color(s) for s in names], label=f"positions 0–{T - 1} (trained)")
    ax.bar(x + w / 2, [b or 0 for b in beyond], w, color=[color(s) for s in names], alpha=0.45, hatch="//",
           label=f"positions {T}–{L - 1} (never seen)")
    for i, (a, b) in enumerate(zip(inside, beyond)):
        ax.text(i - w / 2, a, f"{a:.2f}", ha="center", va="bottom")
        if b is None:
            ax.text(i + w / 2, 0.25, "refuses", ha="center", va="bottom", rotation=90, color=color(names[i]))
        else:
            ax.text(i + w / 2, b, f"{b:.2f}", ha="center", va="bottom")
    if r["floor"]:
        plotting.entropy_floor(ax, r["floor"]["entropy_nats_per_char"])
    ax.set_xticks(x, [LABELS[s].replace(", ", ",\n").replace(" (", "\n(") for s in names])
    ax.set(ylabel="mean loss (nats/char)", title="Loss inside vs beyond the training length")
    ax.set_ylim(0, max(b or 0 for b in [*inside, *beyond]) * 1.25)
    ax.legend(loc="upper right")
    return plotting.save_fig(fig, plots_dir, "extrapolation")


def plot_attention_entropy(r: dict, plots_dir: Path) -> Path:
    T, L = r["config"]["train_len"], r["eval_len"]
    fig, ax = plt.subplots(figsize=(9, 5))
    beyond_shading(ax, T, L, text=False)
    p = np.arange(L)
    ax.plot(p, np.log(p + 1), color="black", ls="--", lw=1.3, label="uniform: ln(p+1)")
    for scheme, s in r["schemes"].items():
        y = s["attention_entropy_by_position"]
        ax.plot(np.arange(len(y)), y, lw=2, **({**style(scheme), "label": "_learned"} if scheme == "learned"
                                                else style(scheme)))
    if "learned" in r["schemes"]:
        y = r["schemes"]["learned"]["attention_entropy_by_position"]
        ax.annotate("learned", xy=(len(y) - 1, y[-1]), xytext=(len(y) + 6, y[-1] - 0.9), color=color("learned"),
                    arrowprops={"arrowstyle": "->", "color": color("learned")})
    ax.set(xlabel="query position p", ylabel="attention entropy (nats)", xlim=(0, L),
           title="How spread out is attention? (mean over layers and heads)")
    plotting.label_lines(ax)
    return plotting.save_fig(fig, plots_dir, "attention_entropy")


def plot_training(r: dict, plots_dir: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.4))
    for scheme, s in r["schemes"].items():
        v = s["history"]["val"]
        ax.plot([e["step"] for e in v], [e["loss"] for e in v], marker="o", ms=3, **style(scheme))
    if r["floor"]:
        floor_on_the_left(ax, r["floor"]["entropy_nats_per_char"])
    ax.set(xlabel="training step", ylabel="validation loss (nats/char)",
           title=f"Training at {r['config']['train_len']} characters, same data")
    plotting.label_lines(ax)
    return plotting.save_fig(fig, plots_dir, "training_curves")


def draw(r: dict, plots_dir: Path, animations_dir: Path) -> list[Path]:
    plotting.use_style()
    return [draw_where_position_enters(r, plots_dir), plot_sinusoidal(r, plots_dir), plot_rope_relative(r, plots_dir),
            draw_rope_animation(r, animations_dir), plot_alibi(r, plots_dir), plot_similarity(r, plots_dir),
            plot_loss_vs_position(r, plots_dir), plot_extrapolation(r, plots_dir), plot_attention_entropy(r, plots_dir),
            plot_training(r, plots_dir)]


if __name__ == "__main__":
    cli.visualize_main(draw)
