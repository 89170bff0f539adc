"""Compare clip with open_clip on ViT-B/32, side by side in one run.

    python -m benchmarks.compare_open_clip --precision bf16 --batch_size 16 --rounds 5
    python -m benchmarks.compare_open_clip --mode encode_image --precision bf16 --batch_size 64
    python -m benchmarks.compare_open_clip --mode memory --precision fp32 --batch_size 16

Modes:

* ``train``: one training step of each (benchmarks/workloads.py describes both), timed in
  turn for ``--rounds`` rounds after one warm-up round. Then the FLOPs of a step are
  counted and a square matmul is timed, for the model FLOP utilisation (MFU).
* ``encode_image``: zero-shot image encoding under ``torch.no_grad``; bf16 enters
  ``torch.autocast`` once around all rounds, as an evaluation loop does. Our model stores
  its matmul weights in bf16, as ``clip.zero_shot`` does. open_clip keeps fp32 weights, as
  its ``amp_bf16`` precision does. With ``--open_clip_pure_bf16`` it runs a bf16 model on
  bf16 images instead, as its ``pure_bf16`` precision does.
* ``memory``: each implementation trains ``--steps`` steps in a process of its own, which
  reports its peak resident memory (VmHWM).

Each measured round of ``train`` and ``encode_image`` writes one line that the benchmark
harness parses (``Throughput: *(.*?) samples/sec`` and ``Loss: *(.*?) ``):

    Step: 2/5 Loss: 2.842 Throughput: 3.41 samples/sec Reference: 2.80 samples/sec Speed-up: 1.22x

Throughput is ours and Reference is open_clip's in the same round. Loss is our step's loss
on the one fixed batch that every round trains on again, at a constant learning rate and
without warm-up. It shows that the step trains, not how a real run converges, and it can
rise. Summary lines follow.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence

import torch

from benchmarks.measure import (
    PairedTimes,
    alternate,
    count_flops,
    matmul_rate,
    peak_resident_bytes,
    time_call,
)
from benchmarks.workloads import (
    IMPLEMENTATIONS,
    PRECISIONS,
    StepSettings,
    build_both,
    build_image_encoders,
    build_one,
)
from clip.errors import ClipError

logger = logging.getLogger("benchmarks.compare_open_clip")

MODES = ("train", "encode_image", "memory")
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MEMORY_LINE = re.compile(r"Peak memory: (\d+) MiB")
MIB = 2 ** 20


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_open_clip",
        description="Time clip against open_clip on ViT-B/32, alternating the two in one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--mode", choices=MODES, default="train", help="What to compare.")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 or bf16. Each implementation runs it as its own trainer "
                        "or evaluation does.")
    parser.add_argument("--batch_size", type=int, default=16, help="Samples per step.")
    parser.add_argument("--rounds", type=int, default=5,
                        help="Measured rounds, each timing both once, after one warm-up round.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads for both; the default is torch's on this machine.")
    parser.add_argument("--steps", type=int, default=3,
                        help="Training steps of each process in --mode memory.")
    parser.add_argument("--open_clip_pure_bf16", action="store_true",
                        help="In --mode encode_image with bf16, cast open_clip's model and "
                        "images to bf16 instead of using its fp32 weights under autocast.")
    parser.add_argument("--memory_worker", choices=IMPLEMENTATIONS, default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch_size", "rounds", "threads", "steps"):
        if getattr(args, name) <= 0:
            raise ClipError(f"--{name} {getattr(args, name)} must be positive; pass 1 or more.")
    if args.open_clip_pure_bf16 and (args.mode, args.precision) != ("encode_image", "bf16"):
        raise ClipError(f"--open_clip_pure_bf16 applies to --mode encode_image --precision bf16, "
                        f"not --mode {args.mode} --precision {args.precision}; drop it or pass "
                        "those.")
    return args


def log_round(index: int, rounds: int, samples: int, ours: float, reference: float,
              loss: float | None = None) -> None:
    """Write the per-round line that the harness parses."""
    loss_text = f"Loss: {loss:.3f} " if loss is not None else ""
    logger.info("Step: %d/%d %sThroughput: %.2f samples/sec Reference: %.2f samples/sec "
                "Speed-up: %.2fx", index + 1, rounds, loss_text, samples / ours,
                samples / reference, reference / ours)


def run_train(args: argparse.Namespace) -> None:
    settings = StepSettings(args.batch_size, args.precision)
    steps = build_both(settings)
    ours, reference = steps["clip"], steps["open_clip"]
    first_loss = ours.run().item()
    reference_loss = reference.run().item()
    logger.info("first-step loss: clip %.6f, open_clip %.6f", first_loss, reference_loss)

    last_loss: list[float] = []

    def run_ours() -> None:
        last_loss[:] = [ours.run().item()]

    times = alternate(run_ours, reference.run, args.rounds, warmup_rounds=0,
                      on_round=lambda index, mine, theirs: log_round(
                          index, args.rounds, settings.batch_size, mine, theirs, last_loss[0]))
    log_summary("train step", times, settings.batch_size)

    # FLOPs as open_clip executes them are the model FLOPs; ours skip part of the last
    # blocks and the text padding, which the executed count shows.
    model_flops = count_flops(reference.run)
    executed_flops = count_flops(ours.run)
    rate = matmul_rate(MATMUL_DTYPES[args.precision])
    log_utilisation(times, model_flops, executed_flops, rate, settings)


def log_summary(label: str, times: PairedTimes, samples: int) -> None:
    logger.info("%s: %s", label, times.describe())
    ours_rate = samples / statistics.median(times.ours)
    reference_rate = samples / statistics.median(times.reference)
    logger.info("median rate: clip %.2f, open_clip %.2f samples/sec", ours_rate, reference_rate)


def log_utilisation(times: PairedTimes, model_flops: int, executed_flops: int, rate: float,
                    settings: StepSettings) -> None:
    """Log the FLOPs per sample and the MFU of both against the measured matmul rate."""
    per_sample = model_flops / settings.batch_size
    logger.info("model FLOPs: %.1f GFLOP per sample (forward and backward, as open_clip "
                "executes them); clip executes %.1f GFLOP", per_sample / 1e9,
                executed_flops / settings.batch_size / 1e9)
    logger.info("matmul rate: %.0f GFLOP/s (%s, 2048 x 2048 x 2048, %d threads)",
                rate / 1e9, settings.precision, torch.get_num_threads())
    ours = model_flops / min(times.ours) / rate
    reference = model_flops / min(times.reference) / rate
    logger.info("MFU (model FLOPs / fastest round / matmul rate): clip %.1f%%, open_clip "
                "%.1f%%", 100 * ours, 100 * reference)


def run_encode_image(args: argparse.Namespace) -> None:
    encoders = build_image_encoders(args.batch_size, args.precision,
                                    reference_pure_bf16=args.open_clip_pure_bf16)
    region = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16"
              else contextlib.nullcontext())
    with torch.no_grad(), region:
        times = alternate(encoders["clip"], encoders["open_clip"], args.rounds,
                          on_round=lambda index, mine, theirs: log_round(
                              index, args.rounds, args.batch_size, mine, theirs))
    reference = "open_clip pure_bf16" if args.open_clip_pure_bf16 else "open_clip"
    log_summary(f"encode_image {args.precision} batch {args.batch_size} against {reference}",
                times, args.batch_size)


def run_memory_worker(args: argparse.Namespace) -> None:
    """Train ``--steps`` steps of one implementation and log this process's peak memory."""
    step = build_one(args.memory_worker, StepSettings(args.batch_size, args.precision))
    seconds = [time_call(step.run) for _ in range(args.steps)]
    logger.info("%s: %d steps, last %.2f s", args.memory_worker, args.steps, seconds[-1])
    logger.info("Peak memory: %d MiB", peak_resident_bytes() // MIB)


def measure_peak_memory(implementation: str, args: argparse.Namespace) -> int:
    """Run a memory worker for ``implementation`` and return its peak resident MiB."""
    command = [
        sys.executable, "-m", "benchmarks.compare_open_clip", "--memory_worker", implementation,
        "--precision", args.precision, "--batch_size", str(args.batch_size),
        "--threads", str(args.threads), "--steps", str(args.steps),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    match = MEMORY_LINE.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"memory worker for {implementation} failed with status "
                           f"{result.returncode}:\n{result.stdout}\n{result.stderr}")
    return int(match.group(1))


def run_memory(args: argparse.Namespace) -> None:
    peaks = {name: measure_peak_memory(name, args) for name in IMPLEMENTATIONS}
    logger.info("Peak memory: clip %d MiB, open_clip %d MiB, clip / open_clip %.3f "
                "(%s, batch %d, %d steps, %d threads)", peaks["clip"], peaks["open_clip"],
                peaks["clip"] / peaks["open_clip"], args.precision, args.batch_size,
                args.steps, args.threads)


def main(argv: Sequence[str] | None = None) -> int:
    # Only this script's lines: open_clip logs its model creation at INFO and warns that it
    # loaded no pretrained weights, which is what these runs ask for.
    logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="%(message)s")
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    try:
        args = parse_args(argv)
    except ClipError as error:
        sys.stderr.write(f"python -m benchmarks.compare_open_clip: error: {error}\n")
        return 2
    torch.set_num_threads(args.threads)
    if args.memory_worker is not None:
        run_memory_worker(args)
        return 0
    count = f"{args.steps} steps" if args.mode == "memory" else f"{args.rounds} rounds"
    logger.info("%s, precision %s, batch %d, %s, %d threads, torch %s", args.mode,
                args.precision, args.batch_size, count, torch.get_num_threads(),
                torch.__version__)
    {"train": run_train, "encode_image": run_encode_image, "memory": run_memory}[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
