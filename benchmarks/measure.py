"""Alternating timing, FLOP counts, the matmul rate and peak memory for side-by-side benchmarks.

The machine these benchmarks run on may be shared, so absolute times drift with the load
of other processes. Two implementations are therefore timed in turn within one process,
and each comparison is the ratio of one round's pair of times. Rounds alternate the order
of the two (ABBA), so a slow phase of the machine hits both equally often.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)


def time_call(function: Callable[[], object]) -> float:
    """Return the wall time of one call in seconds."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


@dataclass
class PairedTimes:
    """Round times of our implementation and the reference, measured in turn.

    Entry i of ``ours`` and of ``reference`` come from the same round.
    """

    ours: list[float]
    reference: list[float]

    @property
    def speedups(self) -> list[float]:
        """Reference time / our time for each round; above 1 means ours is faster."""
        return [ref / ours for ours, ref in zip(self.ours, self.reference, strict=True)]

    @property
    def median_speedup(self) -> float:
        return statistics.median(self.speedups)

    def describe(self, target: float | None = None) -> str:
        """One line: min and median times of both, and the spread of the per-round speed-up."""
        speedups = self.speedups
        line = (
            f"clip min {min(self.ours):.3f} s median {statistics.median(self.ours):.3f} s, "
            f"open_clip min {min(self.reference):.3f} s median "
            f"{statistics.median(self.reference):.3f} s, speed-up median "
            f"{statistics.median(speedups):.2f}x (min {min(speedups):.2f}x, max "
            f"{max(speedups):.2f}x, ratio of mins {min(self.reference) / min(self.ours):.2f}x, "
            f"{len(speedups)} rounds)"
        )
        if target is not None:
            verdict = "met" if statistics.median(speedups) >= target else "MISSED"
            line += f", target {target:.1f}x {verdict}"
        return line


def alternate(ours: Callable[[], object], reference: Callable[[], object], rounds: int,
              warmup_rounds: int = 1,
              on_round: Callable[[int, float, float], None] | None = None) -> PairedTimes:
    """Time ``ours`` and ``reference`` in turn for ``rounds`` rounds after the warm-up.

    Even rounds run ours first, odd rounds the reference first. ``on_round(index, ours,
    reference)`` is called after each measured round.
    """
    for _ in range(warmup_rounds):
        ours()
        reference()
    times = PairedTimes([], [])
    for index in range(rounds):
        if index % 2 == 0:
            ours_seconds = time_call(ours)
            reference_seconds = time_call(reference)
        else:
            reference_seconds = time_call(reference)
            ours_seconds = time_call(ours)
        times.ours.append(ours_seconds)
        times.reference.append(reference_seconds)
        if on_round is not None:
            on_round(index, ours_seconds, reference_seconds)
    return times


def count_flops(function: Callable[[], object]) -> int:
    """Return the matmul, convolution and attention FLOPs of one call, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def matmul_rate(dtype: torch.dtype, size: int = 2048, min_seconds: float = 3.0,
                min_repeats: int = 5) -> float:
    """Return the best FLOP/s of a (size x size) @ (size x size) matmul in ``dtype``.

    It is the reference of the model FLOP utilisation: the rate that this machine reaches
    on a large square matmul with the current torch thread count. The matmul repeats for
    at least ``min_seconds``, because the utilisation divides by the fastest of training
    rounds that span tens of seconds. Five matmuls take under half a second, and on a
    shared 2-core AMD EPYC their best fell to 170 GFLOP/s in a busy moment, against
    192-204 GFLOP/s otherwise.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(times) < min_repeats or time.perf_counter() < deadline:
        times.append(time_call(lambda: torch.mm(a, b)))
    return 2 * size ** 3 / min(times)


def peak_resident_bytes() -> int:
    """Return this process's peak resident memory (VmHWM), or ru_maxrss where /proc is absent."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
