"""What attention costs against sequence length, for chapter 07: five ways to do the same causal
attention, timed and weighed (read `tiled_attention.py` first; this file only measures it).

    full (T x T scores)       the whole score matrix: time and memory grow as T^2
    full + window W mask      a sliding window that is only a mask: costs exactly the same
    SDPA (torch fused)        torch's fused kernel, for scale
    tiled (online softmax)    never more than one tile of scores: memory grows as T
    tiled + window W          tiles left of the band are skipped, not masked: time grows as T * W

Memory is weighed two ways: the peak the device reports (on a CPU the process' RSS, which the
allocator makes noisy for small sizes) and the largest tensor any torch call returned
(`LargestTensor`: exact, and the cleanest view of the scaling law).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shared import bench
from tiled_attention import LargestTensor, attention_flops, attention_mask, full_attention, tiled_attention


def tiled_vs_full(blocks=((16, 16), (32, 8), (7, 13), (64, 64)), seed: int = 0) -> list[dict]:
    """Largest |tiled - full| and |full - SDPA| over causal, non-causal and windowed masks, block
    sizes that divide T and ones that don't, and more keys than queries (S > T, as when new
    tokens attend to a cache). Float32 rounding is all that may differ."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t, s in ((96, 96), (40, 96)):
        q, k, v = (torch.randn(2, 3, n, 32, generator=g) for n in (t, s, s))
        for causal, window in ((False, None), (True, None), (True, 24)):
            ref = full_attention(q, k, v, causal, window)
            mask = attention_mask(t, s, causal, window) if causal else None
            sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            worst = max((tiled_attention(q, k, v, causal, window, bq, bk) - ref).abs().max().item()
                        for bq, bk in blocks)
            rows.append({"T": t, "S": s, "mask": "window" if window else "causal" if causal else "none",
                         "max |tiled - full|": worst, "max |full - SDPA|": (ref - sdpa).abs().max().item()})
    return rows


def attention_methods(window: int, block: int) -> dict:
    """name -> f(q, k, v), every one causal."""
    return {
        "full (T x T scores)": lambda q, k, v: full_attention(q, k, v, causal=True),
        f"full + window {window} mask": lambda q, k, v: full_attention(q, k, v, causal=True, window=window),
        "SDPA (torch fused)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "tiled (online softmax)": lambda q, k, v: tiled_attention(q, k, v, True, None, block, block),
        f"tiled + window {window}": lambda q, k, v: tiled_attention(q, k, v, True, window, block, block),
    }


@torch.no_grad()
def measure_scaling(lengths, memory_lengths, heads: int, head_dim: int, window: int, block: int, device,
                    seed: int, repeat: int = 5) -> list[dict]:
    """Time, peak memory and largest tensor of each method at each length in `lengths`; at
    `memory_lengths` (where the full matrix would need gigabytes) only the tiled methods, memory only.
    Times are the fastest of `repeat` calls, the methods taking turns: on a busy machine the fastest
    call is the one least slowed by other work, and taking turns gives every method the same conditions."""
    methods = attention_methods(window, block)
    rows = []
    for t in tqdm([*lengths, *memory_lengths], desc="attention cost vs T", leave=False):
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(1, heads, t, head_dim, generator=g).to(device) for _ in range(3))
        names = [name for name in methods if t in lengths or name.startswith("tiled")]
        for name in names:
            fn = methods[name]
            with LargestTensor() as lt:              # deterministic: how big is the biggest tensor made?
                fn(q, k, v)
            with bench.peak_memory(device) as mem:   # measured: how much did memory actually grow?
                fn(q, k, v)
            opaque = name.startswith("SDPA")         # a fused C++ kernel: its insides are invisible to Python
            rows.append({"method": name, "T": t, "seconds": None, "peak_bytes": mem.bytes,
                         "largest_tensor_bytes": None if opaque else lt.bytes,
                         "flops": attention_flops(1, heads, t, t, head_dim, True,
                                                  window if "window" in name else None)})
        if t in lengths:
            timed = {row["method"]: row for row in rows if row["T"] == t}
            for _ in range(repeat):
                for name in names:
                    seconds = bench.time_fn(lambda: methods[name](q, k, v), device, warmup=0, repeat=1)
                    best = timed[name]["seconds"]
                    timed[name]["seconds"] = seconds if best is None else min(best, seconds)
    return rows
