"""Metric extraction from fixed log text, derived metrics and the expression evaluator."""

from __future__ import annotations

import math

import pytest

from harness.errors import HarnessError
from harness.expression import parse_expression
from harness.metrics import default_direction, extract_metrics, parse_derived, parse_metric

# The training program's log format, with a warm-up first call.
TRAIN_LOG = """\
Epoch: 0.10/2 Step: 1/20 Lr: 0.000100 Loss: 8.100 Throughput: 10.00 samples/sec
Compiled model in 41.5 secs
Epoch: 0.20/2 Step: 2/20 Lr: 0.000200 Loss: 7.900 Throughput: 100.00 samples/sec
Epoch: 0.30/2 Step: 3/20 Lr: 0.000300 Loss: 7.500 Throughput: 110.00 samples/sec
Epoch: 0.40/2 Step: 4/20 Lr: 0.000400 Loss: 7.200 Throughput: 90.00 samples/sec
Throughput: 104.50 samples/sec.
Zero-shot top1: 12.25 top5: 30.50
"""
THROUGHPUT = r"Throughput: *(.*?) samples/sec"


def metric(name: str, regexp: str, **options) -> object:
    return parse_metric(name, {"regexp": regexp, **options}, "test")


@pytest.mark.parametrize(
    ("reduction", "skip", "expected"),
    [
        ("mean", 0, (10 + 100 + 110 + 90 + 104.5) / 5),
        ("mean", 1, (100 + 110 + 90 + 104.5) / 4),
        ("final", 0, 104.5),
        ("final", 4, 104.5),
        ("min", 0, 10.0),
        ("min", 1, 90.0),
        ("max", 0, 110.0),
        ("value", 0, 10.0),
        ("value", 1, 100.0),
    ],
)
def test_reductions_and_skip(reduction: str, skip: int, expected: float):
    spec = metric("throughput", THROUGHPUT, reduction_type=reduction, skip=skip)
    extraction = extract_metrics(TRAIN_LOG, [spec])
    assert extraction.values["throughput"] == pytest.approx(expected)
    assert extraction.problems == []
    assert extraction.failures == []


def test_skip_drops_log_order_not_lowest():
    # examples-utils would drop the lowest value (10); we drop the first match.
    log = "Throughput: 50 samples/sec\nThroughput: 10 samples/sec\nThroughput: 30 samples/sec\n"
    spec = metric("throughput", THROUGHPUT, skip=1)
    assert extract_metrics(log, [spec]).values["throughput"] == pytest.approx(20.0)


def test_training_log_metrics():
    specs = [
        metric("loss", r"Loss: *(.*?) ", reduction_type="final"),
        metric("compile_time", r"Compiled model in *(.*?) secs"),
        metric("top1", r"Zero-shot top1: (\S+)"),
        metric("top5", r"top5: (\S+)"),
    ]
    values = extract_metrics(TRAIN_LOG, specs).values
    assert values == {"loss": 7.2, "compile_time": 41.5, "top1": 12.25, "top5": 30.5}


def test_missing_metric_is_problem():
    spec = metric("loss", r"Loss: *(.*?) ")
    extraction = extract_metrics("no metrics here\n", [spec])
    assert extraction.values["loss"] is None
    assert extraction.problems == ["loss: 0 match(es) of 'Loss: *(.*?) ', not more than skip=0"]
    assert extraction.failures == []


def test_matches_not_more_than_skip():
    spec = metric("throughput", THROUGHPUT, skip=5)
    extraction = extract_metrics(TRAIN_LOG, [spec])
    assert extraction.values["throughput"] is None
    assert "5 match(es)" in extraction.problems[0]
    assert "not more than skip=5" in extraction.problems[0]


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf"])
def test_nan_value_is_failure(bad: str):
    log = f"Loss: 2.0 \nLoss: {bad} \nLoss: 1.0 \n"
    extraction = extract_metrics(log, [metric("loss", r"Loss: *(.*?) ", reduction_type="final")])
    assert extraction.values["loss"] is None
    assert extraction.failures == ["loss: the log contains a NaN or infinite value"]


def test_non_number_capture_is_problem():
    extraction = extract_metrics("Loss: high \n", [metric("loss", r"Loss: *(.*?) ")])
    assert extraction.values["loss"] is None
    assert extraction.problems == ["loss: captured 'high', which is not a number"]


def test_derived_from_metrics_and_params():
    throughput = metric("throughput", THROUGHPUT, reduction_type="final")
    per_replica = parse_derived(
        "per_replica", {"expr": "{throughput} / {replicas}"}, "test", {"throughput", "replicas"}
    )
    extraction = extract_metrics(TRAIN_LOG, [throughput], [per_replica], {"replicas": "4"})
    assert extraction.values["per_replica"] == pytest.approx(104.5 / 4)


def test_derived_without_input_is_problem():
    loss = metric("loss", r"Nothing: (\S+)")
    double = parse_derived("double", {"expr": "loss * 2"}, "test", {"loss"})
    extraction = extract_metrics(TRAIN_LOG, [loss], [double])
    assert extraction.values["double"] is None
    assert extraction.problems[-1] == "double: no value for loss"


def test_derived_division_by_zero_is_failure():
    loss = metric("loss", r"Loss: *(.*?) ", reduction_type="final")
    ratio = parse_derived("ratio", {"expr": "loss / zero"}, "test", {"loss", "zero"})
    extraction = extract_metrics(TRAIN_LOG, [loss], [ratio], {"zero": "0"})
    assert extraction.values["ratio"] is None
    assert extraction.failures == [
        "ratio: expression 'loss / zero' failed: division by zero; check its inputs"
    ]


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("throughput", "higher"),
        ("zero_shot_top1", "higher"),
        ("accuracy", "higher"),
        ("loss", "lower"),
        ("compile_time", "lower"),
        ("latency", "lower"),
        ("widgets", None),
    ],
)
def test_default_direction(name: str, direction: str | None):
    assert default_direction(name) == direction


@pytest.mark.parametrize(
    ("source", "values", "expected"),
    [
        ("{a} * {b}", {"a": 3, "b": "4"}, 12.0),
        ("a / b + 1", {"a": 1, "b": 4}, 1.25),
        ("-a ** 2", {"a": 3}, -9.0),
        ("a // 2 % 3", {"a": 9}, 1.0),
        ("max(a, b) - min(a, b)", {"a": 2, "b": 7}, 5.0),
        ("round(abs(a), 1)", {"a": -1.26}, 1.3),
    ],
)
def test_expression_values(source: str, values: dict, expected: float):
    assert parse_expression(source).evaluate(values) == pytest.approx(expected)


def test_expression_names_exclude_functions():
    assert parse_expression("max({a}, b) * 2").names == frozenset({"a", "b"})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("__import__('os').system('x')", r"contains Attribute|calls"),
        ("open('f')", r"calls open"),
        ("a.b", r"contains Attribute"),
        ("a[0]", r"contains Subscript"),
        ("a if b else c", r"contains IfExp"),
        ("a < b", r"contains Compare"),
        ("'text'", r"contains the constant 'text'"),
        ("True + 1", r"contains the constant True"),
        ("lambda: 1", r"contains Lambda"),
        ("a @ b", r"uses the operator MatMult"),
        ("a << 2", r"uses the operator LShift"),
        ("max(a, key=b)", r"positional arguments"),
        ("1 +", r"not valid arithmetic"),
    ],
)
def test_expression_rejected(source: str, message: str):
    with pytest.raises(HarnessError, match=message):
        parse_expression(source)


@pytest.mark.parametrize(
    ("source", "values", "message"),
    [
        ("a / b", {"a": 1, "b": 0}, r"failed: division by zero"),
        ("a ** 1000", {"a": 1e10}, r"failed: the result is too large for a float"),
        ("a", {"a": "fp16"}, r"'a' is 'fp16', not a number"),
        ("a + 1", {}, r"'a' has no value"),
        ("a ** 0.5", {"a": -4}, r"failed: -4 \*\* 0.5 is not a real number"),
    ],
)
def test_expression_evaluation_errors(source: str, values: dict, message: str):
    with pytest.raises(HarnessError, match=message):
        parse_expression(source).evaluate(values)


def test_expression_result_must_be_finite():
    # math.inf can only arrive through a value, because constants are finite literals.
    with pytest.raises(HarnessError, match="gave inf"):
        parse_expression("a * 2").evaluate({"a": math.inf})
