"""Redraw chapter 14's figures from its saved results (never retrains), and its mechanism diagram.

    uv run chapters/14_quantization/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import quantizers as Q
from shared import cli, diagrams, plotting


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    return [plotting.save_fig(quantization_diagram(), plots_dir, "quantization_diagram"),
            draw_error_vs_bits(r, plots_dir), draw_histograms(r, plots_dir), draw_loss_vs_bits(r, plots_dir),
            draw_awq_vs_rtn(r, plots_dir), draw_qat(r, plots_dir)]


# ----------------------------------------------------------------------------- the mechanism
EXAMPLE_ROW = torch.tensor([[0.12, -0.31, 0.05, 0.44, -0.08, 0.02, 0.93, -0.15]])


def _cells(ax, x0, y, values, fmt, color, w=0.5, h=0.36, name=None, highlight=()):
    """A row of boxed numbers starting at x0; returns the boxes."""
    return [diagrams.box(ax, (x0 + i * w + w / 2, y), w, h, fmt(v),
                         color=diagrams.HIGHLIGHT if i in highlight else color, rounding=0.03, name=name)
            for i, v in enumerate(values)]


def quantization_diagram():
    """Top: one weight row → groups of 4 → each group's scale and zero point → 4-bit codes → dequantized.
    Bottom: AWQ multiplies the weight column that meets a loud activation channel by s and folds 1/s
    into the previous layer (the RMSNorm gain), so the float function is unchanged."""
    spec = Q.QuantSpec(4, symmetric=False, group=4)
    qt = Q.quantize(EXAMPLE_ROW, spec)
    deq = Q.dequantize(qt)[0].tolist()
    w = EXAMPLE_ROW[0].tolist()
    fig, ax = diagrams.canvas(10, 5.6)
    blue, green = plotting.color("int8"), plotting.color("awq")
    ax.text(0.15, 5.4, "Round to nearest, zero-point int4, groups of 4 (quantizers.py)", fontsize=diagrams.FONT + 2,
            fontweight="bold", va="center")
    y_w, y_s, y_q, y_d = 4.65, 3.95, 3.25, 2.55
    for y, text in ((y_w, "weight row"), (y_q, "4-bit codes\n(0..15, stored)"),
                    (y_d, "dequantized ŵ")):
        ax.text(0.15, y, text, fontsize=diagrams.FONT, va="center")
    for k in range(2):
        x0, mark = 1.45 + k * 4.3, ({1, 2} if k else set())
        ws = w[4 * k: 4 * k + 4]
        _cells(ax, x0, y_w, ws, lambda v: f"{v:+.2f}", blue, highlight=mark)
        diagrams.frame(ax, (x0 - 0.08, y_w - 0.28, x0 + 2.08, y_w + 0.58), f"group {k + 1}")
        s, z = float(qt.scale[0, k]), int(qt.zero[0, k])
        diagrams.box(ax, (x0 + 1.0, y_s), 3.9, 0.42, f"scale = ({max(ws):+.2f} − ({min(ws):+.2f})) / 15 = {s:.3f},"
                     f"  zero = {z}", color=diagrams.NEUTRAL_EDGE)
        diagrams.arrow(ax, (x0 + 1.0, y_w - 0.28), (x0 + 1.0, y_s + 0.21))
        diagrams.arrow(ax, (x0 + 1.0, y_s - 0.21), (x0 + 1.0, y_q + 0.18), label="q = round(w / scale) + zero",
                       label_pos="right")
        _cells(ax, x0, y_q, qt.q[0, 4 * k: 4 * k + 4].tolist(), lambda v: f"{int(v)}", green, highlight=mark)
        _cells(ax, x0, y_d, deq[4 * k: 4 * k + 4], lambda v: f"{v:+.2f}", blue, highlight=mark)
        diagrams.arrow(ax, (x0 + 1.0, y_q - 0.18), (x0 + 1.0, y_d + 0.18), label="ŵ = (q − zero) · scale",
                       label_pos="right")
    ax.text(5.75, 2.05, "+0.02 shares its group with +0.93: the step is 0.072, so it comes back as 0.00 —\n"
            "one large number costs its whole group precision (smaller groups, AWQ and clipping fight this)",
            fontsize=diagrams.FONT, ha="center", va="center", color=diagrams.HIGHLIGHT)
    # AWQ: scale the columns that meet loud activations up by s, fold 1/s into the previous layer
    ax.text(0.15, 1.45, "AWQ: input channel c is 30× louder, so errors in W's column c cost 30× more (awq.py)",
            fontsize=diagrams.FONT + 2, fontweight="bold", va="center")
    norm = diagrams.box(ax, (1.35, 0.7), 2.3, 0.8, "RMSNorm, gain γ ÷ s\n(1/s folded in here)", color=green)
    lin = diagrams.box(ax, (5.0, 0.7), 2.9, 0.8, "W · diag(s): column c × s_c,\nthen round to nearest", color=green)
    out = diagrams.box(ax, (8.55, 0.7), 2.5, 0.8, "y = W·diag(s)·(x / s) = W x\n(the same function in float)",
                       color=diagrams.NEUTRAL_EDGE)
    diagrams.arrow(ax, norm.right, lin.left, label="x / s")
    diagrams.arrow(ax, lin.right, out.left)
    ax.text(5.0, 0.08, "s = mean|x|^α per input channel, α searched on calibration text; free at run time",
            fontsize=diagrams.FONT, ha="center", va="center")
    return fig


# ----------------------------------------------------------------------------- measurements
def draw_error_vs_bits(r, plots_dir):
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for scheme in dict.fromkeys(row["scheme"] for row in r["error_vs_bits"]):
        rows = [row for row in r["error_vs_bits"] if row["scheme"] == scheme]
        ax.plot([x["bits"] for x in rows], [x["rel_rms_error"] for x in rows], "o-", ms=4, label=scheme)
    plotting.log_axis(ax, "y")
    ax.set(xlabel="bits per weight (codes only)", ylabel="relative RMS error ‖W − Ŵ‖ / ‖W‖",
           title=f"Rounding error on one matrix ({r['histograms']['weight_name'].removesuffix('.weight')})")
    plotting.label_lines(ax)
    return plotting.save_fig(fig, plots_dir, "error_vs_bits")


def draw_histograms(r, plots_dir):
    h = r["histograms"]
    fig, axes = plotting.grid(4, ncols=2, panel_size=(5.0, 3.4))
    panels = [(h["weight"], f"weights: {h['weight_name'].removesuffix('.weight')}")] + [
        (h[m]["activation"], f"{m} model: input of {h[m]['activation_name'].removeprefix('blocks.')}")
        for m in ("plain", "planted")]
    for ax, (d, title) in zip(axes[:3], panels):
        edges = np.array(d["edges"])
        ax.bar(edges[:-1], np.maximum(d["counts"], 0.8), width=np.diff(edges), align="edge",
               color=plotting.color("int8"))
        ax.set_yscale("log")
        for k in (-3, 3):
            ax.axvline(k * d["std"], color=diagrams.HIGHLIGHT, ls="--", lw=1)
        ax.set(title=title, xlabel=f"value (dashed: ±3σ; max |x| = {d['max_abs'] / d['std']:.0f}σ)", ylabel="count")
        ax.title.set_fontsize(11)
    ax = axes[3]
    for m, color in (("planted", diagrams.HIGHLIGHT), ("plain", plotting.color("int8"))):   # plain on top
        ch = np.sort(np.array(h[m]["channel_mean_abs"]))[::-1]
        ax.plot(np.arange(1, len(ch) + 1), ch / np.median(ch), color=color, label=f"{m} model")
    plotting.log_axis(ax, "y")
    ax.set(xlabel="input channels, loudest first", ylabel="mean |x| / median channel",
           title="how loud the loudest channels are")
    ax.title.set_fontsize(11)
    plotting.label_lines(ax)
    fig.suptitle("Weights are bell-shaped; activations have heavy tails and a few loud channels")
    return plotting.save_fig(fig, plots_dir, "histograms")


def _short(method: str) -> str:
    return (method.replace("RTN ", "").replace(" absmax", " abs").replace(" zero-point", " zp")
            .replace("W8A8 (int8 weights + int8 activations)", "W8A8 (int8 activations too)")
            .replace("bitsandbytes ", "bnb ").replace("ours int4 absmax, blocks of 64", "ours int4 abs, blocks of 64"))


def _cost_rows(r: dict) -> list[tuple]:
    """(name, bits per weight, plain model's loss - fp32, planted model's loss - fp32 or None)."""
    rows = [(row["method"], row["bits_per_weight"], row["vs_fp32"], planted["vs_fp32"])
            for row, planted in zip(r["ptq"]["plain"][1:], r["ptq"]["planted"][1:])]
    bnb = {(row["model"], row["method"]): row for row in r["bitsandbytes"]["rows"]}
    for (model, method), row in bnb.items():
        if model == "plain":
            rows.append((method, row["bits_per_weight"], row["vs_fp32"], bnb[("planted", method)]["vs_fp32"]))
    fp32 = r["gguf"]["rows"][0]["nats_per_char_readback"]
    rows += [(f"GGUF {g['type']}", g["bits_per_weight"], g["nats_per_char_readback"] - fp32, None)
             for g in r["gguf"]["rows"][1:]]
    return sorted(rows, key=lambda row: -row[1])


def draw_loss_vs_bits(r, plots_dir):
    """What each format costs (loss above fp32, nats/char) on both models, against the fp32 model's
    own distance to the floor: a cost is small or large compared with that."""
    rows = _cost_rows(r)
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    for k, (model, color) in enumerate((("plain", plotting.color("int8")), ("planted", diagrams.HIGHLIGHT))):
        vals = [row[2 + k] if row[2 + k] is not None else np.nan for row in rows]
        bars = ax.barh(y + (0.2 - 0.4 * k), vals, height=0.4, color=color,
                       label=f"{model} model" + (f" ({r['planted']['factor']:g}× activation outliers)" if k else ""))
        plotting.mark_zero_bars(ax, [b for b, v in zip(bars, vals) if v == 0])
    gap = r["fp32"] - r["floor"]
    ax.axvline(gap, color=plotting.color("entropy-floor"), ls="--", lw=1.5)
    ax.annotate(f"fp32's distance\nto the floor = {gap:.3f}", xy=(gap, 0.5), xycoords=("data", "axes fraction"),
                xytext=(-4, 0), textcoords="offset points", ha="right", va="center", fontsize=11)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, [f"{_short(name)} · {bits:.3g} b/w" for name, bits, _, _ in rows])
    ax.set(xlabel="loss above fp32 (nats / character, held-out stories)",
           title="What each format costs, next to fp32's distance to the floor")
    ax.legend(loc="lower right")
    return plotting.save_fig(fig, plots_dir, "loss_vs_size")


def draw_awq_vs_rtn(r, plots_dir):
    """Left: loss above fp32 for RTN, AWQ with scales only and full AWQ, per (model, format), with ±2
    standard errors of the paired AWQ − RTN difference. Right: the scale search on calibration text."""
    a = r["awq_vs_rtn"]
    fig, axes = plotting.grid(2, ncols=2, panel_size=(5.2, 4.4))
    ax = axes[0]
    labels = [f"{row['model']}\nint{row['bits']} {row['granularity']}" for row in a["rows"]]
    xs = np.arange(len(labels))
    series = [("rtn_vs_fp32", "round to nearest", plotting.color("rtn"), None),
              ("awq_scales_only_vs_fp32", "AWQ, scales only", plotting.color("awq"), "//"),
              ("awq_vs_fp32", "AWQ, scales + clipping", plotting.color("awq"), None)]
    for j, (key, label, color, hatch) in enumerate(series):
        ax.bar(xs + (j - 1) * 0.27, [row[key] for row in a["rows"]], width=0.27, color=color, label=label,
               hatch=hatch, edgecolor="white" if hatch else None)
    for x, row in zip(xs, a["rows"]):
        ax.errorbar(x + 0.27, row["awq_vs_fp32"], yerr=2 * row["awq_minus_rtn_se"], color="k", capsize=3, lw=1)
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(xs, labels, fontsize=11)
    ax.set(ylabel="loss − fp32, same stories (nats/char)", title=f"AWQ vs RTN on {a['stories']} stories")
    ax.legend(loc="upper left")
    ax = axes[1]
    for name, curves in r["awq_search"].items():
        c = np.array(curves)
        rel = np.exp(np.log(c / c[:, :1]).mean(0))
        ax.plot(np.arange(c.shape[1]) / c.shape[1], rel, label=name,
                color=plotting.color("awq") if name.startswith("planted") else plotting.color("int8"),
                ls="-" if "int4" in name else "--", lw=2 if "channel" in name else 1.4)
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    plotting.log_axis(ax, "y")
    ax.set(xlabel="α in s = mean|x|^α (α = 0 is RTN)", ylabel="module output error / RTN's",
           title="the scale search (calibration text)")
    ax.legend(fontsize=11, loc="lower left")
    return plotting.save_fig(fig, plots_dir, "awq_vs_rtn")


def draw_qat(r, plots_dir):
    q = r["qat"]
    rows = sorted(q["rows"], key=lambda x: x["bits"])
    bits = [x["bits"] for x in rows]
    steps = r["config"]["qat_steps"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    series = (("rtn", "round to nearest", plotting.color("rtn"), "o-"),
              ("rtn_after_fp32_finetune", f"fp32 + {steps} steps, then RTN", plotting.color("rtn"), "v--"),
              ("qat", f"QAT ({steps} steps through the quantizer)", plotting.color("qat"), "^-"))
    for key, label, color, style in series:
        ax.plot(bits, [x[key] for x in rows], style, color=color, label=label)
    ax.axhline(r["fp32"], color=plotting.color("fp32"), lw=1, ls=":", label="fp32")
    ax.axhline(q["fp32_control"], color=plotting.color("fp16"), lw=1, ls="-.", label=f"fp32 + {steps} steps")
    plotting.entropy_floor(ax, r["floor"], "floor")
    ax.set_xticks(bits)
    ax.set(xlabel=f"bits per weight (zero-point, group {r['config']['group_size']})", ylabel="nats / character",
           title="Training through the quantizer (plain model)")
    ax.legend(fontsize=11)
    return plotting.save_fig(fig, plots_dir, "qat")


if __name__ == "__main__":
    cli.visualize_main(draw)
