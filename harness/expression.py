"""Safe arithmetic for derived metrics, parsed with ``ast`` and never passed to ``eval``.

An expression may use numbers, names of metrics and parameters (bare, or in braces as
examples-utils writes them: ``{throughput} * {batch_size}``), the operators
``+ - * / // % **``, unary ``+``/``-``, parentheses, and the functions ``min``,
``max``, ``abs`` and ``round``. All values are floats, so ``**`` cannot build huge
integers.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from harness.errors import HarnessError

BRACED_NAME = re.compile(r"\{(\w+)\}")

BINARY_OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: lambda base, exponent: _power(base, exponent),
}
UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    # Arguments arrive as floats, but round() needs an int number of digits.
    "round": lambda value, digits=0.0: round(value, int(digits)),
}


@dataclass(frozen=True)
class Expression:
    """A parsed arithmetic expression and the variable names it reads."""

    source: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, values: Mapping[str, float | str | None]) -> float:
        """Compute the expression; raise HarnessError on a missing value or math error."""
        try:
            result = _evaluate_node(self.tree.body, values)
        except ZeroDivisionError:
            raise self._failure("division by zero") from None
        except OverflowError:
            raise self._failure("the result is too large for a float") from None
        except ValueError as error:
            raise self._failure(str(error)) from None
        if not math.isfinite(result):
            raise HarnessError(f"expression '{self.source}' gave {result}; check its inputs")
        return result

    def _failure(self, problem: str) -> HarnessError:
        return HarnessError(f"expression '{self.source}' failed: {problem}; check its inputs")


def parse_expression(source: str) -> Expression:
    """Parse and check an expression; raise HarnessError naming the first bad part."""
    text = BRACED_NAME.sub(r"\1", source.strip())
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        raise HarnessError(f"expression '{source}' is not valid arithmetic: {error.msg}") from None
    # Function names are ast.Name nodes too, so remember which ones are called.
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    names: set[str] = set()
    for node in ast.walk(tree.body):
        _check_node(node, source)
        if isinstance(node, ast.Name) and id(node) not in called:
            names.add(node.id)
    return Expression(source=source, tree=tree, names=frozenset(names))


def _check_node(node: ast.AST, source: str) -> None:
    allowed = (ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Call, ast.Load)
    if isinstance(node, ast.operator | ast.unaryop):
        if type(node) not in BINARY_OPERATORS and type(node) not in UNARY_OPERATORS:
            raise HarnessError(
                f"expression '{source}' uses the operator {type(node).__name__}; "
                "use only + - * / // % ** and unary minus"
            )
        return
    if not isinstance(node, allowed):
        raise HarnessError(
            f"expression '{source}' contains {type(node).__name__}; use only numbers, "
            "names, arithmetic operators and min/max/abs/round"
        )
    if isinstance(node, ast.Constant) and (
        isinstance(node.value, bool) or not isinstance(node.value, int | float)
    ):
        raise HarnessError(f"expression '{source}' contains the constant {node.value!r}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
            raise HarnessError(
                f"expression '{source}' calls {ast.unparse(node.func)}; only "
                "min, max, abs and round with positional arguments are allowed"
            )


def _evaluate_node(node: ast.AST, values: Mapping[str, float | str | None]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return _lookup(node.id, values)
    if isinstance(node, ast.UnaryOp):
        return UNARY_OPERATORS[type(node.op)](_evaluate_node(node.operand, values))
    if isinstance(node, ast.BinOp):
        left = _evaluate_node(node.left, values)
        right = _evaluate_node(node.right, values)
        return BINARY_OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name), "parse_expression admits only named calls"
        arguments = [_evaluate_node(argument, values) for argument in node.args]
        return float(FUNCTIONS[node.func.id](*arguments))
    raise AssertionError(f"parse_expression admitted the node {type(node).__name__}")


def _power(base: float, exponent: float) -> float:
    result = base**exponent
    if isinstance(result, complex):
        raise ValueError(f"{base:g} ** {exponent:g} is not a real number")
    return result


def _lookup(name: str, values: Mapping[str, float | str | None]) -> float:
    value = values.get(name)
    if value is None:
        raise ValueError(f"'{name}' has no value")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"'{name}' is {value!r}, not a number") from None
