"""The runner on real subprocesses: timeouts, process groups, output files and resources."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

from harness.metrics import Extraction, extract_metrics, parse_metric
from harness.records import decide_status, read_log_text
from harness.runner import run_command

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")


def run_script(script: Path, tmp_path: Path, *args: str, **options):
    return run_command(
        [sys.executable, str(script), *args],
        tmp_path,
        os.environ,
        tmp_path / "out" / "stdout.log",
        tmp_path / "out" / "stderr.log",
        **options,
    )


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.05)
    return False


def test_timeout_kills_grandchild(write_script, tmp_path: Path):
    pid_file = tmp_path / "grandchild.pid"
    script = write_script(
        "parent.py",
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(sys.argv[1], "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)
    """,
    )
    execution = run_script(script, tmp_path, str(pid_file), timeout=1.5)
    assert execution.timed_out
    assert execution.exit_code == -15  # SIGTERM from the harness
    assert execution.duration_s < 10
    grandchild = int(pid_file.read_text())
    assert wait_until_gone(grandchild), f"grandchild {grandchild} survived the timeout"
    assert decide_status(execution, Extraction(), 1.5) == ("timeout", "timed out after 1.5 s")


def test_sigterm_ignored_gets_sigkill(write_script, tmp_path: Path):
    script = write_script(
        "stubborn.py",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(60)
    """,
    )
    execution = run_script(script, tmp_path, timeout=1.0, kill_grace_s=0.5)
    assert execution.timed_out
    assert execution.exit_code == -9


def test_nonzero_exit(write_script, tmp_path: Path):
    script = write_script(
        "fail.py", "import sys\nprint('Throughput: 5 samples/sec')\nsys.exit(3)\n"
    )
    execution = run_script(script, tmp_path)
    assert execution.exit_code == 3
    assert not execution.timed_out
    assert decide_status(execution, Extraction(), None) == ("failed", "exit code 3")


def test_killed_by_signal_status(write_script, tmp_path: Path):
    script = write_script("abort.py", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    execution = run_script(script, tmp_path)
    assert decide_status(execution, Extraction(), None) == ("failed", "killed by SIGKILL")


def test_large_output_complete(write_script, tmp_path: Path):
    script = write_script(
        "loud.py",
        """
        import sys
        line = "x" * 99 + "\\n"
        for _ in range(60_000):
            sys.stdout.write(line)
            sys.stderr.write("e")
        print("Throughput: 42.5 samples/sec")
    """,
    )
    execution = run_script(script, tmp_path, timeout=60)
    assert execution.exit_code == 0
    stdout = tmp_path / "out" / "stdout.log"
    assert stdout.stat().st_size == 60_000 * 100 + len("Throughput: 42.5 samples/sec\n")
    assert (tmp_path / "out" / "stderr.log").stat().st_size == 60_000
    spec = parse_metric("throughput", {"regexp": r"Throughput: *(.*?) samples/sec"}, "test")
    assert extract_metrics(read_log_text(tmp_path / "out"), [spec]).values["throughput"] == 42.5


def test_non_utf8_output(write_script, tmp_path: Path):
    script = write_script(
        "bytes.py",
        """
        import sys
        sys.stdout.buffer.write(b"\\xff\\xfe\\x80 binary noise\\nThroughput: 12.5 samples/sec\\n")
        sys.stderr.buffer.write(b"\\xc3\\x28 bad continuation\\n")
    """,
    )
    execution = run_script(script, tmp_path)
    assert execution.exit_code == 0
    text = read_log_text(tmp_path / "out")
    assert "\ufffd" in text
    spec = parse_metric("throughput", {"regexp": r"Throughput: *(.*?) samples/sec"}, "test")
    assert extract_metrics(text, [spec]).values["throughput"] == 12.5


def test_stream_echoes_output(write_script, tmp_path: Path, capsys):
    script = write_script(
        "talk.py",
        """
        import sys
        print("to stdout")
        print("to stderr", file=sys.stderr)
    """,
    )
    run_script(script, tmp_path, stream=True)
    captured = capsys.readouterr()
    assert "to stdout" in captured.out
    assert "to stderr" in captured.err


def test_peak_memory_of_process_tree(write_script, tmp_path: Path):
    script = write_script(
        "memory.py",
        """
        import subprocess, sys, time
        data = b"p" * (60 * 2**20)
        child = subprocess.Popen([sys.executable, "-c",
            "import time; data = b'c' * (60 * 2**20); time.sleep(1.5)"])
        child.wait()
    """,
    )
    execution = run_script(script, tmp_path, timeout=30)
    assert execution.exit_code == 0
    assert execution.peak_rss_mb is not None
    assert execution.peak_rss_mb >= 120  # both 60 MiB buffers at once


def test_peak_memory_of_short_command(write_script, tmp_path: Path):
    # The command ends before the first /proc sample can see it, under any load.
    script = write_script("short.py", 'data = b"s" * (80 * 2**20)\n')
    execution = run_script(script, tmp_path, timeout=30)
    assert execution.exit_code == 0
    assert execution.peak_rss_mb is not None
    assert execution.peak_rss_mb >= 80


def test_cpu_time_recorded(write_script, tmp_path: Path):
    script = write_script(
        "busy.py",
        """
        import time
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    """,
    )
    execution = run_script(script, tmp_path)
    assert execution.cpu_time_s >= 0.25


def test_command_not_found(tmp_path: Path):
    execution = run_command(
        [str(tmp_path / "missing-binary")],
        tmp_path,
        os.environ,
        tmp_path / "stdout.log",
        tmp_path / "stderr.log",
    )
    assert execution.exit_code == 127
    assert execution.error.startswith("cannot start:")
    assert decide_status(execution, Extraction(), None)[0] == "failed"
    assert "cannot start" in (tmp_path / "stderr.log").read_text()


def test_leftover_background_process_killed(write_script, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture):
    pid_file = tmp_path / "daemon.pid"
    script = write_script(
        "leaves.py",
        """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(sys.argv[1], "w").write(str(child.pid))
    """,
    )
    with caplog.at_level(logging.INFO, logger="harness.runner"):
        execution = run_script(script, tmp_path, str(pid_file))
    assert execution.exit_code == 0
    assert wait_until_gone(int(pid_file.read_text()))
    assert "left behind in process group" in caplog.text
    assert f"{pid_file.read_text()} (python" in caplog.text


def test_helper_exiting_after_leader_not_killed(write_script, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture):
    # Like multiprocessing's resource tracker, the helper ends just after the main process.
    done_file = tmp_path / "helper.done"
    script = write_script(
        "helper.py",
        """
        import subprocess, sys
        code = "import sys, time; time.sleep(0.3); open(sys.argv[1], 'w').write('done')"
        subprocess.Popen([sys.executable, "-c", code, sys.argv[1]])
    """,
    )
    with caplog.at_level(logging.INFO, logger="harness.runner"):
        execution = run_script(script, tmp_path, str(done_file))
    assert execution.exit_code == 0
    assert done_file.read_text() == "done"
    assert "left behind" not in caplog.text
