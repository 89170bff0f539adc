"""Run one command in its own process group, with a timeout and resource sampling.

stdout and stderr go straight to files, so a full pipe can never block the harness,
and a grandchild that keeps the output open cannot make it wait. ``stream=True`` echoes
both files to the console while the command runs. A timeout or Ctrl-C kills the whole
process group: SIGTERM first, SIGKILL after a grace period. Processes that the command
leaves behind in its group are killed when it ends.
"""

from __future__ import annotations

import codecs
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TextIO

from harness.procfs import ProcessTreeSampler, live_group_members

logger = logging.getLogger(__name__)

KILL_GRACE_S = 5.0
# Helpers such as multiprocessing's resource tracker exit on their own just after the
# command's main process. Only what still runs after this wait is killed.
LEFTOVER_GRACE_S = 2.0
# How often wait_for_exit polls the command, which bounds the delay after it ends.
WAIT_INTERVAL_S = 0.01
STREAM_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Execution:
    """Outcome and resource use of one command.

    ``cpu_time_s`` is the user plus system time of the command and of the descendants
    it waited for. ``peak_rss_mb`` is the peak total resident memory of its process
    tree, sampled every ``ProcessTreeSampler.interval_s``, and at least the command's own
    peak, which the kernel reports when the command exits. It is None where /proc is
    missing.
    """

    exit_code: int
    timed_out: bool
    start_time: str
    duration_s: float
    peak_rss_mb: float | None
    cpu_time_s: float
    error: str = ""


def run_command(
    argv: list[str],
    cwd: Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    timeout: float | None = None,
    stream: bool = False,
    kill_grace_s: float = KILL_GRACE_S,
) -> Execution:
    """Run ``argv`` until it exits or times out.

    Ctrl-C kills the command's process group and re-raises KeyboardInterrupt. A negative
    exit code means the command was killed by that signal, as in subprocess. A command
    that cannot start gets exit code 127, with the reason in ``error``.
    """
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    start_time = datetime.now(UTC).isoformat(timespec="seconds")
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        process = _start(argv, cwd, env, stdout_path, stderr_path)
    except OSError as error:
        stderr_path.write_text(f"harness: cannot start {argv[0]!r}: {error}\n", encoding="utf-8")
        return Execution(127, False, start_time, 0.0, None, 0.0, f"cannot start: {error}")

    sampler = ProcessTreeSampler(process.pid)
    sampler.start()
    follower = OutputFollower(stdout_path, stderr_path) if stream else None
    if follower:
        follower.start()
    timed_out = False
    own_peak_bytes = 0
    try:
        own_peak_bytes = wait_for_exit(process, timeout)
        _kill_leftovers(process.pid)
    except subprocess.TimeoutExpired:
        timed_out = True
        logger.warning("timed out after %s s; killing process group %d", timeout, process.pid)
        kill_process_group(process, kill_grace_s)
    except BaseException:
        # Ctrl-C (KeyboardInterrupt) or SIGTERM turned into an exception by the caller.
        kill_process_group(process, kill_grace_s)
        raise
    finally:
        sampler.stop()
        if follower:
            follower.stop()

    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_time = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    return Execution(
        exit_code=process.returncode,
        timed_out=timed_out,
        start_time=start_time,
        duration_s=round(time.perf_counter() - started, 3),
        peak_rss_mb=sampler.peak_rss_mb(at_least_bytes=own_peak_bytes),
        cpu_time_s=round(cpu_time, 3),
    )


def _start(
    argv: list[str], cwd: Path, env: Mapping[str, str], stdout_path: Path, stderr_path: Path
) -> subprocess.Popen[bytes]:
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )


def wait_for_exit(process: subprocess.Popen[bytes], timeout: float | None) -> int:
    """Wait for ``process`` like ``Popen.wait`` and return its peak resident bytes.

    ``os.wait4`` reports the peak (ru_maxrss) of the process and of the descendants it
    waited for, so a command that ends before the first /proc sample still gets a peak.

    Raises:
        subprocess.TimeoutExpired: ``timeout`` seconds passed first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            # NOTE: ru_maxrss is in kilobytes on Linux but in bytes on macOS.
            return usage.ru_maxrss * 1024
        if deadline is not None and time.monotonic() >= deadline:
            raise subprocess.TimeoutExpired(process.args, timeout)
        time.sleep(WAIT_INTERVAL_S)


def kill_process_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """Send SIGTERM to the group, then SIGKILL to whatever is left after ``grace_s``."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("process group %d ignored SIGTERM; sending SIGKILL", process.pid)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _kill_leftovers(group: int, grace_s: float = LEFTOVER_GRACE_S) -> None:
    # With start_new_session the group id is the leader's pid. Members that outlive
    # the leader still carry it, so signalling the group reaches them.
    deadline = time.monotonic() + grace_s
    members = live_group_members(group)
    while members and time.monotonic() < deadline:
        time.sleep(0.05)
        members = live_group_members(group)
    if members and _signal_group(group, signal.SIGKILL):
        names = ", ".join(f"{pid} ({name})" for pid, name in sorted(members.items()))
        logger.info("killed processes left behind in process group %d: %s", group, names)


def _signal_group(group: int, signum: int) -> bool:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class OutputFollower:
    """Echo new bytes of the stdout and stderr files to the console while a command runs."""

    def __init__(self, stdout_path: Path, stderr_path: Path) -> None:
        self._sources = [(stdout_path, sys.stdout), (stderr_path, sys.stderr)]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="output-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _follow(self) -> None:
        files = [(path.open("rb"), target) for path, target in self._sources]
        decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in files]
        try:
            while not self._stopped.wait(STREAM_INTERVAL_S):
                self._copy(files, decoders)
            self._copy(files, decoders)
        finally:
            for file, _ in files:
                file.close()

    @staticmethod
    def _copy(
        files: list[tuple[BinaryIO, TextIO]], decoders: list[codecs.IncrementalDecoder]
    ) -> None:
        for (file, target), decoder in zip(files, decoders, strict=True):
            chunk = file.read()
            if chunk:
                target.write(decoder.decode(chunk))
                target.flush()
