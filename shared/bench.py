"""Measuring honestly: warm-up then the median of repeats, peak memory on CPU and CUDA,
and the device's fp32 matmul peak that model-FLOPs utilisation (MFU) is reported against."""
from __future__ import annotations

import ctypes
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch


def sync(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_fn(fn: Callable[[], object], device="cpu", warmup: int = 1, repeat: int = 5,
            min_time: float = 0.0) -> float:
    """Median seconds per call after `warmup` untimed calls. `min_time` keeps repeating
    until that much time has been spent, for very fast functions."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeat or spent < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return statistics.median(times)


def _rss_hwm_bytes() -> int:
    """Peak resident set size of this process (Linux VmHWM, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_rss_hwm() -> bool:
    """Linux lets a process reset its own peak-RSS counter (writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    bytes: int = 0
    kind: str = ""


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_malloc_configured = False


def _release_freed_memory() -> None:
    """Make RSS follow tensor allocations on Linux/glibc. glibc raises its mmap threshold
    after large frees (up to 32 MiB), so a freed 8 MiB score matrix stays in the heap and
    the next one reuses it without RSS growing: peak-RSS growth would read 0. Fixing the
    threshold at 1 MiB gives every large tensor its own mapping, returned at free."""
    global _malloc_configured
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if not _malloc_configured:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        _malloc_configured = True
    libc.malloc_trim(0)


@contextmanager
def peak_memory(device="cpu"):
    """`with peak_memory(dev) as m: ...` then `m.bytes` is the peak during the block:
    CUDA: max allocated by torch; CPU: the process' peak RSS minus RSS at entry."""
    device = torch.device(device)
    m = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        m.kind = "cuda max_memory_allocated"
        yield m
        torch.cuda.synchronize(device)
        m.bytes = torch.cuda.max_memory_allocated(device) - base
    else:
        _release_freed_memory()
        _reset_rss_hwm()
        base = current_rss_bytes()
        m.kind = "process peak RSS growth"
        yield m
        m.bytes = max(0, _rss_hwm_bytes() - base)


def current_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_peak_flops(device="cpu", n: int | None = None, repeat: int = 5) -> float:
    """Best-of-`repeat` FLOP/s of an n×n matmul: fp32 on CPU/MPS, bf16 on CUDA (the
    peak people quote there). Measured fresh each run (~1 s): a cached number measured
    while the machine was busy would make every later MFU wrong. One probe can still read
    low on a busy machine, so `shared.train.train` probes before and after the run and keeps
    the best (see `shared.train.model_flops_utilization`)."""
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
