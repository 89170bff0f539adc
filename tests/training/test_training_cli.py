"""The training command line: help, and a clear error for every invalid option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import REPO_ROOT, SUBPROCESS_ENV

from clip.config import load_config
from clip.errors import ClipError
from clip.train import main, parse_training_config
from clip.training.checks import _check_ipu_options


def test_help_lists_options_with_defaults() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clip.train", "--config", "tiny", "--help"],
        cwd=REPO_ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    for option in ("--host_generate_data", "--epochs", "--warmup_epochs", "--batch_size",
                   "--gradient_accumulation", "--device_iterations", "--replication_factor",
                   "--learning_rate", "--loss_scaling", "--checkpoint_dir",
                   "--checkpoint_save_steps", "--restore", "--wandb", "--device",
                   "--precision", "--max_steps", "--compile", "--loss_negatives"):
        assert option in help_text, option
    # The tiny preset's values are the defaults shown.
    assert "Micro-batch size in samples per replica. (default: 4)" in help_text
    assert "(--loss_negatives step)" in help_text


@pytest.mark.parametrize(("argv", "message"), [
    (["--config", "no_such_preset"], "unknown config preset 'no_such_preset'; available "
                                     "presets: .*tiny"),
    (["--batch_size", "-3"], "batch_size=-3 must be positive"),
    (["--epochs", "2", "--warmup_epochs", "3"], "warmup_epochs=3 is longer than training"),
    (["--learning_rate", "0"], "learning_rate=0.0 must be positive"),
    (["--beta2", "1.5"], "beta2=1.5 is outside"),
    (["--device", "cuda"], "device=cuda but torch finds no CUDA GPU"),
    (["--device", "ipu"], "device=ipu needs poptorch"),
    (["--wandb", "True"], "wandb=True needs the wandb package"),
    (["--restore", "True"], "restore=True but .* contains no checkpoint_step"),
    (["--checkpoint_file", "missing.pt"], "checkpoint_file='missing.pt' does not exist"),
])
def test_invalid_option_raises(tmp_path: Path, argv: list[str], message: str) -> None:
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    base = ["--config", "tiny", "--checkpoint_dir", str(tmp_path / "ckpt")]
    with pytest.raises(ClipError, match=message):
        parse_training_config(base + argv)


def test_user_error_exits_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "tiny", "--batch_size", "0"]) == 2
    error = capsys.readouterr().err
    assert "error: batch_size=0 must be positive; change --batch_size." in error
    assert "Traceback" not in error


def test_unknown_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "tiny", "--no_such_option", "1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no_such_option" in capsys.readouterr().err


def test_world_size_must_match_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ClipError, match="replication_factor=2 but the launcher started "
                                        "WORLD_SIZE=4"):
        parse_training_config(["--config", "tiny", "--replication_factor", "2"])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"gradient_accumulation": 2}, "loss_negatives=step .* not available on IPUs"),
    ({"loss_negatives": "micro_batch", "replication_factor": 2},
     "gather_features=True is not available on IPUs"),
    ({"loss_negatives": "micro_batch", "compile": True}, "compile=True applies to cpu"),
    ({"precision": "bf16"}, "precision=bf16 is not available on IPUs"),
    ({"restore": True}, "restore=True is not supported on IPUs"),
])
def test_ipu_rejects_options_it_cannot_keep(overrides: dict, message: str) -> None:
    # The IPU checks run after poptorch imports; they are called directly here.
    config = load_config("tiny", {"device": "ipu", **overrides})
    with pytest.raises(ClipError, match=message):
        _check_ipu_options(config)
