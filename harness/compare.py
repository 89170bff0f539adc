"""Classify each metric of a run against a baseline: the verdict table and the exit status.

Rows are joined on benchmark, variant and metric. For each pair the medians over the
``ok`` repeats are compared. A relative change within the metric's tolerance is
``unchanged``. A larger change is ``regressed`` or ``improved`` according to the
metric's direction, unless both sides have at least two repeats and a one-sided
Mann-Whitney U test does not find the shift significant at ``alpha``. Then the
change is noise, so the metric stays ``unchanged``.

Per variant: any failed, timed-out or metric-less repeat makes it ``failed``. A variant
that failed in the baseline and passes now is ``fixed``. A variant or metric only in
the run is ``new``, and one only in the baseline (or skipped now) is ``missing``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from typing import Any

import pandas as pd

from harness.errors import HarnessError
from harness.results import METRIC, MetricInfo, judgement, metric_columns
from harness.stats import mann_whitney_p

VERDICTS = ("regressed", "failed", "missing", "improved", "fixed", "new", "unchanged")
FAILING_VERDICTS = {"regressed", "failed"}
VERDICT_COLUMNS = [
    "verdict",
    "benchmark",
    "variant",
    "metric",
    "baseline",
    "current",
    "change",
    "direction",
    "tolerance",
    "p_value",
    "n_baseline",
    "n_current",
    "note",
]
DEFAULT_ALPHA = 0.05


def compare_runs(
    current: pd.DataFrame, baseline: pd.DataFrame, info: MetricInfo, alpha: float = DEFAULT_ALPHA
) -> pd.DataFrame:
    """Return one verdict row per (benchmark, variant, metric), most severe first."""
    if current[current["status"] != "skipped"].empty:
        raise HarnessError(
            "nothing ran in this run (every variant was skipped); nothing to compare"
        )
    keys = list(dict.fromkeys(_keys(current) + _keys(baseline)))
    rows = []
    for benchmark, variant in keys:
        now = _rows_of(current, benchmark, variant)
        before = _rows_of(baseline, benchmark, variant)
        for row in _compare_variant(now, before, info, alpha):
            rows.append({"benchmark": benchmark, "variant": variant, **row})
    table = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    order = table["verdict"].map({verdict: rank for rank, verdict in enumerate(VERDICTS)})
    table = table.assign(_order=order).sort_values(
        ["_order", "benchmark", "variant", "metric"], kind="stable"
    )
    return table.drop(columns="_order").reset_index(drop=True)


def exit_status(verdicts: pd.DataFrame) -> int:
    """Return 1 if any metric regressed or any variant failed, else 0."""
    return 1 if verdicts["verdict"].isin(FAILING_VERDICTS).any() else 0


def count_verdicts(verdicts: pd.DataFrame) -> dict[str, int]:
    counts = verdicts["verdict"].value_counts()
    return {verdict: int(counts[verdict]) for verdict in VERDICTS if verdict in counts}


def _keys(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(frame["benchmark"], frame["variant"], strict=True)))


def _rows_of(frame: pd.DataFrame, benchmark: str, variant: str) -> pd.DataFrame:
    return frame[(frame["benchmark"] == benchmark) & (frame["variant"] == variant)]


def _compare_variant(
    now: pd.DataFrame, before: pd.DataFrame, info: MetricInfo, alpha: float
) -> Iterator[dict[str, Any]]:
    now_ran = now[now["status"] != "skipped"]
    before_ran = before[before["status"] != "skipped"]
    before_ok = before_ran[before_ran["status"] == "ok"]
    if now_ran.empty:
        note = "skipped: " + _reason(now.iloc[0]) if not now.empty else "not in this run"
        for metric, values in _metric_values(before_ok).items():
            yield _row("missing", metric, base=values, note=note)
        return
    bad = now_ran[now_ran["status"] != "ok"]
    if not bad.empty:
        first = bad.iloc[0]
        note = f"{len(bad)} of {len(now_ran)} repeats not ok; {first['status']}: {_reason(first)}"
        yield _row("failed", "", note=note)
        return
    now_values = _metric_values(now_ran)
    if before_ran.empty or before_ok.empty:
        verdict = "new" if before_ran.empty else "fixed"
        if not now_values:
            yield _row(verdict, "")
        for metric, values in now_values.items():
            yield _row(verdict, metric, current=values)
        return
    before_values = _metric_values(before_ok)
    benchmark = str(now_ran["benchmark"].iloc[0])
    for metric in dict.fromkeys([*now_values, *before_values]):
        if metric not in before_values:
            yield _row("new", metric, current=now_values[metric])
        elif metric not in now_values:
            yield _row("missing", metric, base=before_values[metric], note="no value in this run")
        else:
            direction, tolerance = judgement(info, benchmark, metric)
            yield judge(
                metric, now_values[metric], before_values[metric], direction, tolerance, alpha
            )


def _reason(row: pd.Series) -> str:
    # A CSV reader turns an empty reason into NaN.
    return str(row["reason"]) if pd.notna(row.get("reason")) else ""


def _metric_values(rows: pd.DataFrame) -> dict[str, list[float]]:
    values = {}
    for column in metric_columns(rows):
        column_values = [float(value) for value in rows[column] if pd.notna(value)]
        if column_values:
            values[column.removeprefix(METRIC)] = column_values
    return values


def judge(
    metric: str,
    current: list[float],
    baseline: list[float],
    direction: str,
    tolerance: float,
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Return the verdict row of one metric measured on both sides."""
    now, before = statistics.median(current), statistics.median(baseline)
    change = relative_change(now, before)
    row = _row("unchanged", metric, current=current, base=baseline)
    row.update(change=change, direction=direction, tolerance=tolerance)
    if abs(change) <= tolerance:
        return row
    if len(current) >= 2 and len(baseline) >= 2:
        p_value = mann_whitney_p(current, baseline, "greater" if now > before else "less")
        row["p_value"] = p_value
        if p_value > alpha:
            row["note"] = f"outside tolerance but not significant (p > {alpha:g})"
            return row
    better = change > 0 if direction == "higher" else change < 0
    row["verdict"] = "improved" if better else "regressed"
    return row


def relative_change(current: float, baseline: float) -> float:
    """Return (current - baseline) / |baseline|; a change from 0 is +-inf."""
    if baseline == 0:
        return 0.0 if current == 0 else math.copysign(math.inf, current)
    return (current - baseline) / abs(baseline)


def _row(
    verdict: str,
    metric: str,
    current: list[float] | None = None,
    base: list[float] | None = None,
    note: str = "",
) -> dict[str, Any]:
    return {
        "verdict": verdict,
        "metric": metric,
        "baseline": statistics.median(base) if base else None,
        "current": statistics.median(current) if current else None,
        "change": None,
        "direction": "",
        "tolerance": None,
        "p_value": None,
        "n_baseline": len(base or []),
        "n_current": len(current or []),
        "note": note,
    }
