"""Image-caption retrieval sets: each image once, with every caption that the table gives it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from clip.config import Config
from clip.data.captions import read_caption_table
from clip.data.images import ImageDecodeError, load_rgb
from clip.data.report import SkipReport
from clip.data.transforms import Transform, eval_transform
from clip.errors import ClipError


class RetrievalSet(Dataset):
    """Images with their captions; items are (image (3, R, R), list of captions).

    Attributes:
        image_paths: one path per image, in order of first appearance in the table.
        captions: the captions of each image, in table order.
        skipped: rows skipped while reading the table.
    """

    def __init__(self, image_paths: list[str], captions: list[list[str]], transform: Transform,
                 skipped: SkipReport) -> None:
        self.image_paths = image_paths
        self.captions = captions
        self.transform = transform
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str]]:
        try:
            image = load_rgb(self.image_paths[index])
        except ImageDecodeError as error:
            raise ClipError(f"{error}; remove the image's rows from the captions file.") from error
        return self.transform(image), self.captions[index]

    def flat_captions(self) -> tuple[list[str], list[int]]:
        """Return every caption and the index of its image, for text-to-image recall."""
        texts: list[str] = []
        image_indices: list[int] = []
        for image_index, captions in enumerate(self.captions):
            texts.extend(captions)
            image_indices.extend([image_index] * len(captions))
        return texts, image_indices


def load_retrieval_set(config: Config, captions_path: str | None = None,
                       image_path: str | None = None) -> RetrievalSet:
    """Read a captions table (cc3m or csv layout) and group its captions per image.

    Args:
        config: the run configuration; the data options give the layout and the default
            paths, and ``model.image_resolution`` the size of the evaluation transform.
        captions_path: captions file to read instead of ``config.data.captions_path``.
        image_path: image folder to use instead of ``config.data.image_path``.
    """
    data = dataclasses.replace(
        config.data,
        captions_path=captions_path or config.data.captions_path,
        image_path=image_path or config.data.image_path,
    )
    table = read_caption_table(data)
    grouped: dict[str, list[str]] = {}
    for path, caption in zip(table.image_paths, table.captions, strict=True):
        grouped.setdefault(path, []).append(caption)
    return RetrievalSet(
        list(grouped), list(grouped.values()), eval_transform(config.model.image_resolution),
        table.skipped,
    )


def collate_retrieval(
    items: Sequence[tuple[torch.Tensor, list[str]]],
) -> tuple[torch.Tensor, list[list[str]]]:
    """Stack images into (B, 3, R, R) and keep the captions as a list per image."""
    return torch.stack([item[0] for item in items]), [item[1] for item in items]
