"""Redraw chapter 06's plots from its results JSON (never recomputes anything).

    uv run chapters/06_kv_cache/visualize.py            # the default run's results
    uv run chapters/06_kv_cache/visualize.py --quick    # a quick run's results
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullFormatter

from shared import cli, plotting
from shared.results import load_json

CHAPTER = "06_kv_cache"
# cell states in the hit/miss grids
FUTURE, OUT, HIT, MISS = 0, 1, 2, 3
STATE_COLORS = ["#ffffff", "#d9d9d9", "#4c9be8", "#f28e2b"]
STATE_NAMES = ["not yet generated", "not in cache (evicted)", "K/V reused from cache (hit)",
               "K/V computed this step (miss)"]


def show(token: str) -> str:
    """A character as it reads on a plot: spaces and newlines made visible."""
    return {" ": "␣", "\n": "\\n"}.get(token, repr(token)[1:-1])


# ----------------------------------------------------------------------------- speed
def plot_speed(res: dict, out: Path) -> None:
    rows = res["speed"]["rows"]
    n = np.array([r["new_tokens"] for r in rows])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for key, label, marker in (("uncached_s", "no cache (re-run whole prefix)", "o"),
                               ("cached_s", "KV cache (kvcache.py)", "s"),
                               ("shared_generate_cached_s", "KV cache (shared GPT.generate)", "^"),
                               ("rolling_s", f"rolling cache, {res['speed']['ring_size']} rows", "d")):
        ax1.plot(n, [r[key] for r in rows], marker=marker, label=label)
    ax1.set(xscale="log", yscale="log", xlabel="new tokens generated", ylabel="seconds for the whole generation",
            title="Generation time")
    ax1.legend(fontsize=8)
    ax2.plot(n, [r["speedup"] for r in rows], "o-", lw=2.2, label="measured speedup (wall time)")
    ax2.plot(n, [r["flop_ratio"] for r in rows], "--", label="FLOP ratio (if compute-bound)")
    ax2.plot(n, [r["token_pass_ratio"] for r in rows], ":", label="token-pass ratio (≈ n/2)")
    claim = [(c, c / 10) for c in (100, 1000) if n.min() <= c <= n.max()]
    if claim:
        ax2.scatter(*zip(*claim), marker="x", s=80, color="black", zorder=5, label="the often-quoted ≈n/10")
    ax2.axhline(1, color="grey", lw=0.8)
    for r in rows:
        ax2.annotate(f"{r['speedup']:.1f}×", (r["new_tokens"], r["speedup"]), textcoords="offset points",
                     xytext=(4, -12), fontsize=8)
    ax2.set(xscale="log", yscale="log", xlabel="new tokens generated", ylabel="uncached time / cached time",
            title="Speedup from the cache")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{res['meta']['machine']} · {res['meta']['device']} · prompt {res['speed']['prompt_tokens']} tokens",
                 fontsize=9)
    plotting.save_fig(fig, out, "speedup")


def plot_step_latency(res: dict, out: Path) -> None:
    steps = res["speed"]["step_ms"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels = {"uncached": "no cache: step i re-reads i tokens", "cached": "full KV cache: one new row per step",
              "rolling": f"rolling cache ({res['speed']['ring_size']} rows): constant work"}
    for name, ms in steps.items():
        if ms:
            ms = np.asarray(ms)
            smooth = np.convolve(ms, np.ones(9) / 9, mode="valid") if len(ms) > 20 else ms
            ax.plot(np.arange(len(smooth)) + (len(ms) - len(smooth)) // 2, smooth, label=labels.get(name, name))
    ax.set(yscale="log", xlabel="decode step (new token index)", ylabel="ms per step (9-step moving average)",
           title="Latency of each new token")
    ax.legend(fontsize=8)
    plotting.save_fig(fig, out, "step_latency")


# ----------------------------------------------------------------------------- memory
def plot_memory(res: dict, out: Path) -> None:
    mem = res["memory"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    rows = mem["measured_peak"]
    for i, kv in enumerate(sorted({r["n_kv_head"] for r in rows}, reverse=True)):
        sub = [r for r in rows if r["n_kv_head"] == kv]
        t = np.array([r["tokens"] for r in sub])
        color = f"C{i}"
        ax1.plot(t, [r["formula_MiB"] for r in sub], "-", color=color,
                 label=f"formula, {kv} KV head{'s' if kv > 1 else ''}")
        ax1.plot(t, [r["process_peak_growth_MiB"] for r in sub], "o", color=color, ms=7, mfc="none",
                 label="measured process growth" if i == 0 else None)
        ax1.plot(t, [r["tensor_MiB"] for r in sub], "x", color=color, label="measured tensor bytes" if i == 0 else None)
    shape = mem["peak_shape"]
    ax1.set(xscale="log", yscale="log", xlabel="tokens in the cache", ylabel="MiB (fp32)",
            title=f"Cache memory: {shape['n_layer']} layers, {shape['n_head']} heads × "
                  f"{shape['d_model'] // shape['n_head']} dims")
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.legend(fontsize=8)
    real = mem["real_models"]
    ctx_keys = [k for k in real[0] if k.startswith("GiB_at_")]
    x = np.arange(len(real))
    width = 0.8 / len(ctx_keys)
    for j, key in enumerate(ctx_keys):
        vals = [r[key] for r in real]
        bars = ax2.bar(x + (j - (len(ctx_keys) - 1) / 2) * width, vals, width, label=key.replace("GiB_at_", "") + " tokens")
        ax2.bar_label(bars, fmt="%.3g", fontsize=6, rotation=90, padding=2)
    ax2.set_xticks(x, [r["model"].replace(" (", "\n(").replace(", ", ",\n").replace(" + ", "\n+ ") for r in real],
                   fontsize=7)
    ax2.set(yscale="log", ylabel="GiB per sequence (fp16)", title="The formula on published shapes (arithmetic)")
    ax2.legend(fontsize=8, title="context")
    plotting.save_fig(fig, out, "memory")


# ----------------------------------------------------------------------------- hits and misses
def state_grid(steps: list[dict], n: int) -> np.ndarray:
    """(step, position) -> FUTURE / OUT / HIT / MISS."""
    grid = np.full((len(steps), n), FUTURE)
    for s, st in enumerate(steps):
        grid[s, :st["query"] + 1] = OUT
        grid[s, st["reused"]] = HIT
        grid[s, st["computed"]] = MISS
    return grid


def draw_grid(ax, grid: np.ndarray, tokens: list[str], title: str, upto: int | None = None) -> None:
    shown = grid.copy()
    if upto is not None:
        shown[upto + 1:] = FUTURE
    ax.imshow(shown, cmap=ListedColormap(STATE_COLORS), vmin=0, vmax=3, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(tokens)), [show(t) for t in tokens], fontsize=8, family="monospace")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xticks(np.arange(-0.5, len(tokens)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(grid)), minor=True)
    ax.grid(which="minor", color="white", lw=0.5)
    ax.grid(which="major", visible=False)
    ax.tick_params(which="minor", length=0)
    ax.set_ylabel("step (query position)")
    misses = int((grid == MISS).sum())
    ax.set_title(f"{title}: {misses} K/V rows computed", fontsize=10)


def plot_hit_miss(res: dict, out: Path) -> None:
    tr = res["trace"]
    tokens, steps = tr["tokens"], tr["steps"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), sharey=True)
    for ax, (name, st) in zip(axes.flat, steps.items()):
        draw_grid(ax, state_grid(st, len(tokens)), tokens, name)
    fig.legend(handles=[Patch(color=c, label=l) for c, l in zip(STATE_COLORS[1:], STATE_NAMES[1:])],
               loc="lower center", ncol=3, frameon=False)
    fig.suptitle("Which keys/values each step computes (orange) and reuses (blue)", fontweight="bold")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    plotting.save_fig(fig, out, "hit_miss")


def plot_ring(res: dict, out: Path) -> None:
    """The physical rows of the two rolling caches: which token each row holds at each step."""
    tr = res["trace"]
    tokens = tr["tokens"]
    # the rolling caches: a fixed number of rows at every step (the full cache grows by one per step)
    rolling = {k: v for k, v in tr["steps"].items()
               if v and v[0]["slots"] and len({len(st["slots"]) for st in v}) == 1 and len(v[0]["slots"]) < len(tokens)}
    fig, axes = plt.subplots(1, len(rolling), figsize=(6.5 * len(rolling), 6.5), squeeze=False)
    for ax, (name, steps) in zip(axes[0], rolling.items()):
        slots = np.array([st["slots"] for st in steps])          # (step, row) -> text position
        state = np.where(slots < 0, FUTURE, HIT)
        for s, st in enumerate(steps):
            state[s, list(st["slots"]).index(st["query"])] = MISS
        ax.imshow(state, cmap=ListedColormap(STATE_COLORS), vmin=0, vmax=3, aspect="auto", interpolation="nearest")
        for (s, r), p in np.ndenumerate(slots):
            if p >= 0:
                ax.text(r, s, f"{show(tokens[p])}{p}", ha="center", va="center", fontsize=6, family="monospace")
        ax.set(xlabel="cache row", ylabel="step", title=name)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xticks(range(slots.shape[1]))
        ax.grid(False)
    fig.suptitle("Ring buffer rows: token+position each row holds (orange: written this step)", fontweight="bold")
    fig.tight_layout()
    plotting.save_fig(fig, out, "ring_buffer")


def animate_hit_miss(res: dict, out: Path) -> None:
    tr = res["trace"]
    tokens, steps = tr["tokens"], tr["steps"]
    grids = {name: state_grid(st, len(tokens)) for name, st in steps.items()}
    fig, axes = plt.subplots(len(grids), 1, figsize=(9, 1.25 * len(grids) + 1.2))
    n_steps = len(next(iter(grids.values())))

    def update(i):
        for ax, (name, grid) in zip(axes, grids.items()):
            ax.clear()
            row = grid[i:i + 1]
            ax.imshow(row, cmap=ListedColormap(STATE_COLORS), vmin=0, vmax=3, aspect="auto", interpolation="nearest")
            for p, t in enumerate(tokens[:i + 1]):
                ax.text(p, 0, show(t), ha="center", va="center", fontsize=8, family="monospace")
            ax.set_yticks([])
            ax.set_xticks([])
            ax.grid(False)
            ax.set_title(f"{name}: {int((row == MISS).sum())} computed, {int((row == HIT).sum())} reused",
                         fontsize=9, loc="left")
        fig.suptitle(f"step {i}: predicting the token after position {i}", fontsize=10)

    fig.legend(handles=[Patch(color=c, label=l) for c, l in zip(STATE_COLORS[1:], STATE_NAMES[1:])],
               loc="lower center", ncol=3, frameon=False, fontsize=7)
    fig.subplots_adjust(hspace=0.6, bottom=0.1)
    plotting.save_animation(fig, update, n_steps, out, "hit_miss", fps=3)


# ----------------------------------------------------------------------------- long text
def plot_long_text(res: dict, out: Path) -> None:
    lt = res["long_text"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    smooth = 64 if len(next(iter(lt["nll"].values()))) > 600 else 16
    for name in lt["names"]:
        v = np.asarray(lt["nll"][name])
        ma = np.convolve(v, np.ones(smooth) / smooth, mode="valid")
        ax1.plot(np.arange(len(ma)) + smooth // 2, ma, label=name, lw=1.4)
    ax1.axvline(lt["block_size"], color="black", ls=":", lw=1)
    ax1.annotate("trained length", (lt["block_size"], 1), xycoords=("data", "axes fraction"),
                 xytext=(3, -12), textcoords="offset points", fontsize=8)
    ax1.axvline(lt["cache_size"], color="grey", ls=":", lw=1)
    ax1.annotate("cache full", (lt["cache_size"], 1), xycoords=("data", "axes fraction"),
                 xytext=(3, -24), textcoords="offset points", fontsize=8, color="grey")
    plotting.entropy_floor(ax1, lt["floor_nats_per_char"], label="corpus entropy")
    ax1.set(yscale="log", xlabel="position in the long text (chars)", ylabel=f"loss, nats/char ({smooth}-char mean)",
            title="Reading a long text through a bounded cache")
    ax1.legend(fontsize=7)
    key = [k for k in lt["summary"][0] if k.endswith("+")][0]
    names = [r["variant"] for r in lt["summary"]]
    vals = [r[key] for r in lt["summary"]]
    bars = ax2.barh(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
    ax2.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax2.set_yticks(range(len(names)), [n.replace(", ", ",\n") for n in names], fontsize=7)
    ax2.invert_yaxis()
    ax2.axvline(lt["floor_nats_per_char"], color="black", ls="--", lw=1)
    ax2.set(xscale="log", xlabel="mean nats/char", title=key.replace("nats/char, ", "beyond the trained length: "))
    ax2.xaxis.set_minor_formatter(NullFormatter())   # log-axis minor labels would pile up
    fig.tight_layout()
    plotting.save_fig(fig, out, "long_text_loss")


def plot_sink_attention(res: dict, out: Path) -> None:
    lt = res["long_text"]
    att = np.asarray(lt["first_token_attention"])     # (layers, heads)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * att.shape[1], 1.2 + 0.6 * att.shape[0]))
    im = ax.imshow(att, cmap="magma", vmin=0, vmax=max(att.max(), 1e-3))
    for (l, h), v in np.ndenumerate(att):
        ax.text(h, l, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < att.max() / 2 else "black")
    q0, q1 = lt["from_query"], lt["block_size"] - 1
    uniform = np.mean([1 / (q + 1) for q in range(q0, q1 + 1)])
    ax.set(xlabel="head", ylabel="layer",
           title=f"Attention on token 0 ('\\n'), queries {q0}..{q1}\n(uniform attention would give {uniform:.3f})")
    ax.set_xticks(range(att.shape[1]))
    ax.set_yticks(range(att.shape[0]))
    ax.grid(False)
    fig.colorbar(im, ax=ax, shrink=0.8)
    plotting.save_fig(fig, out, "sink_attention")


def draw(results_path: Path, plots_dir: Path, animations_dir: Path) -> None:
    results_path = Path(results_path)
    res = load_json(results_path)
    plotting.use_style()
    plot_speed(res, plots_dir)
    plot_step_latency(res, plots_dir)
    plot_memory(res, plots_dir)
    plot_hit_miss(res, plots_dir)
    plot_ring(res, plots_dir)
    plot_long_text(res, plots_dir)
    plot_sink_attention(res, plots_dir)
    animate_hit_miss(res, animations_dir)


if __name__ == "__main__":
    def _main():
        run = cli.setup(cli.parser(CHAPTER, __doc__), header=False)
        draw(run.results_path, run.plots_dir, run.animations_dir)

    cli.run_main(_main)
