"""Counts of the rows and images that the data pipeline skipped, with a few examples of each."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Reasons, used as keys so that the counts from the captions file and the workers add up.
MISSING_IMAGE = "missing image"
EMPTY_CAPTION = "empty caption"
MALFORMED_ROW = "malformed row"
UNREADABLE_IMAGE = "unreadable image"
BAD_CAPTION = "caption not tokenizable"
INCOMPLETE_SAMPLE = "incomplete webdataset sample"
UNREADABLE_SHARD = "unreadable shard"


@dataclass
class SkipReport:
    """Skipped items counted per reason, with up to ``max_examples`` examples per reason.

    An unreadable image is counted once per file name, however often it is drawn, because
    the map-style dataset replaces it by another sample every time it comes up.
    """

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3
    _seen_failures: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def add(self, reason: str, example: str, count: int = 1) -> None:
        """Count ``count`` skipped items for ``reason`` and keep ``example`` if there is room."""
        self.counts[reason] += count
        stored = self.examples.setdefault(reason, [])
        if len(stored) < self.max_examples and example not in stored:
            stored.append(example)

    def add_failure(self, reason: str, example: str) -> None:
        """Count a failure seen while loading, once per distinct (reason, example)."""
        if (reason, example) in self._seen_failures:
            return
        self._seen_failures.add((reason, example))
        self.add(reason, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """Return one line: the total, then each reason with its count and examples."""
        if not self.counts:
            return "skipped 0 rows or images"
        parts = []
        for reason, count in sorted(self.counts.items()):
            examples = ", ".join(repr(example) for example in self.examples.get(reason, []))
            parts.append(f"{reason}: {count} (e.g. {examples})")
        return f"skipped {self.total} rows or images; " + "; ".join(parts)

    def __str__(self) -> str:
        return self.summary()
