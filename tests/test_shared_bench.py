"""shared.bench: timing and peak memory must measure what they claim."""
import sys

import pytest
import torch

from shared import bench

MIB = 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset is Linux-only")
def test_peak_memory_sees_a_tensor_that_reuses_freed_heap():
    """Allocate and free several 8 MiB tensors first: glibc then serves the next 8 MiB from
    memory it kept, RSS does not grow, and a naive peak-RSS measurement reads 0."""
    big = torch.ones(24 * MIB // 4)  # freeing a mapped 24 MiB raises glibc's mmap threshold past 8 MiB
    del big
    for _ in range(3):
        keep = [torch.ones(8 * MIB // 4) for _ in range(10)]
        del keep
    with bench.peak_memory("cpu") as m:
        x = torch.ones(8 * MIB // 4)
        del x
    assert 7 * MIB <= m.bytes <= 12 * MIB, m.bytes / MIB
    with bench.peak_memory("cpu") as small:
        torch.ones(1024)
    assert small.bytes < 4 * MIB


class FakeClock:
    """perf_counter for bench: each call of `fn` takes the next of `durations` seconds."""

    def __init__(self, monkeypatch, durations):
        self.now, self.durations, self.calls = 0.0, iter(durations), 0
        monkeypatch.setattr(bench.time, "perf_counter", lambda: self.now)

    def fn(self):
        self.calls += 1
        self.now += next(self.durations)


def test_time_fn_returns_the_median_of_the_timed_repeats(monkeypatch):
    """Two slow warm-up calls are not timed; the median of 5, 1, 3, 2, 40 is 3 (the mean, 10.2,
    would let one slow outlier through)."""
    clock = FakeClock(monkeypatch, [100.0, 100.0, 5.0, 1.0, 3.0, 2.0, 40.0])
    assert bench.time_fn(clock.fn, warmup=2, repeat=5) == 3.0
    assert clock.calls == 7


def test_time_fn_repeats_until_min_time_is_spent(monkeypatch):
    clock = FakeClock(monkeypatch, [9.0] + [0.25] * 20)
    assert bench.time_fn(clock.fn, warmup=1, repeat=2, min_time=1.0) == 0.25
    assert clock.calls == 1 + 4                      # 4 x 0.25 s reaches min_time = 1 s


def test_matmul_peak_flops_is_the_best_of_the_repeats(monkeypatch):
    """perf_counter reads 0, 2 | 10, 10.5 | 20, 21: matmuls of 2, 0.5 and 1 s; the peak is the
    fastest one's rate, 2 n^3 / 0.5 s (not the first, not the mean)."""
    readings = iter([0.0, 2.0, 10.0, 10.5, 20.0, 21.0])
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(readings))
    assert bench.matmul_peak_flops("cpu", n=8, repeat=3) == 2 * 8**3 / 0.5
