"""Metric definitions from a spec's ``data`` and ``derived`` keys, and their extraction.

A ``data`` metric is a regular expression with one capture group. It is applied to the
variant's stdout and stderr together, and its matches are reduced to one number. A
``derived`` metric is an arithmetic expression over other metrics and the variant's
parameters.

``skip: N`` drops the first N matches in log order (warm-up steps) before the
reduction, for every reduction type. This differs from examples-utils, which sorts
the matches and drops the N lowest, and only for ``mean``.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.expression import Expression, parse_expression

logger = logging.getLogger(__name__)

REDUCTIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": statistics.fmean,
    "median": statistics.median,
    "final": lambda values: values[-1],
    "min": min,
    "max": max,
    "value": lambda values: values[0],
}
DIRECTIONS = ("higher", "lower")
DEFAULT_TOLERANCE = 0.05
DATA_KEYS = {"regexp", "reduction_type", "skip", "direction", "tolerance"}
DERIVED_KEYS = {"expr", "reduction_type", "direction", "tolerance"}

# Words in a metric name that fix its default direction; the name is split on
# non-alphanumeric characters, so "compile_time" contains "time".
LOWER_IS_BETTER = {
    "loss",
    "latency",
    "time",
    "secs",
    "seconds",
    "duration",
    "perplexity",
    "error",
    "memory",
}
HIGHER_IS_BETTER = {
    "throughput",
    "accuracy",
    "acc",
    "top1",
    "top5",
    "samples",
    "tflops",
    "gflops",
    "mfu",
}


@dataclass(frozen=True)
class MetricSpec:
    """A metric read from the log: regexp, reduction and how to judge a change."""

    name: str
    pattern: re.Pattern[str]
    reduction: str = "mean"
    skip: int = 0
    direction: str = "higher"
    tolerance: float = DEFAULT_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "regexp": self.pattern.pattern,
            "reduction_type": self.reduction,
            "skip": self.skip,
            "direction": self.direction,
            "tolerance": self.tolerance,
        }


@dataclass(frozen=True)
class DerivedSpec:
    """A metric computed from other metrics and parameters."""

    name: str
    expression: Expression
    direction: str = "higher"
    tolerance: float = DEFAULT_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "expr": self.expression.source,
            "direction": self.direction,
            "tolerance": self.tolerance,
        }


@dataclass
class Extraction:
    """Metric values of one variant's log, and what went wrong while reading them.

    ``problems`` explain missing values (status no-metric); ``failures`` are NaN or
    infinite values and failed derivations (status failed).
    """

    values: dict[str, float | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def default_direction(name: str) -> str | None:
    """Guess whether higher or lower values of the metric are better from its name."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    if words & LOWER_IS_BETTER:
        return "lower"
    if words & HIGHER_IS_BETTER:
        return "higher"
    return None


def parse_metric(name: str, raw: Any, where: str) -> MetricSpec:
    """Validate one ``data`` item; ``where`` names the spec file and entry for errors."""
    key = f"data.{name}"
    if not isinstance(raw, Mapping):
        raise HarnessError(f"{where}, key '{key}': expected a mapping with a 'regexp', got {raw!r}")
    _reject_unknown_keys(raw, DATA_KEYS, where, key)
    if "regexp" not in raw:
        raise HarnessError(
            f"{where}, key '{key}': missing 'regexp'; add one with one capture group"
        )
    pattern = _compile_regexp(raw["regexp"], where, f"{key}.regexp")
    reduction = raw.get("reduction_type", "mean")
    if reduction not in REDUCTIONS:
        raise HarnessError(
            f"{where}, key '{key}.reduction_type': unknown reduction {reduction!r}; "
            f"use one of {', '.join(REDUCTIONS)}"
        )
    skip = raw.get("skip", 0)
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise HarnessError(f"{where}, key '{key}.skip': {skip!r} is not a whole number >= 0")
    direction, tolerance = _parse_judgement(name, raw, where, key)
    return MetricSpec(name, pattern, reduction, skip, direction, tolerance)


def parse_derived(name: str, raw: Any, where: str, known: set[str]) -> DerivedSpec:
    """Validate one ``derived`` item whose expression may use the ``known`` names."""
    key = f"derived.{name}"
    if not isinstance(raw, Mapping) or "expr" not in raw:
        raise HarnessError(f"{where}, key '{key}': expected a mapping with an 'expr', got {raw!r}")
    _reject_unknown_keys(raw, DERIVED_KEYS, where, key)
    try:
        expression = parse_expression(str(raw["expr"]))
    except HarnessError as error:
        raise HarnessError(f"{where}, key '{key}.expr': {error}") from None
    unknown = sorted(expression.names - known)
    if unknown:
        raise HarnessError(
            f"{where}, key '{key}.expr': unknown name(s) {', '.join(unknown)}; use metrics "
            f"from 'data', earlier 'derived' metrics or parameters: {', '.join(sorted(known))}"
        )
    direction, tolerance = _parse_judgement(name, raw, where, key)
    return DerivedSpec(name, expression, direction, tolerance)


def _reject_unknown_keys(raw: Mapping[str, Any], allowed: set[str], where: str, key: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise HarnessError(
            f"{where}, key '{key}': unknown key(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _compile_regexp(text: Any, where: str, key: str) -> re.Pattern[str]:
    if not isinstance(text, str):
        raise HarnessError(f"{where}, key '{key}': {text!r} is not a string")
    try:
        pattern = re.compile(text)
    except re.error as error:
        raise HarnessError(f"{where}, key '{key}': invalid regexp {text!r}: {error}") from None
    if pattern.groups != 1:
        raise HarnessError(
            f"{where}, key '{key}': regexp {text!r} has {pattern.groups} capture groups; "
            "it needs exactly one around the number, e.g. 'Throughput: *(.*?) samples/sec'"
        )
    return pattern


def _parse_judgement(name: str, raw: Mapping[str, Any], where: str, key: str) -> tuple[str, float]:
    direction = raw.get("direction") or default_direction(name)
    if direction is None:
        logger.warning(
            "%s: metric '%s' has no direction and its name does not suggest one; assuming "
            "higher is better (set direction: lower if not)",
            where,
            name,
        )
        direction = "higher"
    if direction not in DIRECTIONS:
        raise HarnessError(
            f"{where}, key '{key}.direction': {direction!r} is invalid; use higher or lower"
        )
    tolerance = raw.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
        raise HarnessError(
            f"{where}, key '{key}.tolerance': {tolerance!r} is invalid; give a relative "
            "change >= 0, e.g. 0.05 for 5%"
        )
    return direction, float(tolerance)


def extract_metrics(
    text: str,
    metrics: Sequence[MetricSpec],
    derived: Sequence[DerivedSpec] = (),
    params: Mapping[str, str] | None = None,
) -> Extraction:
    """Read every metric from a log, then compute the derived metrics in order."""
    extraction = Extraction()
    for metric in metrics:
        extraction.values[metric.name] = _read_metric(text, metric, extraction)
    for item in derived:
        extraction.values[item.name] = _derive(item, extraction, params or {})
    return extraction


def _read_metric(text: str, metric: MetricSpec, extraction: Extraction) -> float | None:
    matches = [match.group(1).strip() for match in metric.pattern.finditer(text)]
    if len(matches) <= metric.skip:
        extraction.problems.append(
            f"{metric.name}: {len(matches)} match(es) of {metric.pattern.pattern!r}, "
            f"not more than skip={metric.skip}"
        )
        return None
    try:
        values = [float(match) for match in matches]
    except ValueError:
        bad = next(match for match in matches if not _is_float(match))
        extraction.problems.append(f"{metric.name}: captured {bad!r}, which is not a number")
        return None
    if not all(math.isfinite(value) for value in values):
        extraction.failures.append(f"{metric.name}: the log contains a NaN or infinite value")
        return None
    return float(REDUCTIONS[metric.reduction](values[metric.skip :]))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _derive(item: DerivedSpec, extraction: Extraction, params: Mapping[str, str]) -> float | None:
    inputs: dict[str, float | str | None] = {**params, **extraction.values}
    missing = sorted(name for name in item.expression.names if inputs.get(name) is None)
    if missing:
        extraction.problems.append(f"{item.name}: no value for {', '.join(missing)}")
        return None
    try:
        return item.expression.evaluate(inputs)
    except HarnessError as error:
        extraction.failures.append(f"{item.name}: {error}")
        return None
