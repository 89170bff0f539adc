"""Benchmark and regression harness: run benchmark specs, collect metrics, compare runs.

Importing the package is cheap: it imports neither torch nor pandas. Training runs as
subprocesses, and the modules that need pandas import it themselves.
"""

from harness.errors import HarnessError

__all__ = ["HarnessError"]
