"""Chapter 07's GPU part: check the Triton kernel against torch, then time it against
SDPA's flash backend and flash-attn (when installed). Imported by main.py only when CUDA
is there (this module imports triton through triton_attention)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from shared import bench, stacks
from shared.errors import StackMissing, self_check
from tiled_attention import attention_flops, full_attention, tiled_attention
from triton_attention import triton_attention


def check_kernel(device, seed: int) -> list[dict]:
    """Max |triton - reference| for fp32 (exact 'ieee' matmuls) and bf16, on shapes whose
    lengths are not multiples of the tiles, with and without causal/window masks. The
    reference is full attention in fp32 on the same (rounded) inputs."""
    g = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        for t, s, d in ((200, 200, 64), (77, 333, 128)):
            q = torch.randn(2, 4, t, d, device=device, generator=g).to(dtype)
            k, v = (torch.randn(2, 4, s, d, device=device, generator=g).to(dtype) for _ in range(2))
            for causal, window in ((False, None), (True, None), (True, 50)):
                ref = full_attention(q.float(), k.float(), v.float(), causal, window)
                err = (triton_attention(q, k, v, causal, window).float() - ref).abs().max().item()
                rows.append({"dtype": str(dtype).replace("torch.", ""), "T": t, "S": s, "d": d,
                             "mask": "window" if window else "causal" if causal else "none",
                             "max_abs_err": err, "tolerance": tol, "ok": err <= tol})
    bad = [r for r in rows if not r["ok"]]
    self_check(not bad, f"the Triton kernel disagrees with torch: {bad[0] if bad else ''}")
    return rows


def methods(flash_attn, window: int):
    """name -> (setup(q, k, v, causal) -> zero-arg callable). Setup does any re-layout
    outside the timed call."""
    def sdpa_flash(q, k, v, causal):
        def f():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f

    out = {
        "triton (this chapter)": lambda q, k, v, causal: (lambda: triton_attention(q, k, v, causal)),
        "SDPA flash backend": sdpa_flash,
        f"triton + window {window}": lambda q, k, v, causal: (
            (lambda: triton_attention(q, k, v, True, window)) if causal else None),
        "PyTorch tiled (this chapter)": lambda q, k, v, causal: (
            (lambda: tiled_attention(q, k, v, causal, None, 128, 128)) if q.shape[2] <= 8192 else None),
        "full (T x T scores)": lambda q, k, v, causal: (
            (lambda: full_attention(q, k, v, causal)) if q.shape[0] * q.shape[1] * q.shape[2] ** 2 * 2 * 3 < 2**34
            else None),
    }
    if flash_attn is not None:
        def fa(q, k, v, causal):
            qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # flash-attn wants (B, T, H, D)
            return lambda: flash_attn.flash_attn_func(qt, kt, vt, causal=causal)
        out["flash-attn"] = fa
    return out


def benchmark(device, sz, seed: int, dtype=torch.bfloat16) -> list[dict]:
    """Forward-pass time, TFLOP/s and peak memory per method and sequence length, causal and
    not, keeping batch x T = sz.gpu_tokens so every length does the same number of queries."""
    try:
        flash_attn = stacks.require("flash-attn")
    except StackMissing as e:
        stacks.skipped(e, "flash-attn in the GPU benchmark")
        flash_attn = None
    window = 512
    table = methods(flash_attn, window)
    rows = []
    jobs = [(t, causal, name) for t in sz.gpu_lengths for causal in (True, False) for name in table]
    g = torch.Generator(device=device).manual_seed(seed)
    for t, causal, name in tqdm(jobs, desc="GPU attention", leave=False):
        b, h, d = max(1, sz.gpu_tokens // t), sz.gpu_heads, sz.gpu_head_dim
        q, k, v = (torch.randn(b, h, t, d, device=device, generator=g, dtype=dtype) for _ in range(3))
        fn = table[name](q, k, v, causal)
        if fn is None:
            continue
        try:
            with bench.peak_memory(device) as mem:
                fn()
            seconds = bench.time_fn(fn, device, warmup=3, repeat=10, min_time=0.2)
        except (RuntimeError, torch.OutOfMemoryError) as e:   # e.g. SDPA: no flash kernel for this GPU
            rows.append({"method": name, "T": t, "causal": causal, "error": f"{type(e).__name__}: {str(e)[:120]}"})
            torch.cuda.empty_cache()
            continue
        win = window if "window" in name else None
        flops = attention_flops(b, h, t, t, d, causal or win is not None, win)
        rows.append({"method": name, "T": t, "batch": b, "causal": causal, "ms": seconds * 1e3,
                     "TFLOP/s": flops / seconds / 1e12, "peak_MiB": mem.bytes / 2**20})
        del q, k, v, fn
        torch.cuda.empty_cache()
    return rows


def run_all(device, sz, seed: int) -> dict:
    checks = check_kernel(device, seed)
    worst = {dtype: max(r["max_abs_err"] for r in checks if r["dtype"] == dtype) for dtype in ("float32", "bfloat16")}
    print(f"triton kernel == torch: worst fp32 error {worst['float32']:.1e}, worst bf16 error {worst['bfloat16']:.1e}")
    rows = benchmark(device, sz, seed)
    best = {}
    for r in rows:
        if "TFLOP/s" in r and r["causal"]:
            key = "causal_tflops_" + r["method"].split(" (")[0].replace(" ", "_")
            best[key] = max(best.get(key, 0.0), r["TFLOP/s"])
    for name, v in best.items():
        print(f"{name}: best {v:.1f} TFLOP/s")
    return {"device_name": torch.cuda.get_device_name(device), "dtype": "bfloat16", "head_dim": sz.gpu_head_dim,
            "heads": sz.gpu_heads, "tokens": sz.gpu_tokens, "checks": checks, "rows": rows, "best_tflops": best}
