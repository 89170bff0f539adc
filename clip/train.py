"""Train CLIP: ``python -m clip.train --config PRESET [--option value ...]``.

Every option of the preset can be overridden by name (``--batch_size 32``,
``--host_generate_data True``); ``--help`` lists them with defaults and units. With
``--replication_factor N`` the program starts N data-parallel processes on this machine,
unless a launcher such as torchrun has already started them.
"""

from __future__ import annotations

import sys

from clip.config import Config, parse_config
from clip.errors import ClipError
from clip.training.checks import validate_training
from clip.training.distributed import launched_by_torchrun, spawn_replicas
from clip.training.loop import train
from clip.training.reporting import setup_logging

DESCRIPTION = (
    "Train CLIP on an image-caption set or on generated data. Samples per host call = "
    "batch_size x gradient_accumulation x replication_factor x device_iterations. "
    "Contrastive negatives default to every sample of the optimizer step "
    "(--loss_negatives step)."
)
# argparse's exit status for bad options, used for every user error.
USER_ERROR_EXIT_CODE = 2


def parse_training_config(argv: list[str] | None) -> Config:
    """Parse and validate the command line; raise ClipError for invalid options."""
    config = parse_config(argv, prog="python -m clip.train", description=DESCRIPTION)
    validate_training(config)
    return config


def main(argv: list[str] | None = None) -> int:
    """Run training and return the exit status: 0, or 2 for a user error."""
    try:
        config = parse_training_config(argv)
        replicas = config.execution.replication_factor
        if replicas > 1 and config.execution.device != "ipu" and not launched_by_torchrun():
            setup_logging(None, is_main=True)
            return spawn_replicas(train, config)
        train(config)
    except ClipError as error:
        sys.stderr.write(f"python -m clip.train: error: {error}\n")
        return USER_ERROR_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
