"""One replica of the data-parallel equivalence test; run under torchrun by the test.

    python -m torch.distributed.run --standalone --nproc_per_node 2 replica_worker.py OUT

Each replica trains one step on its half of a fixed 8-sample batch, for each case in
CASES, and rank 0 saves the weights and losses to OUT.
"""

from __future__ import annotations

import sys

import torch

from clip.config import load_config
from clip.data.synthetic import generate_batch
from clip.model import CLIP
from clip.training.distributed import close_replica, init_replica
from clip.training.optim import build_optimizer, build_scheduler
from clip.training.precision import LossScaler
from clip.training.step import build_step_runner

# Plain SGD with lr 1: the weights after one step are w - gradient.
SGD_OPTIONS = {"optimizer": "SGD", "learning_rate": 1.0, "beta1": 0.0, "weight_decay": 0.0,
               "context_length": 16, "replication_factor": 2}
CASES = {
    "micro_batch_4": {"batch_size": 4, "gradient_accumulation": 1},
    "accumulate_2x2": {"batch_size": 2, "gradient_accumulation": 2, "loss_negatives": "step"},
}
GLOBAL_BATCH = 8


def run_case(overrides: dict) -> tuple[dict, float]:
    config = load_config("tiny", {**SGD_OPTIONS, **overrides})
    replica = init_replica(config)
    torch.manual_seed(0)
    model = CLIP(config.model)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=10)
    runner = build_step_runner(config, model, optimizer, scheduler,
                               LossScaler(config, replica.device), replica)
    images, token_ids = generate_batch(GLOBAL_BATCH, 32, 16, seed=3)
    share = GLOBAL_BATCH // replica.world_size
    rows = slice(replica.rank * share, (replica.rank + 1) * share)
    loss = runner.run_step(images[rows], token_ids[rows])
    return model.state_dict(), loss.item()


def main(output: str) -> None:
    results = {name: run_case(overrides) for name, overrides in CASES.items()}
    if torch.distributed.get_rank() == 0:
        torch.save(results, output)
    close_replica()


if __name__ == "__main__":
    main(sys.argv[1])
