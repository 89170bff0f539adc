"""Configuration: presets, overrides, validation and the generated command line."""

import argparse

import pytest
import yaml

from clip.config import (
    DEFAULT_PRESET,
    Config,
    config_from_flat,
    load_config,
    load_presets,
    parse_config,
    str_to_bool,
)
from clip.errors import ClipError


def test_default_preset_matches_graphcore_values() -> None:
    config = load_config(DEFAULT_PRESET)
    assert config.model.vision_width == 768
    assert config.model.vision_layers == 12
    assert config.model.vision_patch_size == 32
    assert config.model.transformer_width == 512
    assert config.model.vocab_size == 49408
    assert config.execution.batch_size == 74
    assert config.execution.gradient_accumulation == 15
    assert config.optimizer.eps == pytest.approx(1e-6)
    assert config.execution.matmul_proportion == [0.1] + [0.2] * 7


def test_every_preset_validates() -> None:
    for name in load_presets():
        assert load_config(name).preset == name


def test_unit_test_preset_sizes() -> None:
    model = load_config("unit_test").model
    assert (model.embed_dim, model.vision_width, model.vision_layers, model.vision_heads) == (
        256, 384, 3, 6)
    assert (model.transformer_width, model.transformer_heads, model.transformer_layers) == (
        256, 4, 3)


def test_overrides_and_batch_arithmetic() -> None:
    config = load_config("tiny", {"batch_size": 3, "gradient_accumulation": 2,
                                  "replication_factor": 2, "device_iterations": 4})
    assert config.execution.global_batch_size == 12
    assert config.execution.samples_per_step == 48


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ClipError, match=r"unknown config preset 'nope'.*CLIP_ViT-B-32_cc3m"):
        load_config("nope")


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(ClipError, match=r"unknown option\(s\) \['bogus'\]"):
        config_from_flat({"bogus": 1})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": -1}, r"batch_size=-1 must be positive; change --batch_size"),
        ({"gradient_accumulation": 0}, r"gradient_accumulation=0 must be positive"),
        ({"image_resolution": 30}, r"image_resolution=30 is not a multiple of vision_patch_size=8"),
        ({"grid_size": 5}, r"grid_size=5 does not match .* = 4"),
        ({"vision_heads": 3}, r"vision_width=32 is not divisible by vision_heads=3"),
        ({"learning_rate": 0}, r"learning_rate=0.0 must be positive"),
        ({"beta2": 1.0}, r"beta2=1.0 is outside \[0, 1\)"),
        ({"max_steps": -5}, r"max_steps=-5 is negative"),
        ({"dataloader_workers": -1}, r"dataloader_workers=-1 is negative"),
        ({"host_generate_data": True, "ipu_generate_data": True}, r"both True"),
        ({"batch_size": "many"}, r"invalid value 'many' for option batch_size"),
        ({"batch_size": 2.5}, r"invalid value 2.5 for option batch_size"),
    ],
)
def test_invalid_values_name_the_option(overrides: dict, message: str) -> None:
    with pytest.raises(ClipError, match=message):
        load_config("tiny", overrides)


def test_yaml_strings_are_coerced() -> None:
    config = load_config("tiny", {"learning_rate": "1e-4", "wandb": "False", "epochs": "3"})
    assert config.optimizer.learning_rate == pytest.approx(1e-4)
    assert config.checkpoint.wandb is False
    assert config.execution.epochs == 3


@pytest.mark.parametrize("text", ["True", "true", "t", "1", "yes", "Y"])
def test_str_to_bool_true(text: str) -> None:
    assert str_to_bool(text) is True


@pytest.mark.parametrize("text", ["False", "false", "f", "0", "no", "N"])
def test_str_to_bool_false(text: str) -> None:
    assert str_to_bool(text) is False


def test_str_to_bool_rejects_other_text() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid boolean value 'maybe'"):
        str_to_bool("maybe")


def test_command_line_overrides_preset() -> None:
    argv = ["--config", "tiny", "--host_generate_data", "True", "--batch_size", "6",
            "--wandb", "--matmul_proportion", "0.3", "0.4", "--precision", "bf16"]
    config = parse_config(argv, prog="test", description="test")
    assert config.preset == "tiny"
    assert config.data.host_generate_data is True
    assert config.execution.batch_size == 6
    assert config.checkpoint.wandb is True
    assert config.execution.matmul_proportion == [0.3, 0.4]
    assert config.execution.precision == "bf16"
    assert config.model.vision_width == 32


def test_command_line_rejects_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", "tiny", "--no_such_option", "1"], prog="test",
                     description="test")
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no_such_option" in capsys.readouterr().err


def test_command_line_rejects_bad_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--precision", "fp8"], prog="test", description="test")
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_saved_config_round_trips(tmp_path) -> None:
    config = load_config("tiny", {"batch_size": 5})
    config.save(tmp_path / "config.yml")
    flat = yaml.safe_load((tmp_path / "config.yml").read_text())
    assert flat["config"] == "tiny"
    assert flat["batch_size"] == 5
    restored = config_from_flat(flat, flat["config"])
    assert restored == config
    assert isinstance(restored, Config)
