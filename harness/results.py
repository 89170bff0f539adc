"""The results table of a run: one pandas row per variant and repeat, and its files.

Column groups: fixed columns (benchmark, variant, repeat, status, ...), then
``param.<name>`` for each parameter, ``metric.<name>`` for each metric and
``machine.<field>`` for the machine fingerprint. A run is written as results.csv,
results.json (the rows plus each metric's direction, tolerance and label) and
junit.xml with one test case per variant. results.json also keeps each benchmark's spec
file, description and the spec keys that the harness records without acting on them.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError
from harness.metrics import DEFAULT_TOLERANCE, default_direction
from harness.records import RunRecord

PARAM = "param."
METRIC = "metric."
MACHINE = "machine."
FIXED_COLUMNS = [
    "benchmark",
    "variant",
    "repeat",
    "status",
    "reason",
    "exit_code",
    "duration_s",
    "start_time",
    "command",
    "cwd",
    "tags",
    "peak_rss_mb",
    "cpu_time_s",
    "git_commit",
    "git_dirty",
    "calibration_gflops",
]
NUMERIC_COLUMNS = [
    "repeat",
    "exit_code",
    "duration_s",
    "peak_rss_mb",
    "cpu_time_s",
    "calibration_gflops",
]
RESULT_FILES = ("results.json", "results.csv")

MetricInfo = dict[str, dict[str, dict[str, Any]]]


def records_to_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """Flatten records into the results table, columns in a stable order."""
    rows = []
    for record in records:
        row = {name: getattr(record, name) for name in FIXED_COLUMNS}
        row["tags"] = ",".join(record.tags)
        row.update({PARAM + key: value for key, value in record.params.items()})
        row.update({METRIC + key: value for key, value in record.metrics.items()})
        row.update({MACHINE + key: value for key, value in record.machine.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=_ordered_columns(rows))
    for column in metric_columns(frame):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["exit_code"] = frame["exit_code"].astype("Int64")
    return frame


def _ordered_columns(rows: list[dict[str, Any]]) -> list[str]:
    seen = dict.fromkeys(FIXED_COLUMNS)
    for row in rows:
        seen.update(dict.fromkeys(row))
    extra = [name for name in seen if name not in FIXED_COLUMNS]
    groups = [
        sorted(name for name in extra if name.startswith(prefix))
        for prefix in (PARAM, METRIC, MACHINE)
    ]
    return FIXED_COLUMNS + [name for group in groups for name in group]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if column.startswith(METRIC)]


def param_columns(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if column.startswith(PARAM)]


def metric_info(records: Iterable[RunRecord]) -> MetricInfo:
    """Collect ``{benchmark: {metric: {direction, tolerance, label}}}`` from the records."""
    info: MetricInfo = {}
    for record in records:
        specs = record.metric_specs
        labels = specs.get("labels", {})
        for group in ("data", "derived"):
            for name, spec in specs.get(group, {}).items():
                info.setdefault(record.benchmark, {})[name] = {
                    "direction": spec["direction"],
                    "tolerance": spec["tolerance"],
                    "label": labels.get(name, ""),
                }
    return info


def benchmark_info(records: Iterable[RunRecord]) -> dict[str, dict[str, Any]]:
    """Collect each benchmark's spec file, description and recorded extra keys."""
    return {
        record.benchmark: {
            "spec_file": record.spec_file,
            "description": record.description,
            "extra": record.spec_extra,
        }
        for record in records
    }


def judgement(info: MetricInfo, benchmark: str, metric: str) -> tuple[str, float]:
    """Return (direction, tolerance) of a metric, from the run or from its name."""
    entry = info.get(benchmark, {}).get(metric)
    if entry:
        return entry["direction"], float(entry["tolerance"])
    return default_direction(metric) or "higher", DEFAULT_TOLERANCE


def write_results(log_dir: Path, records: list[RunRecord]) -> pd.DataFrame:
    """Write results.csv, results.json and junit.xml into ``log_dir``; return the table."""
    frame = records_to_frame(records)
    frame.to_csv(log_dir / "results.csv", index=False)
    document = {
        "metrics": metric_info(records),
        "benchmarks": benchmark_info(records),
        "rows": _json_rows(frame),
    }
    (log_dir / "results.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
    write_junit(log_dir / "junit.xml", records)
    return frame


def _json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = frame.astype(object).to_dict(orient="records")
    return [{key: _json_value(value) for key, value in row.items()} for row in rows]


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def read_run(path: Path) -> tuple[pd.DataFrame, MetricInfo]:
    """Read a run from its log folder, results.json or a results CSV (a baseline too)."""
    if path.is_dir():
        candidates = [path / name for name in RESULT_FILES if (path / name).exists()]
        if not candidates:
            raise HarnessError(
                f"{path} has no results.json or results.csv; run `python -m harness reparse "
                f"{path}` to rebuild them from the saved logs"
            )
        path = candidates[0]
    if not path.is_file():
        raise HarnessError(f"results file {path} not found; pass a run's log folder or CSV")
    try:
        if path.suffix == ".json":
            document = json.loads(path.read_text(encoding="utf-8"))
            # An interrupted run may have no rows; keep the columns so it reads as empty.
            frame = pd.DataFrame(document["rows"]) if document["rows"] else _empty_frame()
            info = document.get("metrics", {})
        else:
            frame, info = _read_csv(path), {}
    except (ValueError, KeyError, OSError) as error:
        raise HarnessError(f"cannot read results from {path}: {error}") from None
    missing = {"benchmark", "variant", "status"} - set(frame.columns)
    if missing:
        raise HarnessError(f"{path} is not a results table: missing columns {sorted(missing)}")
    for column in metric_columns(frame):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame, info


def _read_csv(path: Path) -> pd.DataFrame:
    # Everything is read as text first, so that parameter values keep their spelling:
    # a column with gaps would otherwise turn batch size 64 into 64.0.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    for column in NUMERIC_COLUMNS:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(columns=FIXED_COLUMNS)


def write_junit(path: Path, records: list[RunRecord]) -> None:
    """Write JUnit XML with one test case per variant; its repeats are summed into it."""
    by_variant: dict[str, list[RunRecord]] = {}
    for record in records:
        by_variant.setdefault(record.variant, []).append(record)
    suite = ElementTree.Element("testsuite", name="harness", tests=str(len(by_variant)))
    counts = {"failures": 0, "skipped": 0}
    for variant, repeats in by_variant.items():
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=repeats[0].benchmark,
            name=variant,
            time=f"{sum(record.duration_s or 0.0 for record in repeats):.3f}",
        )
        bad = [record for record in repeats if record.status not in ("ok", "skipped")]
        if bad:
            counts["failures"] += 1
            message = "; ".join(f"repeat {r.repeat}: {r.status}: {r.reason}" for r in bad)
            ElementTree.SubElement(case, "failure", message=message, type=bad[0].status)
        elif all(record.status == "skipped" for record in repeats):
            counts["skipped"] += 1
            ElementTree.SubElement(case, "skipped", message=repeats[0].reason)
        output = "\n".join(json.dumps(asdict(record)["metrics"]) for record in repeats)
        ElementTree.SubElement(case, "system-out").text = output
    suite.set("failures", str(counts["failures"]))
    suite.set("skipped", str(counts["skipped"]))
    ElementTree.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
