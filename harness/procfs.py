"""Peak resident memory of a process tree, sampled from /proc (Linux only)."""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")


def process_stats() -> Iterator[tuple[int, str, list[str]]]:
    """Yield ``(pid, command name, fields after the name)`` from /proc/<pid>/stat.

    The fields start with the state, the parent pid and the process group.
    """
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = entry.joinpath("stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # the process ended between listing and reading
        # The command name (field 2) is in parentheses and may contain spaces, so the
        # remaining fields start after the last ')'.
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        yield int(entry.name), name, stat.rsplit(")", 1)[-1].split()


def read_processes() -> dict[int, tuple[int, int, int]]:
    """Return ``{pid: (parent pid, process group, resident bytes)}`` for every process."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    processes = {}
    for pid, _, fields in process_stats():
        if len(fields) > 21:  # rss is the 22nd field after the name
            processes[pid] = (int(fields[1]), int(fields[2]), int(fields[21]) * page_size)
    return processes


def live_group_members(group: int) -> dict[int, str]:
    """Return ``{pid: command name}`` of the processes of ``group`` that have not exited.

    Zombies are left out: they have exited and only wait for their parent to reap them,
    which a container's init process may never do.
    """
    return {
        pid: name for pid, name, fields in process_stats()
        if len(fields) > 2 and int(fields[2]) == group and fields[0] not in ("Z", "X")
    }


def tree_rss_bytes(root: int, processes: dict[int, tuple[int, int, int]]) -> int:
    """Sum the resident memory of ``root``, its descendants and its process group."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _, _) in processes.items():
        children[parent].append(pid)
    group = [pid for pid, (_, group_id, _) in processes.items() if group_id == root]
    members: set[int] = set()
    pending = [root, *group]
    while pending:
        pid = pending.pop()
        if pid not in members:
            members.add(pid)
            pending.extend(children[pid])
    return sum(processes[pid][2] for pid in members if pid in processes)


class ProcessTreeSampler:
    """Background thread that records the peak total RSS of a process tree.

    ``root`` must lead its own process group (start_new_session), so that processes
    that were re-parented after their parent exited are still counted.
    """

    interval_s = 0.2

    def __init__(self, root: int) -> None:
        self._root = root
        self._peak_bytes = 0
        self._available = PROC.is_dir()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def start(self) -> None:
        if self._available:
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._available:
            self._thread.join()

    def peak_rss_mb(self, at_least_bytes: int = 0) -> float | None:
        """Return the sampled peak in MiB, at least ``at_least_bytes``, or None without /proc."""
        if not self._available:
            return None
        return round(max(self._peak_bytes, at_least_bytes) / 2**20, 1)

    def _sample(self) -> None:
        while True:
            total = tree_rss_bytes(self._root, read_processes())
            self._peak_bytes = max(self._peak_bytes, total)
            if self._stopped.wait(self.interval_s):
                return
