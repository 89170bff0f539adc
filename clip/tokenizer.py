"""Byte-level BPE tokenizer of OpenAI CLIP, producing the same ids as open_clip's SimpleTokenizer.

Text is cleaned as CLIP does it: ftfy ``fix_text``, HTML unescaped twice, whitespace collapsed,
lowercased. CLIP's regular expression splits it into words, and the 48,894 ranked BPE merges of
``bpe_simple_vocab_16e6.txt.gz`` combine the UTF-8 bytes of each word. OpenAI published that file
under the MIT licence (see ``LICENSE-OpenAI-CLIP.txt``). The last symbol of each word carries the
``</w>`` end-of-word mark. The vocabulary has 49,408 ids: 256 byte symbols, the same 256 with
``</w>``, one id per merge, then the start (49406) and end (49407) tokens.

The speed comes from these steps, none of which changes an id:

- plain ASCII text without ``&`` skips ftfy and the HTML unescape, which leave it unchanged;
- the ids of each whitespace-separated chunk ("dog," or "photo") are kept in a bounded LRU cache,
  so the regular expression and the merges run only for chunks not seen recently;
- the merge loop works on integer ids, with one dict lookup per adjacent pair, and takes the
  next merge from a heap, in O(n log n) for a word of n bytes instead of O(n^2);
- the output rows are padded in one flat array and wrapped as a tensor without a copy per row.
"""

import array
import functools
import gzip
import heapq
import html
import importlib.resources
import logging
import re
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import regex
import torch

from clip.errors import ClipError

try:
    import ftfy
except ImportError as error:
    raise ImportError(
        "clip.tokenizer needs the ftfy package to clean text exactly as CLIP does, and without it "
        "the token ids would differ; install it with `pip install ftfy`."
    ) from error

logger = logging.getLogger(__name__)

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP uses the first 49152 - 256 - 2 merges of the file, so that the 256 byte symbols, their 256
# end-of-word forms, the merges and the two special tokens make 49,408 ids.
NUM_MERGES = 49152 - 256 - 2
DEFAULT_CONTEXT_LENGTH = 77
# Estimated at 250 bytes per cached chunk (key, tuple of ids, LRU link), so about 16 MB when full.
DEFAULT_CACHE_SIZE = 1 << 16

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"

# open_clip's SimpleTokenizer (open-clip-torch 3.3.0) puts its own special token names in front of
# CLIP's pattern, so a caption containing "<start_of_text>" gets the start id there. This pattern
# does the same to keep the ids identical. Contractions come next, then letter runs, single
# digits and runs of other non-space characters.
_WORD_PATTERN = regex.compile(
    f"{SOT_TOKEN}|{EOT_TOKEN}"
    r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# The same pattern for ASCII chunks with the standard re module, which matches them faster: in
# ASCII, \p{L} is [a-zA-Z] and \p{N} is [0-9]. Tests compare both patterns on random ASCII text.
_ASCII_WORD_PATTERN = re.compile(
    f"{SOT_TOKEN}|{EOT_TOKEN}"
    r"""|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+""",
    re.IGNORECASE | re.ASCII,
)

# Text of printable ASCII without "&", plus tab, line feed, form feed and carriage return, has no
# mojibake, entity, control or terminal escape character to fix. ftfy.fix_text (ftfy 6.3) and
# html.unescape return it unchanged, except that ftfy turns carriage returns into line feeds, and
# the whitespace collapse treats both alike. Any other character sends the text through the full
# cleaning.
_NEEDS_FULL_CLEAN = re.compile(r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]")


def _byte_symbols() -> list[tuple[int, str]]:
    """Return (byte value, vocabulary character) for the 256 bytes, in the order of their ids.

    Printable Latin-1 bytes come first and stand for themselves. The other bytes follow in
    increasing order as the characters 256, 257, ..., so that no symbol is a space or a control.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    printable_set = set(printable)
    others = [byte for byte in range(256) if byte not in printable_set]
    return [(byte, chr(byte)) for byte in printable] + [
        (byte, chr(256 + n)) for n, byte in enumerate(others)
    ]


def _read_merges(vocab_path: str | Path | None) -> list[tuple[str, str]]:
    """Read the first NUM_MERGES merge rules from the gzip vocabulary file."""
    if vocab_path is None:
        data = importlib.resources.files("clip").joinpath(VOCAB_FILE).read_bytes()
    else:
        path = Path(vocab_path)
        if not path.is_file():
            raise ClipError(
                f"BPE vocabulary file {str(path)!r} not found; pass the path of "
                f"{VOCAB_FILE}, or None for the copy shipped with the clip package."
            )
        data = path.read_bytes()
    try:
        lines = gzip.decompress(data).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ClipError(
            f"BPE vocabulary file {str(vocab_path)!r} is not a gzip-compressed UTF-8 text file "
            f"({error}); pass the path of {VOCAB_FILE}."
        ) from error

    # The first line is a version header, and each following line is "left right".
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) < NUM_MERGES or any(len(merge) != 2 for merge in merges):
        raise ClipError(
            f"BPE vocabulary file {str(vocab_path)!r} does not start with {NUM_MERGES} merge "
            f"lines of two symbols each; pass the path of {VOCAB_FILE}."
        )
    return merges


def _merge_table(
    merges: list[tuple[str, str]], encoder: dict[str, int], vocab_path: str | Path | None
) -> tuple[dict[int, int], list[int]]:
    """Return the rank of each mergeable id pair and the id that each rank's merge produces.

    A pair of ids (left, right) is keyed as the integer left << 16 | right, which hashes faster
    than a tuple. All ids are below 2**16. Each merge must combine byte symbols or symbols made
    by earlier merges into a new symbol, as BPE learns them; Tokenizer._merge relies on it.
    """
    known = {token for token, token_id in encoder.items() if token_id < 512}
    ranks: dict[int, int] = {}
    merged_ids: list[int] = []
    for rank, (left, right) in enumerate(merges):
        merged = left + right
        if left not in known or right not in known or merged in known:
            raise ClipError(
                f"BPE vocabulary file {str(vocab_path)!r}: merge {rank + 1} ({left!r} "
                f"{right!r}) does not combine two earlier symbols into a new one; pass the "
                f"path of {VOCAB_FILE}."
            )
        known.add(merged)
        ranks[encoder[left] << 16 | encoder[right]] = rank
        merged_ids.append(encoder[merged])
    return ranks, merged_ids


def _clean_chunks(text: str) -> list[str]:
    """Clean text as CLIP does and split it at whitespace.

    CLIP applies ftfy, unescapes HTML twice, collapses whitespace runs to one space, strips and
    lowercases. Lowercasing neither creates nor removes whitespace, so lowercasing first and
    splitting gives the same chunks. No word of the pattern spans a space, so the words of the
    text are the words of its chunks in order.
    """
    if _NEEDS_FULL_CLEAN.search(text) is not None:
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return text.lower().split()


def _shorten(text: str, max_chars: int = 60) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + "..."


class Tokenizer:
    """CLIP's byte-level BPE tokenizer with a bounded cache of recently seen chunks.

    Args:
        vocab_path: gzip BPE vocabulary file; None loads the copy shipped in the clip package.
        cache_size: maximum number of distinct whitespace-separated chunks whose ids are cached
            (least recently used chunks are evicted first).
    """

    def __init__(
        self, vocab_path: str | Path | None = None, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ClipError(
                f"Tokenizer cache_size must be a positive integer, got {cache_size!r}; "
                f"the default is {DEFAULT_CACHE_SIZE}."
            )
        merges = _read_merges(vocab_path)
        byte_symbols = _byte_symbols()

        # Ids 0-255 are the byte symbols, 256-511 the same with the end-of-word mark.
        vocab = [char for _, char in byte_symbols]
        vocab += [char + "</w>" for _, char in byte_symbols]
        vocab += [left + right for left, right in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        encoder = {token: token_id for token_id, token in enumerate(vocab)}

        self.vocab_size = len(vocab)
        self.sot_token_id = encoder[SOT_TOKEN]
        self.eot_token_id = encoder[EOT_TOKEN]
        self._special_ids = {SOT_TOKEN: self.sot_token_id, EOT_TOKEN: self.eot_token_id}
        self._byte_ids = [0] * 256
        for token_id, (byte, _) in enumerate(byte_symbols):
            self._byte_ids[byte] = token_id

        self._merge_ranks, self._merged_ids = _merge_table(merges, encoder, vocab_path)

        byte_of_char = {char: byte for byte, char in byte_symbols}
        self._token_bytes = [bytes(byte_of_char[char] for char in token) for token in vocab]
        self._cache_size = cache_size
        self._chunk_ids = functools.lru_cache(maxsize=cache_size)(self._encode_chunk)
        logger.debug("Loaded %d BPE merges, vocabulary size %d", len(merges), self.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Return the ids of text, without the start and end tokens."""
        if not isinstance(text, str):
            raise ClipError(
                f"encode() takes a str, got {type(text).__name__} {_shorten(repr(text))}; "
                f"convert it to str first."
            )
        ids: list[int] = []
        for chunk in _clean_chunks(text):
            ids += self._chunk_ids(chunk)
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Return the text of ids, with a space after each word and the special tokens as text.

        Padding zeros are decoded too (as "!"), so strip them from rows of tokenize() first.
        Byte sequences that are not valid UTF-8 become U+FFFD.
        """
        id_list = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        invalid = [i for i in id_list if not (isinstance(i, int) and 0 <= i < self.vocab_size)]
        if invalid:
            raise ClipError(
                f"Cannot decode ids {_shorten(repr(invalid))}: each id must be an integer in "
                f"[0, {self.vocab_size}); pass ids produced by this tokenizer."
            )
        data = b"".join([self._token_bytes[i] for i in id_list])
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(
        self,
        texts: str | Sequence[str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> torch.LongTensor:
        """Tokenize texts into rows of start token, ids, end token and zero padding.

        Args:
            texts: one text or a list of texts.
            context_length: number of ids per row, start and end tokens included.
            truncate: for a longer text, keep the start token and the first
                context_length - 2 ids, then put the end token last. Without it, a longer text
                raises ClipError.

        Returns:
            LongTensor of shape (N, context_length) for N texts.
        """
        texts = [texts] if isinstance(texts, str) else texts
        _check_tokenize_args(texts, context_length)
        max_ids = context_length - 2
        rows = []
        for text in texts:
            ids = self.encode(text)
            if len(ids) > max_ids:
                if not truncate:
                    raise ClipError(
                        f"Text {_shorten(text)!r} has {len(ids) + 2} tokens with the start and "
                        f"end tokens, more than context_length={context_length}; pass "
                        f"truncate=True to keep the first {context_length - 1} tokens and put "
                        f"the end token last, or shorten the text."
                    )
                ids = ids[:max_ids]
            rows.append(ids)
        return self._fill_rows(rows, context_length)

    def cache_info(self) -> functools._CacheInfo:
        """Return the hits, misses, maxsize and current size of the per-chunk cache."""
        return self._chunk_ids.cache_info()

    def clear_cache(self) -> None:
        """Empty the per-chunk cache."""
        self._chunk_ids.cache_clear()

    def __getstate__(self) -> dict[str, object]:
        # The cache wraps a bound method and cannot be pickled, so a copy sent to a spawned
        # DataLoader worker starts with an empty one.
        state = self.__dict__.copy()
        del state["_chunk_ids"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._chunk_ids = functools.lru_cache(maxsize=self._cache_size)(self._encode_chunk)

    def _fill_rows(self, rows: list[list[int]], context_length: int) -> torch.LongTensor:
        if not rows:
            return torch.zeros(0, context_length, dtype=torch.long)
        padding = [0] * context_length
        flat: list[int] = []
        for ids in rows:
            flat.append(self.sot_token_id)
            flat += ids
            flat.append(self.eot_token_id)
            flat += padding[len(ids) + 2 :]
        # The tensor shares the typed array's memory, so the ids are converted once, which is
        # faster than torch.tensor on nested lists or one tensor copy per row.
        buffer = array.array("q", flat)
        return torch.frombuffer(buffer, dtype=torch.long).view(len(rows), context_length)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Return the ids of one whitespace-free chunk of cleaned text (called on a cache miss)."""
        pattern = _ASCII_WORD_PATTERN if chunk.isascii() else _WORD_PATTERN
        ids: list[int] = []
        for word in pattern.findall(chunk):
            ids += self._encode_word(word)
        return tuple(ids)

    def _encode_word(self, word: str) -> list[int]:
        """Return the ids of one word that the word pattern matched."""
        special_id = self._special_ids.get(word)
        if special_id is not None:
            return [special_id]
        ids = [self._byte_ids[byte] for byte in word.encode("utf-8")]
        ids[-1] += 256  # the end-of-word form of the last byte
        return self._merge(ids)

    def _merge(self, ids: list[int]) -> list[int]:
        """Apply the BPE merges to the byte ids of one word in O(n log n).

        CLIP's reference loop repeatedly takes the lowest-ranked adjacent pair and merges all
        its non-overlapping occurrences from left to right. Here a heap contains the (rank,
        position) of mergeable pairs over a linked list of symbols. Equal ranks pop left to
        right, and an entry whose pair has changed since it was pushed is skipped. This gives
        the same result because a pair that contains a merged symbol always ranks after the
        merge that made it, as in BPE merges learned in order (_merge_table checks the file).
        """
        ranks = self._merge_ranks
        end = len(ids)
        symbols = list(ids)  # -1 marks a position merged into its left neighbour
        next_pos = list(range(1, end + 1))
        prev_pos = list(range(-1, end - 1))
        heap = []
        for i, (left, right) in enumerate(pairwise(ids)):
            rank = ranks.get(left << 16 | right)
            if rank is not None:
                heap.append((rank, i))
        heapq.heapify(heap)

        while heap:
            rank, i = heapq.heappop(heap)
            left = symbols[i]
            j = next_pos[i]
            if left < 0 or j == end or ranks.get(left << 16 | symbols[j]) != rank:
                continue  # the pair at i was merged away or changed after this push

            merged_id = self._merged_ids[rank]
            symbols[i] = merged_id
            symbols[j] = -1
            k = next_pos[j]
            next_pos[i] = k
            if k < end:
                prev_pos[k] = i
                self._push_pair(heap, merged_id, symbols[k], i)
            p = prev_pos[i]
            if p >= 0:
                self._push_pair(heap, symbols[p], merged_id, p)
        return [symbol for symbol in symbols if symbol >= 0]

    def _push_pair(self, heap: list[tuple[int, int]], left: int, right: int, pos: int) -> None:
        rank = self._merge_ranks.get(left << 16 | right)
        if rank is not None:
            heapq.heappush(heap, (rank, pos))


def _check_tokenize_args(texts: Sequence[str], context_length: int) -> None:
    if isinstance(context_length, bool) or not isinstance(context_length, int):
        raise ClipError(
            f"context_length must be an integer, got {context_length!r}; CLIP models use "
            f"{DEFAULT_CONTEXT_LENGTH}."
        )
    if context_length < 2:
        raise ClipError(
            f"context_length must be at least 2 to hold the start and end tokens, got "
            f"{context_length}; CLIP models use {DEFAULT_CONTEXT_LENGTH}."
        )
    if isinstance(texts, bytes | bytearray) or not isinstance(texts, Sequence):
        raise ClipError(
            f"texts must be a str or a list of str, got {type(texts).__name__}; decode bytes "
            f"to str and pass other collections as a list."
        )
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ClipError(
                f"texts[{index}] must be a str, got {type(text).__name__} "
                f"{_shorten(repr(text))}; convert it to str before tokenizing."
            )


@functools.cache
def get_tokenizer() -> Tokenizer:
    """Return the shared default tokenizer, loading the shipped vocabulary on first use."""
    return Tokenizer()


def tokenize(
    texts: str | Sequence[str],
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    truncate: bool = False,
) -> torch.LongTensor:
    """Tokenize texts with the shared default tokenizer; see Tokenizer.tokenize.

    Returns:
        LongTensor of shape (N, context_length) for N texts.
    """
    return get_tokenizer().tokenize(texts, context_length, truncate)
