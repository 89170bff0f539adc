"""Unit tests of the side-by-side benchmark tools: timing order, FLOP counts, memory, options.

Run with:
    .venv/bin/python -m pytest benchmarks/test_benchmark_tools.py

They take a few seconds and build no ViT-B/32 model.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from benchmarks import compare_open_clip, scaling
from benchmarks.measure import (
    PairedTimes,
    alternate,
    count_flops,
    matmul_rate,
    peak_resident_bytes,
)
from benchmarks.workloads import StepSettings
from clip.errors import ClipError


def test_speedups_pair_rounds() -> None:
    times = PairedTimes(ours=[1.0, 2.0, 1.0], reference=[2.0, 2.0, 1.5])
    assert times.speedups == [2.0, 1.0, 1.5]
    assert times.median_speedup == statistics.median([2.0, 1.0, 1.5])


def test_describe_reports_target_verdict() -> None:
    times = PairedTimes(ours=[1.0, 1.0], reference=[1.1, 1.2])
    assert "target 1.3x MISSED" in times.describe(target=1.3)
    assert "target 1.1x met" in times.describe(target=1.1)


def test_alternate_swaps_order_each_round() -> None:
    calls: list[str] = []
    times = alternate(lambda: calls.append("ours"), lambda: calls.append("reference"),
                      rounds=3, warmup_rounds=1)
    assert calls == ["ours", "reference",  # warm-up
                     "ours", "reference", "reference", "ours", "ours", "reference"]
    assert len(times.ours) == len(times.reference) == 3


def test_count_flops_of_matmul() -> None:
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(16, 4)

    def forward_and_backward() -> None:
        (a @ b).sum().backward()

    # Forward 2*8*16*4; backward computes the gradient of a only: another 2*8*4*16.
    assert count_flops(forward_and_backward) == 2 * (2 * 8 * 16 * 4)


def test_matmul_rate_is_positive() -> None:
    assert matmul_rate(torch.float32, size=128, min_seconds=0.0, min_repeats=2) > 0


def test_matmul_rate_repeats_for_min_seconds() -> None:
    start = time.perf_counter()
    matmul_rate(torch.float32, size=64, min_seconds=0.3, min_repeats=1)
    assert time.perf_counter() - start >= 0.3


def test_peak_resident_bytes_covers_allocation() -> None:
    before = peak_resident_bytes()
    block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, written so that it is resident
    assert peak_resident_bytes() >= max(before, block.numel() * 4)


def test_descendants_include_root() -> None:
    assert os.getpid() in scaling.descendants(os.getpid())


def test_memory_fields_of_this_process() -> None:
    resident, peak = scaling.memory_fields(os.getpid())
    assert resident > 2 ** 20
    assert peak >= resident


def test_memory_fields_of_exited_process() -> None:
    assert scaling.memory_fields(2 ** 22 + 1) == (0, 0)  # above Linux's largest pid


@pytest.mark.parametrize(("argv", "message"), [
    (["--rounds", "0"], r"--rounds 0 must be positive"),
    (["--batch_size", "-1"], r"--batch_size -1 must be positive"),
    (["--threads", "0"], r"--threads 0 must be positive"),
    (["--open_clip_pure_bf16"], r"applies to --mode encode_image --precision bf16, not --mode "
     r"train --precision fp32"),
    (["--mode", "encode_image", "--open_clip_pure_bf16"], r"not --mode encode_image --precision "
     r"fp32"),
])
def test_compare_rejects_bad_options(argv: list[str], message: str) -> None:
    with pytest.raises(ClipError, match=message):
        compare_open_clip.parse_args(argv)


def test_compare_main_exits_2_on_bad_option() -> None:
    assert compare_open_clip.main(["--steps", "0"]) == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch_sizes", "8,x"], r"'8,x' is not a comma-separated list of integers"),
    (["--replication_factors", "0,2"], r"'0,2' has a value below 1"),
    (["--max_steps", "1"], r"--max_steps 1 leaves no measured step"),
])
def test_scaling_rejects_bad_options(argv: list[str], message: str) -> None:
    with pytest.raises(ClipError, match=message):
        scaling.parse_args(argv)


@pytest.mark.parametrize(("settings", "message"), [
    (StepSettings(batch_size=0), r"batch_size=0 must be positive"),
    (StepSettings(precision="fp16"), r"precision='fp16' is not one of"),
])
def test_step_settings_reject_bad_values(settings: StepSettings, message: str) -> None:
    with pytest.raises(ClipError, match=message):
        settings.validate()
