"""Load and validate benchmark specs in the examples-utils ``benchmarks.yml`` format.

A spec is YAML whose top-level keys are benchmark entries. Anchors and merge keys,
lists of merges included (``<<: [*common_options, *config_options]``), work as in any
YAML file. Entries whose name contains ``options`` are templates and never run.
Every error names the spec file, the entry and the key, and is raised before anything
runs.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.matrix import Params, expand_parameters, matching_exclude, parse_excludes, variant_name
from harness.metrics import DerivedSpec, MetricSpec, parse_derived, parse_metric

logger = logging.getLogger(__name__)

PLATFORM_KINDS = ("cpu", "cuda", "ipu")
ENV_BRACES = re.compile(r"\$\{(\w+)\}")
ENTRY_KEYS = {
    "cmd",
    "data",
    "derived",
    "output",
    "env",
    "location",
    "reference_directory",
    "timeout",
    "parameters",
    "description",
    "exclude",
    "repeat",
    "tags",
    "platforms",
    "requires_env",
    "platform_env",
}
# Keys that examples-utils specs carry for its own set-up steps. They are kept in
# Benchmark.extra and written to the results, but the harness does not act on them.
RECORDED_KEYS = {
    "requirements_path",
    "required_apt_packages_path",
    "pre_run_commands",
    "post_run_commands",
    "requirements_file",
    "generated",
    "synthetic",
    "benchmark_path",
}


@dataclass(frozen=True)
class Variant:
    """One point of a benchmark's parameter matrix."""

    benchmark: Benchmark
    name: str
    params: Params
    excluded_by: str | None = None


@dataclass(frozen=True, eq=False)
class Benchmark:
    """A validated spec entry."""

    name: str
    spec_file: Path
    cmd: str
    workdir: Path
    description: str = ""
    metrics: tuple[MetricSpec, ...] = ()
    derived: tuple[DerivedSpec, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    platform_env: dict[str, dict[str, str]] = field(default_factory=dict)
    timeout: float | None = None
    param_sets: tuple[Params, ...] = ({},)
    excludes: tuple[dict[str, set[str]], ...] = ()
    repeat: int = 1
    tags: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    requires_env: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def convergence(self) -> bool:
        """Whether this is a convergence benchmark, which runs only on request."""
        return "_conv" in self.name

    def fill_command(self, params: Params) -> str:
        """Fill the ``{name}`` placeholders of ``cmd`` from ``params``.

        ``${NAME}`` stays as it is, for the environment expansion that follows.
        """
        return command_template(self.cmd).format_map(params)

    def variants(self) -> list[Variant]:
        result = []
        for params in self.param_sets:
            rule = matching_exclude(params, self.excludes)
            reason = None if rule is None else f"excluded by {_format_rule(rule)}"
            result.append(Variant(self, variant_name(self.name, params), params, reason))
        return result


@dataclass
class SpecSet:
    """The benchmarks of one or more spec files, by name."""

    benchmarks: dict[str, Benchmark] = field(default_factory=dict)
    templates: dict[str, Path] = field(default_factory=dict)


class SpecLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (merge keys still override)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_specs(paths: list[Path]) -> SpecSet:
    """Load spec files; a benchmark defined in two files is an error naming both."""
    specs = SpecSet()
    origin: dict[str, Path] = {}
    for path in paths:
        for name, entry in _read_yaml(path).items():
            name = str(name)
            if name in origin:
                raise HarnessError(
                    f"benchmark '{name}' is defined in both {origin[name]} and {path}; "
                    "rename one of them or pass only one of the files"
                )
            origin[name] = path
            if "options" in name:
                specs.templates[name] = path
            else:
                specs.benchmarks[name] = parse_entry(name, entry, path)
    return specs


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise HarnessError(
            f"cannot read spec file {path}: {error.strerror}; check --spec"
        ) from None
    try:
        data = yaml.load(text, Loader=SpecLoader)
    except yaml.YAMLError as error:
        raise HarnessError(f"{path}: invalid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a mapping of benchmark names to entries")
    return data


def parse_entry(name: str, entry: Any, spec_file: Path) -> Benchmark:
    """Validate one benchmark entry; every error names the file, the entry and the key."""
    where = f"{spec_file}: entry '{name}'"
    if not isinstance(entry, Mapping):
        raise HarnessError(
            f"{where}: expected a mapping of keys such as cmd and data, got {entry!r}"
        )
    _warn_unknown_keys(entry, where)

    # The command and the matrix first, because placeholders and derived metrics
    # may only use the parameters' names.
    cmd = _parse_cmd(entry, where)
    param_sets = expand_parameters(entry.get("parameters"), where)
    parameter_names = set().union(*(params.keys() for params in param_sets))
    _check_placeholders(cmd, param_sets, where)
    metrics, derived = _parse_metrics(entry, parameter_names, where)

    benchmark = Benchmark(
        name=name,
        spec_file=spec_file,
        cmd=cmd,
        workdir=_parse_workdir(entry, spec_file, where),
        description=str(entry.get("description", "")),
        metrics=metrics,
        derived=derived,
        labels=_parse_output(entry.get("output"), {m.name for m in metrics + derived}, where),
        env=_parse_env(entry.get("env"), where),
        platform_env=_parse_platform_env(entry.get("platform_env"), where),
        timeout=_parse_positive(entry.get("timeout"), where, "timeout", float),
        param_sets=tuple(param_sets),
        excludes=tuple(parse_excludes(entry.get("exclude"), parameter_names, where)),
        repeat=int(_parse_positive(entry.get("repeat", 1), where, "repeat", int) or 1),
        tags=_parse_names(entry.get("tags"), where, "tags"),
        platforms=_parse_platforms(entry.get("platforms"), where),
        requires_env=_parse_names(entry.get("requires_env"), where, "requires_env"),
        extra={key: entry[key] for key in entry if key not in ENTRY_KEYS},
    )

    _check_unique_variants(benchmark, where)
    return benchmark


def _warn_unknown_keys(entry: Mapping[str, Any], where: str) -> None:
    for key in sorted(set(map(str, entry)) - ENTRY_KEYS - RECORDED_KEYS):
        logger.warning("%s: unknown key '%s' is recorded but not used", where, key)


def _parse_cmd(entry: Mapping[str, Any], where: str) -> str:
    cmd = entry.get("cmd")
    if cmd is None:
        if "notebook" in entry:
            raise HarnessError(
                f"{where}, key 'notebook': notebook entries are not supported; "
                "give a 'cmd' that runs the notebook instead"
            )
        raise HarnessError(f"{where}, key 'cmd': missing; give the command to run")
    if not isinstance(cmd, str) or not cmd.strip():
        raise HarnessError(f"{where}, key 'cmd': {cmd!r} is not a non-empty string")
    # Folded as examples-utils does: newlines and runs of whitespace become one space.
    return " ".join(cmd.split())


def command_template(cmd: str) -> str:
    """Double the braces of ``${NAME}`` so that str.format treats them as literal text."""
    return ENV_BRACES.sub(r"${{\1}}", cmd)


def _check_placeholders(cmd: str, param_sets: list[Params], where: str) -> None:
    template = command_template(cmd)
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise HarnessError(
            f"{where}, key 'cmd': {error}; write {{{{ and }}}} for literal braces"
        ) from None
    for field_name in fields:
        base = field_name.split(".")[0].split("[")[0]
        if not base or base.isdigit():
            raise HarnessError(
                f"{where}, key 'cmd': placeholder {{{field_name}}} has no parameter name; "
                "write {name} with a name from 'parameters', or {{ }} for literal braces"
            )
        for params in param_sets:
            if base not in params:
                raise HarnessError(
                    f"{where}, key 'cmd': placeholder {{{base}}} has no value in the variant "
                    f"{params or 'without parameters'}; add '{base}' to 'parameters'"
                )


def _parse_metrics(
    entry: Mapping[str, Any], parameter_names: set[str], where: str
) -> tuple[tuple[MetricSpec, ...], tuple[DerivedSpec, ...]]:
    data = entry.get("data") or {}
    derived_raw = entry.get("derived") or {}
    for key, value in (("data", data), ("derived", derived_raw)):
        if not isinstance(value, Mapping):
            raise HarnessError(f"{where}, key '{key}': expected a mapping of metric names")
    metrics = tuple(parse_metric(str(name), raw, where) for name, raw in data.items())
    known = parameter_names | {metric.name for metric in metrics}
    derived = []
    for name, raw in derived_raw.items():
        derived.append(parse_derived(str(name), raw, where, known))
        known.add(str(name))
    return metrics, tuple(derived)


def _parse_workdir(entry: Mapping[str, Any], spec_file: Path, where: str) -> Path:
    location = entry.get("location")
    reference = entry.get("reference_directory")
    if location is not None and reference is not None and location != reference:
        raise HarnessError(
            f"{where}, key 'reference_directory': {reference!r} differs from location "
            f"{location!r}; give only one of them"
        )
    relative = location if location is not None else reference
    key = "location" if location is not None else "reference_directory"
    workdir = (spec_file.parent / str(relative if relative is not None else ".")).resolve()
    if not workdir.is_dir():
        raise HarnessError(
            f"{where}, key '{key}': {workdir} is not a directory; the path is relative to "
            "the spec file's folder"
        )
    return workdir


def _parse_output(raw: Any, metric_names: set[str], where: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for index, item in enumerate(raw or []):
        if not isinstance(item, list) or len(item) != 2:
            raise HarnessError(
                f"{where}, key 'output[{index}]': {item!r} is not a [label, metric] pair"
            )
        label, metric = str(item[0]), str(item[1])
        if metric not in metric_names:
            logger.warning("%s, key 'output[%d]': no metric named '%s'", where, index, metric)
        labels[metric] = label
    return labels


def _parse_env(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise HarnessError(f"{where}, key 'env': expected a mapping of variable names to values")
    for name, value in raw.items():
        if value is None or isinstance(value, Mapping | list):
            raise HarnessError(f"{where}, key 'env.{name}': {value!r} is not a single value")
    return {str(name): str(value) for name, value in raw.items()}


def _parse_platform_env(raw: Any, where: str) -> dict[str, dict[str, str]]:
    """Parse ``platform_env``: per platform kind, variables that overlay ``env`` there."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise HarnessError(
            f"{where}, key 'platform_env': expected a mapping of platform kinds "
            f"({', '.join(PLATFORM_KINDS)}) to variables"
        )
    _parse_platforms(list(map(str, raw)), f"{where}, key 'platform_env'")
    return {
        str(kind): _parse_env(values, f"{where}, key 'platform_env.{kind}'")
        for kind, values in raw.items()
    }


def _parse_positive(raw: Any, where: str, key: str, kind: type) -> float | int | None:
    if raw is None:
        return None
    valid = not isinstance(raw, bool) and isinstance(raw, int | float) and raw > 0
    if not valid or (kind is int and not isinstance(raw, int)):
        raise HarnessError(f"{where}, key '{key}': {raw!r} is not a positive {kind.__name__}")
    return kind(raw)


def _parse_names(raw: Any, where: str, key: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [item.strip() for item in raw.split(",")]
    if not isinstance(raw, list) or not all(isinstance(item, str) and item for item in raw):
        raise HarnessError(f"{where}, key '{key}': {raw!r} is not a list of names")
    return tuple(raw)


def _parse_platforms(raw: Any, where: str) -> tuple[str, ...]:
    platforms = _parse_names(raw, where, "platforms")
    unknown = sorted(set(platforms) - set(PLATFORM_KINDS))
    if unknown:
        raise HarnessError(
            f"{where}, key 'platforms': unknown platform kind(s) {', '.join(unknown)}; "
            f"use {', '.join(PLATFORM_KINDS)}"
        )
    return platforms


def _check_unique_variants(benchmark: Benchmark, where: str) -> None:
    counts = Counter(variant.name for variant in benchmark.variants())
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise HarnessError(
            f"{where}, key 'parameters': variant {duplicates[0]} appears more than once; "
            "remove the repeated row or value"
        )


def _format_rule(rule: dict[str, set[str]]) -> str:
    parts = [f"{name}={'|'.join(sorted(values))}" for name, values in sorted(rule.items())]
    return "exclude rule " + ", ".join(parts)
