"""Performance tables in the shape of a vendor's published results page, plots and history.

Each variant row describes the configuration (model, data, replication factor, device
iterations, batch size, precision, platform) and gives the median over ``ok`` repeats
of throughput, loss, accuracy and compile time. Configuration values come from the
variant's parameters, then from the flags of its command (``--batch_size 64``), then
from the defaults of the ``--config`` preset when the ``clip`` package is importable.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.report import format_number, markdown_table
from harness.results import MACHINE, METRIC, PARAM

logger = logging.getLogger(__name__)

CONFIG_COLUMNS = {
    "Model": ("model", "config"),
    "Data": (),
    "Replicas": ("replication_factor", "replicas"),
    "Device iterations": ("device_iterations",),
    "Batch size": ("batch_size", "batchsize", "micro_batch_size"),
    "Precision": ("precision",),
}
THROUGHPUT_COLUMN = "Throughput (samples/s)"
METRIC_COLUMNS = {
    THROUGHPUT_COLUMN: ("throughput",),
    "Loss": ("loss",),
    "Accuracy (%)": ("accuracy", "zero_shot_top1", "top1"),
    "Compile time (s)": ("compile_time",),
    # Side-by-side comparisons: the reference's time over ours, in the same rounds.
    "Speed-up (x)": ("speed_up", "speedup"),
}
# Columns of the run records themselves, not parsed from the log.
RECORD_COLUMNS = {"Peak memory (MiB)": "peak_rss_mb"}
SCALING_COLUMN = "Scaling efficiency"
TRUE_WORDS = {"true", "t", "1", "yes", "y"}


def command_flags(command: str) -> dict[str, str]:
    """Parse ``--name value`` and ``--name=value`` pairs; dashes in names become '_'."""
    try:
        tokens = shlex.split(command)
    except ValueError:
        return {}
    flags = {}
    for index, token in enumerate(tokens):
        if not token.startswith("--"):
            continue
        name, has_value, value = token[2:].partition("=")
        if not has_value:
            following = tokens[index + 1] if index + 1 < len(tokens) else ""
            value = "" if following.startswith("--") else following
        flags[name.replace("-", "_")] = value
    return flags


def preset_defaults(preset: str) -> dict[str, Any]:
    """Return the flat options of a clip config preset, or {} if clip cannot provide them."""
    try:
        from clip.config import load_config
        from clip.errors import ClipError
    except ImportError:
        return {}
    try:
        return load_config(preset).to_flat()
    except ClipError:
        return {}


def describe_variant(row: Mapping[str, Any]) -> dict[str, str]:
    """Return the configuration cells of one results row."""
    params = {
        key.removeprefix(PARAM): str(value)
        for key, value in row.items()
        if key.startswith(PARAM) and pd.notna(value)
    }
    flags = command_flags(str(row.get("command", "")))
    preset = params.get("config") or flags.get("config")
    sources = [params, flags, preset_defaults(preset) if preset else {}]
    cells = {}
    for column, names in CONFIG_COLUMNS.items():
        cells[column] = next(
            (str(source[name]) for source in sources for name in names if name in source), "-"
        )
    if cells["Model"] == "-":
        cells["Model"] = str(row["benchmark"])
    tags = str(row.get("tags", "")).split(",") if pd.notna(row.get("tags")) else []
    cells["Data"] = describe_data(str(row["benchmark"]), sources, tags)
    cells["Platform"] = str(row.get(MACHINE + "platform_id", "-"))
    return cells


def describe_data(benchmark: str, sources: list[Mapping[str, Any]],
                  tags: list[str] | None = None) -> str:
    """Return "synthetic (host)", "synthetic (device)", "synthetic" or "real" for a variant.

    The data flags of the command decide first, then a ``synthetic`` or ``real`` tag of
    the spec entry, then the benchmark's name.
    """
    for source in sources:
        if str(source.get("ipu_generate_data", "")).lower() in TRUE_WORDS:
            return "synthetic (device)"
        if str(source.get("host_generate_data", "")).lower() in TRUE_WORDS:
            return "synthetic (host)"
    for tag in ("synthetic", "real"):
        if tag in (tags or []):
            return tag
    # examples-utils convention: "gen" or "synth" in the name means generated data.
    return "synthetic" if "gen" in benchmark or "synth" in benchmark else "real"


def performance_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Return one row per variant with an ok repeat: configuration and median metrics."""
    ok = frame[frame["status"] == "ok"]
    rows = []
    for variant, repeats in ok.groupby("variant", sort=False):
        first = repeats.iloc[0].to_dict()
        row = {"Benchmark": first["benchmark"], "Variant": variant, **describe_variant(first)}
        for column, names in METRIC_COLUMNS.items():
            row[column] = _median_metric(repeats, names)
        for column, name in RECORD_COLUMNS.items():
            values = repeats[name].dropna() if name in repeats else pd.Series()
            row[column] = float(values.median()) if not values.empty else None
        rows.append(row)
    skipped = sorted(set(frame["variant"]) - set(ok["variant"]))
    if skipped:
        logger.info("left out of the table because no repeat ended ok (skipped or failed): %s",
                    ", ".join(skipped))
    columns = ["Benchmark", "Variant", *CONFIG_COLUMNS, "Platform", *METRIC_COLUMNS,
               *RECORD_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    table[SCALING_COLUMN] = scaling_efficiency(table)
    return table


def scaling_efficiency(table: pd.DataFrame) -> pd.Series:
    """Return throughput / (replicas x one replica's throughput) for multi-replica rows.

    The one-replica row is the one of the same benchmark with the same configuration
    otherwise (model, data, device iterations, batch size per replica, precision and
    platform). Rows with one replica, or without such a row, get None. Replicas that share
    one machine's cores have an ideal of 1 / replicas there, not 1.
    """
    keys = ["Benchmark", "Model", "Data", "Device iterations", "Batch size", "Precision",
            "Platform"]
    single = {
        tuple(row[key] for key in keys): row[THROUGHPUT_COLUMN]
        for _, row in table.iterrows() if row["Replicas"] == "1"
    }
    efficiencies = []
    for _, row in table.iterrows():
        base = single.get(tuple(row[key] for key in keys))
        replicas = int(row["Replicas"]) if str(row["Replicas"]).isdigit() else 1
        if replicas == 1 or base is None or pd.isna(base) or pd.isna(row[THROUGHPUT_COLUMN]):
            efficiencies.append(None)
            continue
        efficiencies.append(round(row[THROUGHPUT_COLUMN] / (replicas * base), 3))
    return pd.Series(efficiencies, index=table.index, dtype=object)


def _median_metric(repeats: pd.DataFrame, names: tuple[str, ...]) -> float | None:
    for name in names:
        column = METRIC + name
        if column in repeats and repeats[column].notna().any():
            return float(repeats[column].median())
    return None


def history_table(runs: list[pd.DataFrame], metric: str = "throughput") -> pd.DataFrame:
    """Return the median of ``metric`` per variant (rows) and run (columns), oldest first."""
    columns: dict[str, pd.Series] = {}
    for frame in sorted(runs, key=_run_start):
        ok = frame[frame["status"] == "ok"]
        column = METRIC + metric
        label = _run_label(frame)
        while label in columns:
            label += "'"
        columns[label] = ok.groupby("variant")[column].median() if column in ok else pd.Series()
    table = pd.DataFrame(columns)
    table.index.name = "Variant"
    return table.reset_index()


def _run_start(frame: pd.DataFrame) -> str:
    starts = frame["start_time"].dropna().astype(str)
    starts = starts[starts != ""]
    return starts.min() if not starts.empty else ""


def _run_label(frame: pd.DataFrame) -> str:
    commits = frame["git_commit"].dropna().astype(str) if "git_commit" in frame else pd.Series()
    commit = commits.iloc[0][:7] if not commits.empty and commits.iloc[0] else "no-commit"
    start = _run_start(frame)
    return f"{start[:10]} {start[11:16]} {commit}" if start else f"unknown {commit}"


def write_table(table: pd.DataFrame, folder: Path, stem: str) -> list[Path]:
    """Write ``table`` as ``<stem>.md``, ``.csv`` and ``.html`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = [[_cell(value) for value in row] for row in table.itertuples(index=False)]
    paths = [folder / f"{stem}.{suffix}" for suffix in ("md", "csv", "html")]
    paths[0].write_text(markdown_table(list(table.columns), cells), encoding="utf-8")
    table.to_csv(paths[1], index=False)
    table.to_html(paths[2], index=False, na_rep="-")
    return paths


# Columns left out of the terminal table: the variant name starts with the benchmark name,
# and a run has one model per benchmark and one platform (shown in the title).
TERMINAL_HIDDEN_COLUMNS = ("Benchmark", "Model", "Platform")


def print_table(table: pd.DataFrame, title: str, console: Console | None = None) -> None:
    """Print ``table``: a rich table on a terminal, a markdown table elsewhere (CI logs).

    Markdown keeps every column in a log of any width, where a rich table would be cut.
    """
    platforms = sorted(set(table["Platform"].dropna())) if "Platform" in table else []
    shown = table.drop(columns=[c for c in TERMINAL_HIDDEN_COLUMNS if c in table])
    title = f"{title} ({', '.join(platforms)})" if platforms else title
    if console is None and not sys.stdout.isatty():
        cells = [[_cell(value) for value in row] for row in shown.itertuples(index=False)]
        sys.stdout.write(f"{title}\n\n{markdown_table(list(shown.columns), cells)}\n")
        return
    console = console or Console()
    rendered = Table(title=title)
    for column in shown.columns:
        widest = max([len(str(column))] + [len(_cell(value)) for value in shown[column]])
        # The variant name is the row's key, so it gets the room it needs, up to 80 columns.
        minimum = min(widest, 80) if column == "Variant" else None
        rendered.add_column(str(column), overflow="fold", min_width=minimum)
    for row in shown.itertuples(index=False):
        rendered.add_row(*(_cell(value) for value in row))
    console.print(rendered)


def _cell(value: Any) -> str:
    if isinstance(value, float) or value is None:
        return format_number(value)
    return str(value)


def plot_throughput(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """Draw median throughput per variant (min-max bars) per benchmark; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; no plots (pip install matplotlib)")
        return []
    ok = frame[frame["status"] == "ok"]
    if METRIC + "throughput" not in ok:
        return []
    paths = []
    for benchmark, rows in ok.groupby("benchmark", sort=False):
        stats = (
            rows.groupby("variant", sort=False)[METRIC + "throughput"]
            .agg(["median", "min", "max"])
            .dropna()
        )
        if stats.empty:
            continue
        labels = [
            str(name).removeprefix(str(benchmark)).lstrip("_") or "default" for name in stats.index
        ]
        errors = [stats["median"] - stats["min"], stats["max"] - stats["median"]]
        # Horizontal bars, first variant on top, so that long variant names stay readable.
        figure, axes = plt.subplots(figsize=(8, max(2.0, 0.45 * len(stats) + 1.2)))
        axes.barh(labels, stats["median"], xerr=errors, capsize=4)
        axes.invert_yaxis()
        axes.set_title(str(benchmark))
        axes.set_xlabel("throughput (samples/s)")
        path = folder / f"{benchmark}_throughput.png"
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths
