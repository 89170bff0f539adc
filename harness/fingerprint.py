"""Machine fingerprint, platform id, git state and the calibration matmul.

None of this imports torch: the torch and CUDA versions come from the installed
package's metadata, and GPUs are found with ``nvidia-smi``. A run therefore costs no
torch start-up, and a broken CUDA driver cannot stop the harness.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.spec import PLATFORM_KINDS

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0
CALIBRATION_SIZE = 1024


@dataclass(frozen=True)
class Machine:
    """Machine fingerprint: the hardware and software, besides the code, that results depend on."""

    platform_id: str
    platform_kind: str
    cpu_model: str
    cpu_cores: int
    memory_gib: float
    gpu_name: str
    gpu_count: int
    torch_version: str
    cuda_version: str
    poplar_sdk_version: str
    python_version: str

    def to_dict(self) -> dict[str, str | int | float]:
        return asdict(self)


def detect_machine(platform_override: str | None = None) -> Machine:
    """Fingerprint this machine; ``platform_override`` replaces the detected platform id.

    The platform kind is ipu if poptorch is importable, cuda if ``nvidia-smi`` lists a
    GPU, else cpu. An override that starts with a kind (``cuda-a100``) sets the kind too.
    """
    cpu_model = read_cpu_model()
    cores = os.cpu_count() or 1
    gpus = list_nvidia_gpus()
    sdk = poplar_sdk_version()
    kind = detect_platform_kind(gpus)
    platform_id = platform_override or default_platform_id(kind, cpu_model, cores, gpus, sdk)
    prefix = platform_id.split("-", 1)[0]
    return Machine(
        platform_id=platform_id,
        platform_kind=prefix if prefix in PLATFORM_KINDS else kind,
        cpu_model=cpu_model,
        cpu_cores=cores,
        memory_gib=round(read_memory_bytes() / 2**30, 1),
        gpu_name="+".join(sorted(set(gpus))),
        gpu_count=len(gpus),
        torch_version=_package_version("torch"),
        cuda_version=torch_cuda_version(),
        poplar_sdk_version=sdk,
        python_version=platform.python_version(),
    )


def detect_platform_kind(gpus: list[str]) -> str:
    # NOTE: the ipu branch has not been run here (no poptorch on the test machines).
    if importlib.util.find_spec("poptorch") is not None:
        return "ipu"
    return "cuda" if gpus else "cpu"


def default_platform_id(kind: str, cpu_model: str, cores: int, gpus: list[str], sdk: str) -> str:
    """Build ids such as ``cpu-amd-epyc-7763-64c``, ``cuda-nvidia-h100-x8`` or ``ipu-sdk-3-3-0``."""
    if kind == "cuda":
        return f"cuda-{slugify(gpus[0])}-x{len(gpus)}"
    if kind == "ipu":
        return f"ipu-sdk-{slugify(sdk or 'unknown')}"
    return f"cpu-{slugify(cpu_model)}-{cores}c"


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:40].rstrip("-") or "unknown"


def read_cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine() or "unknown"


def read_memory_bytes() -> int:
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return 0
    match = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def list_nvidia_gpus() -> list[str]:
    """Return one name per GPU that ``nvidia-smi`` lists; empty if it is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return []
    # NOTE: not run here, because the development machine has no nvidia-smi.
    output = _run_probe(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return [line.strip() for line in output.splitlines() if line.strip()]


def torch_cuda_version() -> str:
    """Read the CUDA version that the installed torch was built with, without importing it."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return ""
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        text = version_file.read_text(encoding="utf-8")
    except OSError:
        return ""
    match = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return match.group(1) if match else ""


def poplar_sdk_version() -> str:
    """Return the Poplar SDK version from ``POPLAR_SDK_ENABLED`` or ``popc --version``."""
    # NOTE: not run against a real Poplar SDK; both sources follow its documented layout.
    enabled = os.environ.get("POPLAR_SDK_ENABLED", "")
    output = enabled
    if not output and shutil.which("popc"):
        output = _run_probe(["popc", "--version"])
    match = re.search(r"(\d+\.\d+\.\d+)", output)
    return match.group(1) if match else ""


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _run_probe(command: list[str], cwd: Path | None = None) -> str:
    try:
        completed = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("%s failed: %s", command[0], error)
        return ""
    return completed.stdout if completed.returncode == 0 else ""


def git_state(folder: Path) -> tuple[str, bool | None]:
    """Return the commit checked out in ``folder`` and whether tracked files are modified.

    Outside a git repository, or before the first commit, the commit is "" and the
    dirty flag is None.
    """
    commit = _run_probe(["git", "rev-parse", "HEAD"], cwd=folder).strip()
    if not commit:
        return "", None
    status = _run_probe(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder)
    return commit, bool(status.strip())


def calibrate_gflops(seconds: float = 1.0, size: int = CALIBRATION_SIZE) -> float | None:
    """Measure fp32 matrix-multiply speed in GFLOP/s: the best of repeated size^3 matmuls.

    It runs numpy's BLAS for about ``seconds`` after one warm-up product. The figure
    tracks the machine's state on the day (clock, thermal limits, other load), so
    throughput can be read relative to it. Returns None when ``seconds`` is 0.
    """
    if seconds <= 0:
        return None
    import numpy as np

    generator = np.random.default_rng(0)
    a = generator.standard_normal((size, size), dtype=np.float32)
    b = generator.standard_normal((size, size), dtype=np.float32)
    a @ b
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return round(2 * size**3 / best / 1e9, 2)
