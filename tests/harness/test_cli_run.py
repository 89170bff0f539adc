"""End-to-end ``run`` and ``reparse`` through the command line, on small training stand-ins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]

# Prints the training program's log format; --mode selects a failure to imitate.
FAKE_TRAIN = """
import argparse, os, pathlib, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--batch_size", type=int, default=4)
parser.add_argument("--mode", default="ok")
parser.add_argument("--count-file")
parser.add_argument("--pid-file")
parser.add_argument("--wait-unless")
args = parser.parse_args()
if args.count_file:
    with open(args.count_file, "a") as counts:
        counts.write("run\\n")
if args.pid_file:
    pathlib.Path(args.pid_file).write_text(str(os.getpid()))
if args.wait_unless and not pathlib.Path(args.wait_unless).exists():
    time.sleep(60)
if args.mode == "fail":
    print("Traceback: out of memory", file=sys.stderr)
    sys.exit(2)
if args.mode == "nometric":
    print("nothing to measure")
    sys.exit(0)
if args.mode == "hang":
    time.sleep(60)
for step in range(3):
    loss = "nan" if args.mode == "nan" else f"{2.0 - step / 10:.3f}"
    throughput = 100 * args.batch_size + step
    print(f"Epoch: {step / 3:.2f}/1 Step: {step}/3 Lr: 0.000100 Loss: {loss} "
          f"Throughput: {throughput:.2f} samples/sec")
    if step == 0:
        print("Compiled model in 1.5 secs")
"""

SPEC = """
train_options: &train
    data:
        throughput:
            regexp: "Throughput: *(.*?) samples/sec"
            skip: 1
        loss:
            regexp: "Loss: *(.*?) "
            reduction_type: final
    derived:
        per_sample:
            expr: "{throughput} / {batch_size}"
            direction: higher
    output:
        - [samples/sec, throughput]
"""


def write_files(tmp_path: Path, entries: str) -> Path:
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN, encoding="utf-8")
    spec = tmp_path / "benchmarks.yml"
    spec.write_text(SPEC + entries, encoding="utf-8")
    return spec


def run_cli(*args: str | Path) -> int:
    return main([str(arg) for arg in args])


def run_args(spec: Path, log_dir: Path, *extra: str | Path) -> list[str | Path]:
    return ["run", "--spec", spec, "--log-dir", log_dir, "--calibration-seconds", "0", *extra]


def test_matrix_statuses_and_files(tmp_path: Path):
    spec = write_files(
        tmp_path,
        """
train_gen:
    <<: *train
    parameters: {batch_size: '2,4', mode: 'ok,fail,nometric,nan'}
    exclude: [{batch_size: 4, mode: [fail, nometric, nan]}]
    cmd: python fake_train.py --batch_size {batch_size} --mode {mode}
train_hang:
    <<: *train
    parameters: {batch_size: 1}
    timeout: 1
    cmd: python fake_train.py --mode hang
""",
    )
    log_dir = tmp_path / "run"
    assert run_cli(*run_args(spec, log_dir)) == 1

    frame = pd.read_csv(log_dir / "results.csv")
    status = dict(zip(frame["variant"], frame["status"], strict=True))
    assert status == {
        "train_gen_batch_size_2_mode_ok": "ok",
        "train_gen_batch_size_4_mode_ok": "ok",
        "train_gen_batch_size_2_mode_fail": "failed",
        "train_gen_batch_size_2_mode_nometric": "no-metric",
        "train_gen_batch_size_2_mode_nan": "failed",
        "train_gen_batch_size_4_mode_fail": "skipped",
        "train_gen_batch_size_4_mode_nometric": "skipped",
        "train_gen_batch_size_4_mode_nan": "skipped",
        "train_hang_batch_size_1": "timeout",
    }
    ok = frame.set_index("variant").loc["train_gen_batch_size_4_mode_ok"]
    assert ok["metric.throughput"] == pytest.approx(401.5)  # mean of 401, 402 after skip=1
    assert ok["metric.loss"] == pytest.approx(1.8)
    assert ok["metric.per_sample"] == pytest.approx(401.5 / 4)
    assert ok["param.batch_size"] == 4
    assert ok["exit_code"] == 0
    assert ok["peak_rss_mb"] > 0
    assert ok["machine.platform_kind"] in ("cpu", "cuda", "ipu")
    failed = frame.set_index("variant").loc["train_gen_batch_size_2_mode_fail"]
    assert failed["reason"] == "exit code 2"
    assert (
        "out of memory"
        in (log_dir / "train_gen_batch_size_2_mode_fail" / "repeat_0" / "stderr.log").read_text()
    )

    document = json.loads((log_dir / "results.json").read_text())
    assert document["metrics"]["train_gen"]["throughput"] == {
        "direction": "higher",
        "tolerance": 0.05,
        "label": "samples/sec",
    }
    assert len(document["rows"]) == 9

    suite = ElementTree.parse(log_dir / "junit.xml").getroot()
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == set(status)
    assert suite.get("failures") == "4"
    assert suite.get("skipped") == "3"
    assert cases["train_hang_batch_size_1"].find("failure").get("type") == "timeout"
    assert cases["train_gen_batch_size_2_mode_ok"].find("failure") is None


def test_all_ok_exit_zero_with_repeats(tmp_path: Path):
    spec = write_files(
        tmp_path,
        """
train_gen:
    <<: *train
    parameters: {batch_size: '1,2'}
    cmd: python fake_train.py --batch_size {batch_size}
""",
    )
    log_dir = tmp_path / "run"
    assert run_cli(*run_args(spec, log_dir, "--repeat", "2")) == 0
    frame = pd.read_csv(log_dir / "results.csv")
    assert list(zip(frame["variant"], frame["repeat"], strict=True)) == [
        ("train_gen_batch_size_1", 0),
        ("train_gen_batch_size_2", 0),
        ("train_gen_batch_size_1", 1),
        ("train_gen_batch_size_2", 1),
    ]


def test_stop_on_error(tmp_path: Path):
    spec = write_files(
        tmp_path,
        """
train_gen:
    <<: *train
    parameters: {batch_size: 1, mode: 'fail,ok'}
    cmd: python fake_train.py --batch_size {batch_size} --mode {mode}
""",
    )
    log_dir = tmp_path / "run"
    assert run_cli(*run_args(spec, log_dir, "--stop-on-error")) == 1
    assert pd.read_csv(log_dir / "results.csv")["status"].tolist() == ["failed"]


def test_nothing_ran_is_error(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.delenv("DATASETS_DIR", raising=False)
    spec = write_files(
        tmp_path,
        """
train_real:
    <<: *train
    parameters: {batch_size: 1}
    cmd: python fake_train.py --data $DATASETS_DIR
""",
    )
    assert run_cli(*run_args(spec, tmp_path / "run")) == 2
    assert "nothing ran: every selected variant was skipped" in caplog.text


def test_spec_error_runs_nothing(tmp_path: Path, caplog):
    spec = write_files(tmp_path, "train:\n    cmd: python fake_train.py {batch_size}\n")
    assert run_cli(*run_args(spec, tmp_path / "run")) == 2
    assert "entry 'train', key 'cmd': placeholder {batch_size}" in caplog.text
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_plan(tmp_path: Path, capsys):
    spec = write_files(
        tmp_path,
        """
train_gen:
    <<: *train
    parameters: {batch_size: '1,2'}
    exclude: [{batch_size: 2}]
    cmd: python fake_train.py --batch_size {batch_size}
""",
    )
    assert run_cli(*run_args(spec, tmp_path / "run", "--dry-run")) == 0
    output = capsys.readouterr().out
    assert "train_gen_batch_size_1 [repeat 0] run" in output
    assert "fake_train.py --batch_size 1" in output
    assert (
        "train_gen_batch_size_2 [repeat 0] skipped: excluded by exclude rule batch_size=2" in output
    )
    assert not (tmp_path / "run").exists()


def test_log_dir_reuse_needs_resume(tmp_path: Path, caplog):
    spec = write_files(
        tmp_path,
        """
train_gen:
    <<: *train
    parameters: {batch_size: 1}
    cmd: python fake_train.py
""",
    )
    assert run_cli(*run_args(spec, tmp_path / "run")) == 0
    assert run_cli(*run_args(spec, tmp_path / "run")) == 2
    assert "already contains results; pass --resume" in caplog.text
    assert run_cli("run", "--spec", spec, "--resume") == 2
    assert "--resume needs the --log-dir" in caplog.text


def test_reparse_with_fixed_regexp(tmp_path: Path):
    spec = write_files(
        tmp_path,
        """
train_gen:
    <<: *train
    parameters: {batch_size: 1}
    data:
        throughput:
            regexp: "Speed: (\\\\S+)"
    cmd: python fake_train.py --batch_size {batch_size}
""",
    )
    log_dir = tmp_path / "run"
    assert run_cli(*run_args(spec, log_dir)) == 1
    assert pd.read_csv(log_dir / "results.csv")["status"].tolist() == ["no-metric"]
    assert run_cli("reparse", log_dir) == 1  # the saved definitions still miss

    fixed = spec.read_text().replace('"Speed: (\\\\S+)"', '"Throughput: *(.*?) samples/sec"')
    spec.write_text(fixed)
    assert run_cli("reparse", log_dir, "--spec", spec) == 0
    frame = pd.read_csv(log_dir / "results.csv")
    assert frame["status"].tolist() == ["ok"]
    # The entry's own data replaces the merged one (merge keys are shallow), so no skip.
    assert frame["metric.throughput"].tolist() == [pytest.approx(101.0)]


def start_harness(spec: Path, log_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "harness", *map(str, run_args(spec, log_dir))]
    # A shell without job control starts background jobs with SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler. Ctrl-C must reach the harness here.
    return subprocess.Popen(command, cwd=spec.parent, env=env, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_file(path: Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def process_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


INTERRUPT_SPEC = """
fast:
    <<: *train
    parameters: {batch_size: 1}
    cmd: python fake_train.py --count-file fast.count
slow:
    <<: *train
    parameters: {batch_size: 2}
    cmd: python fake_train.py --batch_size 2 --pid-file slow.pid --wait-unless resume.flag
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_ctrl_c_keeps_finished_then_resume(tmp_path: Path):
    spec = write_files(tmp_path, INTERRUPT_SPEC)
    log_dir = tmp_path / "run"
    harness = start_harness(spec, log_dir)
    wait_for_file(tmp_path / "slow.pid")
    harness.send_signal(signal.SIGINT)
    _, stderr = harness.communicate(timeout=30)
    assert harness.returncode == 130, stderr.decode()
    assert process_gone(int((tmp_path / "slow.pid").read_text()))
    frame = pd.read_csv(log_dir / "results.csv")
    assert frame["variant"].tolist() == ["fast_batch_size_1"]
    assert frame["status"].tolist() == ["ok"]

    (tmp_path / "resume.flag").touch()
    assert run_cli(*run_args(spec, log_dir, "--resume")) == 0
    assert (tmp_path / "fast.count").read_text() == "run\n"  # fast was not run again
    frame = pd.read_csv(log_dir / "results.csv")
    assert frame["variant"].tolist() == ["fast_batch_size_1", "slow_batch_size_2"]
    assert frame["status"].tolist() == ["ok", "ok"]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_sigterm_kills_running_variant(tmp_path: Path):
    spec = write_files(tmp_path, INTERRUPT_SPEC)
    harness = start_harness(spec, tmp_path / "run")
    wait_for_file(tmp_path / "slow.pid")
    harness.send_signal(signal.SIGTERM)
    _, stderr = harness.communicate(timeout=30)
    assert harness.returncode == 130, stderr.decode()
    assert process_gone(int((tmp_path / "slow.pid").read_text()))
    assert pd.read_csv(tmp_path / "run" / "results.csv")["status"].tolist() == ["ok"]


def test_platform_override_and_two_specs(tmp_path: Path):
    spec = write_files(
        tmp_path,
        """
train_cuda:
    <<: *train
    parameters: {batch_size: 1}
    platforms: [cuda]
    pre_run_commands: [make data]
    cmd: python fake_train.py
""",
    )
    other = tmp_path / "more.yml"
    other.write_text("train_cpu:\n    platforms: [cpu]\n    cmd: python fake_train.py\n")
    log_dir = tmp_path / "run"
    args = run_args(spec, log_dir, "--spec", other, "--platform", "cuda-fake-x1")
    assert run_cli(*args) == 0
    frame = pd.read_csv(log_dir / "results.csv")
    assert dict(zip(frame["variant"], frame["status"], strict=True)) == {
        "train_cuda_batch_size_1": "ok",
        "train_cpu": "skipped",
    }
    assert frame["machine.platform_id"].unique().tolist() == ["cuda-fake-x1"]
    assert frame["machine.platform_kind"].unique().tolist() == ["cuda"]
    benchmarks = json.loads((log_dir / "results.json").read_text())["benchmarks"]
    assert benchmarks["train_cuda"]["extra"] == {"pre_run_commands": ["make data"]}
    assert benchmarks["train_cpu"]["spec_file"] == str(other)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--repeat", "0"], "--repeat: 0 must be greater than 0"),
        (["--repeat", "1.5"], "--repeat: 1.5 is not a whole number"),
        (["--timeout", "-1"], "--timeout: -1 must be greater than 0"),
        (["--timeout", "soon"], "--timeout: 'soon' is not a number"),
    ],
)
def test_invalid_options_exit_two(tmp_path: Path, capsys, option: list[str], message: str):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--spec", str(tmp_path / "b.yml"), *option])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_invalid_alpha_exit_two(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(tmp_path), "--alpha", "1.5"])
    assert exit_info.value.code == 2
    assert "--alpha: 1.5 must be below 1" in capsys.readouterr().err
