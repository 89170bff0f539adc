"""Training loaders: host batches of (images, token ids) with static shapes.

Every loader yields ``len(loader)`` host batches per epoch. A host batch contains
S = batch_size x gradient_accumulation x device_iterations samples of one replica: images
float32 (S, 3, R, R) and token ids int64 (S, context_length). Partial batches are dropped.

DataLoader workers produce micro-batches of ``batch_size`` samples, which keeps the memory of
the prefetched batches small, and the main process concatenates them into host batches (into
pinned memory when training on CUDA). Failures that workers met travel with their micro-batch
and are added to ``loader.skipped``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from clip.config import Config, ExecutionConfig
from clip.data import synthetic
from clip.data.captions import detect_format, read_caption_table
from clip.data.dataset import Failure, ImageCaptionDataset, collate_samples
from clip.data.report import SkipReport
from clip.data.transforms import train_transform
from clip.errors import ClipError

logger = logging.getLogger(__name__)

HostBatch = tuple[torch.Tensor, torch.Tensor]


def host_batch_size(execution: ExecutionConfig) -> int:
    """Samples per replica and host call: batch_size x gradient_accumulation x device_iterations."""
    return execution.batch_size * execution.gradient_accumulation * execution.device_iterations


def resolve_device(execution: ExecutionConfig) -> str:
    """Return the configured device with auto resolved to cuda or cpu."""
    if execution.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return execution.device


@dataclass
class LoaderStats:
    """Batches and samples delivered since the loader was built, and the consumer's wait."""

    batches: int = 0
    samples: int = 0
    wait_seconds: float = 0.0

    @property
    def delivered_rate(self) -> float:
        """Samples per second of waiting; far above the training rate when data is not a limit."""
        return self.samples / self.wait_seconds if self.wait_seconds else float("inf")


class TrainLoader:
    """Base of the training loaders: an iterable of host batches with a fixed length per epoch.

    Attributes:
        host_batch_size: samples per host batch (S).
        num_samples: usable samples of the whole dataset (all replicas), after skipping.
        skipped: rows and images skipped so far; log it once (it grows while loading).
        stats: batches and samples delivered and the time the consumer waited for them.
    """

    def __init__(self, host_batch_size: int, num_batches: int, num_samples: int,
                 skipped: SkipReport | None = None) -> None:
        self.host_batch_size = host_batch_size
        self.num_batches = num_batches
        self.num_samples = num_samples
        self.skipped = skipped or SkipReport()
        self.stats = LoaderStats()
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffling; call before iterating each epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[HostBatch]:
        batches = self._host_batches()
        for _ in range(self.num_batches):
            start = time.perf_counter()
            batch = next(batches)
            self.stats.wait_seconds += time.perf_counter() - start
            self.stats.batches += 1
            self.stats.samples += self.host_batch_size
            yield batch

    def measure_rate(self, num_batches: int = 0) -> float:
        """Load ``num_batches`` host batches (0: one epoch) with no consumer; return images/s.

        This is the loader's own rate, to compare with the rate that training consumes. The
        first batch, which waits for worker start-up, is not timed unless it is the only one.
        ``stats`` is left unchanged.
        """
        count = min(num_batches or self.num_batches, self.num_batches)
        batches = self._host_batches()
        start = time.perf_counter()
        next(batches)
        if count == 1:
            return self.host_batch_size / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(count - 1):
            next(batches)
        return (count - 1) * self.host_batch_size / (time.perf_counter() - start)

    def _host_batches(self) -> Iterator[HostBatch]:
        raise NotImplementedError


class ImageCaptionLoader(TrainLoader):
    """Host batches assembled from the micro-batches of a DataLoader over image-caption data."""

    def __init__(self, dataloader: DataLoader, host_batch_size: int, micro_batches_per_host: int,
                 num_batches: int, num_samples: int, skipped: SkipReport, pin_memory: bool,
                 sampler: DistributedSampler | None = None,
                 epoch_value: Synchronized | None = None) -> None:
        super().__init__(host_batch_size, num_batches, num_samples, skipped)
        self.dataloader = dataloader
        self.micro_batches_per_host = micro_batches_per_host
        self.pin_memory = pin_memory
        self.sampler = sampler
        self.epoch_value = epoch_value

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.epoch_value is not None:
            self.epoch_value.value = epoch

    def _host_batches(self) -> Iterator[HostBatch]:
        micro_batches = iter(self.dataloader)
        while True:
            parts = []
            for _ in range(self.micro_batches_per_host):
                images, tokens, failures = next(micro_batches)
                self._record(failures)
                parts.append((images, tokens))
            yield self._concatenate(parts)

    def _record(self, failures: list[Failure]) -> None:
        for reason, example in failures:
            self.skipped.add_failure(reason, example)

    def _concatenate(self, parts: list[HostBatch]) -> HostBatch:
        if len(parts) == 1 and not self.pin_memory:
            return parts[0]
        images = _allocate(parts, 0, self.pin_memory)
        tokens = _allocate(parts, 1, self.pin_memory)
        torch.cat([part[0] for part in parts], out=images)
        torch.cat([part[1] for part in parts], out=tokens)
        return images, tokens


def _allocate(parts: list[HostBatch], field: int, pin_memory: bool) -> torch.Tensor:
    first = parts[0][field]
    shape = (sum(part[field].shape[0] for part in parts), *first.shape[1:])
    # NOTE: the pinned-memory path (CUDA) is untested.
    return torch.empty(shape, dtype=first.dtype, pin_memory=pin_memory)


class SyntheticLoader(TrainLoader):
    """The same generated host batch on every call, on the host or on the device."""

    def __init__(self, batch: HostBatch, num_batches: int, world_size: int) -> None:
        size = batch[0].shape[0]
        super().__init__(size, num_batches, size * num_batches * world_size)
        self.batch = batch

    def _host_batches(self) -> Iterator[HostBatch]:
        while True:
            yield self.batch


class HostBatchSampler(Sampler[list[int]]):
    """Micro-batches of a replica's indices, cut to a whole number of host batches per epoch."""

    def __init__(self, sampler: DistributedSampler, micro_batch_size: int,
                 micro_batches_per_host: int) -> None:
        self.sampler = sampler
        self.micro_batch_size = micro_batch_size
        self.host_batch_size = micro_batch_size * micro_batches_per_host
        self.micro_batches_per_host = micro_batches_per_host

    def host_batches(self) -> int:
        return len(self.sampler) // self.host_batch_size

    def __len__(self) -> int:
        return self.host_batches() * self.micro_batches_per_host

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)
        for start in range(0, len(self) * self.micro_batch_size, self.micro_batch_size):
            yield indices[start:start + self.micro_batch_size]


def build_train_loader(config: Config, rank: int = 0, world_size: int = 1) -> TrainLoader:
    """Build the training loader of one replica from the configuration.

    Generated data is used when ``host_generate_data`` or ``ipu_generate_data`` is True.
    Otherwise the loader reads the image-caption set at ``captions_path`` and ``image_path``
    in its layout: cc3m or csv (:mod:`clip.data.captions`) or webdataset
    (:mod:`clip.data.shards`).

    Args:
        config: the run configuration; the data, execution and model groups are used.
        rank: this replica's index, from 0 to world_size - 1.
        world_size: number of data-parallel replicas; each reads its own shard of the data.

    Returns:
        A TrainLoader of host batches (images (S, 3, R, R), token ids (S, context_length)).
    """
    if not 0 <= rank < world_size:
        raise ClipError(
            f"rank={rank} is outside 0..{world_size - 1} for world_size={world_size}; pass the "
            "replica's rank in the data-parallel group."
        )
    if config.data.host_generate_data or config.data.ipu_generate_data:
        return _build_synthetic_loader(config, rank, world_size)
    if detect_format(config.data) == "webdataset":
        return _build_shard_loader(config, rank, world_size)
    return _build_table_loader(config, rank, world_size)


def _build_synthetic_loader(config: Config, rank: int, world_size: int) -> SyntheticLoader:
    data, execution, model = config.data, config.execution, config.model
    device = resolve_device(execution)
    target = device if data.ipu_generate_data else "cpu"
    if target == "ipu":
        raise ClipError(
            "ipu_generate_data on the IPU is not supported by this loader; use "
            "--host_generate_data True, or --device cpu or cuda."
        )
    size = host_batch_size(execution)
    batch = synthetic.generate_batch(
        size, model.image_resolution, model.context_length, execution.random_seed + rank, target
    )
    if data.host_generate_data and device == "cuda":
        # NOTE: this and generation on a CUDA device are untested.
        batch = (batch[0].pin_memory(), batch[1].pin_memory())
    num_batches = synthetic.epoch_batches(data.generated_samples, size, world_size)
    logger.info(
        "generated %d samples on %s, returned %d times per epoch", size, target, num_batches
    )
    return SyntheticLoader(batch, num_batches, world_size)


def _build_table_loader(config: Config, rank: int, world_size: int) -> ImageCaptionLoader:
    data, execution, model = config.data, config.execution, config.model
    seed = execution.random_seed
    table = read_caption_table(data)
    dataset = ImageCaptionDataset(
        table, train_transform(model.image_resolution), model.context_length, data.truncate, seed
    )
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    micro_batches = execution.gradient_accumulation * execution.device_iterations
    batch_sampler = HostBatchSampler(sampler, execution.batch_size, micro_batches)
    num_batches = batch_sampler.host_batches()
    _check_enough_samples(config, len(dataset), world_size, num_batches)
    dataloader = DataLoader(
        dataset, batch_sampler=batch_sampler, collate_fn=collate_samples,
        **_worker_options(config, rank),
    )
    return ImageCaptionLoader(
        dataloader, host_batch_size(execution), micro_batches, num_batches, len(dataset),
        table.skipped, _pin_memory(execution), sampler=sampler,
    )


def _build_shard_loader(config: Config, rank: int, world_size: int) -> ImageCaptionLoader:
    # Imported here so that webdataset is needed only for shards.
    from clip.data import shards

    data, execution, model = config.data, config.execution, config.model
    shard_set = shards.list_shards(data.captions_path)
    if len(shard_set.paths) < world_size:
        raise ClipError(
            f"{len(shard_set.paths)} webdataset shards cannot give each of {world_size} "
            "replicas its own shard; split the data into at least as many shards as replicas."
        )
    # Every replica must run the same number of steps, so the smallest share sets the epoch.
    replica_samples = min(shard_set.replica_samples(r, world_size) for r in range(world_size))
    num_batches = replica_samples // host_batch_size(execution)
    _check_enough_samples(config, sum(shard_set.sample_counts), world_size, num_batches)
    stream = shards.ShardStream(
        shard_set.replica_shards(rank, world_size), train_transform(model.image_resolution),
        model.context_length, data.truncate, execution.random_seed, rank,
    )
    dataloader = DataLoader(
        stream, batch_size=execution.batch_size, collate_fn=collate_samples,
        **_worker_options(config, rank),
    )
    micro_batches = execution.gradient_accumulation * execution.device_iterations
    return ImageCaptionLoader(
        dataloader, host_batch_size(execution), micro_batches, num_batches,
        sum(shard_set.sample_counts), shard_set.skipped, _pin_memory(execution),
        epoch_value=stream.epoch,
    )


def _check_enough_samples(config: Config, num_samples: int, world_size: int,
                          num_batches: int) -> None:
    if num_batches:
        return
    execution = config.execution
    raise ClipError(
        f"{config.data.captions_path} has {num_samples} usable samples, fewer than one host "
        f"batch of {host_batch_size(execution)} samples (batch_size {execution.batch_size} x "
        f"gradient_accumulation {execution.gradient_accumulation} x device_iterations "
        f"{execution.device_iterations}) for each of {world_size} replicas; lower those "
        "options or add data."
    )


def _worker_options(config: Config, rank: int) -> dict[str, Any]:
    workers = config.data.dataloader_workers
    # Seeds the workers' random crops: the same seed and rank give the same crops.
    generator = torch.Generator().manual_seed(config.execution.random_seed + rank)
    options: dict[str, Any] = {"num_workers": workers, "generator": generator}
    if workers:
        options["persistent_workers"] = config.data.async_dataloader
    return options


def _pin_memory(execution: ExecutionConfig) -> bool:
    return resolve_device(execution) == "cuda"
