"""Data for CLIP training and evaluation.

- :func:`build_train_loader`: host batches of (images, token ids) from Conceptual Captions
  style folders, CSV/TSV files, webdataset shards or generated data (:mod:`.synthetic`).
- :func:`load_zero_shot_set`: ImageNet, CIFAR-100 and the digits test split for zero-shot
  classification, with class names and prompt templates.
- :func:`load_retrieval_set`: images with all their captions, for image-text retrieval.
- Command-line tools: ``python -m clip.data.download`` (Conceptual Captions),
  ``python -m clip.data.preprocess`` (ImageNet map file) and ``python -m clip.data.digits``
  (a small real image-caption set from scikit-learn's handwritten digits).

Images are decoded by :mod:`.images`, which applies EXIF orientation and turns every PIL mode
into 8-bit RGB.

The names below are imported on first use, so that the command-line tools that do not need
torch (download, digits) start without importing it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainLoader": "clip.data.loader",
    "build_train_loader": "clip.data.loader",
    "SkipReport": "clip.data.report",
    "RetrievalSet": "clip.data.retrieval",
    "load_retrieval_set": "clip.data.retrieval",
    "load_zero_shot_set": "clip.data.zero_shot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clip.data' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
