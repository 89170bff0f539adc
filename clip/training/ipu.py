"""Training on Graphcore IPUs through poptorch (Poplar SDK).

NOTE: this path was written against poptorch's documented API (Options,
trainingModel, BeginBlock, optim.AdamW, identity_loss, copyWeightsToHost) and has not
been run here, because this machine has neither the Poplar SDK nor an IPU.

poptorch runs every replica from this one process, so a host call passes
batch_size x gradient_accumulation x device_iterations x replication_factor samples.
The pipeline over ``ipus_per_replica`` IPUs computes the loss per micro-batch
(``loss_negatives micro_batch``). clip.training.checks rejects the options whose
meaning an IPU cannot keep. The host sets the learning rate once per host call, so the
device_iterations steps of one call share it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip.config import Config
from clip.data import build_train_loader
from clip.model import CLIP, MAX_LOGIT_SCALE
from clip.training import checkpoint as ckpt
from clip.training import reporting
from clip.training.loss import contrastive_loss
from clip.training.optim import WarmupSchedule, parameter_groups

logger = logging.getLogger("clip.train")


class LossModel(nn.Module):
    """CLIP plus its loss, because poptorch's training model must return the loss.

    The weights stay on the IPUs between host calls, so the host cannot clamp
    logit_scale after each step. The loss clamps the value it uses instead.
    """

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        import poptorch

        image_features = F.normalize(self.model.encode_image(images), dim=-1)
        text_features = F.normalize(self.model.encode_text(token_ids), dim=-1)
        logit_scale = self.model.logit_scale.clamp(0, MAX_LOGIT_SCALE).exp()
        loss = contrastive_loss(image_features, text_features, logit_scale)
        return poptorch.identity_loss(loss, reduction="mean")


def build_options(config: Config) -> Any:
    """Translate the execution options into ``poptorch.Options``."""
    import poptorch

    execution = config.execution
    options = poptorch.Options()
    options.randomSeed(execution.random_seed)
    options.deviceIterations(execution.device_iterations)
    options.replicationFactor(execution.replication_factor)
    options.Training.gradientAccumulation(execution.gradient_accumulation)
    options.outputMode(poptorch.OutputMode.All)
    if execution.ipus_per_replica > 1:
        options.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.SameAsIpu))
    proportions = execution.matmul_proportion
    options.setAvailableMemoryProportion({
        f"IPU{ipu}": proportions[ipu] if len(proportions) > 1 else proportions[0]
        for ipu in range(execution.ipus_per_replica)
    })
    options.TensorLocations.setOptimizerLocation(
        poptorch.TensorLocationSettings()
        .useOnChipStorage(execution.state_onchip)
        .useReplicatedTensorSharding(execution.enable_rts)
    )
    if execution.enable_half_partials:
        options.Precision.setPartialsType(torch.half)
    if execution.executable_cache_dir:
        options.enableExecutableCaching(execution.executable_cache_dir)
    if config.data.ipu_generate_data:
        options.enableSyntheticData(True)
    if execution.precision == "fp16" and config.optimizer.loss_scaling == 0:
        options.Training.setAutomaticLossScaling(True)
    return options


def assign_pipeline_stages(model: CLIP, ipus: int) -> None:
    """Spread the vision blocks, then the text blocks, evenly over ``ipus`` IPUs."""
    import poptorch

    blocks = [(model.visual.transformer.resblocks, index)
              for index in range(len(model.visual.transformer.resblocks))]
    blocks += [(model.transformer.resblocks, index)
               for index in range(len(model.transformer.resblocks))]
    previous_ipu = 0
    for position, (container, index) in enumerate(blocks):
        ipu = position * ipus // len(blocks)
        if container is model.transformer.resblocks and index == 0:
            model.token_embedding = poptorch.BeginBlock(model.token_embedding, ipu_id=ipu)
        elif ipu != previous_ipu:
            container[index] = poptorch.BeginBlock(container[index], ipu_id=ipu)
        previous_ipu = ipu


def build_ipu_optimizer(model: nn.Module, config: Config) -> Any:
    import poptorch

    options = config.optimizer
    groups = parameter_groups(model, options.weight_decay)
    static_scale = config.execution.precision == "fp16" and options.loss_scaling > 0
    kwargs: dict[str, Any] = {"lr": options.learning_rate,
                              "loss_scaling": options.loss_scaling if static_scale else 1.0}
    if options.optimizer == "SGD":
        return poptorch.optim.SGD(groups, momentum=options.beta1, **kwargs)
    adam_class = poptorch.optim.AdamW if options.optimizer == "AdamW" else poptorch.optim.Adam
    return adam_class(groups, betas=(options.beta1, options.beta2), eps=options.eps, **kwargs)


def train_on_ipu(config: Config) -> None:
    """Train on IPUs: one process drives every replica through poptorch."""
    import poptorch

    execution = config.execution
    reporting.setup_logging(config.checkpoint.output_dir, is_main=True)
    config.save(f"{config.checkpoint.output_dir}/{reporting.CONFIG_FILE}")
    torch.manual_seed(execution.random_seed)
    model = CLIP(config.model)
    if execution.ipus_per_replica > 1:
        assign_pipeline_stages(model, execution.ipus_per_replica)
    if execution.precision == "fp16":
        model = model.half()
    loss_model = LossModel(model).train()

    loader = build_train_loader(_host_loader_config(config))
    steps_per_epoch = len(loader) * execution.device_iterations
    optimizer = build_ipu_optimizer(loss_model, config)
    schedule = WarmupSchedule(round(config.optimizer.warmup_epochs * steps_per_epoch),
                              execution.epochs * steps_per_epoch, config.optimizer.lr_schedule)
    training_model = poptorch.trainingModel(loss_model, build_options(config), optimizer=optimizer)
    _run_ipu_loop(config, model, training_model, optimizer, loader, schedule, steps_per_epoch)


def _host_loader_config(config: Config) -> Config:
    """Return the options for a loader that feeds every replica from this process.

    Host batches grow by replication_factor. poptorch replaces the data of
    ipu_generate_data on the device, so the host only generates a batch of the right
    shape.
    """
    execution = config.execution
    host_execution = dataclasses.replace(
        execution, device="cpu",
        device_iterations=execution.device_iterations * execution.replication_factor,
    )
    data = config.data
    if data.ipu_generate_data:
        data = dataclasses.replace(data, host_generate_data=True, ipu_generate_data=False)
    return dataclasses.replace(config, execution=host_execution, data=data)


def _run_ipu_loop(config: Config, model: CLIP, training_model: Any, optimizer: Any,
                  loader: Any, schedule: WarmupSchedule, steps_per_epoch: int) -> None:
    execution = config.execution
    total_steps = execution.epochs * steps_per_epoch
    if execution.max_steps:
        total_steps = min(total_steps, execution.max_steps)
    summary = reporting.ThroughputSummary()
    metrics = reporting.MetricsWriter(config.checkpoint.output_dir)
    step = 0
    run_start = call_start = time.perf_counter()
    for epoch in range(execution.epochs):
        loader.set_epoch(epoch)
        for images, token_ids in loader:
            lr = config.optimizer.learning_rate * schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            training_model.setOptimizer(optimizer)
            if execution.precision == "fp16":
                images = images.half()
            losses = training_model(images, token_ids)
            step += execution.device_iterations
            record = reporting.HostCallRecord(
                epoch=step / steps_per_epoch, step=step, lr=lr,
                losses=[float(losses.float().mean())], samples=execution.samples_per_step,
                seconds=time.perf_counter() - call_start,
            )
            summary.add(record)
            logger.info(reporting.progress_line(record, execution.epochs, total_steps))
            if summary.first_call is record:
                logger.info(reporting.compile_line(record.seconds))
            metrics.write(record)
            if step >= total_steps:
                break
            call_start = time.perf_counter()
        if step >= total_steps:
            break
    training_model.copyWeightsToHost()
    if not (config.data.host_generate_data or config.data.ipu_generate_data):
        # NOTE: IPU runs save the weights once, at the end, without optimizer state.
        model.clamp_logit_scale()
        checkpoint = {"format": ckpt.CHECKPOINT_FORMAT, "version": ckpt.CHECKPOINT_VERSION,
                      "model": model.float().state_dict(), "config": config.to_flat(),
                      "step": step, "epoch": step // steps_per_epoch}
        ckpt.save_checkpoint(checkpoint, config.checkpoint.checkpoint_dir)
    metrics.close()
    for line in reporting.summary_lines(summary, step, time.perf_counter() - run_start):
        logger.info(line)
