"""The end-of-module summary lines that the benchmark modules write to the terminal."""

from __future__ import annotations

import logging

import pytest

logger = logging.getLogger("benchmarks")


def write_summary(config: pytest.Config, lines: list[str]) -> None:
    """Log ``lines`` and write them to pytest's terminal, below the test progress.

    Module fixtures call this in their teardown, where output capture is still on, so
    capture is suspended while the lines are written.
    """
    for line in lines:
        logger.info(line)
    plugins = config.pluginmanager
    reporter = plugins.getplugin("terminalreporter")
    capture = plugins.getplugin("capturemanager")
    if not lines or reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)
