"""Redraw chapter 06's figures from its saved results (never recomputes anything).

    uv run chapters/06_kv_cache/visualize.py            # the default run's results
    uv run chapters/06_kv_cache/visualize.py --quick    # a quick run's results
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.patches import Patch, Rectangle

from shared import cli, diagrams, plotting

# cell states in the hit/miss grids
ROLLING, SINKS, ORACLE = "#56B4E9", "#CC79A7", "#7F7F7F"   # chapter-only concepts: Okabe-Ito sky, purple, grey
FUTURE, OUT, HIT, MISS, SINK = 0, 1, 2, 3, 4
STATE_COLORS = ["#ffffff", "#d9d9d9", plotting.color("cached"), plotting.color("uncached"), SINKS]
STATE_NAMES = ["not yet generated", "evicted (not in the cache)", "K/V read from the cache (hit)",
               "K/V computed this step (miss)", "sink row (pinned, read every step)"]
LOSS_COLORS = {"full attention": plotting.color("uncached"), "window only": ROLLING,
               "sinks, cache positions": SINKS, "sinks, text positions": "#882255", "recompute window": ORACLE}
FORMAT = {32: "fp32", 8: "int8", 4: "int4"}


def show(token: str) -> str:
    """A character as it reads on a plot: spaces and newlines made visible."""
    return {" ": "␣", "\n": "↵"}.get(token, token)


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    paths = [plotting.save_fig(diagram(r), plots_dir, "kv_cache_diagram"), draw_speed(r, plots_dir),
             draw_step_latency(r, plots_dir), draw_memory(r, plots_dir), draw_quantized(r, plots_dir),
             draw_hit_miss(r, plots_dir), draw_ring(r, plots_dir), draw_long_text(r, plots_dir),
             draw_sink_attention(r, plots_dir)]
    if animations_dir is not None:
        paths.append(animate_hit_miss(r, animations_dir))
    return paths


# ----------------------------------------------------------------------------- the mechanism
def _cache_rows(ax, x, y, rows, states, label, cell=0.34, texts=None):
    """A column of cache rows (one per token), coloured by state: 'new', 'read', 'sink', 'empty'."""
    fill = {"new": plotting.color("uncached"), "read": plotting.color("cached"), "sink": SINKS, "empty": "white"}
    for i, state in enumerate(states):
        ax.add_patch(Rectangle((x, y + (rows - 1 - i) * cell), 0.9, cell, facecolor=diagrams.tint(fill[state], 0.45),
                               edgecolor=diagrams.NEUTRAL_EDGE, lw=1))
        if texts:
            ax.text(x + 0.45, y + (rows - 1 - i + 0.5) * cell, texts[i], ha="center", va="center",
                    fontsize=diagrams.FONT, color=diagrams.TEXT)
    ax.text(x + 0.45, y + rows * cell + 0.08, label, ha="center", va="bottom", fontsize=diagrams.FONT)


def diagram(r: dict):
    """Prefill vs decode, what one cache row holds, and the ring buffer with sink slots."""
    m = r["model"]
    fig, ax = diagrams.canvas(10, 6.9)
    # --- prefill: the prompt in one pass, every row written
    diagrams.frame(ax, (0.1, 3.55, 4.9, 6.8), "prefill: the prompt, one pass")
    toks = [diagrams.box(ax, (0.55 + 0.5 * i, 4.1), 0.42, 0.42, c) for i, c in enumerate("Pooh")]
    net = diagrams.box(ax, (1.3, 5.2), 1.9, 0.6, f"model ({m['n_layer']} layers)")
    for t in toks:
        diagrams.arrow(ax, t.top, (t.x, net.y - net.h / 2))
    diagrams.arrow(ax, net.right, (3.05, 5.2), "K, V")
    _cache_rows(ax, 3.15, 4.1, 4, ["new"] * 4, "one layer's cache", texts=["P", "o", "o", "h"])
    ax.text(4.6, 4.1, "4 rows\nwritten", ha="center", va="bottom", fontsize=diagrams.FONT)
    # --- decode: one token, one new row, every row read
    diagrams.frame(ax, (5.1, 3.55, 9.9, 6.8), "decode: one new token per step")
    new = diagrams.box(ax, (5.55, 4.1), 0.42, 0.42, "␣", highlight=True)
    net2 = diagrams.box(ax, (6.3, 5.2), 1.9, 0.6, "model (1 token)")
    diagrams.arrow(ax, new.top, (new.x, net2.y - net2.h / 2))
    diagrams.arrow(ax, net2.right, (8.05, 5.2), "K, V")
    _cache_rows(ax, 8.15, 4.1, 5, ["read"] * 4 + ["new"], "cache", texts=["P", "o", "o", "h", "␣"])
    ax.text(9.55, 4.6, "1 new,\n4 read", ha="center", va="bottom", fontsize=diagrams.FONT)
    diagrams.arrow(ax, (8.6, 6.1), (net2.x, net2.y + net2.h / 2), via=[(8.6, 6.3), (net2.x, 6.3)],
                   color=plotting.color("cached"))
    ax.text((8.6 + net2.x) / 2, 6.33, "attention reads every row", ha="center", va="bottom", fontsize=diagrams.FONT)
    ax.legend(handles=[Patch(facecolor=diagrams.tint(plotting.color("uncached"), 0.45), label="computed (miss)"),
                       Patch(facecolor=diagrams.tint(plotting.color("cached"), 0.45), label="read back (hit)"),
                       Patch(facecolor=diagrams.tint(SINKS, 0.45), label="sink (pinned)")],
              loc="upper center", bbox_to_anchor=(0.5, 0.515), ncol=3, frameon=False, fontsize=diagrams.FONT)
    # --- one row: what the cache stores per layer / head / token
    hd, kv, layers = m["head_dim"], m["n_kv_head"], m["n_layer"]
    int8 = next((q for q in r["quantized"]["rows"] if q["bits"] == 8), None)
    ax.text(0.15, 3.1, "per token, the cache stores:", ha="left", va="center", fontsize=diagrams.FONT,
            fontweight="bold")
    diagrams.tensor(ax, (1.3, 2.45), f"K: {kv} heads × {hd}", rows=2, cols=8, cell=0.11, color=plotting.color("cached"))
    diagrams.tensor(ax, (3.1, 2.45), f"V: {kv} heads × {hd}", rows=2, cols=8, cell=0.11, color=plotting.color("cached"))
    lines = f"× {layers} layers  →  2 × {layers} × {kv} × {hd} × 4 B = {2 * layers * kv * hd * 4:,} B in fp32"
    if int8:
        lines += f"\n(int8 codes + one fp16 scale per head: {int8['bytes_per_token']:,.0f} B)"
    ax.text(4.1, 2.45, lines, ha="left", va="center", fontsize=diagrams.FONT, linespacing=1.4)
    # --- the ring buffer with sink slots
    size, sinks, p = 8, 2, 13
    ax.text(0.15, 1.55, f"ring buffer, {size} rows, {sinks} sinks, after token {p}: "
            f"token p → row {sinks} + (p − {sinks}) mod {size - sinks}", ha="left", va="center",
            fontsize=diagrams.FONT, fontweight="bold")
    holds = list(range(sinks)) + [None] * (size - sinks)
    for q in range(sinks, p + 1):
        holds[sinks + (q - sinks) % (size - sinks)] = q
    for row, q in enumerate(holds):
        state = "sink" if row < sinks else "new" if q == p else "read"
        x = 1.0 + row * 0.95
        ax.add_patch(Rectangle((x, 0.55), 0.85, 0.6, facecolor=diagrams.tint(
            {"sink": SINKS, "new": plotting.color("uncached"), "read": plotting.color("cached")}[state], 0.45),
            edgecolor=diagrams.NEUTRAL_EDGE, lw=1.2))
        ax.text(x + 0.425, 0.85, f"t{q}", ha="center", va="center", fontsize=diagrams.FONT)
        ax.text(x + 0.425, 0.4, f"row {row}", ha="center", va="center", fontsize=diagrams.FONT, color=diagrams.MUTED)
    oldest = holds.index(p - (size - sinks) + 1)
    diagrams.arrow(ax, (1.0 + oldest * 0.95 + 0.425, 0.05), (1.0 + oldest * 0.95 + 0.425, 0.35))
    ax.text(1.0 + oldest * 0.95 + 0.6, 0.1, "next write (oldest)", ha="left", va="center", fontsize=diagrams.FONT)
    return fig


# ----------------------------------------------------------------------------- speed
def draw_speed(r, plots_dir):
    rows, claim = r["speed"]["rows"], r["popular_claim"]
    n = np.array([row["new_tokens"] for row in rows])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    for key, label, color, style in (("uncached_s", "no cache", plotting.color("uncached"), "o-"),
                                     ("cached_s", "KV cache", plotting.color("cached"), "s-"),
                                     ("shared_generate_s", "shared generate", plotting.color("cached"), "^:"),
                                     ("rolling_s", f"ring, {r['speed']['ring_size']} rows", ROLLING, "d--")):
        ax1.plot(n, [row[key] for row in rows], style, color=color, label=label)
    plotting.log_axis(ax1, "x")
    plotting.log_axis(ax1, "y")
    ax1.set(xlabel="new tokens generated", ylabel="seconds, whole generation", title="Generation time")
    ax1.legend(loc="upper left")
    ax2.plot(n, [row["token_pass_ratio"] for row in rows], ":", color="0.35", label="token-pass ratio")
    ax2.plot(n, [row["flop_ratio"] for row in rows], "--", color="0.55", label="FLOP ratio")
    ax2.plot(n, [row["speedup"] for row in rows], "o-", color=plotting.color("cached"), lw=2.5, label="measured")
    ax2.axhline(claim["quoted_speedup"], color="0.2", lw=1)
    ax2.annotate(f"the often-quoted ~{claim['quoted_speedup']}×", (0.02, claim["quoted_speedup"]),
                 xycoords=("axes fraction", "data"), xytext=(0, 4), textcoords="offset points", va="bottom")
    for row in rows[-2:]:
        ax2.annotate(f"{row['speedup']:.1f}×", (row["new_tokens"], row["speedup"]), xytext=(0, -14),
                     textcoords="offset points", ha="center", va="top", color=plotting.color("cached"))
    ax2.axhline(1, color="0.6", lw=0.8)
    plotting.log_axis(ax2, "x")
    plotting.log_axis(ax2, "y")
    ax2.set(xlabel="new tokens generated", ylabel="uncached time / cached time", title="Speed-up from the cache")
    plotting.label_lines(ax2)
    return plotting.save_fig(fig, plots_dir, "speedup")


def draw_step_latency(r, plots_dir):
    labels = {"uncached": ("no cache: step i re-reads i tokens", plotting.color("uncached")),
              "cached": ("full KV cache: one new row per step", plotting.color("cached")),
              "rolling": (f"ring of {r['speed']['ring_size']} rows: constant work", ROLLING)}
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, (label, color) in labels.items():
        ms = np.asarray(r["speed"]["step_ms"].get(name, []))
        if len(ms):
            k = 9 if len(ms) > 20 else 1
            smooth = np.convolve(ms, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(smooth)) + k // 2, smooth, color=color, label=label)
    plotting.log_axis(ax, "y")
    ax.set(xlabel="decode step (new token index)", ylabel="ms per step (9-step mean)",
           title=f"Latency of each new token ({r['speed']['rows'][-1]['new_tokens']} new tokens)")
    ax.legend(loc="upper left")
    return plotting.save_fig(fig, plots_dir, "step_latency")


# ----------------------------------------------------------------------------- memory
def draw_memory(r, plots_dir):
    mem = r["memory"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.8), layout="constrained",
                                   gridspec_kw={"width_ratios": [1, 1.25]})
    rows = mem["measured_peak"]
    shades = {kv: a for kv, a in zip(sorted({x["n_kv_head"] for x in rows}, reverse=True), (1.0, 0.7, 0.45))}
    for kv, alpha in shades.items():
        sub = [x for x in rows if x["n_kv_head"] == kv]
        t = [x["tokens"] for x in sub]
        ax1.plot(t, [x["formula_MiB"] for x in sub], "-", color=plotting.color("fp32"), alpha=alpha,
                 label=f"{kv} KV head{'s' * (kv > 1)}")
        ax1.plot(t, [x["peak_growth_MiB"] for x in sub], "o", color=plotting.color("fp32"), alpha=alpha, mfc="none",
                 ms=8)
    plotting.log_axis(ax1, "x", base=2)
    plotting.log_axis(ax1, "y")
    layers, heads, d_model = mem["peak_shape"]
    ax1.set(xlabel="tokens in the cache", ylabel="MiB (fp32)",
            title=f"Line: formula. Circles: measured\n({layers} layers, {heads} heads × {d_model // heads})")
    plotting.label_lines(ax1)
    real = mem["real_models"]
    keys = [k for k in real[0] if k.startswith("GiB_at_")]
    y = np.arange(len(real))
    h = 0.8 / len(keys)
    for j, key in enumerate(keys):
        vals = [row[key] for row in real]
        bars = ax2.barh(y + (j - (len(keys) - 1) / 2) * h, vals, h, color=plotting.color("fp16"),
                        alpha=0.4 + 0.6 * j / max(1, len(keys) - 1), label=key.replace("GiB_at_", "") + " tokens")
        ax2.bar_label(bars, [plotting.plain_number(v) for v in vals], padding=2)
    ax2.set_yticks(y, [row["model"].replace(" (", "\n(") for row in real])
    ax2.invert_yaxis()
    plotting.log_axis(ax2, "x")
    ax2.set_xlim(right=ax2.get_xlim()[1] * 4)
    ax2.set(xlabel="GiB per sequence (fp16, arithmetic)", title="The formula on published shapes")
    ax2.legend(loc="lower right", title="context")
    return plotting.save_fig(fig, plots_dir, "memory")


def draw_quantized(r, plots_dir):
    """Bytes and speed for every format; the changes in logits and story loss for the quantized ones
    (fp32 is the reference they are measured against)."""
    rows = r["quantized"]["rows"]
    fig, axes = plotting.grid(4, ncols=2, panel_size=(5, 3.3))
    panels = (("bytes_per_token", "bytes per token (all layers)", "{:.0f}", rows),
              ("decode_ms_per_token", f"decode ms per token ({r['quantized']['decode_tokens']} tokens)", "{:.2f}",
               rows),
              ("max_abs_logit_change", "max |logit change| vs fp32", "{:.3g}", rows[1:]),
              ("story_loss_change", "story loss change vs fp32 (nats/char)", "{:+.1e}", rows[1:]))
    for ax, (key, title, fmt, shown) in zip(axes, panels):
        names = [FORMAT[q["bits"]] for q in shown]
        vals = [q[key] for q in shown]
        bars = ax.bar(names, vals, color=[plotting.color(name) for name in names], width=0.6)
        ax.bar_label(bars, [fmt.format(v) for v in vals], padding=2)
        ax.set_title(title)
        top = max(abs(v) for v in vals) or 1.0
        ax.set_ylim(min(0.0, -1.35 * top) if min(vals) < 0 else 0, 1.3 * top if max(vals) > 0 else 0.35 * top)
    formula = [q["formula_bytes_per_token"] for q in rows]
    axes[0].plot([FORMAT[q["bits"]] for q in rows], formula, "_", color="0.2", ms=38, mew=2.5, label="formula")
    axes[0].legend(loc="upper right")
    axes[3].axhline(0, color="0.3", lw=0.8)
    fig.suptitle(f"The same cache in 32, 8 and 4 bits ({r['quantized']['stories']} held-out stories)")
    return plotting.save_fig(fig, plots_dir, "quantized_cache")


# ----------------------------------------------------------------------------- hits and misses
def state_grid(steps: list[dict], n: int) -> np.ndarray:
    """(step, position) -> FUTURE / OUT / HIT / MISS."""
    grid = np.full((len(steps), n), FUTURE)
    for s, st in enumerate(steps):
        grid[s, :st["query"] + 1] = OUT
        grid[s, st["reused"]] = HIT
        grid[s, st["computed"]] = MISS
    return grid


def draw_grid(ax, grid: np.ndarray, tokens: list[str], title: str) -> None:
    ax.imshow(grid, cmap=ListedColormap(STATE_COLORS), vmin=0, vmax=4, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(0, len(tokens), 2), [show(t) for t in tokens[::2]], family="monospace")
    ax.set_yticks(range(0, len(grid), 8))
    ax.set_xticks(np.arange(-0.5, len(tokens)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(grid)), minor=True)
    ax.grid(which="minor", color="white", lw=0.5)
    ax.grid(which="major", visible=False)
    ax.tick_params(which="minor", length=0)
    ax.set_title(f"{title}: {int((grid == MISS).sum())} rows computed")


def draw_hit_miss(r, plots_dir):
    tokens, steps = r["trace"]["tokens"], r["trace"]["steps"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.4), sharey=True, layout="constrained")
    for ax, (name, st) in zip(axes.flat, steps.items()):
        draw_grid(ax, state_grid(st, len(tokens)), tokens, name)
    for ax in axes[:, 0]:
        ax.set_ylabel("decode step")
    for ax in axes[1]:
        ax.set_xlabel("text position (every other character shown)")
    fig.legend(handles=[Patch(color=c, label=lab) for c, lab in zip(STATE_COLORS[1:4], STATE_NAMES[1:4])],
               loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle("Which keys/values each step computes and which it reads back")
    return plotting.save_fig(fig, plots_dir, "hit_miss")


def draw_ring(r, plots_dir):
    """The physical rows of the two rolling caches (rows) at every step (columns): the text position
    each row holds; the row written at that step in the miss colour."""
    tr = r["trace"]
    rolling = {k: v for k, v in tr["steps"].items()   # a fixed number of rows (a full cache grows by one a step)
               if v and v[0]["slots"] and len({len(st["slots"]) for st in v}) == 1 and len(v[0]["slots"]) < len(v)}
    n_steps = len(tr["tokens"])
    fig, axes = plt.subplots(len(rolling), 1, figsize=(10, 1.0 + 2.6 * len(rolling)), squeeze=False,
                             layout="constrained")
    for ax, (name, steps) in zip(axes[:, 0], rolling.items()):
        slots = np.array([st["slots"] for st in steps]).T             # (row, step) -> text position
        state = np.where(slots < 0, FUTURE, HIT)
        n_sink = tr["sinks"] if "sinks" in name else 0
        state[:n_sink][slots[:n_sink] >= 0] = SINK
        for s, st in enumerate(steps):
            state[list(st["slots"]).index(st["query"]), s] = MISS
        ax.imshow(state, cmap=ListedColormap(STATE_COLORS), vmin=0, vmax=4, aspect="auto", interpolation="nearest")
        for (row, s), p in np.ndenumerate(slots):
            if p >= 0:
                ax.text(s, row, str(p), ha="center", va="center", fontsize=plotting.MIN_FONT_PT)
        ax.set_xticks(range(n_steps), [show(t) for t in tr["tokens"]], family="monospace")
        ax.set_yticks(range(slots.shape[0]))
        ax.set(ylabel="cache row", title=f"{name}: the text position each row holds")
        ax.grid(False)
    axes[-1, 0].set_xlabel("decode step (the character read at that step)")
    return plotting.save_fig(fig, plots_dir, "ring_buffer")


def animate_hit_miss(r, animations_dir):
    tokens, steps = r["trace"]["tokens"], r["trace"]["steps"]
    grids = {name: state_grid(st, len(tokens)) for name, st in steps.items()}
    fig, axes = plt.subplots(len(grids), 1, figsize=(9, 1.3 * len(grids) + 1.4))
    n_steps = len(next(iter(grids.values())))

    def update(i):
        for ax, (name, grid) in zip(axes, grids.items()):
            ax.clear()
            row = grid[i:i + 1]
            ax.imshow(row, cmap=ListedColormap(STATE_COLORS), vmin=0, vmax=4, aspect="auto", interpolation="nearest")
            for p, t in enumerate(tokens[:i + 1]):
                ax.text(p, 0, show(t), ha="center", va="center", family="monospace")
            ax.set_yticks([])
            ax.set_xticks([])
            ax.grid(False)
            ax.set_title(f"{name}: {int((row == MISS).sum())} computed, {int((row == HIT).sum())} read",
                         loc="left", fontsize=plotting.MIN_FONT_PT)
        fig.suptitle(f"step {i}: predicting the character after position {i}", fontsize=plotting.MIN_FONT_PT + 1)

    fig.legend(handles=[Patch(color=c, label=lab) for c, lab in zip(STATE_COLORS[1:4], STATE_NAMES[1:4])],
               loc="lower center", ncol=2, frameon=False)
    fig.subplots_adjust(hspace=0.7, bottom=0.2, top=0.88)
    return plotting.save_animation(fig, update, n_steps, animations_dir, "hit_miss", fps=3)


# ----------------------------------------------------------------------------- long text
def draw_long_text(r, plots_dir):
    lt = r["long_text"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7.6), layout="constrained",
                                   gridspec_kw={"height_ratios": [1.6, 1]})
    smooth = 64 if len(lt["nll"]["full attention"]) > 600 else 16
    for name, values in lt["nll"].items():
        ma = np.convolve(np.asarray(values), np.ones(smooth) / smooth, mode="valid")
        ax1.plot(np.arange(len(ma)) + smooth // 2, ma, label=name, lw=1.6, color=LOSS_COLORS[name],
                 ls="--" if name == "recompute window" else "-")
    for x, text, at in ((lt["block_size"], "trained length", 1), (lt["cache_size"], "cache full", 0.62)):
        ax1.axvline(x, color="0.4", ls=":", lw=1)
        ax1.annotate(text, (x, at), xycoords=("data", "axes fraction"), xytext=(3, -4), textcoords="offset points",
                     va="top", color="0.3")
    plotting.entropy_floor(ax1, lt["floor_nats_per_char"], "entropy floor")
    plotting.log_axis(ax1, "y")
    ax1.set(xlabel="position in the long text (characters)", ylabel=f"nats/char ({smooth}-char mean)",
            title=f"Reading {lt['chars']} characters through a bounded cache ({lt['cache_size']} rows, "
                  f"{lt['sinks']} sinks)")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, frameon=False)   # below: never on the data
    rows = lt["summary"]
    vals = [row["beyond"] for row in rows]
    bars = ax2.bar([row["variant"].replace(", ", ",\n") for row in rows], vals,
                   color=[LOSS_COLORS[row["variant"]] for row in rows])
    ax2.bar_label(bars, [f"{v:.3f}" for v in vals], padding=2)
    plotting.log_axis(ax2, "y")
    ax2.set_ylim(lt["floor_nats_per_char"] * 0.5, max(vals) * 3)
    ax2.set_xlim(-0.6, len(rows) + 0.9)                 # an empty slot on the right for the floor's label
    plotting.entropy_floor(ax2, lt["floor_nats_per_char"], "entropy floor")
    ax2.set(ylabel="nats/char", title=f"Mean loss beyond the trained length ({lt['block_size']}+)")
    return plotting.save_fig(fig, plots_dir, "long_text_loss")


def draw_sink_attention(r, plots_dir):
    lt = r["long_text"]
    ratio = np.asarray(lt["sink_ratio"])               # (layers, heads): attention on token 0 / uniform
    fig, ax = plt.subplots(figsize=(8.5, 1.6 + 0.65 * ratio.shape[0]), layout="constrained")
    logr = np.log2(np.clip(ratio, 1e-3, None))
    span = max(1.0, np.abs(logr).max())
    im = ax.imshow(logr, cmap="RdBu_r", norm=TwoSlopeNorm(0, -span, span), aspect="auto")
    for (layer, head), v in np.ndenumerate(ratio):
        ax.text(head, layer, f"{v:.1f}×", ha="center", va="center",
                color="white" if abs(logr[layer, head]) > 0.6 * span else "black")
    ax.set_xticks(range(ratio.shape[1]))
    ax.set_yticks(range(ratio.shape[0]))
    ax.set(xlabel="head", ylabel="layer",
           title=f"Attention on token 0 ('↵') ÷ uniform attention, queries {lt['from_query']}..{lt['block_size'] - 1}")
    ax.grid(False)
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    ticks = np.arange(-np.floor(span), np.floor(span) + 1)
    bar.set_ticks(ticks, labels=[f"{2 ** t:g}×" for t in ticks])
    bar.set_label("1× = uniform; red = sink")
    return plotting.save_fig(fig, plots_dir, "sink_attention")


if __name__ == "__main__":
    cli.visualize_main(draw)
