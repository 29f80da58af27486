"""Redraw chapter 14's plots from its results JSON (never retrains).

    uv run chapters/14_quantization/visualize.py [--quick|--full] [--out DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from shared import cli, plotting  # noqa: E402
from shared.results import load_json  # noqa: E402


def load(results_path: Path) -> dict:
    return load_json(results_path)


def gap_axis(ax) -> None:
    """Log y when the values span a wide range (2-bit next to 8-bit), plain numbers otherwise."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo > 4:
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def error_vs_bits(r: dict, plots_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    schemes = list(dict.fromkeys(row["scheme"] for row in r["error_vs_bits"]))
    for scheme in schemes:
        rows = [row for row in r["error_vs_bits"] if row["scheme"] == scheme]
        ax.plot([x["bits"] for x in rows], [x["rel_rms_error"] for x in rows], "o-", label=scheme, ms=4)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (codes only)")
    ax.set_ylabel("relative RMS error  ‖W − Ŵ‖ / ‖W‖")
    ax.set_title(f"Round-to-nearest error on one matrix ({r['histograms']['weight_name']})")
    ax.legend(fontsize=8)
    ax.text(0.02, 0.03, "each extra bit halves the step: error ∝ 2^-bits\nfiner groups = smaller ranges = smaller steps",
            transform=ax.transAxes, fontsize=8, color="0.3")
    plotting.save_fig(fig, plots_dir, "error_vs_bits")


def loss_vs_size(r: dict, plots_dir: Path) -> None:
    """Loss ABOVE THE FLOOR vs file size: on a log axis the differences between formats show;
    plotted as raw loss they would all sit on one line far above the floor."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    gap = lambda loss: loss - r["floor"]  # noqa: E731
    markers = {"fp": "s", "int8": "o", "int4": "o", "int3": "o", "int2": "o", "W8A8": "^"}
    for i, row in enumerate(r["ptq"]):
        name = row["method"].replace("RTN ", "")
        kind = name.split()[0] if name.split()[0] in markers else "fp" if name.startswith("fp") else "W8A8"
        ax.scatter(row["bytes_on_disk"] / 1024, gap(row["nats_per_char"]), marker=markers.get(kind, "o"), s=45,
                   zorder=3, label=name, color=plt.cm.tab10(i % 10) if i < 10 else plt.cm.Set2(i % 8))
    gg = r["gguf"]["rows"]
    key = "nats_per_char_readback"   # same stories as the other points (llama.cpp's own scores: notes.md)
    ax.plot([g["file_bytes"] / 1024 for g in gg], [gap(g[key]) for g in gg], "D--", color="tab:purple", ms=6,
            label="GGUF F32/F16/Q8_0/Q4_0 (read back by gguf)")
    for g in gg:
        ax.annotate(g["type"], (g["file_bytes"] / 1024, gap(g[key])), fontsize=8, color="tab:purple",
                    xytext=(5, -10), textcoords="offset points")
    ax.axhline(gap(r["fp32"]), color="0.4", lw=0.8, ls=":")
    ax.annotate("fp32", xy=(1, gap(r["fp32"])), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                textcoords="offset points", ha="right", fontsize=8, color="0.4")
    ax.set_xscale("log")
    gap_axis(ax)
    ax.set_xlabel("file size on disk (KiB, log; embeddings and norms stay fp16)")
    ax.set_ylabel("loss above the exact floor (nats/char)")
    ax.set_title("Quality vs size: lower-left is better")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    plotting.save_fig(fig, plots_dir, "loss_vs_size")


def histograms(r: dict, plots_dir: Path) -> None:
    h = r["histograms"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in ((axes[0], "weight", h["weight_name"]), (axes[1], "activation", f"input of {h['activation_name']}")):
        d = h[key]
        edges = np.array(d["edges"])
        ax.bar(edges[:-1], np.maximum(d["counts"], 0.8), width=np.diff(edges), align="edge", color="tab:blue")
        ax.set_yscale("log")
        for k in (-3, 3):
            ax.axvline(k * d["std"], color="tab:red", ls="--", lw=0.8)
        ax.set_title(f"{key}s: {title}", fontsize=9)
        ax.set_xlabel(f"value (red: ±3σ; max |x| = {d['max_abs'] / d['std']:.1f}σ)")
        ax.set_ylabel("count (log)")
    ch = np.array(h["channel_mean_abs"])
    top = np.argsort(ch)[-3:]
    colors = ["tab:red" if i in top else "tab:blue" for i in range(len(ch))]
    axes[2].bar(range(len(ch)), ch, color=colors, width=1.0, linewidth=0)
    axes[2].axhline(np.median(ch), color="0.3", ls=":", lw=0.8, label="median channel")
    axes[2].set_title(f"mean |x| per input channel ({h['activation_name']})", fontsize=9)
    axes[2].set_xlabel("channel (red: the 3 largest — the ones AWQ protects)")
    axes[2].legend(fontsize=8)
    fig.suptitle("Weights are bell-shaped; activations have heavy tails and a few loud channels")
    plotting.save_fig(fig, plots_dir, "histograms")


def low_bits(r: dict, plots_dir: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    rows = sorted(r["low_bits"], key=lambda x: x["bits"])
    bits = [x["bits"] for x in rows]
    gap = lambda loss: loss - r["floor"]  # noqa: E731
    for key, label, style in (("rtn", "round to nearest (PTQ)", "o-"), ("awq", "AWQ (PTQ + activation-aware scales)", "s-"),
                              ("rtn_after_fp32_finetune", f"fp32 +{r['qat_steps']} steps, then RTN", "v--"),
                              ("qat", f"QAT ({r['qat_steps']} steps, STE)", "^-")):
        ax.plot(bits, [gap(x[key]) for x in rows], style, label=label)
    ax.axhline(gap(r["fp32"]), color="0.5", lw=0.8, ls=":", label="fp32 (unquantized)")
    ax.axhline(gap(r["fp32_control"]["nats_per_char"]), color="0.3", lw=0.8, ls="-.",
               label=f"fp32 + {r['qat_steps']} more steps (unquantized)")
    gap_axis(ax)
    ax.set_xticks(bits)
    ax.set_xlabel(f"bits per weight (zero-point, group {r['group_size']})")
    ax.set_ylabel("loss above the exact floor (nats/char)")
    ax.set_title("4 bits and below: what each method recovers")
    ax.legend(fontsize=8)
    ax = axes[1]
    for b, reports in sorted(r["awq"].items(), key=lambda kv: -int(kv[0])):
        curves = np.array([rep["curve"] for rep in reports])
        rel = curves / curves[:, :1]                     # each layer's error relative to RTN (alpha = 0)
        alphas = np.arange(curves.shape[1]) / curves.shape[1]
        ax.plot(alphas, np.exp(np.log(rel).mean(0)), label=f"{b}-bit (geometric mean over {len(reports)} layers)")
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("α in s = mean|x|^α  (α = 0 is RTN)")
    ax.set_ylabel("layer output MSE / RTN's")
    ax.set_title("AWQ's grid search on calibration activations")
    ax.legend(fontsize=8)
    plotting.save_fig(fig, plots_dir, "rtn_awq_qat")


def awq_vs_rtn(r: dict, plots_dir: Path) -> None:
    """Left: loss above fp32 for RTN and AWQ per (granularity, bits), with +-2 standard errors of
    the paired AWQ - RTN difference. Right: the scale search, module output error vs alpha."""
    a = r["awq_vs_rtn"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    labels = [f"int{row['bits']} {row['granularity']}" for row in a["rows"]]
    xs = np.arange(len(labels))
    series = [("rtn_vs_fp32", "round to nearest", "tab:blue"),
              ("awq_scales_only_vs_fp32", "AWQ scales only", "tab:olive"),
              ("awq_vs_fp32", "AWQ scales + clipping", "tab:orange")]
    for j, (key, label, color) in enumerate(series):
        vals = [row.get(key, np.nan) for row in a["rows"]]
        ax.bar(xs + (j - 1) * 0.27, vals, width=0.27, color=color, label=label)
    for x, row in zip(xs, a["rows"]):   # the AWQ bar's 2-SE range of the paired difference, drawn around it
        ax.errorbar(x + 0.27, row["awq_vs_fp32"], yerr=2 * row["awq_minus_rtn_se"], color="k", capsize=3, lw=1)
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(xs, labels)
    ax.set_ylabel("loss − fp32 on the same stories (nats/char)")
    ax.set_title(f"AWQ vs RTN on {a['stories']} held-out stories (bars: ±2 SE of AWQ − RTN)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    for name, rep in r["awq_search"].items():
        curves = np.array([x["curve"] for x in rep["scales"]])
        rel = curves / curves[:, :1]
        alphas = np.arange(curves.shape[1]) / curves.shape[1]
        ax.plot(alphas, np.exp(np.log(rel).mean(0)), label=name)
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("α in s = mean|x|^α  (α = 0 is RTN)")
    ax.set_ylabel("module output MSE / RTN's (geometric mean over groups)")
    ax.set_title("The scale search on calibration text", fontsize=10)
    ax.legend(fontsize=8)
    plotting.save_fig(fig, plots_dir, "awq_vs_rtn")


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> None:
    r = load(results_path)
    plotting.use_style()
    error_vs_bits(r, plots_dir)
    loss_vs_size(r, plots_dir)
    histograms(r, plots_dir)
    low_bits(r, plots_dir)
    awq_vs_rtn(r, plots_dir)
    print(f"plots: {plots_dir}")


def main(argv=None):
    p = cli.parser("14_quantization", __doc__)
    run = cli.setup(p, argv, header=False)
    draw(run.results_path, run.plots_dir, run.animations_dir)


if __name__ == "__main__":
    cli.run_main(main)
