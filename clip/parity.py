"""Numeric parity of execution paths: the same training computed another way must agree.

A path (gradient accumulation, data-parallel replicas, device_iterations, torch.compile,
another precision or device, a restored checkpoint) trains from the same initial weights on
the same batches as a reference run. Both runs are recorded as a :class:`Trajectory`: the
loss of every optimizer step, the final parameters and the final Adam state. Then
:func:`compare_trajectories` measures their distance and :func:`render_table` writes the
results as markdown. ``tests/parity`` runs every path against the CPU fp32 eager reference.

The errors that a :class:`Tolerance` bounds:

* loss: max over steps of ``|loss - reference| / |reference|``;
* parameters: ``||theta - theta_ref||_2 / ||theta_ref - theta_0||_2`` over all parameters,
  the error relative to the distance that the reference trained. It is one norm over the
  whole model, not a per-element error, because Adam divides each gradient by its running
  RMS. An element whose gradient is rounding noise (such as the attention key bias, whose
  exact gradient is zero) therefore still moves by up to the learning rate per step, in a
  direction that rounding decides;
* optimizer state: max over parameters and over exp_avg and exp_avg_sq of
  ``max|s - s_ref| / max|s_ref|``. Adam's update is almost independent of the gradient's
  scale, but its state contains the gradients themselves, so this is the sharpest measure
  of a wrong gradient.

The number of optimizer steps that Adam counted must match exactly, because a skipped step
(an fp16 overflow) makes a different trajectory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from clip.config import Config, config_from_flat
from clip.data.synthetic import generate_batch
from clip.errors import ClipError
from clip.model import CLIP
from clip.training.distributed import Replica, close_replica, init_replica
from clip.training.optim import build_optimizer, build_scheduler
from clip.training.precision import LossScaler
from clip.training.step import build_step_runner

logger = logging.getLogger(__name__)

# Images (G, 3, R, R) and token ids (G, L) of one optimizer step's global batch.
Batch = tuple[torch.Tensor, torch.Tensor]
TensorDict = dict[str, torch.Tensor]


@dataclass
class Trajectory:
    """The record of a training run: per-step losses, initial and final weights, Adam state.

    Tensors are fp32 copies on the CPU, keyed by parameter name. ``exp_avg``,
    ``exp_avg_sq`` and ``optimizer_steps`` are None for a device whose optimizer state
    cannot be read back.
    """

    losses: list[float]
    start: TensorDict
    parameters: TensorDict
    exp_avg: TensorDict | None
    exp_avg_sq: TensorDict | None
    optimizer_steps: int | None

    @classmethod
    def capture(cls, model: nn.Module, optimizer: torch.optim.Optimizer,
                losses: Sequence[float], start: TensorDict) -> Trajectory:
        """Record ``model``'s parameters and ``optimizer``'s Adam state after training."""
        names = {parameter: name for name, parameter in model.named_parameters()}
        exp_avg, exp_avg_sq, steps = {}, {}, set()
        for parameter, state in optimizer.state.items():
            if "exp_avg" not in state:
                raise ClipError(
                    f"{type(optimizer).__name__} keeps no Adam state (exp_avg) to compare; "
                    "parity runs need --optimizer AdamW or Adam."
                )
            exp_avg[names[parameter]] = _cpu_copy(state["exp_avg"])
            exp_avg_sq[names[parameter]] = _cpu_copy(state["exp_avg_sq"])
            steps.add(int(state["step"]))
        assert len(steps) <= 1, f"parameters took different numbers of Adam steps: {steps}"
        return cls(list(losses), start, parameter_copy(model), exp_avg, exp_avg_sq,
                   steps.pop() if steps else 0)

    def to_dict(self) -> dict[str, Any]:
        """Return plain values that ``torch.load(weights_only=True)`` reads back."""
        return dict(vars(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Trajectory:
        return cls(**values)


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float32, copy=True)


def parameter_copy(model: nn.Module) -> TensorDict:
    """Return fp32 CPU copies of ``model``'s parameters by name."""
    return {name: _cpu_copy(parameter) for name, parameter in model.named_parameters()}


def with_options(config: Config, overrides: dict[str, Any]) -> Config:
    """Return a validated copy of ``config`` with flat option overrides applied."""
    return config_from_flat({**config.to_flat(), **overrides}, config.preset).validate()


def fixed_batches(config: Config, steps: int, seed: int) -> list[Batch]:
    """Generate one global batch per optimizer step on the CPU, deterministic in ``seed``."""
    model = config.model
    return [
        generate_batch(config.execution.global_batch_size, model.image_resolution,
                       model.context_length, seed + step)
        for step in range(steps)
    ]


def initial_model(config: Config, device: torch.device) -> CLIP:
    """Build the model with the run's seeded initial weights (created on the CPU)."""
    torch.manual_seed(config.execution.random_seed)
    return CLIP(config.model).to(device)


def replica_rows(batch: Batch, replica: Replica) -> Batch:
    """Return this replica's contiguous share of a global batch."""
    images, token_ids = batch
    share = images.shape[0] // replica.world_size
    rows = slice(replica.rank * share, (replica.rank + 1) * share)
    return images[rows], token_ids[rows]


def run_trajectory(config: Config, batches: Sequence[Batch], replica: Replica) -> Trajectory:
    """Train ``len(batches)`` optimizer steps through the project's StepRunner.

    The learning-rate schedule spans ``epochs`` epochs of ``len(batches)`` steps. With
    several replicas, every process calls this with the same global batches and takes its
    own rows. The returned losses are then the mean over replicas, as the training loop
    logs them.

    Raises:
        ClipError: the batches or the process group do not fit the configuration.
    """
    execution = config.execution
    _check_layout(config, batches, replica)
    model = initial_model(config, replica.device)
    start = parameter_copy(model)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=len(batches))
    runner = build_step_runner(config, model, optimizer, scheduler,
                               LossScaler(config, replica.device), replica)
    losses = []
    for first in range(0, len(batches), execution.device_iterations):
        call = [replica_rows(batch, replica)
                for batch in batches[first:first + execution.device_iterations]]
        images = torch.cat([step_images for step_images, _ in call]).to(replica.device)
        token_ids = torch.cat([step_tokens for _, step_tokens in call]).to(replica.device)
        call_losses = runner.run_host_call(images, token_ids)
        if replica.world_size > 1:
            dist.all_reduce(call_losses)
            call_losses /= replica.world_size
        losses.extend(call_losses.tolist())
    return Trajectory.capture(model, optimizer, losses, start)


def _check_layout(config: Config, batches: Sequence[Batch], replica: Replica) -> None:
    execution = config.execution
    if not batches:
        raise ClipError("no batches to train on; pass at least one step's batch.")
    if execution.replication_factor != replica.world_size:
        raise ClipError(
            f"replication_factor={execution.replication_factor} but the process group has "
            f"{replica.world_size} processes; start replication_factor processes."
        )
    if len(batches) % execution.device_iterations:
        raise ClipError(
            f"{len(batches)} steps are not a whole number of host calls of "
            f"device_iterations={execution.device_iterations}; pass a multiple of it."
        )
    for images, _ in batches:
        if images.shape[0] != execution.global_batch_size:
            raise ClipError(
                f"a batch has {images.shape[0]} samples but the global batch is "
                f"{execution.global_batch_size} (batch_size x gradient_accumulation x "
                "replication_factor); generate the batches with fixed_batches(config, ...)."
            )


def record_replica_trajectories(config: Config, *, cases: dict[str, dict[str, Any]],
                                steps: int, seed: int, output: str) -> None:
    """Run one replica's trajectory per case; rank 0 saves them to ``output``.

    The target of :func:`clip.training.distributed.spawn_replicas`: every process joins
    the group of ``config``, then trains each case (option overrides of ``config``) on
    the same :func:`fixed_batches`. ``output`` receives ``{case: Trajectory.to_dict()}``.
    """
    replica = init_replica(config)
    try:
        results = {}
        for name, overrides in cases.items():
            case = with_options(config, overrides)
            trajectory = run_trajectory(case, fixed_batches(case, steps, seed), replica)
            results[name] = trajectory.to_dict()
        if replica.is_main:
            torch.save(results, output)
    finally:
        close_replica()


@dataclass(frozen=True)
class ParityErrors:
    """Distances of a trajectory from its reference; the module docstring defines them."""

    loss_abs: float
    loss_rel: float
    parameter_abs: float
    parameter_rel: float
    state_rel: float | None
    optimizer_steps: tuple[int | None, int | None]


def compare_trajectories(candidate: Trajectory, reference: Trajectory) -> ParityErrors:
    """Measure how far ``candidate`` is from ``reference``.

    Raises:
        ClipError: the two runs differ in length, in parameters or in initial weights, so
            they are not two ways of computing the same training.
    """
    _check_comparable(candidate, reference)
    losses = torch.tensor(candidate.losses, dtype=torch.float64)
    expected = torch.tensor(reference.losses, dtype=torch.float64)
    loss_error = (losses - expected).abs()

    error_sq = update_sq = 0.0
    parameter_abs = 0.0
    for name, expected_value in reference.parameters.items():
        difference = (candidate.parameters[name] - expected_value).double()
        update = (expected_value - reference.start[name]).double()
        error_sq += difference.pow(2).sum().item()
        update_sq += update.pow(2).sum().item()
        parameter_abs = max(parameter_abs, difference.abs().max().item())

    return ParityErrors(
        loss_abs=loss_error.max().item(),
        loss_rel=(loss_error / expected.abs()).max().item(),
        parameter_abs=parameter_abs,
        parameter_rel=_ratio(math.sqrt(error_sq), math.sqrt(update_sq)),
        state_rel=_state_error(candidate, reference),
        optimizer_steps=(candidate.optimizer_steps, reference.optimizer_steps),
    )


def _check_comparable(candidate: Trajectory, reference: Trajectory) -> None:
    if len(candidate.losses) != len(reference.losses):
        raise ClipError(
            f"the trajectories have {len(candidate.losses)} and {len(reference.losses)} "
            "steps; train both on the same batches."
        )
    if candidate.parameters.keys() != reference.parameters.keys():
        differing = sorted(candidate.parameters.keys() ^ reference.parameters.keys())
        raise ClipError(
            f"the trajectories have different parameters ({', '.join(differing)}); "
            "compare runs of the same model configuration."
        )
    for name, value in reference.start.items():
        if not torch.equal(candidate.start[name], value):
            raise ClipError(
                f"the trajectories start from different weights ({name} differs); use the "
                "same random_seed and model configuration for both runs."
            )


def _ratio(error: float, scale: float) -> float:
    """Return error / scale, with 0/0 = 0 and x/0 = inf."""
    if scale == 0:
        return 0.0 if error == 0 else math.inf
    return error / scale


def _state_error(candidate: Trajectory, reference: Trajectory) -> float | None:
    worst = 0.0
    for kind in ("exp_avg", "exp_avg_sq"):
        states, expected_states = getattr(candidate, kind), getattr(reference, kind)
        if states is None or expected_states is None:
            return None
        if states.keys() != expected_states.keys():
            return math.inf  # a parameter has Adam state in one run only
        for name, expected in expected_states.items():
            error = (states[name] - expected).abs().max().item()
            worst = max(worst, _ratio(error, expected.abs().max().item()))
    return worst


@dataclass(frozen=True)
class Tolerance:
    """The largest relative errors that a path may show, named, with the reason."""

    name: str
    loss: float
    parameters: float
    optimizer_state: float
    reason: str


@dataclass(frozen=True)
class ParityResult:
    """One path compared with its reference."""

    path: str
    reference: str
    steps: int
    errors: ParityErrors
    tolerance: Tolerance

    def failures(self) -> list[str]:
        """Describe each error above its tolerance; empty when the path passes."""
        errors, tolerance = self.errors, self.tolerance
        failures = []
        candidate_steps, reference_steps = errors.optimizer_steps
        known = candidate_steps is not None and reference_steps is not None
        if known and candidate_steps != reference_steps:
            failures.append(f"Adam took {candidate_steps} steps, the reference {reference_steps}")
        checks = (("loss rel", errors.loss_rel, tolerance.loss),
                  ("params rel", errors.parameter_rel, tolerance.parameters),
                  ("Adam state rel", errors.state_rel, tolerance.optimizer_state))
        for label, error, limit in checks:
            if error is not None and not error <= limit:
                failures.append(f"{label} {format_error(error)} > {format_error(limit)}")
        return failures

    @property
    def passed(self) -> bool:
        return not self.failures()


@dataclass(frozen=True)
class NotRun:
    """A path that this machine cannot run (no GPU, no poptorch), with the reason."""

    path: str
    reference: str
    reason: str


TABLE_HEADER = (
    "| path | reference | steps | loss max abs | loss max rel | params max abs | params rel "
    "| Adam state rel | tolerance | verdict |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---|---|"
)
TOLERANCE_HEADER = (
    "| tolerance | loss rel | params rel | Adam state rel | reason |\n|---|---:|---:|---:|---|"
)


def format_error(value: float | None) -> str:
    """Format an error or limit in two significant digits; exact zero as 0, None as n/a."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:.1e}"


def _row_cells(row: ParityResult | NotRun) -> list[str]:
    if isinstance(row, NotRun):
        # Steps, the five errors and the tolerance are empty.
        return [row.path, row.reference, *["-"] * 7, f"not run: {row.reason}"]
    errors = row.errors
    measured = (errors.loss_abs, errors.loss_rel, errors.parameter_abs, errors.parameter_rel,
                errors.state_rel)
    verdict = "pass" if row.passed else "FAIL: " + "; ".join(row.failures())
    return [row.path, row.reference, str(row.steps), *map(format_error, measured),
            row.tolerance.name, verdict]


def render_table(rows: Sequence[ParityResult | NotRun], notes: Sequence[str] = ()) -> str:
    """Render the parity results as markdown: one row per path, then the tolerances used.

    Args:
        rows: results and paths not run, in the order to show.
        notes: paragraphs printed under the title (how the table was made, where).
    """
    lines = ["# Parity of execution paths", ""]
    for note in notes:
        lines += [note, ""]
    lines.append(TABLE_HEADER)
    lines += ["| " + " | ".join(_row_cells(row)) + " |" for row in rows]

    tolerances = {row.tolerance.name: row.tolerance for row in rows
                  if isinstance(row, ParityResult)}
    if tolerances:
        lines += ["", "## Tolerances", "", TOLERANCE_HEADER]
        for tolerance in tolerances.values():
            limits = map(format_error, (tolerance.loss, tolerance.parameters,
                                        tolerance.optimizer_state))
            lines.append(f"| {tolerance.name} | {' | '.join(limits)} | {tolerance.reason} |")
    return "\n".join(lines) + "\n"


def write_table(path: str | Path, rows: Sequence[ParityResult | NotRun],
                notes: Sequence[str] = ()) -> None:
    """Write :func:`render_table` to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_table(rows, notes), encoding="utf-8")
    logger.debug("parity table with %d rows written to %s", len(rows), path)
