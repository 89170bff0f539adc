"""ViT-B/32 workloads of clip and of open_clip, built for side-by-side timing.

Two workloads are built: one training step, and the image encoding of zero-shot evaluation.

Our step is :class:`clip.training.step.StepRunner` as the trainer builds it
(``build_optimizer``, ``build_scheduler``, ``build_step_runner``). open_clip's step follows
``train_one_epoch`` of open_clip's training script (open_clip_train) with ``accum_freq`` 1.
It uses the ``ViT-B-32-quickgelu`` model created with ``pretrained=None`` and its
``ClipLoss``, computed inside the autocast region. Its optimizer is ``torch.optim.AdamW``
with open_clip's weight-decay groups (no decay for gains, biases and logit_scale) and the
same hyper-parameters as ours, and the step ends with the clamp of logit_scale to ln(100).
bf16 is ``torch.autocast("cpu", dtype=torch.bfloat16)`` around both forward passes.

Both steps train on the same generated batch, and open_clip's initial weights are copied
into our model, so the first step's losses agree (checked by the benchmarks). The image
encoders run in eval mode with the same weights, each prepared as its zero-shot evaluation
prepares it (see :func:`build_image_encoders`).

Shape legend: B batch, R image resolution, L context length.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from clip.config import Config, load_config
from clip.data.synthetic import generate_batch
from clip.errors import ClipError
from clip.model import CLIP
from clip.training.distributed import Replica
from clip.training.optim import build_optimizer, build_scheduler
from clip.training.precision import LossScaler, cast_matmul_weights
from clip.training.step import build_step_runner

PRESET = "CLIP_ViT-B-32_cc3m"
OPEN_CLIP_MODEL = "ViT-B-32-quickgelu"
PRECISIONS = ("fp32", "bf16")
IMPLEMENTATIONS = ("clip", "open_clip")
DATA_SEED = 0
WEIGHT_SEED = 0
CPU = torch.device("cpu")


@dataclass(frozen=True)
class StepSettings:
    """Batch size and precision, the settings both implementations share in one comparison."""

    batch_size: int = 16
    precision: str = "fp32"

    def validate(self) -> StepSettings:
        if self.batch_size <= 0:
            raise ClipError(f"batch_size={self.batch_size} must be positive; pass --batch_size 1 "
                            "or more.")
        if self.precision not in PRECISIONS:
            raise ClipError(f"precision={self.precision!r} is not one of {PRECISIONS}; pass "
                            "--precision with one of them.")
        return self


@dataclass
class TrainStep:
    """A ready training step: calling ``run`` trains on the batch once and returns the loss."""

    name: str
    run: Callable[[], torch.Tensor]
    model: nn.Module
    samples: int


def clip_config(settings: StepSettings) -> Config:
    """Our ViT-B/32 preset with one micro-batch per step and a constant learning rate."""
    return load_config(PRESET, {
        "device": "cpu", "precision": settings.precision, "batch_size": settings.batch_size,
        "gradient_accumulation": 1, "device_iterations": 1, "replication_factor": 1,
        "warmup_epochs": 0, "lr_schedule": "constant", "host_generate_data": True,
    })


def make_batch(settings: StepSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated images (B, 3, R, R) and caption-shaped token ids (B, L) for both steps."""
    model = clip_config(settings).model
    return generate_batch(settings.batch_size, model.image_resolution, model.context_length,
                          seed=DATA_SEED)


def build_clip_step(settings: StepSettings, state_dict: dict[str, torch.Tensor] | None = None
                    ) -> TrainStep:
    """Build our training step as the trainer does, optionally from given initial weights."""
    config = clip_config(settings)
    torch.manual_seed(WEIGHT_SEED)
    model = CLIP(config.model).train()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=1)
    replica = Replica(rank=0, world_size=1, local_rank=0, device=CPU)
    runner = build_step_runner(config, model, optimizer, scheduler, LossScaler(config, CPU),
                               replica)
    images, token_ids = make_batch(settings)

    def run() -> torch.Tensor:
        return runner.run_host_call(images, token_ids)[0]

    return TrainStep("clip", run, model, settings.batch_size)


def open_clip_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's groups: no decay for 1-D parameters, LayerNorms, biases and logit_scale."""
    def excluded(name: str, parameter: nn.Parameter) -> bool:
        return (parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
                or "logit_scale" in name)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if excluded(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not excluded(n, p)], "weight_decay": weight_decay},
    ]


def build_open_clip_step(settings: StepSettings) -> TrainStep:
    """Build open_clip's training step with the optimizer options of our preset."""
    import open_clip

    options = clip_config(settings).optimizer
    torch.manual_seed(WEIGHT_SEED)
    model = open_clip.create_model(OPEN_CLIP_MODEL, pretrained=None).train()
    loss_function = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(
        open_clip_parameter_groups(model, options.weight_decay), lr=options.learning_rate,
        betas=(options.beta1, options.beta2), eps=options.eps,
    )
    region = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if settings.precision == "bf16" else contextlib.nullcontext
    )
    images, token_ids = make_batch(settings)

    def run() -> torch.Tensor:
        optimizer.zero_grad()
        with region():
            image_features, text_features, logit_scale = model(images, token_ids)
            loss = loss_function(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.detach()

    return TrainStep("open_clip", run, model, settings.batch_size)


def build_both(settings: StepSettings) -> dict[str, TrainStep]:
    """Build both steps from the same initial weights (open_clip's, copied into ours)."""
    settings.validate()
    reference = build_open_clip_step(settings)
    ours = build_clip_step(settings, reference.model.state_dict())
    return {"clip": ours, "open_clip": reference}


def build_one(implementation: str, settings: StepSettings) -> TrainStep:
    """Build one implementation's step alone, with its own initial weights."""
    settings.validate()
    if implementation == "clip":
        return build_clip_step(settings)
    if implementation == "open_clip":
        return build_open_clip_step(settings)
    raise ClipError(f"implementation={implementation!r} is not one of {IMPLEMENTATIONS}.")


def build_image_encoders(batch_size: int, precision: str = "bf16",
                         reference_pure_bf16: bool = False
                         ) -> dict[str, Callable[[], torch.Tensor]]:
    """Return calls that encode the same (B, 3, R, R) images with each model, same weights.

    Each model is prepared as its zero-shot evaluation prepares it. For bf16, ours stores its
    matmul weights in bf16 (``clip.zero_shot.load_eval_model``), and open_clip keeps fp32
    weights, as its training script's ``amp_bf16`` precision does. ``reference_pure_bf16``
    casts open_clip's whole model and the images to bf16 instead, as its ``pure_bf16``
    precision does. The caller enters ``torch.no_grad`` and, for bf16, the autocast region.
    """
    import open_clip

    StepSettings(batch_size, precision).validate()
    torch.manual_seed(WEIGHT_SEED)
    reference = open_clip.create_model(OPEN_CLIP_MODEL, pretrained=None).eval()
    config = clip_config(StepSettings(batch_size))
    ours = CLIP(config.model).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    cast_matmul_weights(ours, precision)
    images, _ = make_batch(StepSettings(batch_size))
    reference_images = images
    if reference_pure_bf16:
        reference = reference.to(torch.bfloat16)
        reference_images = images.to(torch.bfloat16)
    return {
        "clip": lambda: ours.encode_image(images),
        "open_clip": lambda: reference.encode_image(reference_images),
    }
