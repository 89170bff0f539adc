"""Machine fingerprint, platform ids, git state, calibration and process-tree memory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.fingerprint import (
    calibrate_gflops,
    default_platform_id,
    detect_machine,
    git_state,
    slugify,
)
from harness.procfs import tree_rss_bytes


def test_slugify():
    assert slugify("AMD EPYC 7763 64-Core Processor") == "amd-epyc-7763-64-core-processor"
    assert slugify("???") == "unknown"
    assert len(slugify("x" * 100)) == 40


def test_default_platform_ids():
    assert default_platform_id("cpu", "Intel(R) Xeon(R) 8480+", 112, [], "") == (
        "cpu-intel-r-xeon-r-8480-112c"
    )
    assert default_platform_id("cuda", "", 8, ["NVIDIA H100 80GB HBM3"] * 8, "") == (
        "cuda-nvidia-h100-80gb-hbm3-x8"
    )
    assert default_platform_id("ipu", "", 8, [], "3.3.0") == "ipu-sdk-3-3-0"


def test_detect_machine_fields():
    machine = detect_machine()
    assert machine.platform_kind in ("cpu", "cuda", "ipu")
    assert machine.platform_id.startswith(machine.platform_kind + "-")
    assert machine.cpu_cores >= 1
    assert (machine.gpu_count > 0) == bool(machine.gpu_name)
    assert set(machine.to_dict()) >= {"cpu_model", "memory_gib", "torch_version", "cuda_version"}


def test_platform_override_sets_kind():
    assert detect_machine("cuda-a100-x4").platform_kind == "cuda"
    machine = detect_machine("lab-box-3")
    assert machine.platform_id == "lab-box-3"
    assert machine.platform_kind == detect_machine().platform_kind


def test_calibration():
    assert calibrate_gflops(0) is None
    gflops = calibrate_gflops(0.1, size=256)
    assert gflops is not None
    assert gflops > 0


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state(tmp_path: Path):
    assert git_state(tmp_path) == ("", None)

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    (tmp_path / "file.txt").write_text("one\n")
    git("add", "file.txt")
    git("commit", "-q", "-m", "first")
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40
    assert dirty is False
    (tmp_path / "file.txt").write_text("two\n")
    assert git_state(tmp_path) == (commit, True)


def test_tree_rss_counts_descendants_and_group():
    processes = {
        100: (1, 100, 1000),  # root, leads its group
        101: (100, 100, 200),  # child
        102: (101, 102, 30),  # grandchild that started its own session
        103: (1, 100, 4),  # group member re-parented to init
        200: (1, 200, 99999),  # unrelated
    }
    assert tree_rss_bytes(100, processes) == 1000 + 200 + 30 + 4
    assert tree_rss_bytes(555, processes) == 0
