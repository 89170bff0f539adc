"""Optimizer groups, the learning-rate schedule and precision modes."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from clip.config import Config
from clip.data.synthetic import generate_batch
from clip.model import CLIP
from clip.training.distributed import Replica
from clip.training.optim import (
    WarmupSchedule,
    build_optimizer,
    build_scheduler,
    is_decayed,
    parameter_groups,
)
from clip.training.precision import LossScaler
from clip.training.step import build_step_runner

CPU = torch.device("cpu")


def test_no_decay_on_gains_biases_embeddings(tiny_config: Callable[..., Config]) -> None:
    model = CLIP(tiny_config().model)
    decayed = {name for name, p in model.named_parameters() if is_decayed(name, p)}
    for name in ("logit_scale", "token_embedding.weight", "positional_embedding",
                 "visual.class_embedding", "visual.positional_embedding", "ln_final.weight",
                 "ln_final.bias", "visual.transformer.resblocks.0.attn.in_proj_bias"):
        assert name not in decayed, name
    for name in ("visual.conv1.weight", "text_projection", "visual.proj",
                 "transformer.resblocks.0.mlp.c_fc.weight",
                 "visual.transformer.resblocks.1.attn.in_proj_weight"):
        assert name in decayed, name


def test_parameter_groups_cover_every_parameter(tiny_config: Callable[..., Config]) -> None:
    model = CLIP(tiny_config().model)
    groups = parameter_groups(model, weight_decay=0.2)
    assert [group["weight_decay"] for group in groups] == [0.2, 0.0]
    grouped = sum(len(group["params"]) for group in groups)
    assert grouped == len(list(model.parameters()))


def test_adamw_is_fused_on_cpu(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config(beta1=0.8, beta2=0.95, eps=1e-7)
    optimizer = build_optimizer(CLIP(config.model), config)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is True
    assert optimizer.defaults["betas"] == (0.8, 0.95)
    assert optimizer.defaults["eps"] == 1e-7


@pytest.mark.parametrize(("kind", "step", "expected"), [
    ("cosine", 0, 0.25),
    ("cosine", 3, 1.0),
    ("cosine", 4, 1.0),
    ("cosine", 8, 0.5 * (1 + math.cos(math.pi * 0.5))),
    ("cosine", 12, 0.0),
    ("linear", 8, 0.5),
    ("linear", 12, 0.0),
    ("constant", 2, 0.75),
    ("constant", 11, 1.0),
])
def test_warmup_schedule(kind: str, step: int, expected: float) -> None:
    schedule = WarmupSchedule(warmup_steps=4, total_steps=12, kind=kind)
    assert schedule(step) == pytest.approx(expected)


def test_scheduler_warmup_in_epochs(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config(epochs=4, warmup_epochs=1, learning_rate=0.1)
    optimizer = build_optimizer(CLIP(config.model), config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=10)
    rates = []
    for _ in range(40):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.01)
    assert rates[9] == pytest.approx(0.1)
    assert rates[10] == pytest.approx(0.1)
    assert rates[39] < 0.001


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("loss_scaling", [1024.0, 0.0])
def test_one_step_stays_finite(tiny_config: Callable[..., Config], precision: str,
                               loss_scaling: float) -> None:
    config = tiny_config(precision=precision, loss_scaling=loss_scaling, batch_size=4)
    torch.manual_seed(0)
    model = CLIP(config.model)
    runner = _runner(config, model)
    images, token_ids = generate_batch(4, 32, 16, seed=1)

    loss = runner.run_step(images, token_ids)

    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.float32, name
        assert torch.isfinite(parameter).all(), name
    image_features, text_features, logit_scale = model(images, token_ids)
    assert torch.isfinite(logit_scale * image_features @ text_features.t()).all()
    if loss_scaling:
        assert runner.scaler.skipped_steps == 0


def test_dynamic_scale_backs_off_after_overflow(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config(precision="fp16", loss_scaling=0.0, batch_size=4)
    torch.manual_seed(0)
    runner = _runner(config, CLIP(config.model))
    for seed in range(3):
        runner.run_step(*generate_batch(4, 32, 16, seed=seed))
    skipped = runner.scaler.skipped_steps
    # GradScaler starts at 2**16 and halves the scale after each overflowing step.
    assert runner.scaler.scaler.get_scale() == 2.0 ** 16 * 0.5 ** skipped


def test_fp16_overflow_skips_step(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config(precision="fp16", loss_scaling=1e38, batch_size=4)
    torch.manual_seed(0)
    model = CLIP(config.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    runner = _runner(config, model)

    runner.run_step(*generate_batch(4, 32, 16, seed=1))

    assert runner.scaler.skipped_steps == 1
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    # A static scale stays where the configuration put it.
    assert runner.scaler.scaler.get_scale() == pytest.approx(1e38)


def test_fp32_has_no_loss_scaling(tiny_config: Callable[..., Config]) -> None:
    scaler = LossScaler(tiny_config(precision="fp32"), CPU)
    loss = torch.tensor(2.0)
    assert scaler.scale(loss) is loss


def _runner(config: Config, model: CLIP):  # noqa: ANN202
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=10)
    replica = Replica(0, 1, 0, CPU)
    return build_step_runner(config, model, optimizer, scheduler, LossScaler(config, CPU),
                             replica)
