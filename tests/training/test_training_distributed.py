"""Data-parallel replicas with gloo in real processes, under torchrun and self-spawned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from replica_worker import CASES, GLOBAL_BATCH, SGD_OPTIONS
from training_helpers import REPO_ROOT, SUBPROCESS_ENV

from clip.config import load_config
from clip.data.synthetic import generate_batch
from clip.model import CLIP
from clip.training.distributed import Replica
from clip.training.optim import build_optimizer, build_scheduler
from clip.training.precision import LossScaler
from clip.training.step import build_step_runner

WORKER = Path(__file__).with_name("replica_worker.py")


def one_process_step() -> tuple[dict, float]:
    """One step of one process on the whole 8-sample batch."""
    overrides = {**SGD_OPTIONS, "replication_factor": 1, "batch_size": GLOBAL_BATCH}
    config = load_config("tiny", overrides)
    torch.manual_seed(0)
    model = CLIP(config.model)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=10)
    cpu = torch.device("cpu")
    runner = build_step_runner(config, model, optimizer, scheduler, LossScaler(config, cpu),
                               Replica(0, 1, 0, cpu))
    loss = runner.run_step(*generate_batch(GLOBAL_BATCH, 32, 16, seed=3))
    return model.state_dict(), loss.item()


def test_two_replicas_equal_one_global_batch(tmp_path: Path) -> None:
    output = tmp_path / "replicas.pt"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(output)],
        cwd=REPO_ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    replicated = torch.load(output, weights_only=True)
    expected_state, expected_loss = one_process_step()

    assert set(replicated) == set(CASES)
    for case, (state, loss) in replicated.items():
        assert loss == pytest.approx(expected_loss, abs=1e-5), case
        for name, value in expected_state.items():
            assert torch.allclose(state[name], value, atol=1e-5), (
                f"{case}: {name} differs by {(state[name] - value).abs().max()}"
            )


def test_train_spawns_replicas(tmp_path: Path) -> None:
    output = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "clip.train", "--config", "tiny", "--host_generate_data", "True",
         "--replication_factor", "2", "--max_steps", "3", "--output_dir", str(output)],
        cwd=REPO_ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [line for line in result.stdout.splitlines() if "Step: " in line]
    # Rank 0 alone reports: one line per host call.
    assert len(progress) == 3
    assert "starting 2 replicas with MASTER_ADDR=127.0.0.1" in result.stdout
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    # Samples per host call = batch_size 4 x gradient_accumulation 1 x 2 replicas.
    assert [record["samples"] for record in records] == [8, 8, 8]


def test_spawned_replica_error_exits_2(tmp_path: Path) -> None:
    # Each replica's loader checks the data; with none there, every replica stops.
    result = subprocess.run(
        [sys.executable, "-m", "clip.train", "--config", "tiny", "--replication_factor", "2",
         "--captions_path", str(tmp_path / "missing.csv"), "--output_dir", str(tmp_path)],
        cwd=REPO_ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "missing.csv" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
