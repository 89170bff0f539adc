"""The training loop of one replica: build, restore, run host calls, report, checkpoint."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from clip.config import Config
from clip.data import build_train_loader
from clip.model import CLIP
from clip.training import checkpoint as ckpt
from clip.training import reporting
from clip.training.checks import validate_training
from clip.training.distributed import Replica, close_replica, init_replica
from clip.training.optim import build_optimizer, build_scheduler
from clip.training.precision import LossScaler
from clip.training.step import build_step_runner

logger = logging.getLogger("clip.train")


def train(config: Config) -> None:
    """Train one replica to the end; the entry point of every training process."""
    validate_training(config)
    # Subnormal floats take a slow path on x86 CPUs. On ViT-B/32 at a small learning rate
    # they made host calls 7 times slower (0.44 against 3.3 samples/s, 2-core AMD EPYC);
    # flushing them to zero changes values below 1.2e-38 only.
    torch.set_flush_denormal(True)
    replica = init_replica(config)
    try:
        if config.execution.device == "ipu":
            from clip.training.ipu import train_on_ipu

            train_on_ipu(config)
        else:
            Trainer(config, replica).run()
    finally:
        close_replica()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Owns the model, data, optimizer and position of one replica's training run."""

    def __init__(self, config: Config, replica: Replica) -> None:
        self.config = config
        self.replica = replica
        execution = config.execution
        output_dir = config.checkpoint.output_dir
        reporting.setup_logging(output_dir, replica.is_main)
        if replica.is_main:
            config.save(Path(output_dir) / reporting.CONFIG_FILE)

        # The same seed on every replica gives the same initial weights; afterwards each
        # replica draws its own random numbers (data augmentation).
        seed_everything(execution.random_seed)
        self.model = CLIP(config.model).to(replica.device)
        if config.checkpoint.checkpoint_file:
            self._load_initial_weights(config.checkpoint.checkpoint_file)
        seed_everything(execution.random_seed + replica.rank)

        self.loader = build_train_loader(config, replica.rank, replica.world_size)
        self.calls_per_epoch = len(self.loader)
        self.steps_per_epoch = self.calls_per_epoch * execution.device_iterations
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.scaler = LossScaler(config, replica.device)
        self.step = 0
        self.epoch = 0
        self.position = 0  # host calls already run in self.epoch
        self.skipped_at_start = 0
        self.rng_at_epoch_start: dict[str, Any] | None = None
        self.saves_data = not (config.data.host_generate_data or config.data.ipu_generate_data)
        if config.checkpoint.restore:
            self._restore()
        self.runner = build_step_runner(config, self.model, self.optimizer, self.scheduler,
                                        self.scaler, replica)

    @property
    def total_steps(self) -> int:
        """Optimizer steps this run will reach: all epochs, or max_steps when smaller."""
        total = self.config.execution.epochs * self.steps_per_epoch
        max_steps = self.config.execution.max_steps
        return min(total, max_steps) if max_steps else total

    def _load_initial_weights(self, path: str) -> None:
        from clip.weights import load_checkpoint_state, load_state_dict_checked

        load_state_dict_checked(self.model, load_checkpoint_state(path), path)
        logger.info("initial weights loaded from %s", path)

    # ---- the run ----

    def run(self) -> None:
        """Train until the last epoch or max_steps, then write the final checkpoint."""
        reporters = reporting.Reporters.open(self.config, self.replica.is_main)
        self._log_start()
        last_saved = self.step
        run_start = time.perf_counter()
        with reporting.ProgressBar(self.total_steps, self.replica.is_main) as bar:
            call_start = time.perf_counter()
            for images, token_ids in self._host_batches():
                record = self._run_host_call(images, token_ids, call_start)

                self._report(record, reporters)
                bar.update(self.step)
                if self._checkpoint_due(last_saved):
                    self._save()
                    last_saved = self.step
                call_start = time.perf_counter()

        if self.saves_data and last_saved != self.step:
            self._save()
        self._log_end(reporters, time.perf_counter() - run_start)

    def _host_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield host batches from the saved position to the end, or until max_steps."""
        epochs = self.config.execution.epochs
        while self.epoch < epochs and self.step < self.total_steps:
            if self.rng_at_epoch_start is None:
                self.rng_at_epoch_start = self._capture_epoch_rng()
            self.loader.set_epoch(self.epoch)
            # NOTE: a mid-epoch resume loads and discards the host batches it skips.
            batches = islice(iter(self.loader), self.position, None)
            for images, token_ids in batches:
                yield images, token_ids
                if self.step >= self.total_steps:
                    return
            self.epoch += 1
            self.position = 0
            self.rng_at_epoch_start = None

    def _run_host_call(self, images: torch.Tensor, token_ids: torch.Tensor,
                       call_start: float) -> reporting.HostCallRecord:
        """Run one host call's optimizer steps and return its record, timed from call_start."""
        execution = self.config.execution
        lr = self.scheduler.get_last_lr()[0]
        device = self.replica.device
        losses = self.runner.run_host_call(images.to(device, non_blocking=True),
                                           token_ids.to(device, non_blocking=True))
        if self.replica.world_size > 1:
            # Local losses differ between replicas without gathered features.
            dist.all_reduce(losses)
            losses /= self.replica.world_size
        loss_values = losses.tolist()  # waits for the device, so the timing is complete
        self.step += execution.device_iterations
        self.position += 1
        return reporting.HostCallRecord(
            epoch=self.step / self.steps_per_epoch, step=self.step, lr=lr, losses=loss_values,
            samples=execution.samples_per_step, seconds=time.perf_counter() - call_start,
        )

    def _report(self, record: reporting.HostCallRecord, reporters: reporting.Reporters) -> None:
        reporters.summary.add(record)
        if not self.replica.is_main:
            return
        logger.info(reporting.progress_line(record, self.config.execution.epochs,
                                            self.total_steps))
        if reporters.summary.first_call is record:
            logger.info(reporting.compile_line(record.seconds))
        if reporters.metrics is not None:
            reporters.metrics.write(record)
        if reporters.wandb is not None:
            reporters.wandb.log(record)

    def _log_start(self) -> None:
        execution = self.config.execution
        logger.info(
            "training %s on %s: %d replica(s), batch_size %d x gradient_accumulation %d x "
            "device_iterations %d, %d samples per host call, %d host calls per epoch, "
            "precision %s, loss_negatives %s",
            self.config.preset, self.replica.device, self.replica.world_size,
            execution.batch_size, execution.gradient_accumulation, execution.device_iterations,
            execution.samples_per_step, self.calls_per_epoch, execution.precision,
            execution.loss_negatives,
        )
        logger.info("data: %d samples; %s", self.loader.num_samples, self.loader.skipped)
        self.skipped_at_start = self.loader.skipped.total

    def _log_end(self, reporters: reporting.Reporters, seconds: float) -> None:
        if self.loader.skipped.total > self.skipped_at_start:
            # Images that failed to decode are found while loading, after the first report.
            logger.warning("data: %s", self.loader.skipped)
        if self.scaler.skipped_steps:
            logger.warning("%d optimizer steps were skipped because fp16 gradients "
                           "overflowed; lower --loss_scaling or set it to 0 (dynamic)",
                           self.scaler.skipped_steps)
        if self.replica.is_main:
            for line in reporting.summary_lines(reporters.summary, self.step, seconds):
                logger.info(line)
        reporters.close()

    # ---- checkpoints ----

    def _loader_generator(self) -> torch.Generator | None:
        """Return the generator from which the DataLoader draws worker seeds, if any."""
        return getattr(getattr(self.loader, "dataloader", None), "generator", None)

    def _capture_epoch_rng(self) -> dict[str, Any]:
        state = ckpt.capture_rng()
        generator = self._loader_generator()
        if generator is not None:
            state["loader"] = generator.get_state()
        return state

    def _restore_epoch_rng(self, state: dict[str, Any]) -> None:
        ckpt.restore_rng(state)
        generator = self._loader_generator()
        if generator is not None and "loader" in state:
            generator.set_state(state["loader"])

    def _checkpoint_due(self, last_saved: int) -> bool:
        every = self.config.checkpoint.checkpoint_save_steps
        return self.saves_data and self.step // every > last_saved // every

    def _save(self) -> None:
        rng = {"epoch_start": self.rng_at_epoch_start or self._capture_epoch_rng(),
               "current": self._capture_epoch_rng()}
        rng_per_rank: list[Any] = [rng]
        if self.replica.world_size > 1:
            rng_per_rank = [None] * self.replica.world_size
            dist.all_gather_object(rng_per_rank, rng)
        if not self.replica.is_main:
            return
        checkpoint = {
            "format": ckpt.CHECKPOINT_FORMAT, "version": ckpt.CHECKPOINT_VERSION,
            "model": self.model.state_dict(), "config": self.config.to_flat(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "rng": rng_per_rank,
            "data_position": {"epoch": self.epoch, "host_calls": self.position},
        }
        path = ckpt.save_checkpoint(checkpoint, self.config.checkpoint.checkpoint_dir)
        logger.info("saved checkpoint %s at step %d", path, self.step)

    def _restore(self) -> None:
        directory = self.config.checkpoint.checkpoint_dir
        path = ckpt.latest_checkpoint(directory)
        assert path is not None, "validate_training checks that a checkpoint exists"
        checkpoint = ckpt.read_checkpoint(path)
        ckpt.check_resumable(checkpoint["config"], self.config, path)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = checkpoint["step"]
        self.epoch = checkpoint["data_position"]["epoch"]
        self.position = checkpoint["data_position"]["host_calls"]
        rng = checkpoint["rng"][self.replica.rank]
        if self.position >= self.calls_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._restore_epoch_rng(rng["current"])
        else:
            # Replaying the epoch's start makes the skipped batches draw the same random
            # numbers as before, so the data that follows is the same too.
            # NOTE: persistent DataLoader workers (async_dataloader with workers) keep their
            # own random state across epochs, which no checkpoint holds, so their random
            # crops after a resume differ from those of an uninterrupted run.
            self._restore_epoch_rng(rng["epoch_start"])
            self.rng_at_epoch_start = rng["epoch_start"]
        logger.info("resumed from %s at step %d (epoch %d, host call %d)",
                    path, self.step, self.epoch, self.position)
