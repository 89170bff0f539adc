"""How the training cost of ViT-B/32 grows with the batch size and the number of replicas.

    python -m benchmarks.scaling --precision fp32 --batch_sizes 8,16,32 \
        --replication_factors 1,2 --max_steps 4

Each combination runs the real trainer (``python -m clip.train``) on host-generated data in
a process of its own and reports:

* throughput: the trainer's own summary line, which leaves out the first host call
  (warm-up), over ``max_steps - 1`` optimizer steps;
* peak memory of the whole process tree (the launcher and every replica): the largest sum
  of their resident set sizes (VmRSS in /proc) over samples taken every 0.2 s; and the
  largest peak of any one process (its VmHWM, which the kernel keeps, read at each sample);
* for N replicas, the speed-up over one replica at the same per-replica batch, and the
  scaling efficiency, that speed-up / N. Replicas on one machine share its cores (each
  gets cores / N torch threads), so there the ideal speed-up is 1 and the ideal efficiency
  1 / N. What is missing from those says what the data-parallel machinery (process group,
  gradient all-reduce, gathered features) costs.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clip.errors import ClipError

logger = logging.getLogger("benchmarks.scaling")

THROUGHPUT = re.compile(r"Throughput: *([0-9.]+) samples/sec")
SAMPLE_SECONDS = 0.2
MIB = 2 ** 20


@dataclass
class RunResult:
    batch_size: int
    replicas: int
    throughput: float
    tree_peak_mib: float
    process_peak_mib: float


def descendants(root: int) -> list[int]:
    """Return ``root`` and every process below it, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process exited while the directory was listed
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def memory_fields(pid: int) -> tuple[int, int]:
    """Return a process's (VmRSS, VmHWM) in bytes, or zeros once it has exited."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        key, _, rest = line.partition(":")
        if key in values:
            values[key] = int(rest.split()[0]) * 1024  # the values are in kB
    return values["VmRSS"], values["VmHWM"]


class TreeMemorySampler:
    """Samples the memory of a process tree in a background thread.

    ``tree_peak_bytes`` is the largest summed VmRSS of the tree over the samples, and
    ``process_peak_bytes`` the largest VmHWM of any of its processes.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.tree_peak_bytes = 0
        self.process_peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            fields = [memory_fields(pid) for pid in descendants(self.root)]
            self.tree_peak_bytes = max(self.tree_peak_bytes, sum(rss for rss, _ in fields))
            self.process_peak_bytes = max([self.process_peak_bytes]
                                          + [peak for _, peak in fields])


def trainer_command(precision: str, batch_size: int, replicas: int, max_steps: int,
                    output_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "clip.train", "--config", "CLIP_ViT-B-32_cc3m",
        "--host_generate_data", "True", "--device", "cpu", "--precision", precision,
        "--batch_size", str(batch_size), "--gradient_accumulation", "1",
        "--replication_factor", str(replicas), "--max_steps", str(max_steps),
        "--dataloader_workers", "0", "--warmup_epochs", "0",
        "--output_dir", str(output_dir), "--checkpoint_dir", str(output_dir / "ckpt"),
    ]


def run_trainer(precision: str, batch_size: int, replicas: int, max_steps: int) -> RunResult:
    """Train in a subprocess and return its throughput and peak memory."""
    with tempfile.TemporaryDirectory(prefix="clip_scaling_") as folder:
        command = trainer_command(precision, batch_size, replicas, max_steps, Path(folder))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        with TreeMemorySampler(process.pid) as sampler:
            output, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {process.returncode}:\n"
                           f"{output}")
    rates = THROUGHPUT.findall(output)
    if not rates:
        raise RuntimeError(f"no throughput line in the output of {' '.join(command)}:\n{output}")
    return RunResult(batch_size, replicas, float(rates[-1]), sampler.tree_peak_bytes / MIB,
                     sampler.process_peak_bytes / MIB)


def parse_sizes(text: str, name: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise ClipError(f"--{name} {text!r} is not a comma-separated list of integers; "
                        f"pass e.g. --{name} 8,16,32.") from None
    if any(size <= 0 for size in sizes):
        raise ClipError(f"--{name} {text!r} has a value below 1; pass positive sizes.")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=(
        "Measure the trainer's throughput and peak memory across batch sizes and replicas."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="Arithmetic precision of every run.")
    parser.add_argument("--batch_sizes", default="8,16,32",
                        help="Comma-separated micro-batch sizes per replica.")
    parser.add_argument("--replication_factors", default="1,2",
                        help="Comma-separated replica counts.")
    parser.add_argument("--max_steps", type=int, default=4,
                        help="Optimizer steps per run, 2 or more; the first is left out as "
                        "warm-up.")
    args = parser.parse_args(argv)
    args.batch_sizes = parse_sizes(args.batch_sizes, "batch_sizes")
    args.replication_factors = parse_sizes(args.replication_factors, "replication_factors")
    if args.max_steps < 2:
        raise ClipError(f"--max_steps {args.max_steps} leaves no measured step after the "
                        "warm-up; pass --max_steps 2 or more.")
    return args


def log_result(result: RunResult, single: dict[int, RunResult]) -> None:
    efficiency = ""
    base = single.get(result.batch_size)
    if result.replicas > 1 and base is not None:
        speedup = result.throughput / base.throughput
        efficiency = (f", speed-up over one replica {speedup:.2f}, scaling efficiency "
                      f"{speedup / result.replicas:.2f}")
    logger.info("batch_size %d x replication_factor %d: Throughput: %.2f samples/sec, peak "
                "memory %.0f MiB in all processes, largest process %.0f MiB%s",
                result.batch_size, result.replicas, result.throughput, result.tree_peak_mib,
                result.process_peak_mib, efficiency)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    try:
        args = parse_args(argv)
    except ClipError as error:
        sys.stderr.write(f"python -m benchmarks.scaling: error: {error}\n")
        return 2
    single: dict[int, RunResult] = {}
    for replicas in sorted(args.replication_factors):
        for batch_size in args.batch_sizes:
            start = time.perf_counter()
            result = run_trainer(args.precision, batch_size, replicas, args.max_steps)
            if replicas == 1:
                single[batch_size] = result
            log_result(result, single)
            logger.debug("run took %.0f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
