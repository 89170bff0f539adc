"""Webdataset tar shards of images and ``.txt`` captions, as img2dataset writes them.

``captions_path`` names the shards: one ``.tar`` file, a brace pattern such as
``data/shards/{00000..00099}.tar``, or a folder of ``.tar`` files. Only local files are
supported, because the shards are listed up front to count their samples.

Replicas take every ``world_size``-th shard, and DataLoader workers split their replica's
shards the same way. Each worker streams its shards without end, reshuffling the shard order on
every pass and mixing samples through a shuffle buffer, and the loader takes a fixed number of
host batches per epoch. Every replica then runs the same number of steps even though shard sizes
differ and bad samples are dropped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import tarfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import braceexpand
import torch
import webdataset
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext

from clip.data.dataset import Failure, Sample, tokenize_caption
from clip.data.images import ImageDecodeError, load_rgb
from clip.data.report import (
    BAD_CAPTION,
    EMPTY_CAPTION,
    INCOMPLETE_SAMPLE,
    UNREADABLE_IMAGE,
    UNREADABLE_SHARD,
    SkipReport,
)
from clip.data.transforms import Transform
from clip.errors import ClipError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_EXTENSION = "txt"
# Raw samples (encoded bytes, about 100 kB each for web images) held per worker for shuffling.
SHUFFLE_BUFFER = 500


@dataclass
class ShardSet:
    """Local shard files with the number of complete samples (image and caption) in each."""

    paths: list[str]
    sample_counts: list[int]
    skipped: SkipReport

    def replica_shards(self, rank: int, world_size: int) -> list[str]:
        return self.paths[rank::world_size]

    def replica_samples(self, rank: int, world_size: int) -> int:
        return sum(self.sample_counts[rank::world_size])


def expand_shards(pattern: str) -> list[str]:
    """Return the shard files that ``pattern`` names; raise ClipError if any is missing."""
    if os.path.isdir(pattern):
        paths = sorted(str(path) for path in Path(pattern).glob("*.tar"))
    else:
        paths = list(braceexpand.braceexpand(pattern))
    missing = [path for path in paths if not os.path.isfile(path)]
    if not paths or missing:
        raise ClipError(
            f"webdataset shards {pattern!r} not found (missing: {missing[:3] or [pattern]}); set "
            "--captions_path to local .tar files, a brace pattern or a folder of .tar files."
        )
    return paths


def list_shards(pattern: str) -> ShardSet:
    """Expand ``pattern`` and count the complete samples of each shard from its tar headers."""
    report = SkipReport()
    paths = expand_shards(pattern)
    counts = [_count_samples(path, report) for path in paths]
    if not sum(counts):
        raise ClipError(
            f"webdataset shards {pattern!r} contain no sample with both an image "
            f"({', '.join(IMAGE_EXTENSIONS)}) and a .{CAPTION_EXTENSION} caption."
        )
    logger.info("found %d samples in %d webdataset shards", sum(counts), len(paths))
    return ShardSet(paths, counts, report)


def _count_samples(path: str, report: SkipReport) -> int:
    extensions: dict[str, set[str]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key, extension = base_plus_ext(member.name)
                if member.isfile() and key is not None:
                    extensions.setdefault(key, set()).add(extension.lower())
    except (tarfile.TarError, OSError) as error:
        report.add(UNREADABLE_SHARD, f"{path}: {error}")
        return 0
    complete = 0
    for key, found in extensions.items():
        if CAPTION_EXTENSION in found and found & set(IMAGE_EXTENSIONS):
            complete += 1
        else:
            report.add(INCOMPLETE_SAMPLE, f"{os.path.basename(path)}:{key}")
    return complete


class ShardStream(IterableDataset):
    """Endless stream of (image, token ids, failures) samples from one replica's shards.

    The epoch is a shared integer, so a persistent worker reads the value that ``set_epoch``
    wrote in the main process when it starts the next epoch's stream.
    """

    def __init__(self, shards: list[str], transform: Transform, context_length: int,
                 truncate: bool, seed: int, rank: int) -> None:
        self.shards = shards
        self.transform = transform
        self.context_length = context_length
        self.truncate = truncate
        self.seed = seed
        self.rank = rank
        self.epoch: Synchronized = multiprocessing.Value("q", 0)

    def __iter__(self) -> Iterator[Sample]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shards = self.shards[worker_id::num_workers]
        if not shards:
            return
        rng = random.Random(f"{self.seed}:{self.epoch.value}:{self.rank}:{worker_id}")
        failures: list[Failure] = []
        buffer: list[dict] = []
        while True:
            order = shards.copy()
            rng.shuffle(order)
            yielded = 0
            for raw in self._read(order, failures):
                buffer.append(raw)
                if len(buffer) < SHUFFLE_BUFFER:
                    continue
                sample = self._decode(_pop_random(buffer, rng), failures)
                if sample is not None:
                    yielded += 1
                    yield sample + (tuple(failures),)
                    failures.clear()
            if not yielded:
                # Shards smaller than the buffer never fill it, so a pass ends by emptying it.
                yielded = yield from self._drain(buffer, rng, failures)
            if not yielded:
                raise ClipError(
                    f"no readable sample in webdataset shards {shards[:3]}; failures: "
                    f"{failures[:3]}."
                )

    def _drain(self, buffer: list[dict], rng: random.Random,
               failures: list[Failure]) -> Generator[Sample, None, int]:
        yielded = 0
        while buffer:
            sample = self._decode(_pop_random(buffer, rng), failures)
            if sample is not None:
                yielded += 1
                yield sample + (tuple(failures),)
                failures.clear()
        return yielded

    def _read(self, shards: list[str], failures: list[Failure]) -> Iterator[dict]:
        def record(error: Exception) -> bool:
            failures.append((UNREADABLE_SHARD, str(error)[:200]))
            return True

        stream = webdataset.WebDataset(
            shards, handler=record, shardshuffle=False, nodesplitter=None,
            workersplitter=None, empty_check=False,
        )
        for raw in stream:
            if CAPTION_EXTENSION in raw and any(ext in raw for ext in IMAGE_EXTENSIONS):
                yield raw

    def _decode(self, raw: dict,
                failures: list[Failure]) -> tuple[torch.Tensor, torch.Tensor] | None:
        name = f"{os.path.basename(raw.get('__url__', ''))}:{raw['__key__']}"
        try:
            caption = raw[CAPTION_EXTENSION].decode("utf-8")
        except UnicodeDecodeError:
            failures.append((BAD_CAPTION, name))
            return None
        if not caption.strip():
            failures.append((EMPTY_CAPTION, name))
            return None
        image_bytes = next(raw[ext] for ext in IMAGE_EXTENSIONS if ext in raw)
        try:
            tokens = tokenize_caption(caption, self.context_length, self.truncate)
            image = load_rgb(image_bytes)
        except ImageDecodeError:
            failures.append((UNREADABLE_IMAGE, name))
            return None
        except ClipError:
            failures.append((BAD_CAPTION, name))
            return None
        return self.transform(image), tokens


def _pop_random(buffer: list[dict], rng: random.Random) -> dict:
    index = rng.randrange(len(buffer))
    buffer[index], buffer[-1] = buffer[-1], buffer[index]
    return buffer.pop()
