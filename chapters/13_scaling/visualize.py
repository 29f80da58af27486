"""Redraw chapter 13's figures from its saved results (never retrains); parts not run yet are skipped.

    uv run chapters/13_scaling/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

import launch
import scaling_law as sl
from shared import cli, diagrams, plotting

BOOK = sns.color_palette(plotting.PALETTE).as_hex()          # the book's palette, for concepts it has no name for
STATE_COLORS = {"parameters": BOOK[0], "gradients": BOOK[1], "optimizer_state": BOOK[2]}


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    r["parts"]                  # noqa: B018  (a file without it predates the parts: visualize_main says re-run)
    plotting.use_style()
    out = [plotting.save_fig(data_parallel_diagram(), plots_dir, "data_parallel"),
           plotting.save_fig(zero_diagram(), plots_dir, "zero_stages")]
    if "ladder" in r:
        out += draw_ladder(r["ladder"], plots_dir)
    if "launches" in r:
        out.append(distributed(r["launches"], plots_dir))
    if "tricks" in r:
        out.append(at_scale_tricks(r["tricks"], plots_dir))
    if "resume" in r:
        out.append(checkpoint_resume(r["resume"], plots_dir))
    if "early_stopping" in r and "duplicates" in r:
        out.append(repeated_data(r["duplicates"], r["early_stopping"], plots_dir))
    if "synthetic_vs_real" in r:
        out.append(synthetic_vs_real(r["synthetic_vs_real"], plots_dir))
    if "noise" in r:
        out.append(noise(r["noise"], plots_dir))
    return out


# ------------------------------------------------------------------------------ mechanism diagrams
def data_parallel_diagram():
    """Two processes, half the global batch each; all-reduce averages the gradients; same update on both."""
    fig, ax = diagrams.canvas(9.7, 4.2)
    batch = diagrams.tensor(ax, (0.7, 2.3), "global batch\n8 × T", rows=8, cols=5, cell=0.16)
    reduce = diagrams.box(ax, (6.0, 2.3), 1.7, 1.25, "all-reduce\n(g0 + g1) / 2\n(gloo on CPU)", highlight=True)
    for i, y in enumerate((3.3, 1.3)):
        side = 0.35 if i == 0 else -0.35
        p = diagrams.box(ax, (3.3, y), 2.1, 0.95, f"process {i}: model copy\nforward + backward\n→ gradient g{i}")
        diagrams.arrow(ax, (batch.right[0] + 0.05, 2.3 + side), p.left, via=[(1.55, 2.3 + side), (1.55, y)],
                       label=f"rows {4 * i}–{4 * i + 3}", label_pos="above")
        diagrams.arrow(ax, p.right, (reduce.left[0], 2.3 + side), via=[(4.75, y), (4.75, 2.3 + side)])
        s = diagrams.box(ax, (8.7, y), 1.9, 0.8, f"AdamW step\nprocess {i}")
        diagrams.arrow(ax, (reduce.right[0], 2.3 + side), s.left, via=[(7.3, 2.3 + side), (7.3, y)])
    ax.text(8.7, 2.3, "same weights\non both", ha="center", va="center", fontsize=diagrams.FONT, color=diagrams.MUTED)
    ax.text(4.85, 0.1, "The mean of the two half-batch gradients is the full-batch gradient:\n"
            "both processes take the same step, and the losses equal one process's.", ha="center",
            fontsize=diagrams.FONT, color=diagrams.TEXT)
    return fig


ZERO_TITLES = {0: "stage 0 (= DDP)\nevery process holds all", 1: "ZeRO-1\nshards optimizer state",
               2: "ZeRO-2\n+ shards gradients", 3: "ZeRO-3\n+ shards parameters"}


def zero_diagram(world: int = 2, params: int = 1):
    """What each of 2 processes holds at each ZeRO stage: bars in units of Ψ bytes (Ψ = parameter count)."""
    fig, ax = diagrams.canvas(9.6, 6.1)
    unit = 0.21                                         # inches per Ψ bytes: 8Ψ of Adam state = 1.7 in
    for stage in range(4):
        x0 = 0.1 + 2.4 * stage
        ax.text(x0 + 1.1, 5.95, ZERO_TITLES[stage], ha="center", va="top", fontsize=diagrams.FONT,
                fontweight="bold", color=diagrams.TEXT)
        held = launch.zero_bytes_per_rank(params, world, stage)
        for rank in range(world):
            y_top = 4.75 - 1.75 * rank
            ax.text(x0, y_top + 0.12, f"process {rank}", fontsize=diagrams.FONT, color=diagrams.MUTED, va="bottom")
            for row, (what, full) in enumerate((("parameters", 4), ("gradients", 4), ("optimizer_state", 8))):
                y = y_top - 0.42 * (row + 1)
                mine = held[what] / params
                start = 0 if mine == full else full / world * rank
                ax.add_patch(Rectangle((x0, y), full * unit, 0.3, fill=False, ec=STATE_COLORS[what], lw=1,
                                       ls=(0, (2, 2)), zorder=1))
                ax.add_patch(Rectangle((x0 + start * unit, y), mine * unit, 0.3, color=STATE_COLORS[what], zorder=2))
                ax.text(x0 + full * unit + 0.05, y + 0.15, f"{mine:g}Ψ", va="center", fontsize=diagrams.FONT,
                        color=diagrams.TEXT)
        total = sum(held.values()) / params
        ax.text(x0 + 1.1, 0.85, f"{total:g}Ψ bytes\nper process", ha="center", va="bottom", fontsize=diagrams.FONT,
                fontweight="bold", color=diagrams.HIGHLIGHT if stage else diagrams.TEXT)
    for i, (what, label) in enumerate((("parameters", "fp32 weights: 4Ψ bytes"),
                                       ("gradients", "gradients: 4Ψ"),
                                       ("optimizer_state", "AdamW moments: 8Ψ"))):
        ax.add_patch(Rectangle((0.1 + 2.4 * i, 0.2), 0.3, 0.22, color=STATE_COLORS[what]))
        ax.text(0.47 + 2.4 * i, 0.31, label, va="center", fontsize=diagrams.FONT, color=diagrams.TEXT)
    ax.text(9.55, 0.31, "dashed: the share the\nother process holds", ha="right", va="center",
            fontsize=diagrams.FONT, color=diagrams.MUTED)
    return fig


# ------------------------------------------------------------------------------ ladder (from ladder.py's results)
def draw_ladder(lad: dict, plots_dir: Path) -> list[Path]:
    return [draw_isoflop(lad, plots_dir), draw_frontier(lad, plots_dir), draw_loss_vs_tokens(lad, plots_dir)]


def draw_loss_vs_tokens(r: dict, plots_dir: Path) -> Path:
    """Gap to the floor against training tokens D, one colour per size (its finished runs at every
    budget), and the Chinchilla form fitted to every point (E = the floor) drawn for each size:
    at fixed N the law says the gap falls toward A/N^alpha as D grows."""
    fig, ax = plt.subplots(figsize=(8.4, 5.0), layout="constrained")
    colors = _size_colors(r)
    fit = sl.ChinchillaFit.from_dict(r["chinchilla_gap"]) if r.get("chinchilla_gap") else None
    for s in sorted(r["sizes"], key=lambda s: s["params"]):
        pts = sorted(s["points"], key=lambda p: p["tokens"])
        if not pts:
            continue
        ax.plot([p["tokens"] for p in pts], [p["gap"] for p in pts], "o", ms=7, color=colors[s["params"]],
                label=f"{_size_name(s['size'])}, N={plotting.plain_number(s['params'])}", zorder=3)
        if fit is not None:
            D = np.geomspace(pts[0]["tokens"] / 1.3, pts[-1]["tokens"] * 1.3, 40)
            ax.plot(D, fit.predict(s["params"], D) - fit.E, "-", lw=1.2, color=colors[s["params"]], zorder=2,
                    label="_fit")
    plotting.log_axis(ax, "x")
    plotting.log_axis(ax, "y")
    ax.set(xlabel="training tokens D (characters)", ylabel="gap to the exact floor, L − E (nats/char)",
           title="Gap against tokens, per size" + (" (lines: the Chinchilla form, E = floor)" if fit else ""))
    ax.title.set_fontsize(plotting.MIN_FONT_PT + 1)
    ax.legend(loc="lower left", framealpha=0.9)
    return plotting.save_fig(fig, plots_dir, "loss_vs_tokens")


def _size_colors(r: dict) -> dict:
    """One colour per model size, light (small) to dark (big): sizes are ordered, not categories."""
    ns = sorted(s["params"] for s in r["sizes"])
    cmap = plt.get_cmap("viridis_r")
    return {n: cmap(0.15 + 0.8 * i / max(1, len(ns) - 1)) for i, n in enumerate(ns)}


def _budget_colors(r: dict) -> dict:
    bs = sorted({p["budget"] for s in r["sizes"] for p in s["points"]})
    cmap = plt.get_cmap("plasma")
    return {b: cmap(0.1 + 0.7 * i / max(1, len(bs) - 1)) for i, b in enumerate(bs)}


def _size_name(size) -> str:
    return f"d={size[1]}"


def draw_frontier(r: dict, plots_dir: Path) -> Path:
    """Gap to the exact floor against training compute C = 6ND, log-log. Each size's finished runs
    (one per budget) joined by a thin line; the compute-efficient frontier (best gap at each C so
    far) in black; the power law fitted to the frontier, over the range it was fitted on; the
    held-out run's prediction (x) and measurement (star); the gap a model pays if it never uses
    the opening's facts (dotted), where the frontier flattens."""
    fig, ax = plt.subplots(figsize=(10, 5.2), layout="constrained")
    colors = _size_colors(r)
    for s in sorted(r["sizes"], key=lambda s: s["params"]):
        pts = sorted(s["points"], key=lambda p: p["flops"])
        if pts:
            ax.plot([p["flops"] for p in pts], [p["gap"] for p in pts], "o-", lw=1, ms=6, color=colors[s["params"]],
                    label=f"{_size_name(s['size'])}, N={plotting.plain_number(s['params'])}", zorder=3)
    front = r["frontier"]
    ax.plot([p["flops"] for p in front], [p["gap"] for p in front], "-", color="black", lw=2.5, alpha=0.35,
            zorder=2, label="frontier: best run at each C")
    fit = r.get("frontier_fit")
    if fit:
        C = np.geomspace(fit["x_lo"], fit["x_hi"], 50)
        ax.plot(C, fit["k"] * C ** fit["a"], "--", color="black", lw=1.5, zorder=4, label="_fit")
        local = ", then ".join(f"{s['a']:.2f}" for s in r.get("frontier_slopes", []))
        ax.annotate(f"frontier fit: gap ∝ C^{fit['a']:.2f} on {plotting.plain_number(fit['x_lo'])}–"
                    f"{plotting.plain_number(fit['x_hi'])} FLOPs (R² {fit['r2']:.2f})"
                    + (f"\nslope between neighbours: {local}\n(a power law keeps one slope)" if local else ""),
                    xy=(0.02, 0.04), xycoords="axes fraction", ha="left", va="bottom", fontsize=plotting.MIN_FONT_PT,
                    bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.7"})
    h = r.get("held_out")
    if h and h.get("gap") is not None:
        for k, mark in (("frontier", "x"), ("chinchilla_gap", "+")):
            v = h["predicted"].get(k)
            if v is not None and v > 0:
                ax.plot([h["budget"]], [v], mark, ms=12, mew=2.5, color=plotting.color("val"),
                        label=f"held-out, predicted ({'frontier law' if k == 'frontier' else 'Chinchilla form'})",
                        zorder=6)
        ax.plot([h["budget"]], [h["gap"]], "*", ms=17, color=plotting.color("val"), mec="black",
                label=f"held-out {_size_name(h['size'])}, measured", zorder=7)
    if r.get("long_range_gap"):
        ax.axhline(r["long_range_gap"], ls=":", color="0.3", lw=1.5, zorder=1)
        ax.annotate(f"perfect model blind to the opening's facts: {r['long_range_gap']:.3f}",
                    xy=(0, r["long_range_gap"]), xycoords=("axes fraction", "data"), xytext=(4, 4),
                    textcoords="offset points", ha="left", va="bottom", fontsize=plotting.MIN_FONT_PT, color="0.3")
    lowest = min([p["gap"] for s in r["sizes"] for p in s["points"]]
                 + [v for v in (h or {}).get("predicted", {}).values() if v and v > 0] + [r.get("long_range_gap") or 1])
    ax.set_ylim(bottom=lowest / 3)           # room for the fit's note below the data
    plotting.log_axis(ax, "x")
    plotting.log_axis(ax, "y")
    ax.set_xlabel("training compute C = 6 N D (FLOPs)")
    ax.set_ylabel("gap to the exact floor, L − E (nats/char)")
    ax.set_title("Loss gap against compute: every run and the frontier")
    fig.legend(loc="outside right upper", fontsize=plotting.MIN_FONT_PT)   # outside: inside it hid the d=64 runs
    return plotting.save_fig(fig, plots_dir, "scaling_frontier")


def draw_isoflop(r: dict, plots_dir: Path) -> Path:
    """Left: at each budget C (one colour), the gap of every size trained with D = C/6N, and the
    parabola in ln N through them; its vertex (diamond) is the compute-optimal size N*(C). Right:
    those N* against C, with the fitted N* ∝ C^a (Chinchilla measured a ≈ 0.5)."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 4.6), layout="constrained", width_ratios=(1.5, 1))
    colors = _budget_colors(r)
    for c in r["isoflop"]:
        col = colors[c["budget"]]
        ax.plot(c["params"], c["gaps"], "o", ms=7, color=col, zorder=3,
                label=f"C = {plotting.plain_number(c['budget'])}")
        if c["vertex_params"] is not None:
            u = np.linspace(np.log(min(c["params"])), np.log(max(c["params"])), 60)
            c2, c1, c0 = c["coef"]
            ax.plot(np.exp(u), np.exp(c2 * u**2 + c1 * u + c0), "-", lw=1.5, color=col, zorder=2, label="_parabola")
            if c["interior"]:
                ax.plot([c["vertex_params"]], [c["vertex_gap"]], "D", ms=9, color=col, mec="black", zorder=4,
                        label="_vertex")
    plotting.log_axis(ax, "x")
    plotting.log_axis(ax, "y")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("gap to the exact floor, L − E (nats/char)")
    ax.set_title("isoFLOP curves: same compute, different N")
    ax.legend(loc="lower left", fontsize=plotting.MIN_FONT_PT, framealpha=0.9)
    inner = [c for c in r["isoflop"] if c["interior"]]
    for c in inner:
        ax2.plot([c["budget"]], [c["vertex_params"]], "D", ms=9, color=colors[c["budget"]], mec="black", zorder=3)
    fit = r.get("n_opt")
    if fit:
        C = np.geomspace(fit["x_lo"] / 1.5, fit["x_hi"] * 1.5, 20)
        ax2.plot(C, fit["k"] * C ** fit["a"], "--", color="black", lw=1.5)
        ax2.set_title(f"N* ∝ C^{fit['a']:.2f} ({len(inner)} budgets;\nChinchilla: ≈ 0.5)")
    else:
        ax2.set_title(f"N* at {len(inner)} budget(s): no fit")
    plotting.log_axis(ax2, "x")
    plotting.log_axis(ax2, "y")
    ax2.set_xlabel("compute C (FLOPs)")
    ax2.set_ylabel("compute-optimal N*")
    return plotting.save_fig(fig, plots_dir, "isoflop")


# ------------------------------------------------------------------------------ part at_scale
def distributed(d: dict, plots_dir: Path) -> Path:
    runs = [x for x in d["runs"] if not x.get("failed")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.4))
    for i, x in enumerate(runs):
        a1.plot(range(1, len(x["losses"]) + 1), x["losses"], marker="o", ms=10 - i, lw=1, alpha=0.75,
                color=BOOK[i % len(BOOK)], label=x["label"])
    a1.set(xlabel="step", ylabel="loss of the global batch", title="Same global batch, same losses")
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.legend()
    labels = [x["label"].replace("deepspeed ", "") for x in runs]
    pos = np.arange(len(runs))
    for off, key, what in ((-0.2, "param_bytes", "parameters"), (0.2, "optimizer_state_bytes", "optimizer_state")):
        a2.bar(pos + off, [x["per_rank"][0][key] / 2**20 for x in runs], 0.4, color=STATE_COLORS[what],
               label={"parameters": "parameters", "optimizer_state": "AdamW moments"}[what] + " held by process 0")
    a2.set_xticks(pos, labels, rotation=30, ha="right")
    a2.set(ylabel="MiB per process", title="Model state per process (counted)")
    a2.set_ylim(0, 1.35 * max(x["per_rank"][0]["optimizer_state_bytes"] / 2**20 for x in runs))
    a2.legend(loc="upper center", ncol=1)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "distributed")


def _smooth(x, k=10):
    x = np.asarray(x, float)
    k = max(1, min(k, len(x) // 3))
    return np.convolve(x, np.ones(k) / k, mode="valid")


def at_scale_tricks(t: dict, plots_dir: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.4), gridspec_kw={"width_ratios": [1, 1, 1.25]})
    c = t["checkpointing"]
    ax = axes[0]
    names = ["plain", "checkpointed"]
    mem = [c[n]["peak_memory_bytes"] / 2**20 for n in names]
    bars = ax.bar(names, mem, 0.55, color=[BOOK[0], BOOK[2]])
    for b, n in zip(bars, names):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{c[n]['step_s']:.2f} s/step", ha="center",
                va="bottom")
    ax.set(ylabel="peak memory of one step (MiB)", title=f"Activation\ncheckpointing {tuple(c['size'])}")
    ax.set_ylim(0, 1.2 * max(mem))
    pr = t["precision"]
    ax = axes[1]
    bars = ax.bar(["fp32", "bf16"], [pr["fp32"]["step_s"], pr["bf16 autocast"]["step_s"]], 0.55,
                  color=[plotting.color("fp32"), plotting.color("bf16")])
    for b, k in zip(bars, ("fp32", "bf16")):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"matmul\n{pr['matmul_gflops'][k]:.0f} GFLOP/s",
                ha="center", va="bottom")
    units = "has" if any(pr["cpu_bf16_units"].values()) else "has no"
    ax.set(ylabel="seconds per training step", title=f"bf16: this CPU {units}\nbf16 matrix units")
    ax.set_ylim(0, 1.3 * max(b.get_height() for b in bars))
    g = t["galore"]
    ax = axes[2]
    for i, (k, v) in enumerate((k, v) for k, v in g.items() if isinstance(v, dict)):
        ax.plot(_smooth(v["train_loss"]), color=BOOK[i], label=f"{k.replace(' rank ', ' r=')}: "
                f"{v['optimizer_state_bytes'] / 2**20:.2f} MiB state")
    ax.set(xlabel="step", ylabel="train loss (10-step mean)", title=f"GaLore vs AdamW\n({g['params']:,} params)")
    ax.set_ylim(top=1.25 * max(max(_smooth(v["train_loss"])) for v in g.values() if isinstance(v, dict)))
    ax.legend(loc="upper right")                          # above the curves: the ylim leaves it room
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "at_scale_tricks")


def checkpoint_resume(s: dict, plots_dir: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    steps = np.arange(1, len(s["uninterrupted"]) + 1)
    ax.plot(steps, s["uninterrupted"], color=BOOK[0], lw=4, alpha=0.45, label="uninterrupted run")
    ax.plot(steps[: s["stop_at"]], s["before_stop"], color=BOOK[1], lw=1.5, label="run stopped (checkpoint written)")
    ax.plot(steps[s["stop_at"]:], s["resumed"][s["stop_at"]:], color=BOOK[2], lw=1.5, ls="--",
            label="resumed from the checkpoint (new model object)")
    ax.axvline(s["stop_at"], color=diagrams.MUTED, lw=1, ls=":")
    ax.annotate(f"stopped after step {s['stop_at']}", (s["stop_at"], 0.03), xycoords=("data", "axes fraction"),
                xytext=(-4, 0), textcoords="offset points", ha="right", va="bottom", color=diagrams.MUTED)
    diff = s["max_abs_loss_diff"]
    ax.set(xlabel="step", ylabel="training loss",
           title=f"Resumed = uninterrupted (largest difference {f'{diff:.1e}' if diff else '0'})")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "checkpoint_resume")


# ------------------------------------------------------------------------------ part data
def repeated_data(d: dict, es: dict, plots_dir: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.5))
    steps = [c["step"] for c in es["curve"]]
    a1.plot(steps, [c["train_loss"] for c in es["curve"]], "o-", color=plotting.color("train"), label="training loss")
    a1.plot(steps, [c["val_loss"] for c in es["curve"]], "o-", color=plotting.color("val"), label="validation loss")
    a1.axvline(es["best_step"], color=plotting.color("val"), lw=1, ls=":")
    a1.annotate(f"best: step {es['best_step']}", (es["best_step"], es["best_val"]), xytext=(0, 14),
                textcoords="offset points", ha="center", va="bottom", color=plotting.color("val"))
    if es["stopped_at"]:
        a1.axvline(es["stopped_at"], color=diagrams.MUTED, lw=1, ls="--")
        a1.annotate(f"early stop: step {es['stopped_at']}\n(patience {es['patience']})", (es["stopped_at"], 1),
                    xycoords=("data", "axes fraction"), xytext=(4, -4), textcoords="offset points", va="top",
                    color=diagrams.MUTED)
    a1.set(xlabel="step", ylabel="loss (nats/char)", title=f"{es['train_chars']:,} training characters")
    plotting.log_axis(a1, "y")
    a1.legend(loc="lower left")
    for i, (k, v) in enumerate((k, v) for k, v in d.items() if isinstance(v, dict) and "eval_loss" in v):
        a2.plot(_smooth(v["train_loss"]), color=BOOK[i], label=f"{k}: held-out {v['eval_loss']:.2f}")
    a2.set(xlabel="step", ylabel="training loss (10-step mean)",
           title=f"Same tokens, {d['unique_in_repeated']} distinct\nstories (x20) or fresh ones")
    a2.legend(loc="upper right")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "repeated_data")


def synthetic_vs_real(sv: dict, plots_dir: Path) -> Path:
    """Left: loss on held-out English and on held-out wood along training, per mix. Right: final losses."""
    fig = plt.figure(figsize=(10, 7.4), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1.25, 1])
    runs = sv["runs"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(runs)))
    for row, (key, label) in enumerate((("english", "held-out English"), ("wood", "held-out wood"))):
        ax = fig.add_subplot(grid[row, 0])
        for (name, x), col in zip(runs.items(), colors):
            ax.plot(x["curve"]["step"], x["curve"][key], "o-", ms=3.5, color=col, label=name)
        ax.set(xlabel="training step" if row else "", ylabel="loss (nats/char)", title=f"scored on {label}")
        plotting.label_lines(ax)
    final = fig.add_subplot(grid[:, 1])
    f = [100 * x["wood_fraction"] for x in runs.values()]
    for key, label, col in (("english", "on English", BOOK[0]), ("wood", "on the wood", BOOK[2])):
        final.plot(f, [x["final"][key] for x in runs.values()], "o-", color=col, label=label)
    final.set(xlabel="% of training rows from the wood", ylabel="final loss (nats/char)", title="final loss vs mix")
    final.legend(loc="upper center")
    fig.suptitle(f"Synthetic (wood) vs real (English) text: model {tuple(sv['size'])}, {sv['steps']} steps")
    return plotting.save_fig(fig, plots_dir, "synthetic_vs_real")


def noise(nz: dict, plots_dir: Path) -> Path:
    """Every model on every held-out set: grouped bars, the clean floor dashed."""
    fig, ax = plt.subplots(figsize=(9.6, 4.8))
    runs, scored = nz["runs"], nz["scored_on"]
    width = 0.8 / len(scored)
    for j, s in enumerate(scored):
        vals = [x["scored"][s] for x in runs]
        bars = ax.bar(np.arange(len(runs)) + (j - (len(scored) - 1) / 2) * width, vals, width, color=BOOK[j],
                      label=f"scored on {s} stories")
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom",
                    fontsize=plotting.MIN_FONT_PT - 1)
    plotting.entropy_floor(ax, nz["floor_nats_per_char"], label="clean floor")
    ax.set_xticks(np.arange(len(runs)), [f"trained on\n{x['name']}" for x in runs])
    ax.set_xlim(-0.5, len(runs) - 0.5 + 0.7)                  # room at the right for the floor's label
    ax.set(ylabel="nats/char on held-out stories", title="Noise injection: every model on every kind of text")
    ax.set_ylim(0, 1.4 * max(v for x in runs for v in x["scored"].values()))
    ax.legend(loc="upper center", ncol=len(scored), fontsize=plotting.MIN_FONT_PT - 1)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "noise_injection")


if __name__ == "__main__":
    cli.visualize_main(draw)
