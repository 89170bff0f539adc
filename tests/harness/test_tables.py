"""Performance tables, history and plots from hand-made result tables."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.report import format_number
from harness.results import read_run
from harness.tables import (
    command_flags,
    describe_variant,
    history_table,
    performance_table,
    plot_throughput,
    write_table,
)

GOLDEN = Path(__file__).parent / "golden"
COMMAND = (
    "/venv/bin/python -m clip.train --config CLIP_ViT-B-32_cc3m --host_generate_data True "
    "--epochs 2 --batch_size {batch_size} --precision={precision}"
)


def result_row(
    variant: str,
    batch_size: int,
    precision: str,
    throughput: float | None,
    status: str = "ok",
    repeat: int = 0,
    start: str = "2026-01-05T10:00:00+00:00",
    commit: str = "abcdef0123",
) -> dict:
    return {
        "benchmark": "clip_train_gen",
        "variant": variant,
        "repeat": repeat,
        "status": status,
        "command": COMMAND.format(batch_size=batch_size, precision=precision),
        "start_time": start,
        "git_commit": commit,
        "param.batch_size": batch_size,
        "param.precision": precision,
        "metric.throughput": throughput,
        "metric.loss": 7.25,
        "metric.compile_time": 41.0,
        "peak_rss_mb": 2048.5,
        "machine.platform_id": "cuda-nvidia-h100-x8",
    }


RUN = pd.DataFrame(
    [
        result_row("clip_train_gen_batch_size_64_precision_fp16", 64, "fp16", 1500.0),
        result_row("clip_train_gen_batch_size_64_precision_fp16", 64, "fp16", 1520.0, repeat=1),
        result_row("clip_train_gen_batch_size_64_precision_fp16", 64, "fp16", 1490.0, repeat=2),
        result_row("clip_train_gen_batch_size_16_precision_fp32", 16, "fp32", 310.5),
        result_row("clip_train_gen_batch_size_8_precision_bf16", 8, "bf16", None, status="failed"),
    ]
)


def test_command_flags():
    flags = command_flags("python -m clip.train --config X --batch-size=8 --compile --epochs 2")
    assert flags == {"config": "X", "batch_size": "8", "compile": "", "epochs": "2"}
    assert command_flags("python -c 'unclosed") == {}


def test_describe_variant_sources():
    cells = describe_variant(RUN.iloc[3].to_dict())
    assert cells == {
        "Model": "CLIP_ViT-B-32_cc3m",
        "Data": "synthetic (host)",
        "Replicas": "1",
        "Device iterations": "1",
        "Batch size": "16",
        "Precision": "fp32",
        "Platform": "cuda-nvidia-h100-x8",
    }


def test_describe_variant_preset_defaults():
    # Without the flag, the preset's batch size (74 in clip/configs.yml) fills the cell.
    row = {"benchmark": "b", "command": "python -m clip.train --config CLIP_ViT-B-32_cc3m"}
    cells = describe_variant(row)
    assert cells["Batch size"] == "74"
    assert cells["Data"] == "real"
    assert cells["Platform"] == "-"


def test_performance_table_golden(tmp_path: Path):
    table = performance_table(RUN)
    assert table["Variant"].tolist() == [
        "clip_train_gen_batch_size_64_precision_fp16",
        "clip_train_gen_batch_size_16_precision_fp32",
    ]
    assert table["Throughput (samples/s)"].tolist() == [1500.0, 310.5]  # median of repeats
    paths = write_table(table, tmp_path, "performance")
    assert [path.name for path in paths] == [
        "performance.md",
        "performance.csv",
        "performance.html",
    ]
    text = paths[0].read_text()
    golden = GOLDEN / "performance.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    assert "<table" in paths[2].read_text()
    assert pd.read_csv(paths[1])["Batch size"].tolist() == [64, 16]


def test_history_table_orders_runs():
    later = RUN.assign(start_time="2026-02-01T09:30:00+00:00", git_commit="1234567890")
    later.loc[later["variant"].str.contains("size_16"), "metric.throughput"] = 320.0
    table = history_table([later, RUN])
    assert list(table.columns) == [
        "Variant",
        "2026-01-05 10:00 abcdef0",
        "2026-02-01 09:30 1234567",
    ]
    by_variant = table.set_index("Variant")
    assert by_variant.loc["clip_train_gen_batch_size_16_precision_fp32"].tolist() == [310.5, 320.0]


def test_plot_written(tmp_path: Path):
    pytest.importorskip("matplotlib")
    paths = plot_throughput(RUN, tmp_path)
    assert paths == [tmp_path / "clip_train_gen_throughput.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_command(tmp_path: Path, capsys):
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    RUN.to_csv(first, index=False)
    RUN.assign(start_time="2026-02-01T09:30:00+00:00").to_csv(second, index=False)
    out = tmp_path / "tables"
    assert main(["table", str(first), str(second), "--out", str(out), "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "Performance:" in printed
    assert "fp16" in printed
    assert sorted(path.name for path in out.iterdir()) == [
        "history.csv",
        "history.html",
        "history.md",
        "performance.csv",
        "performance.html",
        "performance.md",
    ]


def test_parameters_keep_spelling_in_csv(tmp_path: Path):
    other = {**result_row("clip_train_gen_other", 1, "fp32", 5.0), "param.batch_size": None}
    path = tmp_path / "results.csv"
    pd.concat([RUN, pd.DataFrame([other])]).to_csv(path, index=False)
    frame, _ = read_run(path)
    assert frame["param.batch_size"].iloc[0] == "64"  # not 64.0, despite the gap
    assert performance_table(frame)["Batch size"].iloc[0] == "64"
    assert frame["metric.throughput"].dtype == float


def test_performance_table_peak_memory():
    rows = [result_row("clip_train_gen_batch_size_16_precision_fp32", 16, "fp32", 310.5,
                       repeat=repeat) for repeat in range(3)]
    for row, peak in zip(rows, [900.0, 1000.0, 1300.0], strict=True):
        row["peak_rss_mb"] = peak
    table = performance_table(pd.DataFrame(rows))
    assert table["Peak memory (MiB)"].tolist() == [1000.0]


def test_scaling_efficiency_against_one_replica():
    rows = []
    for replicas, batch_size, throughput in [(1, 8, 10.0), (2, 8, 15.0), (2, 16, 30.0),
                                             (4, 8, 20.0)]:
        row = result_row(f"gen_r{replicas}_b{batch_size}", batch_size, "fp32", throughput)
        row["param.replication_factor"] = replicas
        rows.append(row)
    table = performance_table(pd.DataFrame(rows)).set_index("Variant")
    assert pd.isna(table.loc["gen_r1_b8", "Scaling efficiency"])
    assert table.loc["gen_r2_b8", "Scaling efficiency"] == 0.75
    assert table.loc["gen_r4_b8", "Scaling efficiency"] == 0.5
    # Batch 16 has no one-replica row to compare with.
    assert pd.isna(table.loc["gen_r2_b16", "Scaling efficiency"])


def test_data_column_from_tags():
    tags = ["synthetic", "real", ""]
    rows = [result_row(f"run_{tag or 'none'}", 8, "fp32", 10.0) for tag in tags]
    for row, tag in zip(rows, tags, strict=True):
        row["benchmark"] = "compare_implementations"
        row["command"] = "python -m benchmarks.compare_open_clip --batch_size 8"
        row["tags"] = f"{tag},comparison" if tag else float("nan")
    table = performance_table(pd.DataFrame(rows)).set_index("Variant")
    assert table.loc["run_synthetic", "Data"] == "synthetic"
    assert table.loc["run_real", "Data"] == "real"
    # Without a tag or a data flag, the name decides: no "gen" or "synth" in it means real.
    assert table.loc["run_none", "Data"] == "real"


@pytest.mark.parametrize(("value", "text"), [
    (None, "-"), (float("nan"), "-"), (3.14159, "3.142"), (999.94, "999.9"),
    (3533.2, "3,533"), (11730.0, "11,730"), (-1500.0, "-1,500"),
])
def test_format_number(value: float | None, text: str):
    assert format_number(value) == text
