"""Devices and data-parallel replicas: torchrun, or processes spawned by the program itself.

Under ``torchrun`` (one node or several) every process reads RANK, WORLD_SIZE and
LOCAL_RANK from its environment. Started without torchrun and with
``replication_factor`` > 1, the program spawns one process per replica on this machine
with ``torch.multiprocessing.spawn`` and a free port on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clip.config import Config
from clip.errors import ClipError

logger = logging.getLogger(__name__)

# Exit status of a replica that stopped on a ClipError; the message is in its log.
USER_ERROR_EXIT_CODE = 2


@dataclass(frozen=True)
class Replica:
    """This process's place among the replicas and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, metrics and checkpoints (rank 0)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Return whether a launcher such as torchrun set RANK and WORLD_SIZE for this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_device(config: Config) -> str:
    """Return the device type the run uses: ``auto`` resolved, availability checked."""
    requested = config.execution.device
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ClipError(
            "device=cuda but torch finds no CUDA GPU (torch.cuda.is_available() is False); "
            "use --device cpu or auto, or install a CUDA build of torch on a GPU machine."
        )
    if requested == "ipu":
        try:
            import poptorch  # noqa: F401
        except ImportError:
            raise ClipError(
                "device=ipu needs poptorch, which ships with Graphcore's Poplar SDK and is "
                "not installed here; enable the SDK and install its poptorch wheel, or use "
                "--device cpu|cuda|auto."
            ) from None
    return requested


def check_world_size(config: Config) -> None:
    """Check that a launcher's WORLD_SIZE matches replication_factor."""
    if not launched_by_torchrun():
        return
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size != config.execution.replication_factor:
        raise ClipError(
            f"replication_factor={config.execution.replication_factor} but the launcher "
            f"started WORLD_SIZE={world_size} processes; pass --replication_factor "
            f"{world_size} or start {config.execution.replication_factor} processes."
        )


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_replica(config: Config) -> Replica:
    """Join the process group when there is more than one replica; return this replica."""
    device_type = check_device(config)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_type)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                device_id=device if device_type == "cuda" else None)
        logger.debug("rank %d of %d joined the %s process group", rank, world_size, backend)
    return Replica(rank, world_size, local_rank, device)


def close_replica() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _run_spawned(local_rank: int, world_size: int, port: int,
                 function: Callable[[Config], None], config: Config) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
        LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    # Replicas share this machine's cores instead of each starting one thread per core.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        function(config)
    except ClipError as error:
        logging.getLogger("clip.train").error("replica %d stopped: %s", local_rank, error)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


def spawn_replicas(function: Callable[[Config], None], config: Config) -> int:
    """Run ``function(config)`` in replication_factor processes on this machine.

    Returns:
        0 when every replica finished, else the exit status of the first that failed.
    """
    world_size = config.execution.replication_factor
    port = find_free_port()
    logger.info("starting %d replicas with MASTER_ADDR=127.0.0.1 MASTER_PORT=%d",
                world_size, port)
    try:
        mp.spawn(_run_spawned, args=(world_size, port, function, config), nprocs=world_size)
    except mp.ProcessExitedException as error:
        logger.error("replica %d exited with status %s", error.error_index, error.exit_code)
        return error.exit_code if error.exit_code and error.exit_code > 0 else 1
    return 0
