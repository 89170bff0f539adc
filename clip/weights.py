"""Load CLIP weights from OpenAI, open_clip and this project's training checkpoints.

:func:`load_model` accepts four kinds of file:

- an OpenAI TorchScript archive such as ``ViT-B-32.pt``, read with ``torch.jit.load``;
- a plain state dict written with ``torch.save``;
- an open_clip checkpoint, ``{"state_dict": ...}`` with keys that may start with
  ``module.`` (written by DistributedDataParallel);
- a training checkpoint of this project (see :mod:`clip.training.checkpoint`), whose
  ``config`` entry gives the architecture.

Every file is first tried with ``torch.jit.load``, as OpenAI's ``clip.load`` does, and
otherwise read with ``torch.load(weights_only=True)``. The other kinds contain only tensors
and plain containers, and the restricted unpickler cannot run code from the file, unlike a
full unpickle. A TorchScript archive contains compiled code and cannot be read any other
way, so load checkpoint files only from sources you trust.

When neither the caller nor the file gives the architecture, :func:`infer_model_config`
derives it from the tensor shapes as OpenAI's ``build_model`` does.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from clip.config import DEFAULT_PRESET, ModelConfig, config_from_flat
from clip.errors import ClipError
from clip.model import CLIP
from clip.training.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

logger = logging.getLogger(__name__)

# OpenAI's TorchScript archives store these hyperparameters beside the weights.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Key prefixes added by DistributedDataParallel and torch.compile wrappers.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# OpenAI's build_model gives both towers one attention head per 64 channels.
HEAD_WIDTH = 64
# How many keys of each kind a mismatch error lists before it summarises the rest.
MAX_LISTED_KEYS = 8

# Errors that torch.load raises for files it cannot read: RuntimeError for a zip archive of
# another kind or a truncated one, EOFError for an empty file, and UnpicklingError, LookupError,
# ValueError or TypeError for bytes that are not a valid pickle.
UNREADABLE_FILE_ERRORS = (
    RuntimeError, EOFError, pickle.UnpicklingError, LookupError, ValueError, TypeError,
)


@dataclass
class Weights:
    """The weights read from a checkpoint file."""

    state_dict: dict[str, torch.Tensor]
    # "torchscript", "state_dict", "open_clip" or "training".
    kind: str
    # The architecture that the file records; only training checkpoints record one.
    model_config: ModelConfig | None = None


def read_weights(path: str | Path) -> Weights:
    """Read the weights of any accepted checkpoint kind on the CPU.

    The state dict comes back with wrapper prefixes and OpenAI's metadata entries
    removed and with the dtypes of the file.

    Raises:
        ClipError: the file is missing, unreadable or contains no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"checkpoint file {path} not found; pass the path of a .pt file.")

    with open(path, "rb") as file:
        state_dict = _read_torchscript(file)
        if state_dict is not None:
            return Weights(_clean_state_dict(state_dict, path), "torchscript")
        # A failed torch.jit.load leaves the position at the end of a torch.save file, and
        # torch.load would then raise EOFError on a valid file.
        file.seek(0)
        contents = _load_restricted(file, path)
    return _unpack(contents, path)


def load_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Return the state dict of any accepted checkpoint kind, with OpenAI's key names."""
    return read_weights(path).state_dict


def infer_model_config(state_dict: dict[str, torch.Tensor],
                       quick_gelu: bool = True) -> ModelConfig:
    """Derive the architecture of a ViT CLIP from the shapes in its state dict.

    Heads are width // 64, as in OpenAI's ``build_model``, because the state dict does not
    record them. The activation is not recorded either: pass ``quick_gelu=False`` for
    checkpoints trained with exact GELU, such as those of open_clip's non-quickgelu models.

    Raises:
        ClipError: a tensor that the inference needs is missing, or a width is below 64.
    """
    required = (
        "visual.conv1.weight", "visual.positional_embedding", "visual.proj",
        "visual.transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight",
        "positional_embedding", "ln_final.weight", "text_projection",
        "transformer.resblocks.0.attn.in_proj_weight",
    )
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise ClipError(
            f"cannot infer the model architecture: the state dict has no {', '.join(missing)} "
            "entries, so it is not a ViT CLIP state dict with OpenAI's key names. ResNet "
            "image towers are not supported."
        )

    vision_width, _, patch_size, _ = state_dict["visual.conv1.weight"].shape
    patches = state_dict["visual.positional_embedding"].shape[0] - 1
    grid_size = round(patches ** 0.5)
    if grid_size * grid_size != patches:
        raise ClipError(
            f"visual.positional_embedding has {patches + 1} rows; expected a square number of "
            "patches plus one class token."
        )
    transformer_width = state_dict["ln_final.weight"].shape[0]
    config = ModelConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=patch_size * grid_size,
        vision_layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
        vision_width=vision_width,
        vision_heads=_infer_heads(vision_width, "vision_width"),
        vision_patch_size=patch_size,
        grid_size=grid_size,
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=_infer_heads(transformer_width, "transformer_width"),
        transformer_layers=_count_blocks(state_dict, "transformer.resblocks."),
        quick_gelu=quick_gelu,
    )
    config.validate()
    return config


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor],
                     source: str) -> None:
    """Raise ClipError listing every key that keeps ``state_dict`` from loading strictly.

    The message lists missing keys, unexpected keys and shape mismatches with both shapes.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} (checkpoint {tuple(state_dict[key].shape)}, model {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    problems = [
        _describe_keys(description, keys)
        for description, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise ClipError(
            f"the weights in {source} do not fit the model: {'; '.join(problems)}. Pass the "
            "ModelConfig that the checkpoint was trained with, or a checkpoint of this "
            "architecture."
        )


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor],
                            source: str, assign: bool = False) -> None:
    """Load ``state_dict`` into ``model`` strictly, casting each tensor to the model's dtype.

    Args:
        model: the module to fill.
        state_dict: weights with the model's key names; fp16 tensors are cast to the dtype
            of the matching parameter.
        source: where the weights came from, for the error message.
        assign: passed to ``nn.Module.load_state_dict``. True adopts the cast tensors
            instead of copying them into the existing ones, which a model built on the
            meta device needs.

    Raises:
        ClipError: keys are missing, unexpected or of the wrong shape; all are listed.
    """
    check_state_dict(model, state_dict, source)
    expected = model.state_dict()
    cast = {key: value.to(expected[key].dtype) for key, value in state_dict.items()}
    model.load_state_dict(cast, strict=True, assign=assign)


def load_model(path: str | Path, config: ModelConfig | None = None,
               device: str | torch.device = "cpu") -> CLIP:
    """Build a CLIP model in eval mode from any accepted checkpoint kind.

    Args:
        path: an OpenAI TorchScript archive, a state dict, an open_clip checkpoint or a
            training checkpoint of this project.
        config: the architecture. When None, a training checkpoint's own configuration is
            used, and for other kinds it is inferred from the shapes (with QuickGELU).
        device: where the model is placed.

    Returns:
        The model in fp32 (the default dtype), whatever the dtype of the file.

    Raises:
        ClipError: the file is unreadable, or its weights do not fit the architecture.
    """
    weights = read_weights(path)
    model_config = config if config is not None else weights.model_config
    if model_config is None:
        model_config = infer_model_config(weights.state_dict)

    # Building on the meta device skips the random initialisation that the checkpoint
    # would overwrite; load_state_dict(assign=True) then adopts the cast tensors.
    with torch.device("meta"):
        model = CLIP(model_config)
    load_state_dict_checked(model, weights.state_dict, str(path), assign=True)

    logger.info("loaded %s weights from %s", weights.kind, path)
    return model.to(device).eval()


def _read_torchscript(file: IO[bytes]) -> dict[str, torch.Tensor] | None:
    """Return the state dict of a TorchScript archive, or None if the file is not one."""
    try:
        with warnings.catch_warnings():
            # torch 2.14 deprecates torch.jit.load, but OpenAI's archives need it.
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated",
                                    category=FutureWarning)
            module = torch.jit.load(file, map_location="cpu")
    except RuntimeError:
        return None
    return dict(module.state_dict())


def _load_restricted(file: IO[bytes], path: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except UNREADABLE_FILE_ERRORS as error:
        raise ClipError(
            f"cannot read {path} as a checkpoint: it is not a TorchScript archive, and "
            f"torch.load(weights_only=True) failed ({_summarise_load_error(error)}). Pass "
            "an OpenAI .pt archive, an open_clip checkpoint, a state dict saved with "
            "torch.save, or a checkpoint written by clip.train. Files that contain Python "
            "objects other than tensors and plain containers are rejected."
        ) from None


def _summarise_load_error(error: Exception) -> str:
    """Return the error type and the line of torch.load's message that names the cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torch 2.14's weights-only message names the rejected Python object on its own line,
    # after two paragraphs of advice that do not apply here.
    rejected = [line for line in lines if line.startswith("WeightsUnpickler error:")]
    cause = rejected[0].split(" Please ")[0] if rejected else (lines[0] if lines else "")
    return f"{type(error).__name__}: {cause[:200].rstrip('.')}"


def _unpack(contents: Any, path: Path) -> Weights:
    """Take the state dict (and a training checkpoint's architecture) out of a loaded file."""
    if not isinstance(contents, dict):
        raise ClipError(
            f"{path} contains a {type(contents).__name__}, not a state dict or a checkpoint "
            "dict; save the model's state_dict() instead."
        )
    if contents.get("format") == CHECKPOINT_FORMAT:
        if contents.get("version") != CHECKPOINT_VERSION:
            raise ClipError(
                f"{path} is a training checkpoint of version {contents.get('version')}; this "
                f"program reads version {CHECKPOINT_VERSION}."
            )
        model_config = _model_config_from_flat(contents.get("config"), path)
        return Weights(_clean_state_dict(contents.get("model"), path), "training", model_config)
    if isinstance(contents.get("state_dict"), dict):
        return Weights(_clean_state_dict(contents["state_dict"], path), "open_clip")
    return Weights(_clean_state_dict(contents, path), "state_dict")


def _model_config_from_flat(flat: Any, path: Path) -> ModelConfig:
    """Build the ModelConfig from a training checkpoint's flat option dict."""
    if not isinstance(flat, dict):
        raise ClipError(
            f"training checkpoint {path} has no 'config' dict of options; pass the model "
            "configuration explicitly (load_model(path, config=...))."
        )
    names = {field.name for field in dataclasses.fields(ModelConfig)}
    model_options = {name: value for name, value in flat.items() if name in names}
    preset = str(flat.get("config", DEFAULT_PRESET))
    model_config = config_from_flat(model_options, preset).model
    model_config.validate()
    return model_config


def _clean_state_dict(state_dict: Any, path: Path) -> dict[str, torch.Tensor]:
    """Check that the values are tensors; drop OpenAI's metadata and wrapper prefixes."""
    if not isinstance(state_dict, dict) or not state_dict:
        raise ClipError(f"{path} contains an empty or missing state dict.")
    not_tensors = [
        f"{key} ({type(value).__name__})"
        for key, value in state_dict.items()
        if not isinstance(value, torch.Tensor)
    ]
    if not_tensors:
        raise ClipError(
            f"{path} is not a state dict: "
            f"{_describe_keys('entries that are not tensors', not_tensors)}. Pass a state "
            "dict, an open_clip checkpoint or a checkpoint written by clip.train."
        )
    return {
        _strip_prefixes(key): value
        for key, value in state_dict.items()
        if key not in OPENAI_METADATA_KEYS
    }


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key.removeprefix(prefix)
                stripped = True
    return key


def _count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix):].split(".")[0] for key in state_dict if key.startswith(prefix)})


def _infer_heads(width: int, name: str) -> int:
    if width < HEAD_WIDTH:
        raise ClipError(
            f"{name}={width} is below {HEAD_WIDTH}, so the number of attention heads cannot "
            "be inferred as width // 64; pass the ModelConfig (load_model(path, config=...))."
        )
    return width // HEAD_WIDTH


def _describe_keys(description: str, keys: list[str]) -> str:
    listed = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return f"{description} ({len(keys)}): {listed}" + (f" and {more} more" if more > 0 else "")
