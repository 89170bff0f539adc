"""Benchmark ViT-B/32 inference of clip.model against open_clip on the CPU, side by side.

Run with:
    .venv/bin/python -m pytest benchmarks/test_bench_model.py \
        --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds

Both models hold the same random weights (open_clip's ``ViT-B-32-quickgelu`` with
``pretrained=None``, copied into ours), run in eval mode under ``torch.no_grad`` with the
default torch thread count. Two groups, each with both implementations:
``encode_image fp32 batch 32`` and ``encode_text fp32 batch 32``. The target is that ours
is not slower. bf16 image encoding is compared in benchmarks/test_bench_train_step.py,
which alternates the two implementations round by round.

pytest-benchmark runs one benchmark after the other, not interleaved, so load from other
processes during the run shifts the ratio. On a shared machine, ``OMP_NUM_THREADS=1`` gives
steadier ratios, because waits at OpenMP barriers then no longer depend on the other load.
At the end of the module, the min times and the ratio of each group are written to the
terminal, and ``test_speed_targets`` checks them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import open_clip
import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import nn

from benchmarks.summary import write_summary
from clip.config import load_config
from clip.model import CLIP

ROUNDS = 5
IMAGE_GROUP = "encode_image fp32 batch 32"
TEXT_GROUP = "encode_text fp32 batch 32"
# Minimum speed-up of ours over open_clip (open_clip's min time / ours) per group.
TARGET_SPEEDUPS = {IMAGE_GROUP: 1.0, TEXT_GROUP: 1.0}
IMPLEMENTATIONS = ["clip", "open_clip"]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Both ViT-B/32 models with the same weights, checked to compute the same features."""
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    ours = CLIP(load_config("CLIP_ViT-B-32_cc3m").model).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)

    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), reference.encode_image(images),
                                   atol=1e-5, rtol=0)
    return {"clip": ours, "open_clip": reference}


@pytest.fixture(scope="module")
def min_seconds(request: pytest.FixtureRequest) -> Iterator[dict[str, dict[str, float]]]:
    """Min round time by group and implementation; the ratios are printed at module end."""
    measured: dict[str, dict[str, float]] = {}
    yield measured
    lines = [
        f"{group}: clip {times['clip']:.3f} s, open_clip {times['open_clip']:.3f} s, "
        f"speed-up {times['open_clip'] / times['clip']:.2f}x "
        f"(target {TARGET_SPEEDUPS[group]:.1f}x, min of {ROUNDS} rounds, "
        f"{torch.get_num_threads()} threads)"
        for group, times in measured.items()
        if set(times) == set(IMPLEMENTATIONS)
    ]
    write_summary(request.config, lines)


def run_benchmark(benchmark: BenchmarkFixture, function: Callable[[torch.Tensor], torch.Tensor],
                  inputs: torch.Tensor, group: str, implementation: str,
                  min_seconds: dict[str, dict[str, float]]) -> torch.Tensor:
    """Time ``function(inputs)`` without autograd and record the min under group and name."""
    benchmark.group = group
    benchmark.extra_info.update(batch=inputs.shape[0], threads=torch.get_num_threads())
    with torch.no_grad():
        features = benchmark.pedantic(function, args=(inputs,), rounds=ROUNDS, warmup_rounds=1)
    if not benchmark.disabled:  # --benchmark-disable runs the target once, untimed
        min_seconds.setdefault(group, {})[implementation] = benchmark.stats.stats.min
    return features


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bench_encode_image_fp32(benchmark: BenchmarkFixture, models: dict[str, nn.Module],
                                 min_seconds: dict[str, dict[str, float]],
                                 implementation: str) -> None:
    images = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    model = models[implementation]
    features = run_benchmark(benchmark, model.encode_image, images, IMAGE_GROUP,
                             implementation, min_seconds)
    assert features.shape == (32, 512)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bench_encode_text_fp32(benchmark: BenchmarkFixture, models: dict[str, nn.Module],
                                min_seconds: dict[str, dict[str, float]],
                                implementation: str) -> None:
    captions = [f"a photo of {count} red bicycles next to a wall" for count in range(32)]
    token_ids = open_clip.tokenize(captions)
    model = models[implementation]
    features = run_benchmark(benchmark, model.encode_text, token_ids, TEXT_GROUP,
                             implementation, min_seconds)
    assert features.shape == (32, 512)


@pytest.mark.parametrize("group", [IMAGE_GROUP, TEXT_GROUP])
def test_speed_targets(min_seconds: dict[str, dict[str, float]], group: str) -> None:
    times = min_seconds.get(group, {})
    if set(times) != set(IMPLEMENTATIONS):
        pytest.skip(f"the {group} benchmarks did not run in this session")
    speedup = times["open_clip"] / times["clip"]
    assert speedup >= TARGET_SPEEDUPS[group], (
        f"{group}: clip is {speedup:.2f}x open_clip, target {TARGET_SPEEDUPS[group]:.1f}x"
    )
