"""Typed run configuration: dataclass groups, YAML presets and the command line.

Every option keeps the flat name of the Graphcore CLIP example (``--batch_size``,
``--host_generate_data True``), so presets and benchmark specs written for it still
work. Inside the code the options are grouped by concern; a flat name belongs to
exactly one group, which :func:`config_from_flat` relies on.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from clip.errors import ClipError

PRESETS_FILE = "configs.yml"
DEFAULT_PRESET = "CLIP_ViT-B-32_cc3m"


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a configuration field with its help text (unit included) and choices."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    """Architecture of the two towers; names follow OpenAI's CLIP code."""

    embed_dim: int = option(512, "Width of the joint image-text embedding.")
    image_resolution: int = option(224, "Input image height and width in pixels.")
    vision_layers: int = option(12, "Number of residual blocks in the vision transformer.")
    vision_width: int = option(768, "Width of the vision transformer.")
    vision_heads: int = option(12, "Attention heads in the vision transformer.")
    vision_patch_size: int = option(32, "Patch height and width in pixels.")
    grid_size: int = option(
        0, "Patches per image side; 0 derives it as image_resolution // vision_patch_size."
    )
    context_length: int = option(77, "Maximum caption length in tokens.")
    vocab_size: int = option(49408, "Size of the BPE vocabulary.")
    transformer_width: int = option(512, "Width of the text transformer.")
    transformer_heads: int = option(8, "Attention heads in the text transformer.")
    transformer_layers: int = option(12, "Number of residual blocks in the text transformer.")
    quick_gelu: bool = option(
        True, "QuickGELU MLP activation as in OpenAI's weights; False uses exact GELU, as "
        "open_clip's non-quickgelu models (LAION weights) do."
    )

    def validate(self) -> None:
        for name in (
            "embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_heads",
            "vision_patch_size", "context_length", "vocab_size", "transformer_width",
            "transformer_heads", "transformer_layers",
        ):
            require_positive(self, name)
        if self.image_resolution % self.vision_patch_size:
            raise ClipError(
                f"image_resolution={self.image_resolution} is not a multiple of "
                f"vision_patch_size={self.vision_patch_size}; change --image_resolution "
                "or --vision_patch_size."
            )
        derived_grid = self.image_resolution // self.vision_patch_size
        if self.grid_size not in (0, derived_grid):
            raise ClipError(
                f"grid_size={self.grid_size} does not match image_resolution / "
                f"vision_patch_size = {derived_grid}; set --grid_size {derived_grid} or 0."
            )
        for width, heads in (
            ("vision_width", "vision_heads"), ("transformer_width", "transformer_heads"),
        ):
            if getattr(self, width) % getattr(self, heads):
                raise ClipError(
                    f"{width}={getattr(self, width)} is not divisible by "
                    f"{heads}={getattr(self, heads)}; change --{width} or --{heads}."
                )

    @property
    def num_patches(self) -> int:
        return (self.image_resolution // self.vision_patch_size) ** 2


@dataclass
class DataConfig:
    """Where training samples come from and how captions are read."""

    host_generate_data: bool = option(
        False, "Train on synthetic data generated once on the host (no dataset needed)."
    )
    ipu_generate_data: bool = option(
        False, "Train on synthetic data created on the device itself, with no host transfer."
    )
    generated_samples: int = option(
        0, "Samples in one epoch of generated data; 0 means 10 host calls' worth."
    )
    image_path: str = option("./data/cc3m/images", "Folder that contains the training images.")
    captions_path: str = option(
        "./data/cc3m/img_cap.csv", "Captions file: 'image_name<TAB>caption' per line, a CSV "
        "or TSV with a header, or a webdataset shard pattern (*.tar)."
    )
    dataset_format: str = option(
        "auto", "Layout of captions_path.", choices=("auto", "cc3m", "csv", "webdataset")
    )
    csv_separator: str = option("\t", "Column separator of a captions file with a header.")
    csv_img_key: str = option("filepath", "Image column of a captions file with a header.")
    csv_caption_key: str = option("title", "Caption column of a captions file with a header.")
    truncate: bool = option(True, "Truncate captions longer than context_length tokens.")
    dataloader_workers: int = option(2, "DataLoader worker processes per replica.")
    async_dataloader: bool = option(True, "Keep DataLoader workers alive between epochs.")

    def validate(self) -> None:
        if self.dataloader_workers < 0:
            raise ClipError(
                f"dataloader_workers={self.dataloader_workers} is negative; "
                "set --dataloader_workers 0 or more."
            )
        if self.generated_samples < 0:
            raise ClipError(
                f"generated_samples={self.generated_samples} is negative; "
                "set --generated_samples 0 or more."
            )
        if self.host_generate_data and self.ipu_generate_data:
            raise ClipError(
                "host_generate_data and ipu_generate_data are both True; set one to False."
            )


@dataclass
class ExecutionConfig:
    """Batch, parallelism, precision and device: the options accelerator users tune."""

    device: str = option(
        "auto", "Device to run on; auto picks cuda when present, else cpu.",
        choices=("auto", "cpu", "cuda", "ipu"),
    )
    precision: str = option(
        "fp32", "Arithmetic precision: fp32, bf16 autocast, or fp16 with fp32 master weights.",
        choices=("fp32", "bf16", "fp16"),
    )
    batch_size: int = option(74, "Micro-batch size in samples per replica.")
    gradient_accumulation: int = option(15, "Micro-batches accumulated per optimizer step.")
    device_iterations: int = option(1, "Optimizer steps executed per host call.")
    replication_factor: int = option(1, "Data-parallel replicas (torch.distributed processes).")
    loss_negatives: str = option(
        "step", "Contrastive negatives: 'step' uses every micro-batch of the optimizer step "
        "(equal to the large-batch loss), 'micro_batch' only the sample's own micro-batch.",
        choices=("step", "micro_batch"),
    )
    gather_features: bool = option(
        True, "Gather features across replicas so the loss covers the global batch."
    )
    epochs: int = option(32, "Training epochs.")
    max_steps: int = option(0, "Stop after this many optimizer steps; 0 means no limit.")
    compile: bool = option(False, "Compile the model with torch.compile.")
    random_seed: int = option(42, "Seed for weights, data order and generated data.")
    ipus_per_replica: int = option(1, "IPUs per replica (pipeline stages); IPU only.")
    matmul_proportion: list[float] = option(
        [0.6], "Fraction of IPU memory for matmuls, one value or one per IPU; IPU only."
    )
    executable_cache_dir: str = option("./exe_cache", "Poplar executable cache; IPU only.")
    enable_half_partials: bool = option(False, "fp16 partials in matmuls; IPU only.")
    enable_rts: bool = option(False, "Replicated tensor sharding of optimizer state; IPU only.")
    state_onchip: bool = option(False, "Keep optimizer state on chip; IPU only.")

    def validate(self) -> None:
        for name in (
            "batch_size", "gradient_accumulation", "device_iterations", "replication_factor",
            "epochs", "ipus_per_replica",
        ):
            require_positive(self, name)
        if self.max_steps < 0:
            raise ClipError(
                f"max_steps={self.max_steps} is negative; set --max_steps 0 (no limit) or more."
            )

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step across all replicas."""
        return self.batch_size * self.gradient_accumulation * self.replication_factor

    @property
    def samples_per_step(self) -> int:
        """Samples per host call: the global batch times device_iterations."""
        return self.global_batch_size * self.device_iterations


@dataclass
class OptimizerConfig:
    """Optimizer, learning-rate schedule and loss scaling."""

    optimizer: str = option("AdamW", "Optimizer.", choices=("AdamW", "Adam", "SGD"))
    learning_rate: float = option(5e-4, "Peak learning rate, reached at the end of warm-up.")
    beta1: float = option(0.9, "Adam beta1.")
    beta2: float = option(0.98, "Adam beta2.")
    eps: float = option(1e-6, "Adam epsilon.")
    weight_decay: float = option(0.2, "Decoupled weight decay; gains, biases, embeddings "
                                 "and logit_scale are never decayed.")
    warmup_epochs: float = option(5.0, "Linear warm-up length in epochs.")
    lr_schedule: str = option(
        "cosine", "Learning-rate schedule after warm-up.", choices=("cosine", "constant", "linear")
    )
    loss_scaling: float = option(
        1024.0, "Static fp16 loss scale; 0 selects dynamic loss scaling. Ignored in fp32/bf16."
    )
    grad_clip_norm: float = option(0.0, "Clip the global gradient norm to this; 0 disables.")

    def validate(self) -> None:
        if self.learning_rate <= 0:
            raise ClipError(
                f"learning_rate={self.learning_rate} must be positive; change --learning_rate."
            )
        for name in ("weight_decay", "warmup_epochs", "loss_scaling", "grad_clip_norm"):
            if getattr(self, name) < 0:
                raise ClipError(f"{name}={getattr(self, name)} is negative; change --{name}.")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ClipError(
                    f"{name}={getattr(self, name)} is outside [0, 1); change --{name}."
                )


@dataclass
class CheckpointConfig:
    """Checkpoints, outputs and experiment tracking."""

    output_dir: str = option("output/run", "Folder for logs, metrics and the resolved config.")
    checkpoint_dir: str = option("output/ckpt", "Folder for training checkpoints.")
    checkpoint_save_steps: int = option(500, "Save a checkpoint every this many optimizer steps.")
    checkpoint_file: str = option("", "Checkpoint to start training from (weights only).")
    restore: bool = option(False, "Resume from the latest checkpoint in checkpoint_dir.")
    wandb: bool = option(False, "Log metrics to Weights & Biases (needs the wandb package).")

    def validate(self) -> None:
        require_positive(self, "checkpoint_save_steps")


@dataclass
class ZeroShotConfig:
    """Zero-shot evaluation options."""

    zeroshot_dataset: str = option(
        "imagenet", "Zero-shot dataset.", choices=("imagenet", "cifar100", "digits")
    )
    zeroshot_path: str = option(
        "./data/imagenet", "Dataset folder: ImageNet validation with val_official_clean.csv, "
        "the CIFAR-100 root, or the digits test split."
    )
    ckpt_file: str = option("", "Checkpoint to evaluate.")
    is_ipu_ckpt: bool = option(
        True, "True: ckpt_file is this project's training checkpoint; False: an official "
        "OpenAI or open_clip checkpoint."
    )

    def validate(self) -> None:
        pass


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "execution": ExecutionConfig,
    "optimizer": OptimizerConfig,
    "checkpoint": CheckpointConfig,
    "zero_shot": ZeroShotConfig,
}


@dataclass
class Config:
    """The whole run configuration, one group per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    preset: str = DEFAULT_PRESET

    def validate(self) -> Config:
        """Check every group; raise ClipError naming the option to change."""
        for group in GROUPS:
            getattr(self, group).validate()
        return self

    def to_flat(self) -> dict[str, Any]:
        """Return ``{option name: value}`` with the preset name under ``config``."""
        flat: dict[str, Any] = {"config": self.preset}
        for group in GROUPS:
            flat.update(dataclasses.asdict(getattr(self, group)))
        return flat

    def save(self, path: str | Path) -> None:
        """Write the resolved configuration as flat YAML."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_flat(), sort_keys=False))


def require_positive(group: Any, name: str) -> None:
    value = getattr(group, name)
    if value <= 0:
        raise ClipError(f"{name}={value} must be positive; change --{name}.")


def _option_owner() -> dict[str, str]:
    owner: dict[str, str] = {}
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in owner, f"option {f.name} is declared in two groups"
            owner[f.name] = group
    return owner


OPTION_GROUP = _option_owner()


def load_presets(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Read the preset file (the package's configs.yml unless ``path`` is given)."""
    if path is None:
        text = resources.files("clip").joinpath(PRESETS_FILE).read_text()
    else:
        text = Path(path).read_text()
    presets = yaml.safe_load(text) or {}
    return {name: values for name, values in presets.items() if isinstance(values, dict)}


def config_from_flat(values: dict[str, Any], preset: str = DEFAULT_PRESET) -> Config:
    """Build a Config from flat option names; unknown names raise ClipError."""
    unknown = sorted(set(values) - set(OPTION_GROUP) - {"config"})
    if unknown:
        raise ClipError(
            f"unknown option(s) {unknown} in preset '{preset}'; see --help for valid names."
        )
    grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    for name, value in values.items():
        if name != "config":
            grouped[OPTION_GROUP[name]][name] = _coerce(GROUPS[OPTION_GROUP[name]], name, value)
    groups = {group: GROUPS[group](**kwargs) for group, kwargs in grouped.items()}
    return Config(preset=preset, **groups)


def load_config(preset: str = DEFAULT_PRESET, overrides: dict[str, Any] | None = None,
                presets_path: str | Path | None = None) -> Config:
    """Load a named preset, apply flat overrides and validate the result."""
    presets = load_presets(presets_path)
    if preset not in presets:
        raise ClipError(
            f"unknown config preset '{preset}'; available presets: {', '.join(sorted(presets))}."
        )
    values = dict(presets[preset])
    values.update(overrides or {})
    return config_from_flat(values, preset).validate()


def str_to_bool(value: str | bool) -> bool:
    """Parse True/False the way the Graphcore example does (true, t, 1, yes, y, ...)."""
    if isinstance(value, bool):
        return value
    if value.lower() in {"true", "t", "1", "yes", "y"}:
        return True
    if value.lower() in {"false", "f", "0", "no", "n"}:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value '{value}'; use True or False")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Convert a YAML value to the field's type (YAML reads 1e-6 as a string)."""
    kind = _field_types(cls)[name]
    try:
        if kind is bool:
            return str_to_bool(value)
        if kind is float:
            return float(value)
        if kind is int and not isinstance(value, bool):
            if float(value) != int(float(value)):
                raise ValueError(value)
            return int(float(value))
        if typing.get_origin(kind) is list:
            items = value if isinstance(value, list) else [value]
            return [float(item) for item in items]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ClipError(f"invalid value {value!r} for option {name}: {error}") from None
    return value


def add_config_arguments(parser: argparse.ArgumentParser, groups: tuple[str, ...]) -> None:
    """Add one ``--name`` argument per field of the given groups, default None."""
    for group in groups:
        cls = GROUPS[group]
        arg_group = parser.add_argument_group(group.replace("_", " "))
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            kwargs: dict[str, Any] = {"help": f.metadata["help"] + " (default: %(default)s)"}
            if kind is bool:
                kwargs.update(type=str_to_bool, nargs="?", const=True, metavar="True|False")
            elif typing.get_origin(kind) is list:
                kwargs.update(type=float, nargs="+")
            elif isinstance(kind, types.UnionType):
                kwargs.update(type=str)
            else:
                kwargs.update(type=kind)
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
            arg_group.add_argument(f"--{f.name}", **kwargs)


def parse_config(argv: list[str] | None, prog: str, description: str,
                 groups: tuple[str, ...] = tuple(GROUPS)) -> Config:
    """Parse ``--config PRESET`` and per-option overrides into a validated Config.

    The preset's values become the parser's defaults, so ``--help`` shows the values
    that the run would use.
    """
    preset_parser = argparse.ArgumentParser(add_help=False)
    preset_parser.add_argument("--config", default=DEFAULT_PRESET)
    known, _ = preset_parser.parse_known_args(argv)
    presets = load_presets()
    if known.config not in presets:
        raise ClipError(
            f"unknown config preset '{known.config}'; available presets: "
            f"{', '.join(sorted(presets))}."
        )
    resolved = config_from_flat(presets[known.config], known.config).to_flat()

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config", default=DEFAULT_PRESET, choices=sorted(presets),
        help="Named preset from clip/configs.yml (default: %(default)s)",
    )
    add_config_arguments(parser, groups)
    parser.set_defaults(**{name: resolved[name] for name in resolved if name != "config"})
    args = vars(parser.parse_args(argv))
    overrides = {name: value for name, value in args.items() if name != "config"}
    return load_config(known.config, overrides)
