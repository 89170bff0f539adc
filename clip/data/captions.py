"""Read image-caption tables: the Conceptual Captions layout and CSV/TSV files with a header.

Two layouts are read here (webdataset shards are in :mod:`clip.data.shards`):

- ``cc3m``: one ``image_name<TAB>caption`` per line, no header and no quoting, as the
  downloader writes it. The caption is everything after the first tab, kept verbatim.
- ``csv``: open_clip's form, a header row naming the image and caption columns
  (``--csv_img_key``, ``--csv_caption_key``) and fields split by ``--csv_separator``. Quoted
  fields may contain the separator, doubled quotes and tabs.

Captions keep their exact text. A row with an empty or missing caption, a malformed row and a
row whose image file does not exist are skipped and counted in a :class:`SkipReport`.
Relative image names resolve against ``--image_path``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from clip.config import DataConfig
from clip.data.report import EMPTY_CAPTION, MALFORMED_ROW, MISSING_IMAGE, SkipReport
from clip.errors import ClipError

logger = logging.getLogger(__name__)

FORMATS = ("cc3m", "csv", "webdataset")
# Separators tried on a header that the configured separator does not split, to name the right
# one in the error message.
COMMON_SEPARATORS = ("\t", ",", ";", "|")
ROW_PREVIEW_CHARS = 60


class PackedStrings:
    """Strings in one UTF-8 byte buffer with offsets.

    A list of millions of Python strings in a Dataset is copied page by page into every forked
    DataLoader worker, because reading an object updates its reference count. Two numpy
    arrays have no per-item objects, so the workers share them.
    """

    def __init__(self, strings: Iterable[str]) -> None:
        encoded = [text.encode("utf-8") for text in strings]
        lengths = np.fromiter((len(item) for item in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        index %= len(self)
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:end].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for index in range(len(self)):
            yield self[index]


@dataclass
class CaptionTable:
    """The usable rows of a captions file: image paths and their captions, row by row."""

    image_paths: PackedStrings
    captions: PackedStrings
    skipped: SkipReport
    source: str

    def __len__(self) -> int:
        return len(self.captions)


def detect_format(data: DataConfig) -> str:
    """Return the layout of ``data.captions_path``: the configured one, or detected for auto.

    A path ending in ``.tar`` (brace patterns included) or a folder of ``.tar`` files is
    webdataset, a first line that contains both configured column names is csv, anything else
    is cc3m.
    """
    if data.dataset_format != "auto":
        if data.dataset_format not in FORMATS:
            raise ClipError(
                f"dataset_format '{data.dataset_format}' is invalid; use auto or one of "
                f"{', '.join(FORMATS)}."
            )
        return data.dataset_format
    path = data.captions_path
    if path.endswith(".tar") or (os.path.isdir(path) and any(Path(path).glob("*.tar"))):
        return "webdataset"
    header = _read_first_line(Path(path))
    for separator in (data.csv_separator, *COMMON_SEPARATORS):
        fields = header.split(separator)
        if data.csv_img_key in fields and data.csv_caption_key in fields:
            return "csv"
    return "cc3m"


def read_caption_table(data: DataConfig, check_images: bool = True) -> CaptionTable:
    """Read the captions file in its layout and drop rows that cannot be used.

    Args:
        data: the data options; ``captions_path``, ``image_path``, ``dataset_format`` and the
            ``csv_*`` options are used.
        check_images: drop (and count) rows whose image file does not exist.

    Raises:
        ClipError: the file or the image folder is missing, the file is not UTF-8, the header
            lacks the configured columns, or no row is usable.
    """
    layout = detect_format(data)
    path = Path(data.captions_path)
    if layout == "webdataset":
        raise ClipError(
            f"captions_path '{path}' is a webdataset shard set, which has no captions table; "
            "use clip.data.shards for it or pass a captions file."
        )
    _require_file(path)
    report = SkipReport()
    if layout == "cc3m":
        names, captions = _read_cc3m(path, report)
    else:
        names, captions = _read_csv(path, data, report)
    if check_images:
        paths, captions = _drop_missing_images(names, captions, data.image_path, report)
    else:
        paths = [os.path.join(data.image_path, name) for name in names]
    if not captions:
        raise ClipError(
            f"no usable rows in captions file {path} ({report.summary()}); check "
            "--captions_path, --image_path and --dataset_format."
        )
    logger.info("read %d image-caption rows from %s (%s layout)", len(captions), path, layout)
    return CaptionTable(PackedStrings(paths), PackedStrings(captions), report, str(path))


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ClipError(
            f"captions file {path} not found; set --captions_path to an existing file "
            "(python -m clip.data.download writes img_cap.csv)."
        )


def _read_first_line(path: Path) -> str:
    _require_file(path)
    with _open_text(path) as file:
        try:
            return file.readline().rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise _not_utf8(path, error) from error


def _open_text(path: Path) -> TextIO:
    # newline="\n" ends lines only at "\n", so a stray "\r" inside a caption stays in it.
    return open(path, encoding="utf-8-sig", newline="\n")


def _not_utf8(path: Path, error: UnicodeDecodeError) -> ClipError:
    return ClipError(
        f"captions file {path} is not valid UTF-8 ({error}); re-encode it as UTF-8."
    )


def _read_cc3m(path: Path, report: SkipReport) -> tuple[list[str], list[str]]:
    names: list[str] = []
    captions: list[str] = []
    with _open_text(path) as file:
        try:
            for line_number, line in enumerate(file, start=1):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                name, separator, caption = line.partition("\t")
                if not separator or not name:
                    report.add(MALFORMED_ROW, f"{path.name}:{line_number}: {_preview(line)}")
                elif not caption.strip():
                    report.add(EMPTY_CAPTION, f"{path.name}:{line_number}: {name}")
                else:
                    names.append(name)
                    captions.append(caption)
        except UnicodeDecodeError as error:
            raise _not_utf8(path, error) from error
    return names, captions


def _read_csv(path: Path, data: DataConfig, report: SkipReport) -> tuple[list[str], list[str]]:
    frame = _read_frame(path, data.csv_separator)
    required = {data.csv_img_key, data.csv_caption_key}
    if not required <= set(frame.columns):
        raise ClipError(_missing_columns_message(path, data, list(frame.columns)))

    names: list[str] = []
    captions: list[str] = []
    # Line numbers count the header as line 1; quoted fields with line breaks shift them.
    rows = zip(frame[data.csv_img_key], frame[data.csv_caption_key], strict=True)
    for line_number, (name, caption) in enumerate(rows, start=2):
        if not name:
            report.add(MALFORMED_ROW, f"{path.name}:{line_number}: no image name")
        elif not caption.strip():
            report.add(EMPTY_CAPTION, f"{path.name}:{line_number}: {name}")
        else:
            names.append(name)
            captions.append(caption)
    return names, captions


def _read_frame(path: Path, separator: str) -> pd.DataFrame:
    # dtype=str with na_filter=False keeps every field as its text: an empty field stays ""
    # instead of becoming NaN (and later the caption "nan"), and the text "NA" stays "NA".
    try:
        return pd.read_csv(
            path, sep=separator, dtype=str, na_filter=False, encoding="utf-8-sig",
            quoting=csv.QUOTE_MINIMAL, engine="c" if len(separator) == 1 else "python",
        )
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from error
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ClipError(
            f"cannot parse captions file {path} with separator {separator!r}: {error}; check "
            "--csv_separator and the quoting of the file."
        ) from error


def _missing_columns_message(path: Path, data: DataConfig, columns: list[str]) -> str:
    message = (
        f"captions file {path} has no columns {data.csv_img_key!r} and "
        f"{data.csv_caption_key!r} when split by separator {data.csv_separator!r}; columns "
        f"found: {columns}."
    )
    header = data.csv_separator.join(columns)
    for separator in COMMON_SEPARATORS:
        fields = header.split(separator)
        if separator != data.csv_separator and data.csv_img_key in fields:
            hint = f"The header splits by {separator!r}: set --csv_separator {separator!r}."
            return f"{message} {hint}"
    return message + " Set --csv_separator, --csv_img_key and --csv_caption_key to match."


def _drop_missing_images(
    names: list[str], captions: list[str], image_path: str, report: SkipReport
) -> tuple[list[str], list[str]]:
    if not os.path.isdir(image_path):
        raise ClipError(
            f"image folder {image_path} not found; set --image_path to the folder of the images "
            "named in the captions file."
        )
    # One listing of the folder replaces millions of stat calls for the usual flat layout.
    listed = set(os.listdir(image_path))
    paths: list[str] = []
    kept_captions: list[str] = []
    for name, caption in zip(names, captions, strict=True):
        path = os.path.join(image_path, name)
        if os.sep in name or os.path.isabs(name):
            exists = os.path.isfile(path)
        else:
            exists = name in listed
        if exists:
            paths.append(path)
            kept_captions.append(caption)
        else:
            report.add(MISSING_IMAGE, path)
    return paths, kept_captions


def _preview(text: str) -> str:
    return repr(text[:ROW_PREVIEW_CHARS] + ("..." if len(text) > ROW_PREVIEW_CHARS else ""))
