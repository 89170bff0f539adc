"""Whole training runs at tiny size: outputs, logs, learning, checkpoints and resumption."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from clip.config import Config
from clip.errors import ClipError
from clip.training import checkpoint as ckpt
from clip.training.loop import train

PROGRESS_LINE = re.compile(
    r"Epoch: \d+\.\d\d/\d+ Step: \d+/\d+ Lr: \d+\.\d{6} Loss: \d+\.\d{3} "
    r"Throughput: \d+\.\d\d samples/sec$"
)


def read_metrics(config: Config) -> list[dict]:
    path = Path(config.checkpoint.output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def step_losses(config: Config) -> list[float]:
    return [loss for record in read_metrics(config) for loss in record["losses"]]


def folder_config(tiny_config: Callable[..., Config], captions: Path, images: Path,
                  **overrides: object) -> Config:
    return tiny_config(captions_path=str(captions), image_path=str(images), **overrides)


def test_generated_data_run_outputs(tiny_config: Callable[..., Config],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(host_generate_data=True, generated_samples=32, device_iterations=2,
                         epochs=2)
    train(config)

    lines = capsys.readouterr().out.splitlines()
    progress = [line for line in lines if "Throughput:" in line and "Epoch:" in line]
    # 32 samples / (4 x 2 per host call) = 4 host calls per epoch, 2 epochs.
    assert len(progress) == 8
    for line in progress:
        assert PROGRESS_LINE.search(line), line
    assert progress[-1].split("INFO clip.train: ")[1].startswith("Epoch: 2.00/2 Step: 16/16")
    assert sum("Compiled model in" in line for line in lines) == 1
    assert re.search(r"Throughput: \d+\.\d\d samples/sec\.$", lines[-1])

    output = Path(config.checkpoint.output_dir)
    records = read_metrics(config)
    assert len(records) == 8
    assert all(len(record["losses"]) == 2 and record["samples"] == 8 for record in records)
    assert yaml.safe_load((output / "config.yml").read_text())["device_iterations"] == 2
    assert "Compiled model in" in (output / "train.log").read_text()
    # Generated data is never checkpointed.
    assert not Path(config.checkpoint.checkpoint_dir).exists()


def test_loss_falls_on_fixed_batch(tiny_config: Callable[..., Config]) -> None:
    # Generated data repeats one batch, so 30 steps should fit it.
    config = tiny_config(host_generate_data=True, generated_samples=120, epochs=1,
                         batch_size=4, learning_rate=2e-3)
    train(config)
    losses = step_losses(config)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_image_folder_run_checkpoints(tiny_config: Callable[..., Config],
                                      caption_folder: tuple[Path, Path]) -> None:
    config = folder_config(tiny_config, *caption_folder, checkpoint_save_steps=2, epochs=2)
    train(config)

    # 24 samples / 4 per call = 6 calls per epoch; saves at steps 2, 4, ..., 12.
    directory = Path(config.checkpoint.checkpoint_dir)
    assert sorted(path.name for path in directory.iterdir()) == [
        f"checkpoint_step{step:08d}.pt" for step in (2, 4, 6, 8, 10, 12)
    ]
    saved = ckpt.read_checkpoint(ckpt.latest_checkpoint(directory))
    assert saved["format"] == "clip-train-checkpoint"
    assert saved["version"] == 1
    assert saved["step"] == 12
    assert saved["config"]["batch_size"] == 4
    assert set(saved) >= {"model", "optimizer", "scheduler", "scaler", "rng", "data_position",
                          "epoch"}
    assert len(step_losses(config)) == 12


def test_final_checkpoint_at_max_steps(tiny_config: Callable[..., Config],
                                       caption_folder: tuple[Path, Path]) -> None:
    config = folder_config(tiny_config, *caption_folder, checkpoint_save_steps=100,
                           max_steps=3)
    train(config)
    directory = Path(config.checkpoint.checkpoint_dir)
    assert [path.name for path in directory.iterdir()] == ["checkpoint_step00000003.pt"]


@pytest.mark.parametrize(("stop_at", "workers"), [(6, 0), (8, 0), (8, 1)])
def test_restore_continues_loss_curve(tiny_config: Callable[..., Config],
                                      caption_folder: tuple[Path, Path], tmp_path: Path,
                                      stop_at: int, workers: int) -> None:
    # 6 host calls per epoch: stopping at 6 resumes at the epoch boundary, at 8 in the
    # middle of the second epoch.
    options = {"epochs": 2, "checkpoint_save_steps": 2, "warmup_epochs": 1,
               "dataloader_workers": workers, "async_dataloader": False}
    uninterrupted = folder_config(tiny_config, *caption_folder, **options,
                                  output_dir=str(tmp_path / "whole"),
                                  checkpoint_dir=str(tmp_path / "whole_ckpt"))
    train(uninterrupted)

    first = folder_config(tiny_config, *caption_folder, **options, max_steps=stop_at,
                          output_dir=str(tmp_path / "first"))
    train(first)
    resumed = folder_config(tiny_config, *caption_folder, **options, restore=True,
                            output_dir=str(tmp_path / "resumed"))
    train(resumed)

    expected = step_losses(uninterrupted)
    assert len(expected) == 12
    assert step_losses(first) == pytest.approx(expected[:stop_at], abs=1e-6)
    assert step_losses(resumed) == pytest.approx(expected[stop_at:], abs=1e-6)


def test_restore_rejects_changed_options(tiny_config: Callable[..., Config],
                                         caption_folder: tuple[Path, Path]) -> None:
    train(folder_config(tiny_config, *caption_folder, max_steps=2))
    changed = folder_config(tiny_config, *caption_folder, restore=True, batch_size=8)
    with pytest.raises(ClipError, match=r"batch_size \(saved 4, now 8\)"):
        train(changed)


def test_latest_checkpoint_ignores_partial_write(tmp_path: Path) -> None:
    saved = ckpt.save_checkpoint({"step": 5, "model": {"w": torch.ones(2)}}, tmp_path)
    # A run killed while saving leaves only the temporary file of the newer checkpoint.
    (tmp_path / "checkpoint_step00000009.pt.tmp").write_bytes(b"truncated")
    assert ckpt.latest_checkpoint(tmp_path) == saved
    assert list(tmp_path.glob("*.tmp")) == [tmp_path / "checkpoint_step00000009.pt.tmp"]


def test_read_checkpoint_rejects_other_files(tmp_path: Path) -> None:
    state_dict = tmp_path / "weights.pt"
    torch.save({"logit_scale": torch.ones(())}, state_dict)
    with pytest.raises(ClipError, match="is not a training checkpoint of this project"):
        ckpt.read_checkpoint(state_dict)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ClipError, match="cannot read checkpoint"):
        ckpt.read_checkpoint(text)


@pytest.mark.slow
def test_compiled_model_matches_eager(tiny_config: Callable[..., Config],
                                      tmp_path: Path) -> None:
    # torch.compile with inductor takes about 40 s on 2 CPU cores for the tiny model.
    eager = tiny_config(host_generate_data=True, max_steps=3,
                        output_dir=str(tmp_path / "eager"))
    compiled = tiny_config(host_generate_data=True, max_steps=3, compile=True,
                           output_dir=str(tmp_path / "compiled"))
    train(eager)
    train(compiled)
    assert step_losses(compiled) == pytest.approx(step_losses(eager), abs=1e-4)
