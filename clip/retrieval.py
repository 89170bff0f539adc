"""Image-text retrieval recall on an image-caption set.

``python -m clip.retrieval --ckpt_file PATH --captions_path FILE --image_path DIR``
reports image-to-text and text-to-image recall@1, @5 and @10. An image may have several
captions: image-to-text counts a hit when any of its captions is among the k best texts,
and text-to-image when the caption's own image is among the k best images.

Shape legend: N images, T captions, E embed_dim.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clip.config import Config, parse_config
from clip.errors import ClipError
from clip.model import CLIP
from clip.training.distributed import check_device
from clip.training.precision import autocast
from clip.training.reporting import ProgressBar, setup_logging
from clip.zero_shot import PROMPT_BATCH, USER_ERROR_EXIT_CODE, load_eval_model

logger = logging.getLogger("clip.retrieval")

RECALL_KS = (1, 5, 10)
DESCRIPTION = (
    "Image-to-text and text-to-image recall@1/5/10 of a CLIP checkpoint on an image-caption "
    "set (captions_path and image_path)."
)


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor,
                     text_image: torch.Tensor, ks: tuple[int, ...] = RECALL_KS
                     ) -> dict[str, float]:
    """Return recall@k in percent for both directions.

    Args:
        image_features: (N, E) normalised image features.
        text_features: (T, E) normalised caption features.
        text_image: (T,) index of each caption's image.
        ks: the k values; a k above the number of candidates uses all of them.

    Returns:
        ``{"image_to_text_R@k": ..., "text_to_image_R@k": ...}`` for every k.
    """
    similarity = image_features @ text_features.t()  # N T
    # owns[i, t] is True when caption t belongs to image i.
    owns = text_image[None, :] == torch.arange(len(image_features))[:, None]  # N T
    recalls: dict[str, float] = {}
    for k in ks:
        best_texts = similarity.topk(min(k, similarity.shape[1]), dim=1).indices  # N k
        image_hits = owns.gather(1, best_texts).any(dim=1)
        best_images = similarity.t().topk(min(k, similarity.shape[0]), dim=1).indices  # T k
        text_hits = (best_images == text_image[:, None]).any(dim=1)
        recalls[f"image_to_text_R@{k}"] = 100.0 * image_hits.float().mean().item()
        recalls[f"text_to_image_R@{k}"] = 100.0 * text_hits.float().mean().item()
    return recalls


@torch.no_grad()
def encode_retrieval_set(model: CLIP, config: Config, device: torch.device
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return normalised image features (N, E), caption features (T, E) and (T,) owners."""
    from clip.data import load_retrieval_set
    from clip.data.retrieval import collate_retrieval
    from clip.tokenizer import tokenize

    precision = config.execution.precision
    # The evaluation transform must produce the checkpoint's resolution.
    dataset = load_retrieval_set(dataclasses.replace(config, model=model.config))
    loader = DataLoader(dataset, batch_size=config.execution.batch_size,
                        num_workers=config.data.dataloader_workers,
                        collate_fn=collate_retrieval)
    image_features = []
    with ProgressBar(len(loader), enabled=True, description="images") as bar:
        for images, _ in loader:
            with autocast(device, precision):
                image_features.append(model.encode_image(images.to(device)).float())
            bar.advance()
    texts, owners = dataset.flat_captions()
    text_features = []
    for start in range(0, len(texts), PROMPT_BATCH):
        token_ids = tokenize(texts[start:start + PROMPT_BATCH],
                             context_length=model.context_length, truncate=True)
        with autocast(device, precision):
            text_features.append(model.encode_text(token_ids.to(device)).float())
    return (F.normalize(torch.cat(image_features), dim=-1).cpu(),
            F.normalize(torch.cat(text_features), dim=-1).cpu(), torch.tensor(owners))


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation and return the exit status: 0, or 2 for a user error."""
    try:
        config = parse_config(argv, prog="python -m clip.retrieval", description=DESCRIPTION,
                              groups=("zero_shot", "execution", "data"))
        setup_logging(None, is_main=True)
        device = torch.device(check_device(config))
        model = load_eval_model(config, device)
        image_features, text_features, owners = encode_retrieval_set(model, config, device)
    except ClipError as error:
        sys.stderr.write(f"python -m clip.retrieval: error: {error}\n")
        return USER_ERROR_EXIT_CODE
    recalls = retrieval_recall(image_features, text_features, owners)
    logger.info("retrieval: %d images, %d captions", len(image_features), len(text_features))
    logger.info("Retrieval " + " ".join(f"{name}: {value:.2f}" for name, value in recalls.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
