"""Optimizer with CLIP's weight-decay exclusions, and the warm-up plus decay schedule."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from clip.config import Config

logger = logging.getLogger(__name__)

# Embeddings are not decayed, as in OpenAI's and open_clip's CLIP training; neither are
# gains, biases and logit_scale, which all have fewer than two dimensions.
NO_DECAY_NAMES = ("token_embedding", "positional_embedding", "class_embedding")


def is_decayed(name: str, parameter: nn.Parameter) -> bool:
    """Return whether weight decay applies to the parameter with this state-dict name."""
    if parameter.ndim < 2:
        return False
    return not any(part in NO_DECAY_NAMES for part in name.split("."))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters into a decayed and a not-decayed group."""
    decayed, not_decayed = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decayed if is_decayed(name, parameter) else not_decayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """Build the configured optimizer, fused where the device supports it.

    AdamW decays the weights directly; Adam adds weight_decay * weight to the gradient
    (L2); SGD uses beta1 as its momentum.
    """
    options = config.optimizer
    groups = parameter_groups(model, options.weight_decay)
    if options.optimizer == "SGD":
        return torch.optim.SGD(groups, lr=options.learning_rate, momentum=options.beta1)
    adam_class = torch.optim.AdamW if options.optimizer == "AdamW" else torch.optim.Adam
    kwargs = {"lr": options.learning_rate, "betas": (options.beta1, options.beta2),
              "eps": options.eps}
    try:
        return adam_class(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError) as error:
        # Fused kernels need floating-point parameters on a supported device.
        logger.info("fused %s unavailable (%s); using the foreach implementation",
                    options.optimizer, error)
        return adam_class(groups, foreach=True, **kwargs)


@dataclass
class WarmupSchedule:
    """Learning-rate multiplier: linear warm-up, then cosine, linear or constant decay.

    Step k (counted from 0) of warm-up uses (k + 1) / warmup_steps of the peak rate, so
    the first step already learns. After warm-up, cosine and linear decay reach 0 at
    ``total_steps``.
    """

    warmup_steps: int
    total_steps: int
    kind: str

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Build the schedule over ``epochs * steps_per_epoch`` optimizer steps.

    ``max_steps`` ends a run early without reshaping the schedule, so a short benchmark
    run uses the learning rates of the start of the full run.
    """
    schedule = WarmupSchedule(
        warmup_steps=round(config.optimizer.warmup_epochs * steps_per_epoch),
        total_steps=config.execution.epochs * steps_per_epoch,
        kind=config.optimizer.lr_schedule,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
