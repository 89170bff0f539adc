"""Progress reporting (plain log lines off a terminal, a rich bar on one) and import cost."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from harness.progress import LogProgress, RichProgress, format_seconds


def test_format_seconds():
    assert format_seconds(5.4) == "0:05"
    assert format_seconds(125) == "2:05"
    assert format_seconds(3725) == "1:02:05"


def test_log_progress_lines(caplog):
    caplog.set_level(logging.INFO)
    progress = LogProgress()
    progress.start(2)
    progress.begin("train_a")
    progress.finish("train_a", "ok", 1.25)
    progress.begin("train_b")
    progress.finish("train_b", "skipped", None)
    progress.close()
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "[1/2] running train_a"
    assert messages[1].startswith("[1/2] train_a: ok in 1.2 s; elapsed 0:00, estimated")
    assert messages[3].startswith("[2/2] train_b: skipped; elapsed")


def test_rich_progress_runs(capsys):
    progress = RichProgress()
    progress.start(1)
    progress.begin("train_a")
    progress.finish("train_a", "ok", 2.0)
    progress.close()
    assert "train_a: ok (2.0 s)" in capsys.readouterr().err


def test_import_stays_light():
    # The harness runs training as subprocesses, so its command line must not pay for
    # importing torch, and pandas is only imported by the commands that need it.
    code = (
        "import sys, harness, harness.cli\n"
        "print(sorted(name for name in ('torch', 'pandas') if name in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    assert output.strip() == "[]"
