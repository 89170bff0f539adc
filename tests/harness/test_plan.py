"""Selecting benchmarks and planning variants: order, skips, commands and environments."""

from __future__ import annotations

import sys

import pytest

from harness.errors import HarnessError
from harness.plan import (
    Selection,
    expand_variables,
    merge_environment,
    plan_runs,
    select_benchmarks,
)
from harness.spec import load_specs

SPEC = """
    common_options: &common
        cmd: python train.py --batch_size {batch_size}
        parameters:
            batch_size: 1,2
    train_gen:
        <<: *common
        tags: [nightly]
    train_real:
        <<: *common
        cmd: python train.py --batch_size {batch_size} --data $DATASETS_DIR/cc3m
    train_conv:
        <<: *common
        repeat: 2
    train_ipu:
        <<: *common
        platforms: [ipu]
"""


@pytest.fixture
def specs(write_spec):
    return load_specs([write_spec(SPEC)])


def names(benchmarks) -> list[str]:
    return [benchmark.name for benchmark in benchmarks]


def test_default_selection_skips_convergence(specs):
    assert names(select_benchmarks(specs, Selection())) == ["train_gen", "train_real", "train_ipu"]


def test_include_convergence(specs):
    chosen = select_benchmarks(specs, Selection(include_convergence=True))
    assert names(chosen) == ["train_gen", "train_real", "train_conv", "train_ipu"]


def test_named_convergence_runs(specs):
    assert names(select_benchmarks(specs, Selection(benchmarks=["train_conv"]))) == ["train_conv"]


def test_tag_selection(specs):
    assert names(select_benchmarks(specs, Selection(tags=["nightly"]))) == ["train_gen"]


def test_selection_errors(specs):
    with pytest.raises(HarnessError, match=r"'common_options' in .* is a template"):
        select_benchmarks(specs, Selection(benchmarks=["common_options"]))
    with pytest.raises(HarnessError, match=r"benchmark 'nope' not found .*available: train_conv"):
        select_benchmarks(specs, Selection(benchmarks=["nope"]))
    with pytest.raises(HarnessError, match=r"no benchmark matches the selection"):
        select_benchmarks(specs, Selection(tags=["weekly"]))


def test_repeats_interleaved_round_robin(specs):
    benchmarks = [specs.benchmarks["train_gen"], specs.benchmarks["train_conv"]]
    planned = plan_runs(benchmarks, Selection(), "cpu", {}, repeat=None)
    order = [(run.variant.name, run.repeat) for run in planned]
    assert order == [
        ("train_gen_batch_size_1", 0),
        ("train_gen_batch_size_2", 0),
        ("train_conv_batch_size_1", 0),
        ("train_conv_batch_size_2", 0),
        ("train_conv_batch_size_1", 1),
        ("train_conv_batch_size_2", 1),
    ]


def test_repeat_option_replaces_spec_repeat(specs):
    planned = plan_runs([specs.benchmarks["train_conv"]], Selection(), "cpu", {}, repeat=3)
    assert [run.repeat for run in planned] == [0, 0, 1, 1, 2, 2]


def test_filter_on_variant_names(specs):
    selection = Selection(pattern=r"size_2$")
    planned = plan_runs([specs.benchmarks["train_gen"]], selection, "cpu", {})
    assert [run.variant.name for run in planned] == ["train_gen_batch_size_2"]
    with pytest.raises(HarnessError, match=r"no variant name matches --filter 'size_9'"):
        plan_runs([specs.benchmarks["train_gen"]], Selection(pattern="size_9"), "cpu", {})
    with pytest.raises(HarnessError, match=r"--filter '\(' is not a valid regular expression"):
        plan_runs([specs.benchmarks["train_gen"]], Selection(pattern="("), "cpu", {})


def test_command_filled_and_python_replaced(specs):
    run = plan_runs([specs.benchmarks["train_gen"]], Selection(), "cpu", {})[1]
    assert run.argv == [sys.executable, "train.py", "--batch_size", "2"]
    assert run.skip_reason is None


def test_unset_dataset_variable_skips(specs):
    planned = plan_runs([specs.benchmarks["train_real"]], Selection(), "cpu", {}, repeat=3)
    assert len(planned) == 2  # a skipped variant is planned once, not per repeat
    assert planned[0].skip_reason == (
        "needs the environment variable(s) DATASETS_DIR, which are not set"
    )


def test_set_dataset_variable_expands(specs):
    run = plan_runs([specs.benchmarks["train_real"]], Selection(), "cpu", {"DATASETS_DIR": "/d"})[0]
    assert run.skip_reason is None
    assert run.argv[-2:] == ["--data", "/d/cc3m"]


def test_braced_variable_is_not_placeholder(write_spec):
    path = write_spec("""
        train:
            parameters: {batch_size: 8}
            cmd: python t.py --data ${DATASETS_DIR}/cc3m --batch_size {batch_size}
    """)
    benchmark = load_specs([path]).benchmarks["train"]
    run = plan_runs([benchmark], Selection(), "cpu", {"DATASETS_DIR": "/d"})[0]
    assert run.argv[1:] == ["t.py", "--data", "/d/cc3m", "--batch_size", "8"]
    skipped = plan_runs([benchmark], Selection(), "cpu", {})[0]
    assert "DATASETS_DIR" in skipped.skip_reason


def test_platform_skip(specs):
    run = plan_runs([specs.benchmarks["train_ipu"]], Selection(), "cuda", {})[0]
    assert run.skip_reason == "runs only on ipu, not on cuda"
    assert plan_runs([specs.benchmarks["train_ipu"]], Selection(), "ipu", {})[0].skip_reason is None


def test_exclude_and_requires_env_skip(write_spec):
    path = write_spec("""
        train:
            cmd: python t.py {a}
            parameters: {a: '1,2'}
            exclude: [{a: 2}]
            requires_env: [TOKEN_DIR]
    """)
    benchmark = load_specs([path]).benchmarks["train"]
    planned = plan_runs([benchmark], Selection(), "cpu", {"TOKEN_DIR": "/t"})
    assert planned[0].skip_reason is None
    assert planned[1].skip_reason == "excluded by exclude rule a=2"
    unset = plan_runs([benchmark], Selection(), "cpu", {})[0]
    assert unset.skip_reason == "needs the environment variable(s) TOKEN_DIR, which are not set"


def test_spec_env_merged_and_expanded():
    merged = merge_environment(
        {"PATH": "/bin", "HOME": "/h"}, {"PATH": "$PATH:/opt", "X": "${HOME}/x"}
    )
    assert merged == {"PATH": "/bin:/opt", "HOME": "/h", "X": "/h/x"}


def test_unset_variable_left_as_is():
    assert expand_variables("$A/${B}/$C", {"A": "1"}) == "1/${B}/$C"


def test_unbalanced_quote_is_spec_error(write_spec):
    benchmark = load_specs([write_spec("train:\n  cmd: python -c 'oops\n")]).benchmarks["train"]
    with pytest.raises(HarnessError, match=r"entry 'train', key 'cmd': No closing quotation"):
        plan_runs([benchmark], Selection(), "cpu", {})


def test_platform_env_overlays_env(write_spec):
    path = write_spec("""
        train:
            cmd: python t.py $SIZE_ARGS
            env: {SIZE_ARGS: "--batch_size 74", OTHER: kept}
            platform_env:
                cpu: {SIZE_ARGS: "--batch_size 8 --max_steps 3"}
    """)
    benchmark = load_specs([path]).benchmarks["train"]
    on_cpu = plan_runs([benchmark], Selection(), "cpu", {})[0]
    on_ipu = plan_runs([benchmark], Selection(), "ipu", {})[0]
    assert on_cpu.argv[-4:] == ["--batch_size", "8", "--max_steps", "3"]
    assert on_cpu.env["OTHER"] == "kept"
    assert on_ipu.argv[-2:] == ["--batch_size", "74"]


def test_platform_env_unknown_kind_is_spec_error(write_spec):
    path = write_spec("""
        train:
            cmd: python t.py
            platform_env: {tpu: {A: "1"}}
    """)
    message = r"entry 'train', key 'platform_env'.*unknown platform kind"
    with pytest.raises(HarnessError, match=message):
        load_specs([path])
