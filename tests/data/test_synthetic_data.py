"""Tests of clip.data.synthetic and the generated-data loaders."""

from __future__ import annotations

import pytest
import torch
from data_helpers import tiny_config

from clip.data import build_train_loader
from clip.data.synthetic import (
    DEFAULT_HOST_CALLS_PER_EPOCH,
    EOT_TOKEN_ID,
    SOT_TOKEN_ID,
    generate_batch,
)
from clip.errors import ClipError


def test_generation_is_deterministic_by_seed() -> None:
    first = generate_batch(8, 16, 77, seed=5)
    second = generate_batch(8, 16, 77, seed=5)
    other = generate_batch(8, 16, 77, seed=6)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[1], other[1])


def test_token_layout_matches_real_captions() -> None:
    images, tokens = generate_batch(64, 8, 20, seed=0)
    assert images.shape == (64, 3, 8, 8)
    assert images.dtype == torch.float32
    assert tokens.shape == (64, 20)
    assert tokens.dtype == torch.int64
    assert (tokens[:, 0] == SOT_TOKEN_ID).all()

    lengths = []
    for row in tokens:
        end = int((row == EOT_TOKEN_ID).nonzero().squeeze())
        body, padding = row[1:end], row[end + 1:]
        assert 1 <= len(body) <= 18
        assert ((body > 0) & (body < SOT_TOKEN_ID)).all()
        assert (padding == 0).all()
        lengths.append(len(body))
    assert len(set(lengths)) > 5


def test_short_context_raises() -> None:
    with pytest.raises(ClipError, match="context_length=2"):
        generate_batch(2, 8, 2, seed=0)


def test_host_loader_reuses_one_batch() -> None:
    config = tiny_config(host_generate_data=True, batch_size=3, gradient_accumulation=2)
    loader = build_train_loader(config)
    assert len(loader) == DEFAULT_HOST_CALLS_PER_EPOCH
    assert loader.host_batch_size == 6
    batches = list(loader)
    assert len(batches) == DEFAULT_HOST_CALLS_PER_EPOCH
    images, tokens = batches[0]
    assert images.shape == (6, 3, 32, 32)
    assert tokens.shape == (6, 77)
    assert all(batch[0] is images for batch in batches)
    assert loader.skipped.total == 0


def test_generated_samples_set_epoch_length() -> None:
    config = tiny_config(host_generate_data=True, batch_size=4, generated_samples=40)
    assert len(build_train_loader(config)) == 10
    assert len(build_train_loader(config, rank=1, world_size=2)) == 5


def test_replicas_get_different_data() -> None:
    config = tiny_config(host_generate_data=True, batch_size=4)
    first = next(iter(build_train_loader(config, rank=0, world_size=2)))
    second = next(iter(build_train_loader(config, rank=1, world_size=2)))
    assert not torch.equal(first[0], second[0])


def test_too_few_generated_samples_raises() -> None:
    config = tiny_config(host_generate_data=True, batch_size=4, generated_samples=6)
    with pytest.raises(ClipError, match="generated_samples=6 is less than one host batch"):
        build_train_loader(config, world_size=2)


def test_device_generation_on_cpu() -> None:
    config = tiny_config(ipu_generate_data=True, device="cpu", batch_size=2)
    images, tokens = next(iter(build_train_loader(config)))
    assert images.device.type == "cpu"
    assert images.shape == (2, 3, 32, 32)
    assert tokens.shape == (2, 77)


def test_device_generation_on_ipu_raises() -> None:
    config = tiny_config(ipu_generate_data=True, device="ipu")
    with pytest.raises(ClipError, match="ipu_generate_data on the IPU is not supported"):
        build_train_loader(config)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_generation_stays_on_cuda() -> None:
    config = tiny_config(ipu_generate_data=True, device="cuda", batch_size=2)
    images, tokens = next(iter(build_train_loader(config)))
    assert images.device.type == "cuda"
    assert tokens.device.type == "cuda"
    host = build_train_loader(tiny_config(host_generate_data=True, device="cuda"))
    assert next(iter(host))[0].is_pinned()
