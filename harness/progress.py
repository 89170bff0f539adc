"""Progress of a run: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol

logger = logging.getLogger(__name__)


class Progress(Protocol):
    """Receiver of the orchestrator's progress events while it works through the plan."""

    def start(self, total: int) -> None: ...
    def begin(self, name: str) -> None: ...
    def finish(self, name: str, status: str, duration_s: float | None) -> None: ...
    def close(self) -> None: ...


def make_progress() -> Progress:
    """Return a rich progress bar when stderr is a terminal, else plain log lines."""
    return RichProgress() if sys.stderr.isatty() else LogProgress()


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class LogProgress:
    """Log one line per finished variant with the count, elapsed time and an estimate."""

    def __init__(self) -> None:
        self._total = 0
        self._done = 0
        self._started = time.monotonic()

    def start(self, total: int) -> None:
        self._total = total
        self._started = time.monotonic()

    def begin(self, name: str) -> None:
        logger.info("[%d/%d] running %s", self._done + 1, self._total, name)

    def finish(self, name: str, status: str, duration_s: float | None) -> None:
        self._done += 1
        elapsed = time.monotonic() - self._started
        # The estimate assumes the remaining variants take as long as the finished ones.
        remaining = elapsed / self._done * (self._total - self._done)
        took = "" if duration_s is None else f" in {duration_s:.1f} s"
        logger.info(
            "[%d/%d] %s: %s%s; elapsed %s, estimated %s to finish",
            self._done,
            self._total,
            name,
            status,
            took,
            format_seconds(elapsed),
            format_seconds(remaining),
        )

    def close(self) -> None:
        pass


class RichProgress:
    """A live rich bar: variants done of total, the current one, elapsed time and estimate."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichBar

        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("estimate"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task("starting", total=None)

    def start(self, total: int) -> None:
        self._bar.update(self._task, total=total)
        self._bar.start()

    def begin(self, name: str) -> None:
        self._bar.update(self._task, description=name)

    def finish(self, name: str, status: str, duration_s: float | None) -> None:
        took = "" if duration_s is None else f" ({duration_s:.1f} s)"
        self._bar.console.print(f"{name}: {status}{took}", highlight=False)
        self._bar.advance(self._task)

    def close(self) -> None:
        self._bar.stop()
