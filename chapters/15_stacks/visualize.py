"""Redraw chapter 15's figures from its saved results (never re-measures).

    uv run chapters/15_stacks/visualize.py            # default results -> visualizations/plots/15_stacks/
    uv run chapters/15_stacks/visualize.py --quick    # the --quick run's results
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, diagrams, plotting

# Okabe-Ito hues, one per stack (shared.plotting has no "stack" family yet)
COLOR = {"pytorch": "#0072B2", "hf": "#E69F00", "deepspeed": "#009E73", "llama.cpp": "#D55E00", "vllm": "#CC79A7"}
MARKER = {"pytorch": "o", "hf": "s", "deepspeed": "^", "llama.cpp": "D", "vllm": "P"}
LABEL = {"pytorch": "PyTorch", "hf": "HF generate()", "deepspeed": "DeepSpeed", "llama.cpp": "llama.cpp",
         "vllm": "vLLM"}


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    return [plotting.save_fig(pipeline_diagram(r), plots_dir, "stacks_pipeline"),
            draw_sweeps(r, plots_dir), draw_overview(r, plots_dir)]


def stack_order(r: dict) -> list[str]:
    return ["pytorch"] + [s for s in r["config"]["stacks"] if s != "pytorch"]


def status(r: dict, stack: str) -> tuple[bool, str]:
    """(ran in this run?, a short line saying where, or why not)."""
    if any(row["stack"] == stack for row in r["stacks"]):
        return True, f"ran here\n({r['meta']['device']})"
    why = next((s["why"] for s in r["skipped"] if s["stack"] == stack), "not tried")
    short = "no CUDA GPU" if "CUDA" in why else "not installed" if "not installed" in why else "unavailable"
    return False, f"not run:\n{short}"


# ============================================================================ the mechanism
# Where each stack puts the pieces of one generation: (text, distinctive?) per column.
PIPELINE = {
    "pytorch": [("workbook\ntokenizer", False), ("you stack\nB rows", False), ("workbook GPT\nfp32", False),
                ("KVCache: one\nbuffer/layer", False), ("Python loop,\nargmax", False)],
    "hf": [("ids in (or\nAutoTokenizer)", False), ("padded batch\n+ mask", False), ("HF Llama\nfp32", False),
           ("DynamicCache,\ngrows", True), ("generate():\nprocessors", True)],
    "deepspeed": [("ids in", False), ("you stack\nB rows", False), ("wrapped;\nfused on GPU", True),
                  ("workbook\nKVCache", False), ("same Python\nloop", False)],
    "llama.cpp": [("inside the\nGGUF (C++)", True), ("one sequence\nat a time", False),
                  ("GGUF: F32 here\nQ4/Q8 (ch 14)", True), ("C++ cache\n(f32 here)", False),
                  ("compiled C++\ngraph", True)],
    "vllm": [("skipped:\nids in", False), ("continuous\nbatching", True), ("fp32 here\n(fp16, AWQ)", False),
             ("paged: blocks\n+ block table", True), ("GPU step\nloop", False)],
}
COLUMNS = ("tokenizer", "batching", "weights", "KV cache", "decode loop")


def pipeline_diagram(r: dict):
    """One prompt through each stack: where the tokenizer, the batching, the (quantized) weights and
    the KV cache sit, and which stacks ran in these results (dashed: did not run)."""
    order = [s for s in stack_order(r) if s in PIPELINE]
    row_h, top, foot = 0.92, 0.75, 0.7
    height = top + row_h * len(order) + foot
    fig, ax = diagrams.canvas(9.8, height)   # 9.8 in: 11 pt text shows at >= 9 pt
    xs = [2.3 + 1.66 * i for i in range(len(COLUMNS))]
    for x, title in zip(xs, COLUMNS):
        ax.text(x, height - 0.3, title, ha="center", va="center", fontsize=diagrams.FONT + 1, fontweight="bold",
                color=diagrams.TEXT)
    for i, stack in enumerate(order):
        y = height - top - row_h * (i + 0.5)
        ran, line = status(r, stack)
        ax.text(0.1, y + 0.2, LABEL[stack], ha="left", va="center", fontsize=diagrams.FONT + 1, fontweight="bold",
                color=COLOR[stack])
        ax.text(0.1, y - 0.12, line, ha="left", va="center", fontsize=diagrams.FONT, linespacing=1.1,
                color=diagrams.TEXT if ran else diagrams.HIGHLIGHT)
        boxes = []
        for x, (text, distinctive) in zip(xs, PIPELINE[stack]):
            b = diagrams.box(ax, (x, y), 1.46, 0.7, text, color=COLOR[stack] if distinctive else None, name=stack)
            if not ran:
                b.patch.set_linestyle("--")
            boxes.append(b)
        for a, b in zip(boxes, boxes[1:]):
            diagrams.arrow(ax, a.right, b.left)
    ax.text(0.1, foot / 2, "One prompt, left to right: text → token ids → batch → forward pass → cache → next token.\n"
            "Coloured: what sets the stack apart.  Dashed: did not run for these results.", ha="left", va="center",
            fontsize=diagrams.FONT, color=diagrams.TEXT, linespacing=1.3)
    return fig


# ============================================================================ measurements
def _points(row: dict, sweep: str, x: str, y: str):
    pts = [(m[x], m[y]) for m in row[sweep] if m.get(y) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def draw_sweeps(r: dict, plots_dir: Path) -> Path:
    """Tokens/s against batch size (top); time to first token and per-token latency against prompt length."""
    cfg = r["config"]
    fig, axes = plt.subplot_mosaic([["batch", "batch"], ["ttft", "decode"]], figsize=(10, 7.6), layout="constrained")
    for row in r["stacks"]:
        s = row["stack"]
        style = dict(color=COLOR.get(s, "0.3"), marker=MARKER.get(s, "o"), lw=2, ms=7, label=LABEL.get(s, s))
        axes["batch"].plot(*_points(row, "batch_sweep", "batch", "tokens_per_s"), **style)
        axes["ttft"].plot(*_points(row, "context_sweep", "context", "ttft_ms"), **style)
        axes["decode"].plot(*_points(row, "context_sweep", "context", "per_token_ms"), **style)
    plotting.log_axis(axes["batch"], "y")
    axes["batch"].set_xscale("log", base=2)
    axes["batch"].set_xticks(cfg["batch_sizes"], [str(b) for b in cfg["batch_sizes"]])
    axes["batch"].set_xlim(min(cfg["batch_sizes"]) / 1.3, max(cfg["batch_sizes"]) * 2.5)   # room for the labels
    axes["batch"].set(xlabel="batch size (sequences decoded together)", ylabel="generated tokens / s",
                      title=f"Throughput vs batch size (prompt {r['base_context']} tokens)")
    plotting.label_lines(axes["batch"])
    for key, what in (("ttft", "time to first token (ms)"), ("decode", "ms per new token (decode)")):
        axes[key].set_ylim(bottom=0)   # linear from zero: a flat line reads as flat
        axes[key].set_xticks(cfg["contexts"])
        axes[key].set(xlabel="prompt length (tokens), batch 1", ylabel=what)
    axes["ttft"].set_title("Time to first token vs prompt")
    axes["decode"].set_title("Per-token latency vs prompt")
    not_run = ", ".join(f"{LABEL.get(s['stack'], s['stack'])} (not run)" for s in r["skipped"])
    one_seq = [LABEL[row["stack"]] for row in r["stacks"] if any(m.get("skipped") for m in row["batch_sweep"])]
    notes = [f"{', '.join(one_seq)}: batch 1 only"] if one_seq else []
    fig.suptitle(f"{r['model']['name']} ({r['model']['params'] / 1e6:.2f}M params), greedy, {cfg['new_tokens']} new "
                 f"tokens, median of {cfg['repeats']}\n{r['meta']['machine']}, device {r['meta']['device']}"
                 + (f"; {not_run}" if not_run else "") + (f"; {notes[0]}" if notes else ""))
    return plotting.save_fig(fig, plots_dir, "sweeps")


def draw_overview(r: dict, plots_dir: Path) -> Path:
    """Per stack tried: startup (import + load), memory, batch-1 latency, and logit distance to PyTorch.
    Stacks that did not run keep their row, with the reason written in it."""
    order = stack_order(r)
    by = {row["stack"]: row for row in r["stacks"]}
    y = np.arange(len(order))
    fig, axes = plt.subplots(2, 2, figsize=(10, 1.1 * len(order) + 3.6), layout="constrained", sharey=True)
    (start, mem), (lat, par) = axes

    def bars(ax, values, **kw):
        return ax.barh(y, [v if v is not None else 0 for v in values], color=[COLOR.get(s, "0.5") for s in order],
                       **kw)

    def val(s, *path):
        v = by.get(s)
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return v

    imp = [val(s, "import_s") or 0.0 for s in order]
    bars(start, imp, alpha=0.45)
    bars(start, [val(s, "load_s") for s in order], left=imp)
    start.set(xlabel="seconds", title="Startup: import (light) + load (dark)")
    imp_mb = [val(s, "import_rss_mb") or 0.0 for s in order]
    bars(mem, imp_mb, alpha=0.45)
    bars(mem, [val(s, "peak_mem_mb") for s in order], left=imp_mb)
    kind = r["stacks"][0]["mem_kind"]
    mem.set(xlabel=f"MB ({kind})", title="Memory: import (light) + load (dark)")

    mid = {s: next((m for m in by[s]["context_sweep"] if m["context"] == r["base_context"]), {}) if s in by else {}
           for s in order}
    ttft = [mid[s].get("ttft_ms") for s in order]
    per_token = [mid[s].get("per_token_ms") for s in order]
    lat.barh(y - 0.2, [v or np.nan for v in ttft], height=0.4, color=[COLOR.get(s, "0.5") for s in order], alpha=0.45)
    lat.barh(y + 0.2, [v or np.nan for v in per_token], height=0.4, color=[COLOR.get(s, "0.5") for s in order])
    plotting.log_axis(lat, "x")
    lat.set(xlabel=f"ms (batch 1, prompt {r['base_context']})", title="First token (light), per token (dark)")

    eps = float(np.finfo(np.float32).eps)
    diffs = [val(s, "parity", "max_abs_logit_diff") for s in order]
    par.barh(y, [max(d, 1e-9) if d else 0 for d in diffs], color=[COLOR.get(s, "0.5") for s in order])
    par.axvline(eps, ls="--", color=plotting.color("floor"), lw=1.2)
    par.annotate("float32 epsilon", xy=(eps, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                 textcoords="offset points", ha="left", va="top", color=plotting.color("floor"))
    par.set_xscale("log")
    par.set_xlim(1e-9, 1)
    par.set_xticks([1e-8, 1e-6, 1e-4, 1e-2, 1], ["1e-8", "1e-6", "1e-4", "0.01", "1"])
    par.set(xlabel=f"max |Δlogit| (GPT-2 folder: {r['gpt2']['max_abs_logit_diff']:.0e})",
            title="Logits vs PyTorch's")
    for yi, s, d in zip(y, order, diffs):
        if s in by and s != "pytorch":
            text = "n/a (no logits)" if d is None else ("exactly 0" if d == 0 else f"{d:.1e}")
            par.annotate(text, xy=(max(d or 0, 1e-9), yi), xytext=(4, 0), textcoords="offset points", va="center")
        elif s == "pytorch":
            par.annotate("the reference", xy=(1e-9, yi), xytext=(4, 0), textcoords="offset points", va="center")

    for ax in (start, mem, lat, par):   # say it in the row, not only in the notes
        for yi, s in zip(y, order):
            if s not in by:
                ax.annotate(status(r, s)[1], xy=(0, yi), xycoords=("axes fraction", "data"), xytext=(4, 0),
                            textcoords="offset points", va="center", color=diagrams.HIGHLIGHT)
    start.set_yticks(y, [LABEL.get(s, s) for s in order])
    lat.set_yticks(y, [LABEL.get(s, s) for s in order])
    start.invert_yaxis()
    return plotting.save_fig(fig, plots_dir, "overview")


if __name__ == "__main__":
    cli.visualize_main(draw)
