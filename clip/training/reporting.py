"""Reports of a training run: the progress line, metrics.jsonl, the log file and W&B.

The progress line is an interface: benchmark harnesses parse ``Throughput: *(.*?)
samples/sec``, ``Loss: *(.*?) `` and ``Compiled model in *(.*?) secs`` from it, so only
:func:`progress_line` and :func:`summary_lines` format it. Only rank 0 reports.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from clip.config import Config
from clip.errors import ClipError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yml"


@dataclass
class HostCallRecord:
    """Record of one host call: its optimizer steps, learning rate, losses and timing."""

    epoch: float
    step: int
    lr: float
    losses: list[float]
    samples: int
    seconds: float

    @property
    def loss(self) -> float:
        """Mean loss over the call's optimizer steps."""
        return sum(self.losses) / len(self.losses)

    @property
    def throughput(self) -> float:
        """Samples per second over the call's wall time."""
        return self.samples / self.seconds


def progress_line(record: HostCallRecord, epochs: int, total_steps: int) -> str:
    """Format the per-call line that harnesses parse."""
    return (
        f"Epoch: {record.epoch:.2f}/{epochs} Step: {record.step}/{total_steps} "
        f"Lr: {record.lr:.6f} Loss: {record.loss:.3f} "
        f"Throughput: {record.throughput:.2f} samples/sec"
    )


def compile_line(seconds: float) -> str:
    return f"Compiled model in {seconds:.2f} secs"


@dataclass
class ThroughputSummary:
    """Throughput over every host call but the first, which includes compilation."""

    samples: int = 0
    seconds: float = 0.0
    calls: int = 0
    first_call: HostCallRecord | None = field(default=None, repr=False)

    def add(self, record: HostCallRecord) -> None:
        if self.first_call is None:
            self.first_call = record
            return
        self.samples += record.samples
        self.seconds += record.seconds
        self.calls += 1

    @property
    def throughput(self) -> float:
        """Samples per second after the first call, or of the first call if it was the only one."""
        if self.calls:
            return self.samples / self.seconds
        return self.first_call.throughput if self.first_call else 0.0


def summary_lines(summary: ThroughputSummary, steps: int, total_seconds: float) -> list[str]:
    """Format the end-of-run block; its last line matches the harness's throughput regexp."""
    excluded = "first host call excluded" if summary.calls else "only one host call, included"
    return [
        "Training summary:",
        f"  optimizer steps: {steps}",
        f"  wall time: {total_seconds:.2f} secs",
        f"  host calls measured: {summary.calls} ({excluded})",
        f"Throughput: {summary.throughput:.2f} samples/sec.",
    ]


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time, so rich's live display can wrap it."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def setup_logging(output_dir: str | Path | None, is_main: bool) -> None:
    """Log with timestamps to stdout and, on rank 0, to ``output_dir/train.log``.

    Other ranks log warnings and errors only, so each message appears once.
    """
    root = logging.getLogger("clip")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    root.propagate = False
    formatter = logging.Formatter(LOG_FORMAT)
    console = _CurrentStdoutHandler()
    console.setFormatter(formatter)
    root.addHandler(console)
    if is_main and output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        log_file = logging.FileHandler(Path(output_dir) / LOG_FILE, mode="a")
        log_file.setFormatter(formatter)
        root.addHandler(log_file)


class MetricsWriter:
    """Appends one JSON line per host call to ``output_dir/metrics.jsonl``."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: HostCallRecord) -> None:
        line = {
            "epoch": record.epoch, "step": record.step, "lr": record.lr, "loss": record.loss,
            "losses": record.losses, "samples": record.samples, "seconds": record.seconds,
            "throughput": record.throughput,
        }
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class WandbLogger:
    """Logs host-call metrics to Weights & Biases; wandb is imported only when enabled."""

    def __init__(self, config: Config) -> None:
        try:
            import wandb
        except ImportError:
            raise ClipError(
                "wandb=True needs the wandb package, which is not installed; "
                "run 'pip install wandb' or pass --wandb False."
            ) from None
        self.run = wandb.init(project="clip-training", config=config.to_flat(),
                              dir=config.checkpoint.output_dir)

    def log(self, record: HostCallRecord) -> None:
        self.run.log({"loss": record.loss, "lr": record.lr, "epoch": record.epoch,
                      "throughput": record.throughput}, step=record.step)

    def close(self) -> None:
        self.run.finish()


@dataclass
class Reporters:
    """Destinations of the host-call records: throughput summary, metrics file and W&B.

    Only rank 0 writes metrics and logs to W&B; every rank keeps the summary.
    """

    summary: ThroughputSummary
    metrics: MetricsWriter | None = None
    wandb: WandbLogger | None = None

    @classmethod
    def open(cls, config: Config, is_main: bool) -> Reporters:
        if not is_main:
            return cls(ThroughputSummary())
        wandb = WandbLogger(config) if config.checkpoint.wandb else None
        return cls(ThroughputSummary(), MetricsWriter(config.checkpoint.output_dir), wandb)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.wandb is not None:
            self.wandb.close()


class ProgressBar:
    """A rich progress bar, shown only when stdout is a terminal; elsewhere a no-op."""

    def __init__(self, total: int, enabled: bool, description: str = "training") -> None:
        self.progress: Any = None
        if not (enabled and sys.stdout.isatty()):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress(description, BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=True)
        self.task = self.progress.add_task(description, total=total)

    def __enter__(self) -> ProgressBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def update(self, completed: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.stop()
