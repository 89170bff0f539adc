"""Variants of a benchmark: its ``parameters`` matrix, variant names and ``exclude`` rules.

``parameters`` has two forms, as in examples-utils:

* a mapping of comma-separated values (``batch_size: 1,64``) gives the cartesian
  product of all values;
* a list whose first row names the parameters and whose later rows give values gives
  one variant per row.

A variant is named after its benchmark plus ``_<key>_<value>`` for each parameter in
sorted key order, e.g. ``train_batch_size_64_precision_fp16``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from harness.errors import HarnessError

Params = dict[str, str]


def expand_parameters(raw: Any, where: str) -> list[Params]:
    """Return one parameter mapping per variant; a missing ``parameters`` gives one empty one."""
    if raw is None:
        return [{}]
    if isinstance(raw, Mapping):
        return _expand_product(raw, where)
    if isinstance(raw, list):
        return _expand_rows(raw, where)
    raise HarnessError(
        f"{where}, key 'parameters': expected a mapping of comma-separated values or a list "
        f"of rows whose first row names the parameters, got {raw!r}"
    )


def _expand_product(raw: Mapping[str, Any], where: str) -> list[Params]:
    names = [str(name) for name in raw]
    choices = [_split_values(raw[name], where, f"parameters.{name}") for name in raw]
    return [
        dict(zip(names, combination, strict=True)) for combination in itertools.product(*choices)
    ]


def _split_values(value: Any, where: str, key: str) -> list[str]:
    if isinstance(value, list):
        values = [_scalar_text(item, where, key) for item in value]
    else:
        values = [item.strip() for item in _scalar_text(value, where, key).split(",")]
    if not values or "" in values:
        raise HarnessError(
            f"{where}, key '{key}': empty value in {value!r}; remove the extra comma"
        )
    return values


def _expand_rows(rows: list[Any], where: str) -> list[Params]:
    if len(rows) < 2 or not isinstance(rows[0], list) or not rows[0]:
        raise HarnessError(
            f"{where}, key 'parameters': a list needs a first row of parameter names and at "
            "least one row of values, e.g. [[batch_size, precision], [64, fp16]]"
        )
    names = [_scalar_text(name, where, "parameters[0]") for name in rows[0]]
    variants = []
    for index, row in enumerate(rows[1:], start=1):
        if not isinstance(row, list) or len(row) != len(names):
            raise HarnessError(
                f"{where}, key 'parameters[{index}]': row {row!r} needs {len(names)} values, "
                f"one for each of {', '.join(names)}"
            )
        values = [_scalar_text(value, where, f"parameters[{index}]") for value in row]
        variants.append(dict(zip(names, values, strict=True)))
    return variants


def _scalar_text(value: Any, where: str, key: str) -> str:
    if isinstance(value, Mapping | list) or value is None:
        raise HarnessError(f"{where}, key '{key}': {value!r} is not a single value")
    return str(value)


def variant_name(benchmark: str, params: Mapping[str, str]) -> str:
    """Name a variant as examples-utils does: ``<benchmark>_<key>_<value>`` in key order."""
    return benchmark + "".join(f"_{key}_{params[key]}" for key in sorted(params))


def parse_excludes(raw: Any, names: set[str], where: str) -> list[dict[str, set[str]]]:
    """Validate ``exclude``: a list of mappings from parameter name to one or more values."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise HarnessError(
            f"{where}, key 'exclude': expected a list of mappings such as "
            f"[{{batch_size: 64, precision: fp32}}], got {raw!r}"
        )
    rules = []
    for index, rule in enumerate(raw):
        key = f"exclude[{index}]"
        if not isinstance(rule, Mapping) or not rule:
            raise HarnessError(f"{where}, key '{key}': {rule!r} is not a mapping of parameters")
        unknown = sorted(set(map(str, rule)) - names)
        if unknown:
            raise HarnessError(
                f"{where}, key '{key}': unknown parameter(s) {', '.join(unknown)}; "
                f"parameters are {', '.join(sorted(names)) or 'none'}"
            )
        rules.append(
            {str(name): set(_split_values(value, where, key)) for name, value in rule.items()}
        )
    return rules


def matching_exclude(
    params: Params, rules: Sequence[dict[str, set[str]]]
) -> dict[str, set[str]] | None:
    """Return the first rule whose every parameter matches ``params``, if any."""
    for rule in rules:
        if all(params.get(name) in values for name, values in rule.items()):
            return rule
    return None
