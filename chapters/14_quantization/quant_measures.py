"""How the chapter measures a quantized model: loss story by story (so two models can be compared on
the same stories, with a standard error), stored bits per weight, the rounding error of one matrix,
and how loud each linear's input channels are.

    nats, chars, kept = per_story(model, tok, stories, device)       # one number per story
    diff, se = paired_difference(nats_awq, nats_rtn, chars)          # nats/char, and its standard error
"""
from __future__ import annotations

import numpy as np
import torch

import awq
import quantizers as Q
from quantizers import QuantSpec
from shared import bench
from shared.evaluate import story_loss, story_nats


def quality(model, tok, stories, device) -> float:
    """Nats per character on whole held-out stories."""
    return story_loss(model, tok, stories, device)["model_nats_per_char"]


def per_story(model, tok, stories, device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Summed nats and characters PER STORY (as `story_loss` scores them), and the indices of
    the stories kept: per-story numbers let two models be compared story by story."""
    nats, kept = story_nats(model, tok, stories, device)
    return nats, torch.tensor([len(stories[j].text) for j in kept], dtype=torch.float64), kept


def paired_difference(a: torch.Tensor, b: torch.Tensor, chars: torch.Tensor) -> tuple[float, float]:
    """(a - b) in nats/char over the same stories, and its standard error from the spread of the
    per-story differences (a ratio estimate: sum d_i / sum c_i). Differences within ~2 standard
    errors are what another draw of stories could erase."""
    d = a - b
    mean = float(d.sum() / chars.sum())
    n = len(d)
    se = float(((d - mean * chars).pow(2).sum() * n / max(n - 1, 1)).sqrt() / chars.sum())
    return mean, se


def weight_bits(model, spec: QuantSpec | None) -> float:
    """Stored bits per weight of the quantized linears, scales and zeros included."""
    if spec is None:
        return 32.0
    n = sum(lin.weight.numel() for _, lin in Q.quantizable(model))
    state = Q.packed_state(model, spec)
    stored = sum(v.numel() * v.element_size() for k, v in state.items() if k.endswith((".codes", ".scale", ".zero")))
    return 8 * stored / n


def error_vs_bits(w: torch.Tensor, group: int) -> list[dict]:
    """Relative RMS error of every quantizer at every bit width, and the rounding bound."""
    schemes = [QuantSpec(8, True, "tensor"), QuantSpec(8, True, "channel"), QuantSpec(8, True, group),
               QuantSpec(8, False, "channel"), QuantSpec(8, False, group)]
    rows = []
    for base in schemes:
        for bits in range(2, 9):
            spec = QuantSpec(bits, base.symmetric, base.group)
            qt = Q.quantize(w, spec)
            err = (Q.dequantize(qt) - w).abs()
            rows.append({"scheme": spec.label.split(" ", 1)[1], "bits": bits,
                         "rel_rms_error": float(err.pow(2).mean().sqrt() / w.pow(2).mean().sqrt()),
                         "max_err_over_half_scale": float((err / (Q.element_scale(qt) / 2)).max())})
    return rows


def outlier_report(inputs: dict[str, torch.Tensor]) -> list[dict]:
    """Per linear input: how far the biggest channel sits above the typical one, and how many
    of the 127 int8 levels a typical value gets when one scale per token covers them all."""
    rows = []
    for name, x in inputs.items():
        if not name.endswith(("q_proj", "o_proj", "gate_proj", "down_proj")):
            continue  # k/v share q's input, up shares gate's
        ch = x.abs().mean(dim=0)
        per_token_max = x.abs().amax(dim=1)
        levels = (127 * x.abs().median(dim=1).values / per_token_max.clamp(min=1e-8)).median()
        rows.append({"input_of": name, "channels": x.shape[1],
                     "max_over_median_channel": float(ch.max() / ch.median()),
                     "kurtosis": float(((x - x.mean()) ** 4).mean() / x.var() ** 2),
                     "int8_levels_used_by_median_value": float(levels)})
    return rows


def histogram(t: torch.Tensor, bins: int = 80) -> dict:
    t = t.detach().float().flatten().cpu()
    counts, edges = np.histogram(t.numpy(), bins=bins)
    return {"counts": counts.tolist(), "edges": edges.tolist(), "std": float(t.std()), "max_abs": float(t.abs().max())}


def int8_matmul_speed(device, shapes) -> list[dict]:
    """fp32 matmul vs torch._int_mm (int8 x int8 -> int32), same shapes, this CPU/GPU."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for m, k, n in shapes:
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        a8 = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        b8 = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int8)
        a, b, a8, b8 = (t.to(device) for t in (a, b, a8, b8))
        t32 = bench.time_fn(lambda: a @ b, device, warmup=2, repeat=7, min_time=0.2)
        # CPU builds may ship only a slow reference int8 kernel: few repeats, no min_time
        t8 = bench.time_fn(lambda: torch._int_mm(a8, b8), device, warmup=1, repeat=3)
        rows.append({"m": m, "k": k, "n": n, "fp32_ms": t32 * 1e3, "int8_ms": t8 * 1e3, "int8_speedup": t32 / t8,
                     "fp32_gflops": 2 * m * k * n / t32 / 1e9, "int8_gops": 2 * m * k * n / t8 / 1e9})
    return rows


def awq_vs_rtn(model, spec: QuantSpec, calib, grid: int, score, fp32_nats, chars) -> tuple[dict, object, dict]:
    """RTN, AWQ with scales only and full AWQ (scales + clipping) of `model`, each scored story by story
    (`score(model)` -> nats per story) against fp32 and against each other. Returns the row, the
    AWQ-scaled float model and AWQ's search report."""
    rtn = score(Q.quantize_model(model, spec))
    scaled, _ = awq.apply_awq(model, calib, spec, grid=grid, clip=False)
    only = score(Q.quantize_model(scaled, spec))
    folded, report = awq.apply_awq(model, calib, spec, grid=grid)
    full = score(Q.quantize_model(folded, spec))
    row = {"rtn_vs_fp32": paired_difference(rtn, fp32_nats, chars)[0],
           "awq_scales_only_vs_fp32": paired_difference(only, fp32_nats, chars)[0],
           "awq_vs_fp32": paired_difference(full, fp32_nats, chars)[0]}
    row["awq_minus_rtn"], row["awq_minus_rtn_se"] = paired_difference(full, rtn, chars)
    row["module_error_ratio"] = sum(r["awq_error"] / r["rtn_error"] for r in report["scales"]) / len(report["scales"])
    return row, folded, report
