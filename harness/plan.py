"""Select benchmarks and plan their variants: commands, environments, skips and order.

A variant is skipped, with the reason recorded, in three cases:

- an ``exclude`` rule matches it;
- its ``platforms`` do not list this machine's kind;
- it needs an environment variable that is not set. Such a variable is named in
  ``requires_env``, or its ``cmd`` references it as ``$NAME`` or ``${NAME}`` (for
  example ``$DATASETS_DIR``).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.spec import Benchmark, SpecSet, Variant

ENV_REFERENCE = re.compile(r"\$(?:(\w+)|\{(\w+)\})")
PYTHON_NAMES = {"python", "python3"}


@dataclass(frozen=True)
class Selection:
    """Benchmarks and variants that a run covers, from the run command's options."""

    benchmarks: list[str] = field(default_factory=list)
    pattern: str | None = None
    tags: list[str] = field(default_factory=list)
    include_convergence: bool = False


@dataclass(frozen=True)
class PlannedRun:
    """One repeat of one variant, ready to start, or skipped with a reason."""

    variant: Variant
    repeat: int
    argv: list[str]
    env: dict[str, str]
    skip_reason: str | None = None

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def select_benchmarks(specs: SpecSet, selection: Selection) -> list[Benchmark]:
    """Apply ``--benchmark``, ``--tag`` and the convergence rule, in spec order.

    Convergence benchmarks (``_conv`` in the name) run only with
    ``include_convergence`` or when named explicitly.
    """
    for name in selection.benchmarks:
        if name in specs.templates:
            raise HarnessError(
                f"'{name}' in {specs.templates[name]} is a template (its name contains "
                "'options') and does not run; name a benchmark that uses it"
            )
        if name not in specs.benchmarks:
            available = ", ".join(sorted(specs.benchmarks)) or "none"
            raise HarnessError(f"benchmark '{name}' not found in the spec; available: {available}")
    if selection.benchmarks:
        chosen = [specs.benchmarks[name] for name in dict.fromkeys(selection.benchmarks)]
    else:
        chosen = [
            benchmark
            for benchmark in specs.benchmarks.values()
            if selection.include_convergence or not benchmark.convergence
        ]
    if selection.tags:
        chosen = [b for b in chosen if set(b.tags) & set(selection.tags)]
    if not chosen:
        raise HarnessError(
            "no benchmark matches the selection; check --benchmark and --tag, and add "
            "--include-convergence for _conv benchmarks"
        )
    return chosen


def plan_runs(
    benchmarks: list[Benchmark],
    selection: Selection,
    platform_kind: str,
    base_env: Mapping[str, str],
    repeat: int | None = None,
) -> list[PlannedRun]:
    """Plan every variant and repeat, interleaving repeats round-robin across variants.

    ``repeat`` overrides every entry's own ``repeat``. A skipped variant is planned
    once, with repeat 0, so that its reason is recorded.
    """
    pattern = _compile_filter(selection.pattern)
    rounds: list[list[PlannedRun]] = []
    for benchmark in benchmarks:
        for variant in benchmark.variants():
            if pattern and not pattern.search(variant.name):
                continue
            first = plan_variant(variant, 0, platform_kind, base_env)
            count = 1 if first.skip_reason else repeat or benchmark.repeat
            for index in range(count):
                planned = (
                    first if index == 0 else plan_variant(variant, index, platform_kind, base_env)
                )
                while len(rounds) <= index:
                    rounds.append([])
                rounds[index].append(planned)
    runs = [planned for round_ in rounds for planned in round_]
    if not runs:
        raise HarnessError(f"no variant name matches --filter {selection.pattern!r}")
    return runs


def _compile_filter(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise HarnessError(
            f"--filter {pattern!r} is not a valid regular expression: {error}"
        ) from None


def plan_variant(
    variant: Variant, repeat: int, platform_kind: str, base_env: Mapping[str, str]
) -> PlannedRun:
    """Build the command and environment of one repeat and decide whether it is skipped."""
    benchmark = variant.benchmark
    env = merge_environment(
        base_env, {**benchmark.env, **benchmark.platform_env.get(platform_kind, {})}
    )
    filled = benchmark.fill_command(variant.params)
    missing = [name for name in benchmark.requires_env if not env.get(name)]
    missing += [name for name in referenced_variables(filled) if name not in env]
    argv = _split_command(expand_variables(filled, env), benchmark)
    reason = variant.excluded_by
    if reason is None and benchmark.platforms and platform_kind not in benchmark.platforms:
        reason = f"runs only on {', '.join(benchmark.platforms)}, not on {platform_kind}"
    if reason is None and missing:
        names = ", ".join(dict.fromkeys(missing))
        reason = f"needs the environment variable(s) {names}, which are not set"
    return PlannedRun(variant, repeat, argv, env, reason)


def merge_environment(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """Overlay a spec's ``env`` on the harness's environment, expanding ``$VAR`` in its values."""
    merged = dict(base)
    for name, value in overrides.items():
        merged[name] = expand_variables(value, base)
    return merged


def referenced_variables(text: str) -> list[str]:
    return [match.group(1) or match.group(2) for match in ENV_REFERENCE.finditer(text)]


def expand_variables(text: str, env: Mapping[str, str]) -> str:
    """Replace ``$NAME`` and ``${NAME}`` with their values; unset names stay as they are."""

    def replace(match: re.Match[str]) -> str:
        return env.get(match.group(1) or match.group(2), match.group(0))

    return ENV_REFERENCE.sub(replace, text)


def _split_command(command: str, benchmark: Benchmark) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise HarnessError(
            f"{benchmark.spec_file}: entry '{benchmark.name}', key 'cmd': {error} in {command!r}"
        ) from None
    # Run training with the interpreter that runs the harness, so the same virtual
    # environment applies even when its bin folder is not on PATH.
    if argv and argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    return argv
