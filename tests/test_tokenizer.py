"""Tests of clip.tokenizer: ids identical to open_clip's SimpleTokenizer, golden ids, errors."""

import gzip
import html
import importlib.resources
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import ftfy
import pytest
import torch
from torch.utils.data import DataLoader

from clip import tokenizer as tokenizer_module
from clip.errors import ClipError
from clip.tokenizer import DEFAULT_CACHE_SIZE, VOCAB_FILE, Tokenizer, get_tokenizer, tokenize

REPO_ROOT = Path(__file__).resolve().parents[1]

# Ids from open-clip-torch 3.3.0 (open_clip.tokenizer.SimpleTokenizer().encode), computed once
# and written here so these checks do not need open_clip.
GOLDEN_IDS = [
    ("a photo of a cat", [320, 1125, 539, 320, 2368]),
    ("A PHOTO OF A DOG.", [320, 1125, 539, 320, 1929, 269]),
    (
        "it's a dog's LIFE, isn't it? WE'LL see",
        [585, 568, 320, 1929, 568, 970, 267, 2923, 713, 585, 286, 649, 1342, 862],
    ),
    (
        "café naïve façade Ångström",
        [15304, 1097, 35689, 563, 778, 10067, 1928, 23176, 10352, 807, 7255, 332],
    ),
    ("東京タワーの写真", [48338, 21078, 105, 34941, 2429, 107, 13457, 21575, 44653, 33440, 509]),
    (
        "👨\u200d👩\u200d👧\u200d👦 family 👍🏽",
        [25023, 26304, 48938, 4244, 964, 355, 1315, 43722],
    ),
    ("fish &amp;amp; chips &lt;3", [2759, 261, 8855, 283, 274]),
    ("cafÃ© au lait", [15304, 2566, 572, 585]),
    ("tab\tnew\nline\xa0nbsp\u200bzero", [14724, 686, 1148, 6459, 4393, 9844, 5848]),
    ("price: $12.50!!!", [2827, 281, 259, 272, 273, 269, 276, 271, 995]),
    ("", []),
    ("<start_of_text> hello", [49406, 3306]),
    (
        "ΟΔΥΣΣΕΥΣ İstanbul",
        [138, 123, 138, 112, 139, 227, 139, 225, 139, 225, 138, 113, 139, 227, 139, 480, 328]
        + [16384, 11231],
    ),
    ("صورة قطة", [27271, 48242, 20915, 27585, 32050, 20915]),
]

# Fragments that the corpus combines: each group covers one way the cleaning or the merges can
# go wrong.
FRAGMENTS = {
    "plain": ["a photo of", "the dog", "running on the beach", "with a red car", "at sunset"],
    "upper": ["A PHOTO OF", "DON'T", "IT'S", "We'LL", "THEY'VE", "I'M", "SHE'D", "Isn'T"],
    "digits": ["1999", "3.14", "10 11 12 13", "42nd", "$9.99", "20%", "1,000,000", "٣٤"],
    "accents": ["café", "naïve", "Ångström", "ÉCOLE", "façade", "São Paulo", "Zürich", "İzmir"],
    "scripts": ["東京タワーの写真", "一只猫在沙发上", "한국어 문장", "صورة قطة", "שלום", "नमस्ते"],
    "more_scripts": ["สวัสดี", "Привет мир", "ΟΔΥΣΣΕΥΣ", "σοφός", "Ἀθῆναι"],
    "emoji": [
        "👍🏽",
        "👨\u200d👩\u200d👧\u200d👦",
        "🏳️\u200d🌈",
        "❤️",
        "🇯🇵",
        "🤷🏾\u200d♀️",
        "😀😀😀",
    ],
    "html": ["&amp;", "&amp;amp;", "&amp;amp;amp;", "&lt;b&gt;", "&#39;", "&quot;", "&eacute;"],
    "more_html": ["&#x1F600;", "&nbsp;", "&NTILDE;", "<b>bold</b> &amp;", "&#1;", "AT&T"],
    "mojibake": ["cafÃ©", "â€œquotedâ€\x9d", "SchÃ¶ne GrÃ¼ÃŸe", "donâ€™t", "Ã¢â‚¬â„¢", "uÌˆber"],
    "whitespace": ["\t", "\n", "\r\n", "\xa0", "\u200b", "\u3000", "\u2028", "\x0b", "\x0c"],
    "control": ["\x1b[31mred\x1b[0m", "\x00", "\x7f", "\ufeff", "\x1c", "\x85"],
    "special": ["<start_of_text>", "<end_of_text>", "<|endoftext|>", "<START_OF_TEXT>"],
    "punctuation": ["!!!", "...", "--", "«»", "“smart”", "ﬁnance", "ＦＵＬＬ", "'s", "'ſ", "K"],
    "long_words": ["a" * 60, "ab" * 40, "中" * 50, "supercalifragilistic" * 5, "!?" * 30],
}
SEPARATORS = [" ", " ", " ", "", "\t", "\n", "\xa0", "  "]
FIXED_TEXTS = ["", " ", "\t\n", "\u200b", "\xa0\xa0", "\u3000", "&", "'", "ΣΑΣ ΣΑΣ\u3000ΣΑΣ"]


def make_corpus(size: int, seed: int = 0) -> list[str]:
    """Return size texts, each a seeded random combination of fragments and separators."""
    rng = random.Random(seed)
    fragments = [fragment for group in FRAGMENTS.values() for fragment in group]
    texts = list(FIXED_TEXTS)
    while len(texts) < size:
        parts = rng.choices(fragments, k=rng.randint(1, 8))
        text = "".join(part + rng.choice(SEPARATORS) for part in parts)
        if rng.random() < 0.2:
            text = text.upper()
        texts.append(text)
    return texts


def make_long_texts(count: int, seed: int = 1) -> list[str]:
    """Return texts of a few hundred tokens, longer than the context length."""
    rng = random.Random(seed)
    fragments = [fragment for group in FRAGMENTS.values() for fragment in group]
    return [" ".join(rng.choices(fragments, k=120)) for _ in range(count)]


@pytest.fixture(scope="module")
def reference():
    """open_clip's SimpleTokenizer with its shipped vocabulary (no download)."""
    open_clip_tokenizer = pytest.importorskip(
        "open_clip.tokenizer", reason="open-clip-torch is needed for the reference ids"
    )
    return open_clip_tokenizer.SimpleTokenizer()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return get_tokenizer()


# Identical ids to open_clip.


def test_encode_matches_open_clip_on_corpus(tokenizer, reference):
    corpus = make_corpus(1500)
    ours = [tokenizer.encode(text) for text in corpus]
    theirs = [reference.encode(text) for text in corpus]
    mismatched = [repr(text) for text, a, b in zip(corpus, ours, theirs, strict=True) if a != b]
    assert not mismatched, f"{len(mismatched)} texts differ, first: {mismatched[:3]}"


def test_tokenize_matches_open_clip_on_corpus(tokenizer, reference):
    corpus = make_corpus(1500)
    ours = tokenizer.tokenize(corpus, truncate=True)
    theirs = reference(corpus)
    assert ours.dtype == torch.long
    assert ours.shape == (1500, 77)
    assert torch.equal(ours, theirs)


def test_long_texts_match_open_clip_truncated(tokenizer, reference):
    texts = make_long_texts(20)
    assert all(len(tokenizer.encode(text)) > 200 for text in texts)
    assert torch.equal(tokenizer.tokenize(texts, truncate=True), reference(texts))
    assert torch.equal(
        tokenizer.tokenize(texts, context_length=300, truncate=True), reference(texts, 300)
    )


def test_small_cache_matches_open_clip(reference):
    small = Tokenizer(cache_size=8)
    corpus = make_corpus(400, seed=2)
    assert torch.equal(small.tokenize(corpus, truncate=True), reference(corpus))
    assert small.cache_info().currsize <= 8


def test_decode_matches_open_clip(tokenizer, reference):
    corpus = make_corpus(300, seed=3)
    for text in corpus:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == reference.decode(ids), repr(text)


# Golden ids, independent of open_clip.


@pytest.mark.parametrize(("text", "expected"), GOLDEN_IDS)
def test_golden_ids(tokenizer, text, expected):
    assert tokenizer.encode(text) == expected


def test_golden_ids_in_tokenize_rows(tokenizer):
    texts = [text for text, _ in GOLDEN_IDS]
    rows = tokenize(texts)
    for row, (text, expected) in zip(rows, GOLDEN_IDS, strict=True):
        row_ids = row.tolist()
        end = len(expected) + 1
        assert row_ids[0] == 49406, repr(text)
        assert row_ids[1:end] == expected, repr(text)
        assert row_ids[end] == 49407, repr(text)
        assert not any(row_ids[end + 1 :]), repr(text)


def test_special_ids_and_vocab_size(tokenizer):
    assert tokenizer.sot_token_id == 49406
    assert tokenizer.eot_token_id == 49407
    assert tokenizer.vocab_size == 49408


# Truncation and the too-long error.


def test_truncate_keeps_first_ids_and_end_token(tokenizer):
    text = " ".join(["dog"] * 100)
    ids = tokenizer.encode(text)
    row = tokenize(text, truncate=True)[0].tolist()
    assert len(ids) == 100
    assert len(row) == 77
    assert row[0] == 49406
    assert row[1:76] == ids[:75]
    assert row[76] == 49407


def test_truncate_with_short_context_length(tokenizer):
    row = tokenize("a photo of a cat on a mat", context_length=4, truncate=True)[0].tolist()
    assert row == [49406, 320, 1125, 49407]


def test_text_that_fits_exactly_needs_no_truncate(tokenizer):
    row = tokenize(" ".join(["dog"] * 75))[0].tolist()
    assert row[0] == 49406
    assert row[76] == 49407
    assert set(row[1:76]) == {1929}


def test_too_long_text_raises(tokenizer):
    text = " ".join(["dog"] * 100)
    with pytest.raises(ClipError, match=r"'dog dog .*\.\.\.' has 102 tokens .*truncate=True"):
        tokenize(text)


def test_too_long_error_names_context_length(tokenizer):
    with pytest.raises(ClipError, match=r"has 10 tokens .*context_length=8.*shorten the text"):
        tokenize("a photo of a cat on a mat", context_length=8)


def test_forty_two_digit_numbers(tokenizer):
    text = " ".join(str(number) for number in range(10, 50))
    digit_ids = [tokenizer.encode(digit)[0] for digit in text.replace(" ", "")]
    assert tokenizer.encode(text) == digit_ids
    assert len(digit_ids) == 80

    with pytest.raises(ClipError, match=r"has 82 tokens"):
        tokenize(text)
    row = tokenize(text, truncate=True)[0].tolist()
    assert row == [49406, *digit_ids[:75], 49407]


# The cache.


def test_cache_stays_within_bound():
    small = Tokenizer(cache_size=100)
    words = [f"word{number}x" for number in range(2000)]
    for word in words:
        small.encode(word)
    info = small.cache_info()
    assert info.maxsize == 100
    assert info.currsize <= 100
    assert info.misses == 2000


def test_default_cache_is_bounded(tokenizer):
    assert tokenizer.cache_info().maxsize == DEFAULT_CACHE_SIZE


def test_evicted_chunks_encode_the_same():
    small = Tokenizer(cache_size=2)
    text = "the quick brown fox jumps over the lazy dog"
    first = small.encode(text)
    small.clear_cache()
    assert small.cache_info().currsize == 0
    assert small.encode(text) == first
    assert first == get_tokenizer().encode(text)


# Decoding.


def test_decode_round_trip_plain_text(tokenizer):
    text = "a photo of a dog running on the beach at sunset with 3 friends"
    assert tokenizer.decode(tokenizer.encode(text)) == text + " "


def test_decode_accepts_tensor_row(tokenizer):
    row = tokenize("a photo of a cat")[0]
    end = int((row == tokenizer.eot_token_id).nonzero()[0])
    assert tokenizer.decode(row[1:end]) == "a photo of a cat "
    assert tokenizer.decode(row[: end + 1]) == "<start_of_text>a photo of a cat <end_of_text>"


@pytest.mark.parametrize("bad_ids", [[-1], [49408], [320, 1.5]])
def test_decode_rejects_invalid_ids(tokenizer, bad_ids):
    with pytest.raises(ClipError, match=r"Cannot decode ids .*integer in \[0, 49408\)"):
        tokenizer.decode(bad_ids)


# Input checks.


def test_tokenize_shapes(tokenizer):
    assert tokenize("a cat").shape == (1, 77)
    assert tokenize(("a cat", "a dog")).shape == (2, 77)
    assert tokenize([]).shape == (0, 77)
    assert tokenize([""])[0, :3].tolist() == [49406, 49407, 0]


@pytest.mark.parametrize(
    ("texts", "context_length", "message"),
    [
        ("a cat", 1, r"context_length must be at least 2 .*got 1"),
        ("a cat", "77", r"context_length must be an integer, got '77'"),
        ("a cat", True, r"context_length must be an integer, got True"),
        (5, 77, r"texts must be a str or a list of str, got int"),
        (b"a cat", 77, r"texts must be a str or a list of str, got bytes"),
        (["a cat", None], 77, r"texts\[1\] must be a str, got NoneType"),
    ],
)
def test_tokenize_rejects_bad_arguments(texts, context_length, message):
    with pytest.raises(ClipError, match=message):
        tokenize(texts, context_length=context_length)


def test_encode_rejects_non_str(tokenizer):
    with pytest.raises(ClipError, match=r"encode\(\) takes a str, got bytes"):
        tokenizer.encode(b"a cat")


@pytest.mark.parametrize("cache_size", [0, -5, 1.5, True])
def test_cache_size_must_be_positive_integer(cache_size):
    with pytest.raises(ClipError, match=r"cache_size must be a positive integer"):
        Tokenizer(cache_size=cache_size)


# The vocabulary file.


def test_vocab_file_and_licence_are_package_data():
    package = importlib.resources.files("clip")
    assert package.joinpath(VOCAB_FILE).is_file()
    licence = package.joinpath("LICENSE-OpenAI-CLIP.txt").read_text(encoding="utf-8")
    assert "Copyright (c) 2021 OpenAI" in licence
    assert "MIT License" in licence


def test_explicit_vocab_path_gives_same_ids(tmp_path):
    path = tmp_path / VOCAB_FILE
    path.write_bytes(importlib.resources.files("clip").joinpath(VOCAB_FILE).read_bytes())
    assert Tokenizer(vocab_path=path).encode("a photo of a cat") == GOLDEN_IDS[0][1]


def test_missing_vocab_file_raises(tmp_path):
    with pytest.raises(ClipError, match=r"vocabulary file '.*missing\.txt\.gz' not found"):
        Tokenizer(vocab_path=tmp_path / "missing.txt.gz")


def test_vocab_file_not_gzip_raises(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("#version: 0.2\nt h\n", encoding="utf-8")
    with pytest.raises(ClipError, match=r"not a gzip-compressed UTF-8 text file"):
        Tokenizer(vocab_path=path)


def test_vocab_file_too_short_raises(tmp_path):
    path = tmp_path / "short.txt.gz"
    path.write_bytes(gzip.compress(b"#version: 0.2\nt h\ni n\n"))
    with pytest.raises(ClipError, match=r"does not start with 48894 merge lines"):
        Tokenizer(vocab_path=path)


def test_vocab_merge_of_unknown_symbol_raises(tmp_path):
    shipped = importlib.resources.files("clip").joinpath(VOCAB_FILE).read_bytes()
    lines = gzip.decompress(shipped).decode("utf-8").split("\n")
    lines[1] = "zz q"  # "zz" is neither a byte symbol nor made by an earlier merge
    path = tmp_path / "unordered.txt.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    with pytest.raises(ClipError, match=r"merge 1 \('zz' 'q'\) does not combine two earlier"):
        Tokenizer(vocab_path=path)


# The shortcuts, checked against what they replace.


def test_ascii_without_ampersand_skips_ftfy_safely():
    rng = random.Random(4)
    alphabet = "\t\n\x0c\r" + "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) != "&")
    for _ in range(3000):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 40)))
        fixed = html.unescape(html.unescape(ftfy.fix_text(text)))
        assert tokenizer_module._NEEDS_FULL_CLEAN.search(text) is None
        assert fixed.split() == text.split(), repr(text)


@pytest.mark.parametrize("text", ["a&amp;b", "caf\xe9", "\x1b[0m", "a\x0bb", "a\x00b", "x\x7f"])
def test_other_text_takes_full_cleaning(text):
    assert tokenizer_module._NEEDS_FULL_CLEAN.search(text) is not None


def test_ascii_word_pattern_matches_full_pattern():
    rng = random.Random(5)
    alphabet = [chr(code) for code in range(128)]
    alphabet += ["'s", "'T", "'re", "'LL", "'d", "<start_of_text>", "<end_of_text>", "12"]
    for _ in range(20000):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
        expected = tokenizer_module._WORD_PATTERN.findall(text)
        assert tokenizer_module._ASCII_WORD_PATTERN.findall(text) == expected, repr(text)


def test_chunks_match_clip_cleaning():
    for text in make_corpus(500, seed=6):
        cleaned = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        cleaned = " ".join(cleaned.split()).strip().lower()
        chunks = tokenizer_module._clean_chunks(text)
        assert chunks == (cleaned.split(" ") if cleaned else []), repr(text)


def test_chunk_words_match_whole_text_words():
    for text in make_corpus(500, seed=7):
        cleaned = " ".join(tokenizer_module._clean_chunks(text))
        words = tokenizer_module._WORD_PATTERN.findall(cleaned)
        chunk_words = [
            word
            for chunk in cleaned.split()
            for word in tokenizer_module._WORD_PATTERN.findall(chunk)
        ]
        assert chunk_words == words, repr(text)


# Use from other code.


def test_tokenize_as_dataloader_collate_in_workers():
    texts = [f"a photo of {number} dogs" for number in range(32)]
    loader = DataLoader(texts, batch_size=8, num_workers=2, collate_fn=tokenize)
    batches = list(loader)
    assert len(batches) == 4
    assert torch.equal(torch.cat(batches), tokenize(texts))


def test_pickled_tokenizer_encodes_the_same():
    small = Tokenizer(cache_size=16)
    small.encode("a photo of a cat")
    copy = pickle.loads(pickle.dumps(small))
    assert copy.cache_info().currsize == 0
    assert copy.cache_info().maxsize == 16
    assert copy.encode("a photo of a cat") == GOLDEN_IDS[0][1]


def test_missing_ftfy_raises_import_error():
    # A None entry in sys.modules makes "import ftfy" raise ImportError, as if not installed.
    code = "import sys; sys.modules['ftfy'] = None; import clip.tokenizer"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert re.search(r"needs the ftfy package.*pip install ftfy", result.stderr)
