"""Render a verdict table as markdown (for files and CI comments) and as a rich table."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.compare import count_verdicts

HEADERS = [
    "Verdict",
    "Variant",
    "Metric",
    "Baseline",
    "Current",
    "Change",
    "Tolerance",
    "p",
    "Note",
]
VERDICT_STYLES = {
    "regressed": "bold red",
    "failed": "bold red",
    "missing": "yellow",
    "improved": "green",
    "fixed": "green",
    "new": "cyan",
    "unchanged": "",
}


def format_number(value: Any) -> str:
    """Format a metric value with four significant digits, and from 1,000 up as a whole number
    with thousands separators."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    if abs(value) >= 1_000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def format_change(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isfinite(value):
        return f"{value:+.1%}"
    return "+inf" if value > 0 else "-inf"


def format_fraction(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def verdict_cells(row: pd.Series) -> list[str]:
    """Return the display cells of one verdict row, in HEADERS order."""
    tolerance = row["tolerance"]
    return [
        str(row["verdict"]),
        str(row["variant"]),
        str(row["metric"]) or "-",
        format_number(row["baseline"]),
        format_number(row["current"]),
        format_change(row["change"]),
        "-" if pd.isna(tolerance) else f"{tolerance:.0%}",
        format_fraction(row["p_value"], 3),
        str(row["note"]),
    ]


def summary_line(verdicts: pd.DataFrame) -> str:
    counts = count_verdicts(verdicts)
    return ", ".join(f"{count} {verdict}" for verdict, count in counts.items()) or "no metrics"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a GitHub-flavoured markdown table; '|' inside cells is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)]) + "\n"


def render_markdown(verdicts: pd.DataFrame, run_label: str, baseline_label: str) -> str:
    """Return the markdown comparison report: the sources, a summary and the verdict table."""
    rows = [verdict_cells(row) for _, row in verdicts.iterrows()]
    return (
        "# Benchmark comparison\n\n"
        f"- Run: `{run_label}`\n"
        f"- Baseline: `{baseline_label}`\n"
        f"- Summary: {summary_line(verdicts)}\n\n" + markdown_table(HEADERS, rows)
    )


def render_rich(verdicts: pd.DataFrame) -> Table:
    """Build a rich table of the verdicts, coloured by verdict."""
    table = Table(title="Benchmark comparison", caption=summary_line(verdicts))
    for header in HEADERS:
        numeric = header in ("Baseline", "Current", "Change", "Tolerance", "p")
        table.add_column(header, justify="right" if numeric else "left")
    for _, row in verdicts.iterrows():
        table.add_row(*verdict_cells(row), style=VERDICT_STYLES.get(str(row["verdict"]), ""))
    return table


def print_verdicts(verdicts: pd.DataFrame, console: Console | None = None) -> None:
    """Print the rich table; off a terminal (CI logs) it is 160 columns wide, not 80."""
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(render_rich(verdicts))
