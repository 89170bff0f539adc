"""Spec loading: YAML merges, parameter matrices, excludes, templates and spec errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.spec import load_specs

GRAPHCORE_SPEC = """
    common_options: &common_options
        location: .
        data:
            throughput:
                reduction_type: "mean"
                regexp: "Throughput: *(.*?) samples/sec"
                skip: 1
            loss:
                reduction_type: "final"
                regexp: "Loss: *(.*?) "
            compile_time:
                regexp: "Compiled model in *(.*?) secs"
        output:
            - [samples/sec, 'throughput']
            - [loss, 'loss']
            - [sec, 'compile_time']

    config_options: &config_options
        env:
            POPLAR_ENGINE_OPTIONS: '{"opt": "x"}'
        timeout: 600

    pytorch_clip_vit_b_32_train_gen_pod16:
        <<: [*common_options, *config_options]
        description: Pytorch CLIP_ViT-B-32 throughput benchmark using host generated data.
        requirements_path: requirements.txt
        pre_run_commands: [make]
        cmd: >-
            python -m clip.train
                --config CLIP_ViT-B-32_cc3m
                --host_generate_data True
                --epochs 2
                --warmup_epochs 1
"""


def test_graphcore_spec_with_merge_list(write_spec):
    specs = load_specs([write_spec(GRAPHCORE_SPEC)])
    assert list(specs.benchmarks) == ["pytorch_clip_vit_b_32_train_gen_pod16"]
    assert set(specs.templates) == {"common_options", "config_options"}
    benchmark = specs.benchmarks["pytorch_clip_vit_b_32_train_gen_pod16"]
    assert benchmark.cmd == (
        "python -m clip.train --config CLIP_ViT-B-32_cc3m --host_generate_data True "
        "--epochs 2 --warmup_epochs 1"
    )
    assert [metric.name for metric in benchmark.metrics] == ["throughput", "loss", "compile_time"]
    assert benchmark.metrics[0].skip == 1
    assert benchmark.metrics[1].reduction == "final"
    assert benchmark.metrics[2].reduction == "mean"
    assert benchmark.labels == {"throughput": "samples/sec", "loss": "loss", "compile_time": "sec"}
    assert benchmark.env == {"POPLAR_ENGINE_OPTIONS": '{"opt": "x"}'}
    assert benchmark.timeout == 600
    assert benchmark.extra == {
        "requirements_path": "requirements.txt",
        "pre_run_commands": ["make"],
    }
    assert [variant.name for variant in benchmark.variants()] == [benchmark.name]


def test_default_directions(write_spec):
    benchmark = load_specs([write_spec(GRAPHCORE_SPEC)]).benchmarks[
        "pytorch_clip_vit_b_32_train_gen_pod16"
    ]
    directions = {metric.name: metric.direction for metric in benchmark.metrics}
    assert directions == {"throughput": "higher", "loss": "lower", "compile_time": "lower"}


def test_entry_overrides_merged_key(write_spec):
    path = write_spec("""
        base_options: &base
            timeout: 10
            cmd: python a.py
        quick:
            <<: *base
            timeout: 20
    """)
    assert load_specs([path]).benchmarks["quick"].timeout == 20


def test_product_parameters_and_names(write_spec):
    path = write_spec("""
        train:
            parameters:
                precision: fp32, fp16
                batch_size: 1,64
            cmd: python t.py --batch_size {batch_size} --precision {precision}
    """)
    variants = load_specs([path]).benchmarks["train"].variants()
    assert [variant.name for variant in variants] == [
        "train_batch_size_1_precision_fp32",
        "train_batch_size_64_precision_fp32",
        "train_batch_size_1_precision_fp16",
        "train_batch_size_64_precision_fp16",
    ]
    assert variants[1].params == {"precision": "fp32", "batch_size": "64"}


def test_row_parameters_and_names(write_spec):
    path = write_spec("""
        train:
            parameters:
                - [replicas, batch_size]
                - [1, 64]
                - [4, 16]
            cmd: python t.py --replication_factor {replicas} --batch_size {batch_size}
    """)
    variants = load_specs([path]).benchmarks["train"].variants()
    assert [variant.name for variant in variants] == [
        "train_batch_size_64_replicas_1",
        "train_batch_size_16_replicas_4",
    ]
    assert variants[1].params == {"replicas": "4", "batch_size": "16"}


def test_excludes_mark_variants(write_spec):
    path = write_spec("""
        train:
            parameters:
                batch_size: 1,64
                precision: fp16,fp32
            exclude:
                - {batch_size: 64, precision: fp32}
                - {batch_size: [1], precision: fp16}
            cmd: python t.py {batch_size} {precision}
    """)
    variants = load_specs([path]).benchmarks["train"].variants()
    excluded = {variant.name: variant.excluded_by for variant in variants}
    assert excluded["train_batch_size_1_precision_fp32"] is None
    assert excluded["train_batch_size_64_precision_fp16"] is None
    assert "batch_size=64, precision=fp32" in excluded["train_batch_size_64_precision_fp32"]
    assert "batch_size=1, precision=fp16" in excluded["train_batch_size_1_precision_fp16"]


def test_extensions_parsed(write_spec):
    path = write_spec("""
        train_conv:
            cmd: python t.py
            repeat: 3
            tags: [nightly, small]
            platforms: [cpu, cuda]
            requires_env: [DATASETS_DIR]
            data:
                accuracy:
                    regexp: "top1: (\\\\S+)"
                    tolerance: 0.01
                step_spread:
                    regexp: "spread (\\\\S+)"
                    direction: lower
    """)
    benchmark = load_specs([path]).benchmarks["train_conv"]
    assert benchmark.convergence
    assert benchmark.repeat == 3
    assert benchmark.tags == ("nightly", "small")
    assert benchmark.platforms == ("cpu", "cuda")
    assert benchmark.requires_env == ("DATASETS_DIR",)
    assert benchmark.metrics[0].tolerance == 0.01
    assert benchmark.metrics[0].direction == "higher"
    assert benchmark.metrics[1].direction == "lower"


def test_location_relative_to_spec(write_spec, tmp_path: Path):
    (tmp_path / "app").mkdir()
    path = write_spec("""
        train:
            location: app
            cmd: python t.py
    """)
    assert load_specs([path]).benchmarks["train"].workdir == (tmp_path / "app").resolve()


def test_same_benchmark_in_two_files(write_spec):
    first = write_spec("train:\n  cmd: python a.py\n", "a.yml")
    second = write_spec("train:\n  cmd: python b.py\n", "b.yml")
    with pytest.raises(HarnessError, match=r"'train' is defined in both .*a\.yml and .*b\.yml"):
        load_specs([first, second])


def test_unknown_metric_direction_warns(write_spec, caplog):
    path = write_spec("""
        train:
            cmd: python t.py
            data:
                widgets:
                    regexp: "widgets (\\\\d+)"
    """)
    benchmark = load_specs([path]).benchmarks["train"]
    assert benchmark.metrics[0].direction == "higher"
    assert "metric 'widgets' has no direction" in caplog.text


BROKEN_SPECS = [
    ("train: [unclosed\n", r"invalid YAML"),
    ("train:\n  cmd: a\n  cmd: b\n", r"invalid YAML.*duplicate key 'cmd'"),
    ("- just a list\n", r"expected a mapping of benchmark names"),
    ("train: 5\n", r"entry 'train': expected a mapping"),
    ("train:\n  description: no command\n", r"entry 'train', key 'cmd': missing"),
    ("train:\n  notebook: a.ipynb\n", r"entry 'train', key 'notebook': notebook entries"),
    (
        "train:\n  cmd: python a.py\n  data:\n    throughput:\n      regexp: 'Throughput: \\S+'\n",
        r"entry 'train', key 'data.throughput.regexp': .* has 0 capture groups",
    ),
    (
        "train:\n  cmd: python a.py\n  data:\n    throughput:\n      regexp: '(a) (b)'\n",
        r"key 'data.throughput.regexp': .* has 2 capture groups",
    ),
    (
        "train:\n  cmd: python a.py\n  data:\n    throughput:\n      regexp: '(a'\n",
        r"key 'data.throughput.regexp': invalid regexp",
    ),
    (
        "train:\n  cmd: python a.py\n  data:\n    loss:\n      regexp: '(a)'\n"
        "      reduction_type: mode\n",
        r"key 'data.loss.reduction_type': unknown reduction 'mode'",
    ),
    (
        "train:\n  cmd: python a.py\n  data:\n    loss:\n      regexp: '(a)'\n      skip: -1\n",
        r"key 'data.loss.skip': -1 is not a whole number",
    ),
    (
        "train:\n  cmd: python a.py\n  data:\n    loss:\n      regexp: '(a)'\n"
        "      direction: up\n",
        r"key 'data.loss.direction': 'up' is invalid",
    ),
    (
        "train:\n  cmd: python a.py\n  data:\n    loss:\n      regexp: '(a)'\n"
        "      tolerance: -0.1\n",
        r"key 'data.loss.tolerance': -0.1 is invalid",
    ),
    (
        "train:\n  cmd: python a.py\n  data:\n    loss:\n      regexp: '(a)'\n      reduce: mean\n",
        r"key 'data.loss': unknown key\(s\) reduce",
    ),
    ("train:\n  cmd: python a.py --bs {batch_size}\n", r"key 'cmd': placeholder \{batch_size\}"),
    ("train:\n  cmd: python a.py {}\n", r"key 'cmd': placeholder \{\} has no parameter name"),
    ("train:\n  cmd: python a.py {oops\n", r"key 'cmd': .*literal braces"),
    (
        "train:\n  parameters:\n    - [a, b]\n    - [1]\n  cmd: python a.py {a} {b}\n",
        r"key 'parameters\[1\]': row \[1\] needs 2 values",
    ),
    ("train:\n  parameters:\n    - [a]\n  cmd: python a.py\n", r"key 'parameters': a list needs"),
    ("train:\n  parameters: 5\n  cmd: python a.py\n", r"key 'parameters': expected a mapping"),
    ("train:\n  parameters: {a: '1,,2'}\n  cmd: python a.py\n", r"key 'parameters.a': empty value"),
    (
        "train:\n  parameters: {a: '1,1'}\n  cmd: python a.py {a}\n",
        r"key 'parameters': variant train_a_1 appears more than once",
    ),
    (
        "train:\n  parameters: {a: '1,2'}\n  exclude: [{b: 1}]\n  cmd: python a.py\n",
        r"key 'exclude\[0\]': unknown parameter\(s\) b",
    ),
    ("train:\n  cmd: python a.py\n  exclude: {a: 1}\n", r"key 'exclude': expected a list"),
    ("train:\n  cmd: python a.py\n  timeout: -5\n", r"key 'timeout': -5 is not a positive"),
    ("train:\n  cmd: python a.py\n  repeat: 1.5\n", r"key 'repeat': 1.5 is not a positive int"),
    ("train:\n  cmd: python a.py\n  platforms: [tpu]\n", r"key 'platforms': unknown .* tpu"),
    ("train:\n  cmd: python a.py\n  env: [A]\n", r"key 'env': expected a mapping"),
    ("train:\n  cmd: python a.py\n  location: missing\n", r"key 'location': .* not a directory"),
    (
        "train:\n  cmd: python a.py\n  derived:\n    x:\n      expr: '{y} * 2'\n",
        r"key 'derived.x.expr': unknown name\(s\) y",
    ),
    (
        "train:\n  cmd: python a.py\n  derived:\n    x:\n      expr: '__import__(\"os\")'\n",
        r"key 'derived.x.expr': .*calls __import__",
    ),
    ("train:\n  cmd: python a.py\n  output: [[label]]\n", r"key 'output\[0\]': .* not a \[label"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN_SPECS)
def test_broken_spec_errors(write_spec, text: str, message: str):
    with pytest.raises(HarnessError, match=message):
        load_specs([write_spec(text)])


def test_missing_spec_file(tmp_path: Path):
    with pytest.raises(HarnessError, match=r"cannot read spec file .*nope\.yml"):
        load_specs([tmp_path / "nope.yml"])
