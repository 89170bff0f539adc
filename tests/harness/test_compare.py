"""Compare: verdicts on hand-made result tables, golden reports, baselines and exit statuses."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from harness.baseline import baseline_path, load_baseline, promote
from harness.cli import main
from harness.compare import compare_runs, exit_status, judge, relative_change
from harness.errors import HarnessError
from harness.report import render_markdown, render_rich
from harness.results import write_results
from harness.stats import mann_whitney_p, mann_whitney_p_fallback

GOLDEN = Path(__file__).parent / "golden"
PLATFORM = "cpu-test-2c"
INFO = {
    "train": {
        "throughput": {"direction": "higher", "tolerance": 0.05, "label": "samples/sec"},
        "loss": {"direction": "lower", "tolerance": 0.05, "label": ""},
    }
}


def row(
    variant: str,
    status: str = "ok",
    throughput: float | None = None,
    loss: float | None = None,
    repeat: int = 0,
    reason: str = "",
) -> dict:
    return {
        "benchmark": "train",
        "variant": variant,
        "repeat": repeat,
        "status": status,
        "reason": reason,
        "metric.throughput": throughput,
        "metric.loss": loss,
        "machine.platform_id": PLATFORM,
    }


def repeats(variant: str, values: list[float]) -> list[dict]:
    return [row(variant, throughput=value, repeat=index) for index, value in enumerate(values)]


BASELINE_ROWS = [
    row("train_slower", throughput=100.0, loss=2.0),
    row("train_better_loss", throughput=100.0, loss=2.0),
    row("train_steady", throughput=100.0, loss=2.0),
    *repeats("train_noisy", [99.0, 100.0, 101.0]),
    *repeats("train_shifted", [100.0, 101.0, 102.0]),
    row("train_gone", throughput=50.0),
    row("train_crashes", throughput=70.0),
    row("train_was_broken", status="failed", reason="exit code 1"),
    row("train_skipped_now", throughput=10.0),
    row("train_lost_metric", throughput=10.0, loss=1.0),
]
CURRENT_ROWS = [
    row("train_slower", throughput=80.0, loss=2.0),
    row("train_better_loss", throughput=101.0, loss=1.5),
    row("train_steady", throughput=103.0, loss=2.05),
    *repeats("train_noisy", [90.0, 92.0, 104.0]),
    *repeats("train_shifted", [80.0, 81.0, 82.0]),
    row("train_crashes", status="timeout", reason="timed out after 60 s"),
    row("train_was_broken", throughput=30.0),
    row("train_skipped_now", status="skipped", reason="needs DATASETS_DIR"),
    row("train_lost_metric", throughput=10.0),
    row("train_added", throughput=5.0),
]


@pytest.fixture
def verdicts() -> pd.DataFrame:
    return compare_runs(pd.DataFrame(CURRENT_ROWS), pd.DataFrame(BASELINE_ROWS), INFO)


def verdict_of(verdicts: pd.DataFrame, variant: str, metric: str = "throughput") -> pd.Series:
    match = verdicts[(verdicts["variant"] == variant) & (verdicts["metric"] == metric)]
    assert len(match) == 1, f"expected one row for {variant}/{metric}, got {len(match)}"
    return match.iloc[0]


def test_every_verdict(verdicts: pd.DataFrame):
    expected = {
        ("train_slower", "throughput"): "regressed",
        ("train_slower", "loss"): "unchanged",
        ("train_better_loss", "loss"): "improved",
        ("train_better_loss", "throughput"): "unchanged",
        ("train_steady", "throughput"): "unchanged",
        ("train_steady", "loss"): "unchanged",
        ("train_noisy", "throughput"): "unchanged",
        ("train_shifted", "throughput"): "regressed",
        ("train_gone", "throughput"): "missing",
        ("train_crashes", ""): "failed",
        ("train_was_broken", "throughput"): "fixed",
        ("train_skipped_now", "throughput"): "missing",
        ("train_lost_metric", "throughput"): "unchanged",
        ("train_lost_metric", "loss"): "missing",
        ("train_added", "throughput"): "new",
    }
    actual = {(r.variant, r.metric): r.verdict for r in verdicts.itertuples()}
    assert actual == expected


def test_noise_outside_tolerance_not_significant(verdicts: pd.DataFrame):
    noisy = verdict_of(verdicts, "train_noisy")
    assert noisy["change"] == pytest.approx(-0.08)
    assert noisy["p_value"] == pytest.approx(0.35)
    assert "not significant" in noisy["note"]


def test_significant_shift_with_repeats(verdicts: pd.DataFrame):
    shifted = verdict_of(verdicts, "train_shifted")
    assert shifted["p_value"] == pytest.approx(0.05)
    assert shifted["n_current"] == 3
    assert shifted["n_baseline"] == 3
    assert shifted["current"] == 81.0
    assert shifted["baseline"] == 101.0


def test_failed_and_skipped_notes(verdicts: pd.DataFrame):
    crashed = verdict_of(verdicts, "train_crashes", "")
    assert crashed["note"] == "1 of 1 repeats not ok; timeout: timed out after 60 s"
    skipped = verdict_of(verdicts, "train_skipped_now")
    assert skipped["note"] == "skipped: needs DATASETS_DIR"


def test_verdicts_sorted_by_severity(verdicts: pd.DataFrame):
    order = list(dict.fromkeys(verdicts["verdict"]))
    assert order == ["regressed", "failed", "missing", "improved", "fixed", "new", "unchanged"]


def test_exit_status_values(verdicts: pd.DataFrame):
    assert exit_status(verdicts) == 1
    clean = verdicts[~verdicts["verdict"].isin(["regressed", "failed"])]
    assert exit_status(clean) == 0


def test_nothing_ran_is_error():
    current = pd.DataFrame([row("train_a", status="skipped", reason="excluded")])
    with pytest.raises(HarnessError, match="nothing ran in this run"):
        compare_runs(current, pd.DataFrame(BASELINE_ROWS), INFO)


def test_judge_lower_is_better():
    assert judge("loss", [2.2], [2.0], "lower", 0.05)["verdict"] == "regressed"
    assert judge("loss", [1.8], [2.0], "lower", 0.05)["verdict"] == "improved"
    assert judge("loss", [2.09], [2.0], "lower", 0.05)["verdict"] == "unchanged"


def test_judge_per_metric_tolerance():
    assert judge("throughput", [90.0], [100.0], "higher", 0.2)["verdict"] == "unchanged"
    assert judge("throughput", [90.0], [100.0], "higher", 0.0)["verdict"] == "regressed"


def test_relative_change_from_zero():
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(1.0, 0.0) == float("inf")
    assert relative_change(-1.0, 0.0) == float("-inf")
    assert relative_change(-1.5, -1.0) == pytest.approx(-0.5)


def check_golden(name: str, text: str) -> None:
    """Compare with a golden file; UPDATE_GOLDEN=1 rewrites it instead."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs; see git diff after UPDATE_GOLDEN=1"
    )


def test_markdown_report_golden(verdicts: pd.DataFrame):
    check_golden("compare.md", render_markdown(verdicts, "runs/today", "baselines/cpu.csv"))


def test_rich_table_golden(verdicts: pd.DataFrame):
    console = Console(file=io.StringIO(), width=150, color_system=None, legacy_windows=False)
    console.print(render_rich(verdicts))
    check_golden("compare.txt", console.file.getvalue())


@pytest.mark.parametrize("seed", range(4))
def test_fallback_test_matches_scipy(seed: int):
    pytest.importorskip("scipy")
    generator = random.Random(seed)
    size = [3, 5, 9, 20][seed]
    sample = [round(generator.gauss(0.0, 1.0), 1) for _ in range(size)]
    reference = [round(generator.gauss(0.4, 1.0), 1) for _ in range(size + 1)]
    for alternative in ("greater", "less"):
        expected = mann_whitney_p(sample, reference, alternative)
        actual = mann_whitney_p_fallback(sample, reference, alternative)
        assert actual == pytest.approx(expected, rel=1e-9)


def test_fallback_exact_small_samples():
    assert mann_whitney_p_fallback([4, 5, 6], [1, 2, 3], "greater") == pytest.approx(1 / 20)
    assert mann_whitney_p_fallback([4, 5, 6], [1, 2, 3], "less") == pytest.approx(1.0)
    assert mann_whitney_p_fallback([5, 5], [5, 5], "greater") == 1.0


def write_csv_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder


def test_promote_records_source(tmp_path: Path):
    run = write_csv_run(tmp_path / "run", BASELINE_ROWS)
    path = promote(run, tmp_path / "baselines")
    assert path == baseline_path(tmp_path / "baselines", PLATFORM)
    stored = load_baseline(path, PLATFORM)
    assert stored["baseline_source"].unique().tolist() == [str(run.resolve())]
    assert stored["machine.platform_id"].unique().tolist() == [PLATFORM]
    assert stored["promoted_at"].notna().all()


def test_promote_errors(tmp_path: Path):
    failed = write_csv_run(tmp_path / "failed", [row("train_a", status="failed")])
    with pytest.raises(HarnessError, match="has no variant with status ok"):
        promote(failed, tmp_path / "baselines")
    mixed = [
        row("train_a", throughput=1.0),
        {**row("train_b", throughput=1.0), "machine.platform_id": "cuda-x"},
    ]
    two = write_csv_run(tmp_path / "two", mixed)
    with pytest.raises(
        HarnessError, match="records platform ids cpu-test-2c, cuda-x; pass --platform"
    ):
        promote(two, tmp_path / "baselines")
    assert promote(two, tmp_path / "baselines", "cuda-x").name == "cuda-x.csv"


def test_missing_baseline_message(tmp_path: Path):
    with pytest.raises(
        HarnessError,
        match=r"no baseline for platform 'cpu-test-2c' at .*"
        r"baseline promote RUN --platform cpu-test-2c",
    ):
        load_baseline(tmp_path / "cpu-test-2c.csv", PLATFORM)


def test_compare_command_exit_statuses(tmp_path: Path, caplog):
    baselines = tmp_path / "baselines"
    good = write_csv_run(tmp_path / "good", [r for r in BASELINE_ROWS if r["status"] == "ok"])
    worse = write_csv_run(tmp_path / "worse", CURRENT_ROWS)
    assert main(["compare", str(good), "--baseline-dir", str(baselines)]) == 2
    assert "no baseline for platform 'cpu-test-2c'" in caplog.text
    caplog.clear()
    allowed = ["compare", str(good), "--baseline-dir", str(baselines), "--missing-baseline-ok"]
    assert main(allowed) == 0
    assert "nothing was compared" in caplog.text

    assert main(["baseline", "promote", str(good), "--baseline-dir", str(baselines)]) == 0
    assert main(["compare", str(good), "--baseline-dir", str(baselines)]) == 0
    assert main(["compare", str(worse), "--baseline-dir", str(baselines)]) == 1
    report = (worse / "compare.md").read_text()
    assert "| regressed | train_slower | throughput | 100 | 80 | -20.0% | 5% | - |  |" in report

    nothing = write_csv_run(tmp_path / "nothing", [row("train_a", status="skipped")])
    assert main(["compare", str(nothing), "--baseline-dir", str(baselines)]) == 2
    assert main(["compare", str(tmp_path / "absent"), "--baseline-dir", str(baselines)]) == 2
    assert "results file" in caplog.text


def test_compare_empty_run_is_error(tmp_path: Path, caplog):
    run = tmp_path / "interrupted"
    run.mkdir()
    write_results(run, [])  # Ctrl-C before the first variant finished
    baseline = write_csv_run(tmp_path / "good", [r for r in BASELINE_ROWS if r["status"] == "ok"])
    assert (
        main(
            [
                "compare",
                str(run),
                "--baseline",
                str(baseline / "results.csv"),
                "--platform",
                PLATFORM,
            ]
        )
        == 2
    )
    assert "nothing ran in this run" in caplog.text
