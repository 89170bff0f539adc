"""Weight loading: every checkpoint kind round-trips, and every bad file raises ClipError.

All files are small and written by the tests: a TorchScript archive with the layout of
OpenAI's ``ViT-B-32.pt``, plain and fp16 state dicts, an open_clip-style checkpoint and a
training checkpoint saved by :func:`clip.training.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from clip.config import ModelConfig, load_config
from clip.errors import ClipError
from clip.model import CLIP
from clip.training.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from clip.weights import (
    infer_model_config,
    load_checkpoint_state,
    load_model,
    load_state_dict_checked,
    read_weights,
)

# Widths of 128 give two heads per tower under OpenAI's width // 64 rule, so a plain state
# dict of this model loads without a config.
SMALL = ModelConfig(
    embed_dim=32, image_resolution=32, vision_layers=2, vision_width=128, vision_heads=2,
    vision_patch_size=16, grid_size=2, context_length=16, vocab_size=64,
    transformer_width=128, transformer_heads=2, transformer_layers=2,
)


@pytest.fixture
def small_model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(dataclasses.replace(SMALL)).eval()


class TensorArchive(nn.Module):
    """A module whose state_dict is exactly the given tensors, nested by dotted names.

    Scripted and saved, it is a TorchScript archive laid out like OpenAI's: parameters
    under OpenAI's names plus integer ``input_resolution``, ``context_length`` and
    ``vocab_size`` entries.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            *parents, leaf = name.split(".")
            module: nn.Module = self
            for parent in parents:
                if not hasattr(module, parent):
                    module.add_module(parent, nn.Module())
                module = getattr(module, parent)
            if tensor.is_floating_point():
                module.register_parameter(leaf, nn.Parameter(tensor.clone()))
            else:
                module.register_buffer(leaf, tensor.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale


def write_torchscript(model: CLIP, path: Path) -> None:
    """Save the model's weights in fp16 as a TorchScript archive, as OpenAI ships them."""
    tensors = {key: value.half() for key, value in model.state_dict().items()}
    tensors["input_resolution"] = torch.tensor(model.config.image_resolution)
    tensors["context_length"] = torch.tensor(model.config.context_length)
    tensors["vocab_size"] = torch.tensor(model.config.vocab_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(TensorArchive(tensors)).save(str(path))


def write_state_dict(model: CLIP, path: Path) -> None:
    torch.save(model.state_dict(), path)


def write_fp16_state_dict(model: CLIP, path: Path) -> None:
    torch.save({key: value.half() for key, value in model.state_dict().items()}, path)


def write_open_clip_checkpoint(model: CLIP, path: Path) -> None:
    state_dict = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state_dict}, path)


WRITERS: dict[str, tuple[Callable[[CLIP, Path], None], str, torch.dtype]] = {
    "torchscript": (write_torchscript, "torchscript", torch.float16),
    "state_dict": (write_state_dict, "state_dict", torch.float32),
    "fp16_state_dict": (write_fp16_state_dict, "state_dict", torch.float16),
    "open_clip": (write_open_clip_checkpoint, "open_clip", torch.float32),
}


def assert_weights_equal(loaded: nn.Module, original: nn.Module, dtype: torch.dtype) -> None:
    """Check every tensor of ``loaded`` against ``original`` rounded to the file's dtype."""
    expected = original.state_dict()
    actual = loaded.state_dict()
    assert list(actual) == list(expected)
    for key, value in actual.items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, expected[key].to(dtype).float()), key


# ---- round trips ----

@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_checkpoint_round_trip(writer: str, small_model: CLIP, tmp_path: Path) -> None:
    write, kind, dtype = WRITERS[writer]
    path = tmp_path / "weights.pt"
    write(small_model, path)

    assert read_weights(path).kind == kind
    loaded = load_model(path)

    assert loaded.config == SMALL
    assert not loaded.training
    assert all(parameter.requires_grad for parameter in loaded.parameters())
    assert_weights_equal(loaded, small_model, dtype)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images),
                                   small_model.encode_image(images), atol=1e-2, rtol=1e-2)


def test_training_checkpoint_round_trip(tmp_path: Path) -> None:
    config = load_config("tiny")
    torch.manual_seed(0)
    model = CLIP(config.model)
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model": model.state_dict(), "config": config.to_flat(),
        "optimizer": optimizer.state_dict(), "step": 7, "epoch": 1,
    }
    path = save_checkpoint(checkpoint, tmp_path)

    weights = read_weights(path)
    loaded = load_model(path)

    assert weights.kind == "training"
    # The tiny preset's widths of 32 cannot be inferred from shapes, so this also shows
    # that the checkpoint's own configuration was used.
    assert weights.model_config == config.model
    assert loaded.config == config.model
    assert_weights_equal(loaded, model, torch.float32)


def test_explicit_config_overrides_inference(small_model: CLIP, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    write_state_dict(small_model, path)
    config = dataclasses.replace(SMALL, vision_heads=4, transformer_heads=8, quick_gelu=False)

    loaded = load_model(path, config=config)

    assert loaded.config == config
    assert loaded.visual.transformer.resblocks[0].attn.heads == 4
    assert_weights_equal(loaded, small_model, torch.float32)


def test_plain_file_loads_after_failed_torchscript_attempt(small_model: CLIP,
                                                           tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    write_state_dict(small_model, path)
    with open(path, "rb") as file, pytest.raises(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        torch.jit.load(file)

    state_dict = load_checkpoint_state(path)

    assert state_dict.keys() == small_model.state_dict().keys()


def test_state_drops_openai_metadata_and_prefixes(small_model: CLIP, tmp_path: Path) -> None:
    archive = tmp_path / "archive.pt"
    write_torchscript(small_model, archive)
    wrapped = tmp_path / "wrapped.pt"
    state_dict = {f"module._orig_mod.{key}": value
                  for key, value in small_model.state_dict().items()}
    torch.save({"state_dict": state_dict}, wrapped)

    for path in (archive, wrapped):
        keys = load_checkpoint_state(path).keys()
        assert keys == small_model.state_dict().keys(), path.name


def test_load_state_dict_checked_casts_fp16(small_model: CLIP) -> None:
    torch.manual_seed(1)
    target = CLIP(dataclasses.replace(SMALL))
    half = {key: value.half() for key, value in small_model.state_dict().items()}

    load_state_dict_checked(target, half, "memory")

    assert target.dtype == torch.float32
    assert_weights_equal(target, small_model, torch.float16)


@pytest.mark.parametrize("preset", ["CLIP_ViT-B-32_cc3m", "CLIP_ViT-B-16", "CLIP_ViT-L-14"])
def test_infer_model_config_matches_preset(preset: str) -> None:
    config = load_config(preset).model
    with torch.device("meta"):  # shapes only, no memory or initialisation
        state_dict = CLIP(config).state_dict()

    assert infer_model_config(state_dict) == config
    assert infer_model_config(state_dict, quick_gelu=False).quick_gelu is False


# ---- bad files ----

def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ClipError, match=r"checkpoint file .*absent\.pt not found"):
        load_model(tmp_path / "absent.pt")


UNREADABLE_CONTENTS = {
    "text": b"not a checkpoint\n",
    "short_text": b"abc\n",
    "empty": b"",
    "broken_zip": b"PK\x03\x04broken zip",
    "random_bytes": bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8).tolist()),
}


@pytest.mark.parametrize("content", sorted(UNREADABLE_CONTENTS))
def test_unreadable_file_raises(content: str, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(UNREADABLE_CONTENTS[content])
    with pytest.raises(ClipError, match=r"cannot read .*notes\.txt as a checkpoint: it is not a "
                       r"TorchScript archive"):
        load_model(path)


class Pickled:
    """A Python object that torch.load(weights_only=True) must reject."""


def test_truncated_checkpoint_raises(small_model: CLIP, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    write_state_dict(small_model, path)
    path.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(ClipError, match=r"failed \(RuntimeError: PytorchStreamReader failed"):
        load_model(path)


def test_arbitrary_python_objects_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "object.pt"
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "extra": Pickled()}, path)
    with pytest.raises(ClipError, match=r"torch.load\(weights_only=True\) failed "
                       r"\(UnpicklingError: WeightsUnpickler error: Unsupported global: "
                       r"GLOBAL \S*Pickled was not an allowed global"):
        load_model(path)


def test_non_dict_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ClipError, match=r"contains a list, not a state dict"):
        load_model(path)


def test_dict_without_tensors_raises(tmp_path: Path) -> None:
    path = tmp_path / "metadata.pt"
    torch.save({"epoch": 3, "name": "run", "weight": torch.zeros(1)}, path)
    with pytest.raises(ClipError, match=r"is not a state dict: entries that are not tensors \(2\): "
                       r"epoch \(int\), name \(str\)"):
        load_model(path)


def test_empty_state_dict_raises(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    torch.save({}, path)
    with pytest.raises(ClipError, match="contains an empty or missing state dict"):
        load_model(path)


def test_wrong_shapes_list_both_shapes(small_model: CLIP, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    write_state_dict(small_model, path)
    config = dataclasses.replace(SMALL, embed_dim=48)
    with pytest.raises(ClipError, match=r"shape mismatches \(2\): text_projection \(checkpoint "
                       r"\(128, 32\), model \(128, 48\)\), visual\.proj \(checkpoint "
                       r"\(128, 32\), model \(128, 48\)\)"):
        load_model(path, config=config)


def test_missing_and_unexpected_keys_are_listed(small_model: CLIP, tmp_path: Path) -> None:
    state_dict = small_model.state_dict()
    del state_dict["ln_final.bias"]
    state_dict["extra.weight"] = torch.zeros(1)
    path = tmp_path / "weights.pt"
    torch.save(state_dict, path)
    with pytest.raises(ClipError, match=r"missing keys \(1\): ln_final\.bias; unexpected keys "
                       r"\(1\): extra\.weight\. Pass the ModelConfig"):
        load_model(path)


def test_long_key_lists_are_summarised(small_model: CLIP, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    write_state_dict(small_model, path)
    deeper = dataclasses.replace(SMALL, vision_layers=3, transformer_layers=3)
    with pytest.raises(ClipError, match=r"missing keys \(24\): visual\.transformer\.resblocks\.2\."
                       r"ln_1\.weight, .* and 16 more\."):
        load_model(path, config=deeper)


def test_missing_inference_key_raises(small_model: CLIP, tmp_path: Path) -> None:
    state_dict = small_model.state_dict()
    del state_dict["visual.proj"]
    path = tmp_path / "weights.pt"
    torch.save(state_dict, path)
    with pytest.raises(ClipError, match=r"cannot infer the model architecture: the state dict "
                       r"has no visual\.proj entries"):
        load_model(path)


def test_narrow_widths_need_a_config(tmp_path: Path) -> None:
    config = load_config("tiny").model
    path = tmp_path / "tiny.pt"
    torch.save(CLIP(config).state_dict(), path)

    with pytest.raises(ClipError, match=r"vision_width=32 is below 64, so the number of "
                       r"attention heads cannot be inferred"):
        load_model(path)
    assert load_model(path, config=config).config == config


def test_non_square_patch_grid_raises(small_model: CLIP) -> None:
    state_dict = small_model.state_dict()
    state_dict["visual.positional_embedding"] = torch.zeros(6, 128)
    with pytest.raises(ClipError, match=r"has 6 rows; expected a square number of patches"):
        infer_model_config(state_dict)


def test_training_checkpoint_of_other_version_raises(small_model: CLIP, tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 2, "model": small_model.state_dict()},
               path)
    with pytest.raises(ClipError, match=r"training checkpoint of version 2; this program reads "
                       r"version 1"):
        load_model(path)


def test_training_checkpoint_without_config_raises(small_model: CLIP, tmp_path: Path) -> None:
    path = tmp_path / "no_config.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "model": small_model.state_dict()}, path)
    with pytest.raises(ClipError, match=r"has no 'config' dict of options"):
        load_model(path)
