"""Map-style training dataset of (image, token ids) pairs that survives bad image files.

A sample whose image fails to decode (truncated, corrupt, not an image) or whose caption
cannot be tokenized is replaced by another row, so every batch keeps its fixed size. The
replacement row depends only on the seed, the row and the attempt number. Each sample carries
the failures met while producing it, and :func:`collate_samples` passes them on with the
batch, so the counts reach the main process even from DataLoader worker processes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from clip.data.captions import CaptionTable
from clip.data.images import ImageDecodeError, load_rgb
from clip.data.report import BAD_CAPTION, UNREADABLE_IMAGE
from clip.data.transforms import Transform
from clip.errors import ClipError

logger = logging.getLogger(__name__)

# A failure is a (reason, example) pair, for example ("unreadable image", "images/0007.jpg").
Failure = tuple[str, str]
# One sample: image (3, R, R), token ids (context_length,) and the failures met on the way.
Sample = tuple[torch.Tensor, torch.Tensor, tuple[Failure, ...]]
# Rows tried for one sample before giving up: 32 bad rows in a row means a broken dataset,
# not a few bad files.
MAX_ATTEMPTS = 32


def tokenize_caption(caption: str, context_length: int, truncate: bool) -> torch.Tensor:
    """Return the token ids (context_length,) of one caption."""
    # Imported here so that the data package imports without the tokenizer's vocabulary.
    from clip.tokenizer import tokenize

    return tokenize(caption, context_length=context_length, truncate=truncate)[0]


class ImageCaptionDataset(Dataset):
    """Samples of a caption table: the transformed image and the tokenized caption.

    Args:
        table: the usable rows (image paths and captions).
        transform: maps an RGB PIL image to a tensor (3, R, R).
        context_length: token ids per caption.
        truncate: cut captions longer than context_length instead of replacing the sample.
        seed: seed of the replacement rows.
    """

    def __init__(self, table: CaptionTable, transform: Transform, context_length: int,
                 truncate: bool, seed: int) -> None:
        self.table = table
        self.transform = transform
        self.context_length = context_length
        self.truncate = truncate
        self.seed = seed

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> Sample:
        failures: list[Failure] = []
        row = index
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                row = self.replacement_row(index, attempt)
            try:
                image, tokens = self.load_row(row)
            except ImageDecodeError as error:
                logger.debug("replacing row %d: %s", row, error)
                failures.append((UNREADABLE_IMAGE, self.table.image_paths[row]))
            except ClipError as error:
                logger.debug("replacing row %d: %s", row, error)
                failures.append((BAD_CAPTION, self.table.image_paths[row]))
            else:
                return image, tokens, tuple(failures)
        raise ClipError(
            f"{MAX_ATTEMPTS} rows in a row failed to load, starting at row {index} of "
            f"{self.table.source}; first failures: {failures[:3]}. Check that the images "
            "decode and that the captions fit --context_length (or set --truncate True)."
        )

    def load_row(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode, transform and tokenize one row; raise ImageDecodeError or ClipError."""
        caption = self.table.captions[row]
        tokens = tokenize_caption(caption, self.context_length, self.truncate)
        image = load_rgb(self.table.image_paths[row])
        return self.transform(image), tokens

    def replacement_row(self, index: int, attempt: int) -> int:
        """Return the row tried instead of ``index`` at ``attempt``, the same in every run."""
        generator = np.random.default_rng([self.seed, index, attempt])
        return int(generator.integers(len(self)))


def collate_samples(
    samples: Sequence[Sample],
) -> tuple[torch.Tensor, torch.Tensor, list[Failure]]:
    """Stack samples into images (B, 3, R, R) and token ids (B, L); gather their failures."""
    images = torch.stack([sample[0] for sample in samples])
    tokens = torch.stack([sample[1] for sample in samples])
    failures = [failure for sample in samples for failure in sample[2]]
    return images, tokens, failures
