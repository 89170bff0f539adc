"""Zero-shot classification: ``python -m clip.zero_shot --zeroshot_dataset NAME --ckpt_file PATH``.

Each class is embedded by encoding every prompt template filled with its name, then
normalising each text feature, averaging them and normalising the mean, as in OpenAI's
CLIP evaluation. An image's logits are 100 x (image feature . class embedding). The
program reports top-1, top-5 (not applicable under 5 classes) and mean per-class recall,
ending with the parseable line ``Zero-shot top1: X top5: Y`` (percent).

Shape legend: B images, C classes, T templates, E embed_dim.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clip.config import Config, parse_config
from clip.errors import ClipError
from clip.model import CLIP
from clip.training.checkpoint import latest_checkpoint
from clip.training.distributed import check_device
from clip.training.precision import autocast, cast_matmul_weights
from clip.training.reporting import ProgressBar, setup_logging
from clip.weights import load_model, load_state_dict_checked, read_weights

logger = logging.getLogger("clip.zero_shot")

# OpenAI's zero-shot evaluation multiplies cosine similarities by 100.
LOGIT_SCALE = 100.0
# Prompts encoded per forward pass when building the classifier.
PROMPT_BATCH = 256
USER_ERROR_EXIT_CODE = 2
# Option groups on the command line; the architecture comes from the checkpoint.
EVALUATION_GROUPS = ("zero_shot", "execution", "data")
DESCRIPTION = (
    "Zero-shot classification of ImageNet, CIFAR-100 or the digits test split with a "
    "trained or official CLIP checkpoint."
)


@dataclass
class ZeroShotResult:
    """Accuracies in percent; ``top5`` is None when there are fewer than 5 classes."""

    top1: float
    top5: float | None
    mean_per_class_recall: float
    images: int
    classes: int
    images_per_second: float

    def summary_line(self, dataset: str) -> str:
        top5 = "n/a (fewer than 5 classes)" if self.top5 is None else f"{self.top5:.2f}%"
        return (
            f"Zero-shot {dataset}: {self.images} images, {self.classes} classes, "
            f"top-1 {self.top1:.2f}%, top-5 {top5}, mean per-class recall "
            f"{self.mean_per_class_recall:.2f}%, {self.images_per_second:.1f} images/s"
        )

    def parseable_lines(self) -> list[str]:
        """Return the lines that benchmark harnesses parse: accuracy and throughput."""
        top5 = "n/a" if self.top5 is None else f"{self.top5:.2f}"
        return [f"Zero-shot top1: {self.top1:.2f} top5: {top5}",
                f"Zero-shot throughput: {self.images_per_second:.2f} images/sec"]


def load_eval_model(config: Config, device: torch.device) -> CLIP:
    """Load ``ckpt_file``: a training checkpoint of this project, or an official one.

    A training checkpoint brings its own architecture; an official checkpoint's
    architecture is inferred from its tensor shapes by :mod:`clip.weights`. A folder
    means the latest training checkpoint in it. For bf16 and fp16, the matmul weights are
    stored in that dtype (:func:`clip.training.precision.cast_matmul_weights`).
    """
    path = resolve_checkpoint_path(config.zero_shot.ckpt_file)
    if not config.zero_shot.is_ipu_ckpt:
        model = load_model(path, device=device)
        return cast_matmul_weights(model, config.execution.precision)
    weights = read_weights(path)
    if weights.kind != "training" or weights.model_config is None:
        raise ClipError(
            f"ckpt_file={path!r} is a {weights.kind} checkpoint, not a training checkpoint "
            "of this project; pass --is_ipu_ckpt False to load official weights."
        )
    model = CLIP(weights.model_config)
    load_state_dict_checked(model, weights.state_dict, path)
    return cast_matmul_weights(model.to(device).eval(), config.execution.precision)


def resolve_checkpoint_path(ckpt_file: str) -> str:
    """Return ``ckpt_file``, or the latest training checkpoint if it names a folder."""
    if not ckpt_file:
        raise ClipError("ckpt_file is empty; pass --ckpt_file PATH of the checkpoint to evaluate.")
    path = Path(ckpt_file)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise ClipError(
                f"ckpt_file={ckpt_file!r} is a folder without checkpoint_step*.pt files; pass "
                "a checkpoint file or the --checkpoint_dir of a finished training run."
            )
        return str(latest)
    if not path.is_file():
        raise ClipError(
            f"ckpt_file={ckpt_file!r} does not exist; pass a checkpoint file or the "
            "--checkpoint_dir of a finished `python -m clip.train` run."
        )
    return ckpt_file


@torch.no_grad()
def build_classifier(model: CLIP, classnames: list[str], templates: list[str],
                     device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """Return the (E, C) matrix of normalised class embeddings."""
    from clip.tokenizer import tokenize

    prompts = [template.format(name) for name in classnames for template in templates]
    features = []
    for start in range(0, len(prompts), PROMPT_BATCH):
        token_ids = tokenize(prompts[start:start + PROMPT_BATCH],
                             context_length=model.context_length, truncate=True).to(device)
        with autocast(device, precision):
            features.append(model.encode_text(token_ids).float())
    text_features = F.normalize(torch.cat(features), dim=-1)  # C*T E
    per_class = text_features.view(len(classnames), len(templates), -1)  # C T E
    return F.normalize(per_class.mean(dim=1), dim=-1).t()  # E C


@torch.no_grad()
def classify(model: CLIP, loader: DataLoader, classifier: torch.Tensor, device: torch.device,
             precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Return the (N, C) logits of every image of ``loader`` and the (N,) labels."""
    all_logits, all_labels = [], []
    with ProgressBar(len(loader), enabled=True, description="zero-shot") as bar:
        for images, labels in loader:
            with autocast(device, precision):
                image_features = model.encode_image(images.to(device)).float()
            image_features = F.normalize(image_features, dim=-1)  # B E
            all_logits.append((LOGIT_SCALE * image_features @ classifier).cpu())  # B C
            all_labels.append(torch.as_tensor(labels))
            bar.advance()
    return torch.cat(all_logits), torch.cat(all_labels)


def accuracy_metrics(logits: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[float, float | None, float]:
    """Return top-1, top-5 (None under 5 classes) and mean per-class recall, in percent.

    Mean per-class recall averages the recall of the classes that occur in ``labels``.
    """
    classes = logits.shape[1]
    top1_hits = logits.argmax(dim=1) == labels
    top5 = None
    if classes >= 5:
        top5_hits = (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1)
        top5 = 100.0 * top5_hits.float().mean().item()
    per_class_total = torch.bincount(labels, minlength=classes)
    per_class_hits = torch.bincount(labels[top1_hits], minlength=classes)
    present = per_class_total > 0
    recall = per_class_hits[present].float() / per_class_total[present].float()
    return 100.0 * top1_hits.float().mean().item(), top5, 100.0 * recall.mean().item()


def evaluate_zero_shot(config: Config) -> ZeroShotResult:
    """Load the checkpoint and the dataset named in ``config`` and classify every image."""
    from clip.data import load_zero_shot_set

    device = torch.device(check_device(config))
    precision = config.execution.precision
    model = load_eval_model(config, device)
    options = config.zero_shot
    dataset, classnames, templates = load_zero_shot_set(
        options.zeroshot_dataset, options.zeroshot_path, model.config.image_resolution
    )
    loader = DataLoader(dataset, batch_size=config.execution.batch_size,
                        num_workers=config.data.dataloader_workers)
    logger.info("zero-shot %s: %d images, %d classes, %d templates, checkpoint %s",
                options.zeroshot_dataset, len(dataset), len(classnames), len(templates),
                options.ckpt_file)
    classifier = build_classifier(model, classnames, templates, device, precision)
    start = time.perf_counter()
    logits, labels = classify(model, loader, classifier, device, precision)
    seconds = time.perf_counter() - start
    top1, top5, recall = accuracy_metrics(logits, labels)
    return ZeroShotResult(top1, top5, recall, len(labels), len(classnames),
                          len(labels) / seconds)


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation and return the exit status: 0, or 2 for a user error."""
    try:
        config = parse_config(argv, prog="python -m clip.zero_shot", description=DESCRIPTION,
                              groups=EVALUATION_GROUPS)
        setup_logging(None, is_main=True)
        result = evaluate_zero_shot(config)
    except ClipError as error:
        sys.stderr.write(f"python -m clip.zero_shot: error: {error}\n")
        return USER_ERROR_EXIT_CODE
    logger.info(result.summary_line(config.zero_shot.zeroshot_dataset))
    for line in result.parseable_lines():
        logger.info(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
