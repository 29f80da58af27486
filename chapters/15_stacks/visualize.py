"""15 · Stacks: redraw every plot from the saved results JSON (never re-measures).

    uv run chapters/15_stacks/visualize.py            # default results -> visualizations/plots/15_stacks/
    uv run chapters/15_stacks/visualize.py --quick    # the --quick run's results
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from shared import cli, plotting
from shared.results import load_json

CHAPTER = "15_stacks"
ORDER = ("pytorch", "hf", "deepspeed", "llama.cpp", "vllm", "exllamav2")
LABEL = {"pytorch": "PyTorch (workbook + KV cache)", "hf": "HF transformers generate()",
         "deepspeed": "DeepSpeed init_inference", "llama.cpp": "llama.cpp (F32 GGUF)",
         "vllm": "vLLM", "exllamav2": "ExLlamaV2"}
MARKER = {"pytorch": "o", "hf": "s", "deepspeed": "^", "llama.cpp": "D", "vllm": "P", "exllamav2": "X"}


def _colors(names):
    palette = plotting.sns.color_palette(plotting.PALETTE, len(ORDER))
    return {n: palette[ORDER.index(n) if n in ORDER else 0] for n in names}


def _load(results_path: Path) -> dict:
    return load_json(results_path)


def _plain_log_ticks(axis) -> None:
    """Log-scale ticks as plain numbers (20, 50, 100), no labels on minor ticks."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _points(row: dict, kind: str, x: str, y: str):
    pts = [(m[x], m[y]) for m in row[kind] if y in m and m[y] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def draw_sweeps(res: dict, plots_dir: Path) -> Path:
    """Tokens/s against batch size; time to first token and per-token latency against context."""
    rows, cfg = res["stacks"], res["config"]
    colors = _colors([r["stack"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for r in rows:
        s, style = r["stack"], dict(color=colors[r["stack"]], marker=MARKER.get(r["stack"], "o"), lw=2, ms=7)
        xs, ys = _points(r, "batch_sweep", "batch", "tokens_per_s")
        axes[0].plot(xs, ys, label=LABEL.get(s, s), **style)
        xs, ys = _points(r, "context_sweep", "context", "ttft_ms")
        axes[1].plot(xs, ys, label=LABEL.get(s, s), **style)
        xs, ys = _points(r, "context_sweep", "context", "per_token_ms")
        axes[2].plot(xs, ys, label=LABEL.get(s, s), **style)
    axes[0].set(xscale="log", yscale="log", xlabel="batch size (sequences decoded together)",
                ylabel="generated tokens / s (all sequences)",
                title=f"Throughput vs batch (prompt {res['base_context']} tokens)")
    axes[0].set_xticks(cfg["batch_sizes"], [str(b) for b in cfg["batch_sizes"]])
    axes[1].set(yscale="log", xlabel="prompt length (tokens)", ylabel="ms",
                title="Time to first token vs prompt (batch 1)")
    axes[2].set(yscale="log", xlabel="prompt length (tokens)", ylabel="ms per new token",
                title="Decode latency vs prompt (batch 1)")
    for ax in axes[1:]:
        ax.set_xticks(cfg["contexts"])
    for ax in axes:
        _plain_log_ticks(ax.yaxis)
    axes[0].legend(fontsize=8, loc="lower right")
    if any(m.get("skipped") for r in rows for m in r["batch_sweep"]):
        axes[0].set_xlabel("batch size (llama-cpp-python: batch 1 only, it decodes one sequence at a time)", fontsize=9)
    fig.suptitle(f"{res['model']['name']} ({res['model']['params'] / 1e6:.2f}M params) · greedy, "
                 f"{cfg['n_new']} new tokens, median of {cfg['repeats']} · {res['meta']['machine']}", fontsize=10)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "sweeps")


def draw_overview(res: dict, plots_dir: Path) -> Path:
    """Per stack: what it costs to bring in (import + load), memory, decode latency, and
    how far its logits are from the PyTorch reference."""
    rows = res["stacks"]
    names = [r["stack"] for r in rows]
    colors = [_colors(names)[n] for n in names]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 4, figsize=(16, 0.55 * len(rows) + 2.4), sharey=True)

    imp = [r["import_s"] or 0.0 for r in rows]
    load = [r["load_s"] for r in rows]
    axes[0].barh(y, imp, color=colors, alpha=0.45, label="import in a fresh process (on top of torch)")
    axes[0].barh(y, load, left=imp, color=colors, label="port model + load")
    axes[0].set(xlabel="seconds", title="Startup cost")
    axes[0].legend(fontsize=8, loc="lower right")

    imp_mb = [r["import_rss_mb"] or 0.0 for r in rows]
    axes[1].barh(y, imp_mb, color=colors, alpha=0.45, label="import")
    axes[1].barh(y, [r["peak_mem_mb"] for r in rows], left=imp_mb, color=colors,
                 label="load + first generation (peak)")
    axes[1].set(xlabel="MB", title=f"Memory ({rows[0]['mem_kind']})")
    axes[1].legend(fontsize=8, loc="lower right")

    # batch 1 at the middle prompt length: the context sweep always runs batch 1
    b1 = [next((m for m in r["context_sweep"] if m["context"] == res["base_context"] and "per_token_ms" in m), {})
          for r in rows]
    axes[2].barh(y - 0.2, [m.get("ttft_ms", 0) for m in b1], height=0.4, color=colors, alpha=0.45,
                 label="time to first token")
    axes[2].barh(y + 0.2, [m.get("per_token_ms", 0) for m in b1], height=0.4, color=colors, label="per new token")
    axes[2].set(xscale="log", xlabel=f"ms (batch 1, prompt {res['base_context']}, log scale)", title="Latency")
    _plain_log_ticks(axes[2].xaxis)
    axes[2].legend(fontsize=8, loc="lower right")

    diffs = [r["parity"]["max_abs_logit_diff"] for r in rows]
    shown = [max(d, 1e-9) if d is not None else np.nan for d in diffs]
    axes[3].barh(y, shown, color=colors)
    for yi, d in zip(y, diffs):
        txt = "n/a" if d is None else ("exactly 0" if d == 0 else f"{d:.1e}")
        axes[3].annotate(txt, xy=(1.2e-9 if d in (None, 0) else d, yi), xytext=(4, 0), textcoords="offset points",
                         va="center", fontsize=8)
    axes[3].axvline(np.finfo(np.float32).eps, ls="--", color="0.4", lw=1, label="float32 machine epsilon")
    axes[3].legend(fontsize=8, loc="upper right")
    gpt2 = res["gpt2"]["max_abs_logit_diff"]
    axes[3].set(xscale="log", xlim=(1e-9, 1), xlabel="max |logit - PyTorch logit|",
                title=f"Parity (GPT-2 load: {gpt2:.1e})")
    axes[0].set_yticks(y, [LABEL.get(n, n) for n in names])
    axes[0].invert_yaxis()
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "overview")


def draw(results_path, plots_dir, animations_dir=None) -> list[Path]:
    plotting.use_style()
    res = _load(results_path)
    return [draw_sweeps(res, plots_dir), draw_overview(res, plots_dir)]


if __name__ == "__main__":
    def _main(argv=None):
        run = cli.setup(cli.parser(CHAPTER, __doc__), argv, header=False)
        draw(run.results_path, run.plots_dir, run.animations_dir)

    cli.run_main(_main)
