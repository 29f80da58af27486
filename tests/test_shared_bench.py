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


def test_time_fn_returns_the_median_of_repeats():
    calls = []
    t = bench.time_fn(lambda: calls.append(1), warmup=2, repeat=5)
    assert len(calls) == 7 and t >= 0
