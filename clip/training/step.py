"""One host call: device_iterations optimizer steps of gradient_accumulation micro-batches.

Two meanings of the contrastive negatives under gradient accumulation (``loss_negatives``):

* ``step`` (default): every sample of the optimizer step is a negative for every other,
  so the loss and the gradient equal those of one large batch. The features of all
  micro-batches are first computed without gradient. Each micro-batch is then recomputed
  with gradient and scored against the cached features of the others, as open_clip's
  ``accum_freq`` does. This costs one extra forward pass per micro-batch.
* ``micro_batch``: negatives come only from the sample's own micro-batch, as the
  Graphcore IPU pipeline computed. The step's loss is the mean of the micro-batch losses.

With ``gather_features`` the features of every replica join each loss. Shape legend:
B micro-batch size, A gradient_accumulation, E embed_dim, R image_resolution, L context.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clip.config import Config
from clip.model import CLIP
from clip.training.distributed import Replica
from clip.training.loss import FeatureGather, contrastive_loss, share_gradient
from clip.training.precision import Bf16WorkingCopy, LossScaler, autocast

# Images (B, 3, R, R) and token ids (B, L) of one micro-batch.
MicroBatch = tuple[torch.Tensor, torch.Tensor]


class StepRunner:
    """Runs optimizer steps for one replica.

    Args:
        forward_model: what computes features: the CLIP model, possibly wrapped in
            DistributedDataParallel and compiled.
        model: the plain CLIP model whose parameters the optimizer updates.
        ddp: the DistributedDataParallel wrapper, or None with one replica.
        working_copy: with bf16 on the CPU, the copy with bf16 matmul weights that
            forward_model computes with; it averages gradients across replicas in place of
            DDP.
    """

    def __init__(self, config: Config, forward_model: nn.Module, model: CLIP,
                 ddp: DistributedDataParallel | None, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: LossScaler,
                 gather: FeatureGather, device: torch.device,
                 working_copy: Bf16WorkingCopy | None = None) -> None:
        self.forward_model = forward_model
        self.model = model
        self.ddp = ddp
        self.working_copy = working_copy
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.gather = gather
        self.device = device
        self.precision = config.execution.precision
        self.batch_size = config.execution.batch_size
        self.accumulation = config.execution.gradient_accumulation
        self.cache_features = config.execution.loss_negatives == "step" and self.accumulation > 1
        self.grad_clip_norm = config.optimizer.grad_clip_norm

    def run_host_call(self, images: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Run device_iterations optimizer steps on one host batch.

        Args:
            images: (device_iterations * A * B, 3, R, R) images on the device.
            token_ids: (device_iterations * A * B, L) token ids on the device.

        Returns:
            (device_iterations,) detached loss of each step, on the device.
        """
        step_size = self.batch_size * self.accumulation
        losses = [
            self.run_step(step_images, step_tokens)
            for step_images, step_tokens in zip(images.split(step_size),
                                                token_ids.split(step_size), strict=True)
        ]
        return torch.stack(losses)

    def run_step(self, images: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Accumulate the gradient of A micro-batches, update the weights, return the loss."""
        micro_batches = list(zip(images.split(self.batch_size),
                                 token_ids.split(self.batch_size), strict=True))
        if self.cache_features:
            loss = self._accumulate_with_feature_cache(micro_batches)
        else:
            loss = self._accumulate_micro_batches(micro_batches)
        self._apply_gradients()
        return loss

    def _features(self, images: torch.Tensor, token_ids: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.precision):
            image_features, text_features, logit_scale = self.forward_model(images, token_ids)
        return image_features.float(), text_features.float(), logit_scale

    def _sync_gradients(self, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Let DDP all-reduce gradients only in the last micro-batch's backward pass."""
        if self.ddp is None or last_micro_batch:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def _logit_scale(self, logit_scale: torch.Tensor, passes: int) -> torch.Tensor:
        """Share logit_scale's gradient so the step counts it once in all.

        Unlike the features, logit_scale enters the loss directly. Each of the ``passes``
        backward passes of this replica, and each replica's copy of the gathered loss,
        would otherwise add its full gradient.
        """
        return share_gradient(logit_scale, passes * self.gather.gradient_factor)

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss * self.gather.gradient_factor).backward()

    def _accumulate_micro_batches(self, micro_batches: list[MicroBatch]) -> torch.Tensor:
        losses = []
        for index, (images, token_ids) in enumerate(micro_batches):
            with self._sync_gradients(index == len(micro_batches) - 1):
                image_features, text_features, logit_scale = self._features(images, token_ids)
                loss = contrastive_loss(self.gather.gather_with_local(image_features),
                                        self.gather.gather_with_local(text_features),
                                        self._logit_scale(logit_scale, passes=1))
                self._backward(loss / len(micro_batches))
            losses.append(loss.detach())
        return torch.stack(losses).mean()

    def _accumulate_with_feature_cache(self, micro_batches: list[MicroBatch]) -> torch.Tensor:
        # Phase 1: features of the whole step, without gradient, from every replica.
        with torch.no_grad():
            cached = [self._features(images, token_ids) for images, token_ids in micro_batches]
            image_cache = self.gather.gather(torch.cat([c[0] for c in cached]))  # G E
            text_cache = self.gather.gather(torch.cat([c[1] for c in cached]))  # G E
            step_loss = contrastive_loss(image_cache, text_cache, cached[0][2])

        # Phase 2: each micro-batch again, with gradient, against the cached rest.
        # Summed over micro-batches, these gradients are the large-batch gradient.
        offset = 0
        for index, (images, token_ids) in enumerate(micro_batches):
            with self._sync_gradients(index == len(micro_batches) - 1):
                image_features, text_features, logit_scale = self._features(images, token_ids)
                loss = contrastive_loss(
                    self.gather.substitute(image_cache, image_features, offset),
                    self.gather.substitute(text_cache, text_features, offset),
                    self._logit_scale(logit_scale, passes=len(micro_batches)),
                )
                self._backward(loss)
            offset += images.shape[0]
        return step_loss

    def _apply_gradients(self) -> None:
        if self.working_copy is not None:
            self.working_copy.finish_gradients()
        if self.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.model.clamp_logit_scale()
        if self.working_copy is not None:
            self.working_copy.copy_to_working()


def build_step_runner(config: Config, model: CLIP, optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: LossScaler,
                      replica: Replica) -> StepRunner:
    """Wrap ``model`` for this replica (DDP with several replicas, torch.compile on request).

    With bf16 on the CPU the forward model is a :class:`Bf16WorkingCopy` of ``model``,
    which averages gradients across replicas itself. NOTE: other devices keep plain
    autocast, because the copy was measured only on the CPU and DDP overlaps its
    all-reduce with the backward pass.
    """
    ddp = None
    working_copy = None
    forward_model: nn.Module = model
    if config.execution.precision == "bf16" and replica.device.type == "cpu":
        working_copy = Bf16WorkingCopy(model, replica.world_size)
        forward_model = working_copy.working
    elif replica.world_size > 1:
        device_ids = [replica.device.index] if replica.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=device_ids)
        forward_model = ddp
    if config.execution.compile:
        forward_model = torch.compile(forward_model)
    gather = FeatureGather(config.execution.gather_features, replica.rank, replica.world_size)
    return StepRunner(config, forward_model, model, ddp, optimizer, scheduler, scaler, gather,
                      replica.device, working_copy)
