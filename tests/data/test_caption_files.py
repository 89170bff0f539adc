"""Tests of clip.data.captions: both table layouts, exact caption text, skipped rows, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import tiny_config, write_image

from clip.data.captions import CaptionTable, PackedStrings, detect_format, read_caption_table
from clip.data.report import EMPTY_CAPTION, MALFORMED_ROW, MISSING_IMAGE
from clip.errors import ClipError

HARD_CAPTIONS = [
    "a dog, a cat, and a bird",
    'she said "hello" twice',
    "it's a 'quoted' word",
    "café in Zürich, 東京タワー 👍",
    '"starts and ends with quotes"',
    "trailing space ",
]


def make_images(folder: Path, count: int) -> list[str]:
    names = [f"{index}.png" for index in range(count)]
    for index, name in enumerate(names):
        write_image(folder / name, size=(4, 4), seed=index)
    return names


def read(captions: Path, images: Path, **overrides: str) -> CaptionTable:
    config = tiny_config(captions_path=str(captions), image_path=str(images), **overrides)
    return read_caption_table(config.data)


def test_cc3m_keeps_exact_captions(tmp_path: Path) -> None:
    captions = HARD_CAPTIONS + ["a tab\tinside the caption"]
    names = make_images(tmp_path / "images", len(captions))
    lines = [f"{name}\t{caption}" for name, caption in zip(names, captions, strict=True)]
    (tmp_path / "img_cap.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    table = read(tmp_path / "img_cap.csv", tmp_path / "images")
    assert list(table.captions) == captions
    assert [Path(path).name for path in table.image_paths] == names
    assert table.skipped.total == 0


def test_csv_keeps_exact_captions_through_quoting(tmp_path: Path) -> None:
    names = make_images(tmp_path / "images", 4)
    text = (
        "filepath,title\n"
        f'{names[0]},"a dog, a cat, and a bird"\n'
        f'{names[1]},"she said ""hello"" twice"\n'
        f'{names[2]},"a tab\tinside a quoted field"\n'
        f"{names[3]},café in Zürich 東京\n"
    )
    (tmp_path / "train.csv").write_text(text, encoding="utf-8")

    table = read(tmp_path / "train.csv", tmp_path / "images", csv_separator=",")
    assert list(table.captions) == [
        "a dog, a cat, and a bird",
        'she said "hello" twice',
        "a tab\tinside a quoted field",
        "café in Zürich 東京",
    ]


def test_tsv_with_custom_columns(tmp_path: Path) -> None:
    names = make_images(tmp_path / "images", 2)
    text = f"caption\turl\timage\nfirst caption\thttp://x\t{names[0]}\nsecond\thttp://y\t{names[1]}\n"
    (tmp_path / "train.tsv").write_text(text, encoding="utf-8")

    table = read(tmp_path / "train.tsv", tmp_path / "images", csv_img_key="image",
                 csv_caption_key="caption")
    assert list(table.captions) == ["first caption", "second"]
    assert Path(table.image_paths[1]).name == names[1]


def test_empty_and_missing_captions_are_skipped(tmp_path: Path) -> None:
    names = make_images(tmp_path / "images", 5)
    text = (
        "filepath\ttitle\n"
        f"{names[0]}\tkept\n"
        f"{names[1]}\t\n"
        f"{names[2]}\n"
        f"{names[3]}\t   \n"
        f"{names[4]}\tnan is a word here\n"
    )
    (tmp_path / "train.tsv").write_text(text, encoding="utf-8")

    table = read(tmp_path / "train.tsv", tmp_path / "images")
    assert list(table.captions) == ["kept", "nan is a word here"]
    assert table.skipped.counts[EMPTY_CAPTION] == 3
    assert "nan" not in list(table.captions)


def test_cc3m_empty_caption_and_malformed_line(tmp_path: Path) -> None:
    names = make_images(tmp_path / "images", 3)
    lines = [f"{names[0]}\tgood", f"{names[1]}\t", f"{names[2]}", "", "\tno image name"]
    (tmp_path / "img_cap.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    table = read(tmp_path / "img_cap.csv", tmp_path / "images")
    assert list(table.captions) == ["good"]
    assert table.skipped.counts[EMPTY_CAPTION] == 1
    assert table.skipped.counts[MALFORMED_ROW] == 2


def test_comma_file_with_tab_separator_raises(tmp_path: Path) -> None:
    names = make_images(tmp_path / "images", 1)
    (tmp_path / "train.csv").write_text(f"filepath,title\n{names[0]},a caption\n")
    with pytest.raises(ClipError, match=r"separator '\\t'.*columns found: \['filepath,title'\]"):
        read(tmp_path / "train.csv", tmp_path / "images", dataset_format="csv")
    with pytest.raises(ClipError, match="set --csv_separator ','"):
        read(tmp_path / "train.csv", tmp_path / "images")


def test_header_without_configured_columns_raises(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("path\ttext\na.png\tcaption\n")
    with pytest.raises(ClipError, match=r"no columns 'filepath' and 'title'.*\['path', 'text'\]"):
        read(tmp_path / "train.tsv", tmp_path / "images", dataset_format="csv")


def test_missing_images_are_skipped_and_counted(tmp_path: Path) -> None:
    names = make_images(tmp_path / "images", 2)
    (tmp_path / "images" / "sub").mkdir()
    write_image(tmp_path / "images" / "sub" / "nested.png")
    lines = [f"{names[0]}\tone", "gone.png\ttwo", f"{names[1]}\tthree", "sub/nested.png\tfour",
             "sub/absent.png\tfive"]
    (tmp_path / "img_cap.csv").write_text("\n".join(lines) + "\n")

    table = read(tmp_path / "img_cap.csv", tmp_path / "images")
    assert list(table.captions) == ["one", "three", "four"]
    assert table.skipped.counts[MISSING_IMAGE] == 2
    assert any("gone.png" in example for example in table.skipped.examples[MISSING_IMAGE])


def test_no_usable_row_raises(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "img_cap.csv").write_text("a.png\tcaption\nb.png\tcaption\n")
    with pytest.raises(ClipError, match="no usable rows.*missing image: 2"):
        read(tmp_path / "img_cap.csv", tmp_path / "images")


def test_missing_files_raise(tmp_path: Path) -> None:
    (tmp_path / "img_cap.csv").write_text("a.png\tcaption\n")
    with pytest.raises(ClipError, match="captions file .*absent.csv not found"):
        read(tmp_path / "absent.csv", tmp_path)
    with pytest.raises(ClipError, match="image folder .*no_images not found"):
        read(tmp_path / "img_cap.csv", tmp_path / "no_images")


def test_non_utf8_file_raises(tmp_path: Path) -> None:
    (tmp_path / "img_cap.csv").write_bytes("a.png\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(ClipError, match="not valid UTF-8"):
        read(tmp_path / "img_cap.csv", tmp_path)


def test_unknown_format_raises(tmp_path: Path) -> None:
    config = tiny_config(captions_path=str(tmp_path / "x.csv"))
    config.data.dataset_format = "parquet"
    with pytest.raises(ClipError, match="dataset_format 'parquet' is invalid"):
        detect_format(config.data)


def test_detect_format(tmp_path: Path) -> None:
    (tmp_path / "img_cap.csv").write_text("a.jpg\ta caption\n")
    (tmp_path / "open_clip.csv").write_text("filepath,title\na.jpg,a caption\n")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "00000.tar").write_bytes(b"")
    cases = {
        "img_cap.csv": "cc3m",
        "open_clip.csv": "csv",
        "shards": "webdataset",
        "shards/{00000..00009}.tar": "webdataset",
    }
    for name, expected in cases.items():
        config = tiny_config(captions_path=str(tmp_path / name))
        assert detect_format(config.data) == expected, name


def test_packed_strings_round_trip() -> None:
    texts = ["", "plain", "東京 👍", "tab\tand\nnewline"]
    packed = PackedStrings(texts)
    assert len(packed) == 4
    assert list(packed) == texts
    assert packed[-1] == texts[-1]
    with pytest.raises(IndexError):
        packed[4]
