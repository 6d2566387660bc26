"""What README.md shows runs as written, and its figures are those of the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from sparse_transformer.config import load_experiment, load_model_config
from sparse_transformer.model import SparseTransformer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(heading: str) -> str:
    """The text of README's `## heading` section."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README.md has no section {heading!r}"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def test_ci_runs_the_readmes_two_commands():
    (setup,) = code_blocks(section("Set up"), "bash")
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("python -m ")]
    assert ci == setup.splitlines() and len(ci) == 2


def attention_examples(on_gpu: bool) -> list[str]:
    """The section's Python blocks that run on a GPU (they put tensors on cuda), or the others."""
    return [code for code in code_blocks(section("Using the attention directly"), "python") if ('"cuda"' in code) == on_gpu]


def test_the_cpu_attention_example_runs():
    cpu, _ = attention_examples(on_gpu=False)
    namespace: dict = {}
    exec(cpu, namespace)
    assert namespace["out"].shape == namespace["q"].shape and namespace["q"].grad is not None


def test_the_layout_example_runs():
    _, layouts = attention_examples(on_gpu=False)
    namespace: dict = {}
    exec(layouts, namespace)
    assert namespace["out"].shape == namespace["q"].shape
    assert namespace["k"].shape[1] < namespace["q"].shape[1]  # it shows grouped-query attention
    assert namespace["block_mask"].seq_lengths == (namespace["n"],) * 2


@pytest.mark.gpu
def test_the_gpu_attention_example_runs():
    (gpu,) = attention_examples(on_gpu=True)
    namespace: dict = {}
    exec(gpu, namespace)
    assert namespace["out"].shape == namespace["q"].shape


@pytest.mark.parametrize("model, experiment", [("CIFAR-10", "cifar10"), ("Enwik8", "enwik8"), ("ImageNet 64x64", "imagenet64")])
def test_parameter_counts_are_those_of_params_yaml(model, experiment):
    row = re.search(rf"^\| {re.escape(model)} \|.*\| ([\d,]+) \| \d+M \|$", section("The paper's models"), re.M)
    assert row, f"no row for {model}"
    with torch.device("meta"):  # counted without allocating the weights
        built = SparseTransformer(load_experiment(ROOT / "params.yaml", experiment).model)
    assert row.group(1) == f"{built.num_params():,}"


def test_the_named_mask_example_and_its_override_load():
    quickstart = section("Quickstart (CPU, offline, minutes)")
    (snippet,) = code_blocks(quickstart, "yaml")
    model = load_model_config(yaml.safe_load(snippet)["model"])
    assert model.mask_spec().describe() == "sliding_window_global, window=64, globals=8"
    (line,) = re.findall(r"or, for one run, `(--set .*?)`", quickstart)
    overrides = shlex.split(line)[1::2]
    cfg = load_experiment(ROOT / "params.yaml", "quickstart-text", tuple(overrides))
    assert cfg.model.pattern.kind == "dense" and cfg.model.mask_spec().describe() == "sliding_window, window=64"
