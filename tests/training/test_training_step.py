"""Optimizer steps: loss-negative modes, gradient accumulation and device_iterations."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from clip.config import Config
from clip.data.synthetic import generate_batch
from clip.model import CLIP
from clip.training.distributed import Replica
from clip.training.loss import FeatureGather, contrastive_loss
from clip.training.optim import build_optimizer, build_scheduler
from clip.training.precision import LossScaler
from clip.training.step import StepRunner, build_step_runner

CPU_REPLICA = Replica(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
# Plain SGD with lr 1 makes the weights after one step equal to w - gradient.
SGD_OPTIONS = {"optimizer": "SGD", "learning_rate": 1.0, "beta1": 0.0, "weight_decay": 0.0}


def make_runner(config: Config, model: CLIP) -> StepRunner:
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=100)
    return build_step_runner(config, model, optimizer, scheduler,
                             LossScaler(config, CPU_REPLICA.device), CPU_REPLICA)


def fresh_model(config: Config) -> CLIP:
    torch.manual_seed(0)
    return CLIP(config.model)


def batch(samples: int, config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    return generate_batch(samples, config.model.image_resolution, config.model.context_length,
                          seed=3)


def assert_same_weights(first: CLIP, second: CLIP, atol: float = 1e-5) -> None:
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(),
                                 strict=True):
        assert torch.allclose(a, b, atol=atol), f"{name} differs by {(a - b).abs().max()}"


def test_contrastive_loss_value() -> None:
    image = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    scale = torch.tensor(2.0)
    logits = scale * image @ text.t()
    expected = (F.cross_entropy(logits, torch.arange(2))
                + F.cross_entropy(logits.t(), torch.arange(2))) / 2
    assert torch.allclose(contrastive_loss(image, text, scale), expected)
    # Matching pairs far apart from the others give a loss near zero.
    assert contrastive_loss(image, image, torch.tensor(100.0)) < 1e-6


def test_feature_gather_single_replica_passes_through() -> None:
    gather = FeatureGather(enabled=True, rank=0, world_size=1)
    rows = torch.randn(4, 3)
    assert gather.gather(rows) is rows
    assert gather.gradient_factor == 1
    local = torch.ones(2, 3)
    substituted = gather.substitute(rows, local, offset=1)
    assert torch.equal(substituted[1:3], local)
    assert torch.equal(substituted[0], rows[0])
    assert torch.equal(substituted[3], rows[3])


def test_step_negatives_equal_large_batch(tiny_config: Callable[..., Config]) -> None:
    large = tiny_config(batch_size=8, gradient_accumulation=1, **SGD_OPTIONS)
    accumulated = tiny_config(batch_size=2, gradient_accumulation=4, loss_negatives="step",
                              **SGD_OPTIONS)
    images, token_ids = batch(8, large)
    large_model, accumulated_model = fresh_model(large), fresh_model(accumulated)

    large_loss = make_runner(large, large_model).run_step(images, token_ids)
    accumulated_loss = make_runner(accumulated, accumulated_model).run_step(images, token_ids)

    assert torch.allclose(large_loss, accumulated_loss, atol=1e-6)
    assert_same_weights(large_model, accumulated_model)


def test_micro_batch_negatives_average_losses(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config(batch_size=4, gradient_accumulation=2, loss_negatives="micro_batch",
                         **SGD_OPTIONS)
    images, token_ids = batch(8, config)
    model = fresh_model(config)
    reference = copy.deepcopy(model)

    # The reference: the mean of two independent micro-batch losses, one backward pass.
    losses = [contrastive_loss(*reference(images[i:i + 4], token_ids[i:i + 4]))
              for i in (0, 4)]
    mean_loss = torch.stack(losses).mean()
    mean_loss.backward()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter -= parameter.grad
    reference.clamp_logit_scale()

    loss = make_runner(config, model).run_step(images, token_ids)
    assert torch.allclose(loss, mean_loss.detach(), atol=1e-6)
    assert_same_weights(model, reference)


def test_negative_modes_differ(tiny_config: Callable[..., Config]) -> None:
    step = tiny_config(batch_size=4, gradient_accumulation=2, loss_negatives="step")
    micro = tiny_config(batch_size=4, gradient_accumulation=2, loss_negatives="micro_batch")
    images, token_ids = batch(8, step)
    step_loss = make_runner(step, fresh_model(step)).run_step(images, token_ids)
    micro_loss = make_runner(micro, fresh_model(micro)).run_step(images, token_ids)
    # Eight negatives per sample instead of four raise the loss of an untrained model.
    assert step_loss > micro_loss + 0.3


def test_device_iterations_equal_separate_calls(tiny_config: Callable[..., Config]) -> None:
    combined = tiny_config(batch_size=4, device_iterations=2)
    separate = tiny_config(batch_size=4, device_iterations=1)
    images, token_ids = batch(8, combined)
    combined_model, separate_model = fresh_model(combined), fresh_model(separate)

    combined_losses = make_runner(combined, combined_model).run_host_call(images, token_ids)
    runner = make_runner(separate, separate_model)
    separate_losses = torch.cat([runner.run_host_call(images[:4], token_ids[:4]),
                                 runner.run_host_call(images[4:], token_ids[4:])])

    assert combined_losses.shape == (2,)
    assert torch.allclose(combined_losses, separate_losses, atol=1e-6)
    assert_same_weights(combined_model, separate_model)


def test_logit_scale_clamped_after_step(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config(batch_size=4)
    model = fresh_model(config)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    make_runner(config, model).run_step(*batch(4, config))
    assert model.logit_scale.item() <= torch.log(torch.tensor(100.0)).item() + 1e-6


def test_grad_clip_norm_limits_update(tiny_config: Callable[..., Config]) -> None:
    clipped = tiny_config(batch_size=4, grad_clip_norm=1e-3, **SGD_OPTIONS)
    model = fresh_model(clipped)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    make_runner(clipped, model).run_step(*batch(4, clipped))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # With lr 1 the update is the clipped gradient, whose norm is at most 1e-3.
    assert (after - before).norm() <= 1e-3 * 1.001
