"""The model part of the configuration: typed loading and messages that name field and fix."""

from __future__ import annotations

import pytest
import yaml

from sparse_transformer.config import ConfigError, ModelConfig, load_model_config, load_yaml, stored_model_section
from sparse_transformer.patterns import Pattern

VALID = """
context: 3072
layers: 4
d_model: 64
heads: 2
ff_mult: 2
half_qk: true
dropout: 0.25
image_shape: [32, 32, 3]
attention: reference
recompute: true
pattern: {kind: strided, stride: 32, integration: multihead}
"""


def load(text: str, **changes) -> ModelConfig:
    section = yaml.safe_load(text)
    for key, value in changes.items():
        if value is ...:
            section.pop(key)
        else:
            section[key] = value
    return load_model_config(section, where="cifar10.model")


def test_a_valid_section_loads_into_typed_dataclasses():
    cfg = load(VALID)
    assert cfg.image_shape == (32, 32, 3)  # a YAML list becomes the annotated tuple
    assert cfg.pattern == Pattern("strided", 32, None, "multihead", False)  # the Pattern itself
    assert cfg.dropout == 0.25 and cfg.half_qk is True and cfg.head_dim == 32


def test_defaults_fill_missing_fields():
    cfg = load_model_config({"pattern": {"kind": "fixed", "stride": 16, "summary": 4}})
    assert cfg.layers == ModelConfig().layers and cfg.pattern.integration == "merged"
    # a pattern given in part keeps the default pattern's other fields (stride 128)
    assert load_model_config({"pattern": {"kind": "dense"}}).pattern == Pattern("dense", ModelConfig().pattern.stride)


def test_a_named_mask_loads_with_its_parameters_and_is_off_by_default():
    assert load(VALID).mask is None and load(VALID).mask_spec() is None
    mask = {"name": "sliding_window_global", "window": 256, "globals": 64}
    cfg = load(VALID, pattern={"kind": "dense", "stride": 32}, mask=mask)
    assert cfg.mask == mask
    assert cfg.mask_spec().describe() == "sliding_window_global, window=256, globals=64"
    assert cfg.describe_attention() == "dense, l=32, mask sliding_window_global, window=256, globals=64"


def test_a_checkpoints_model_section_from_before_model_mask_reads_as_today():
    """Checkpoints written before 2026-11-30 stored the named mask as pattern.mask."""
    mask = {"name": "sliding_window", "window": 8}
    old = {"context": 16, "pattern": {"kind": "dense", "stride": 4, "mask": mask}}
    assert stored_model_section(old) == {"context": 16, "pattern": {"kind": "dense", "stride": 4}, "mask": mask}
    assert old["pattern"]["mask"] == mask  # the stored section itself is left as it was
    assert load_model_config(stored_model_section(old)) == ModelConfig(context=16, pattern=Pattern("dense", 4), mask=mask)
    today = {"context": 16, "pattern": {"kind": "dense", "stride": 4}, "mask": None}
    assert stored_model_section(today) is today


def test_integer_dropout_is_accepted_as_float():
    assert load(VALID, dropout=0).dropout == 0.0


@pytest.mark.parametrize(
    ("changes", "field", "fix"),
    [
        (dict(heads=3), "cifar10.model.heads", "pick heads dividing d_model"),
        (dict(heads=4, d_model=68), "cifar10.model.half_qk", "turn half_qk off or change heads"),
        (dict(pattern={"kind": "fixed", "stride": 8, "summary": 8}), "cifar10.model.pattern.summary", "lower summary or raise stride"),
        (dict(pattern={"kind": "fixed", "stride": 8}), "cifar10.model.pattern.summary", "summary=32 with stride=128"),
        (dict(pattern={"kind": "sparse", "stride": 8}), "cifar10.model.pattern.kind", "choose one of dense, local, strided, fixed"),
        (dict(pattern={"kind": "strided", "stride": 8, "colour": 1}), "cifar10.model.pattern", "the fields are kind, stride"),
        (dict(attention="cuda"), "cifar10.model.attention", "choose one of auto, reference, flex, sdpa, triton"),
        (dict(attention=7), "cifar10.model.attention", "unknown attention 7: choose one of auto"),
        (dict(pattern={"kind": "strided", "stride": 8, "integration": "mixed"}), "cifar10.model.pattern.integration",
         "unknown integration 'mixed': choose one of merged, interleaved, multihead"),
        (dict(attention="sdpa"), "cifar10.model.attention", "use triton, flex or reference"),
        (dict(context=3000), "cifar10.model.context", "set context to 3072"),
        (dict(image_shape=[32, 32]), "cifar10.model.image_shape", "expected a list of 3 items"),
        (dict(layers="4"), "cifar10.model.layers", "expected int"),
        (dict(half_qk=1), "cifar10.model.half_qk", "expected bool"),
        (dict(layers=0), "cifar10.model.layers", "must be a positive integer"),
        (dict(dropout=1.0), "cifar10.model.dropout", "must be in [0, 1)"),
        (dict(width=64), "cifar10.model", "unknown field(s) width"),
        (dict(heads=1, d_model=64, half_qk=False), "cifar10.model.heads", "needs heads >= 2"),
        (dict(pattern={"kind": "strided", "stride": 8, "causal": False}), "cifar10.model.pattern.causal", "set causal to true"),
        (dict(pattern={"kind": "dense", "stride": 8}, mask={"name": "dilated"}), "cifar10.model.mask",
         "unknown name 'dilated': choose one of sliding_window, sliding_window_global"),
        (dict(pattern={"kind": "dense", "stride": 8}, mask={"name": "sliding_window", "window": -1}),
         "cifar10.model.mask", "window must be a positive integer, got -1"),
        (dict(pattern={"kind": "dense", "stride": 8}, mask="sliding_window"), "cifar10.model.mask",
         "expected a mapping"),
        (dict(pattern={"kind": "dense", "stride": 8, "mask": {"name": "sliding_window", "window": 4}}),
         "cifar10.model.pattern", "move it up one level, beside pattern (model.mask)"),
        (dict(attention="sdpa", pattern={"kind": "dense", "stride": 8}, mask={"name": "sliding_window", "window": 4}),
         "cifar10.model.attention", "but mask is sliding_window, window=4: use triton, flex or reference"),
    ],
)
def test_errors_name_the_field_and_the_fix(changes, field, fix):
    with pytest.raises(ConfigError) as info:
        load(VALID, **changes)
    message = str(info.value)
    assert message.startswith(field + ":") or message.startswith(field + " "), message
    assert fix in message


def test_load_yaml_reads_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("cifar10:\n  model:\n" + "".join(f"    {line}\n" for line in VALID.strip().splitlines()))
    assert load_model_config(load_yaml(path)["cifar10"]["model"]) == load(VALID)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------- the params file and --set: one line each
@pytest.fixture
def train_main(monkeypatch):
    """The CLI with only `train` (whose run stops at the configuration here)."""
    from sparse_transformer import cli

    monkeypatch.setattr(cli, "COMMANDS", {"train": cli.COMMANDS["train"]})
    return cli.main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("sparse-transformer train: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("content", "problem"), [
    ("train:\n\tmax_steps: 2\n", "found character '\\t' that cannot start any token at line 2, column 1"),
    ("train: {max_steps: [1,\n", "is not valid YAML (expected the node content"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not a text file (byte 0 is not UTF-8)"),
    ("train: {max_steps: 2}\x00\n", "the character 0x00 at position 22 is not allowed in YAML"),
    ("train: !!python/object/apply:os.system [echo hi]\n",
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
])
def test_a_broken_params_file_is_one_line(tmp_path, train_main, capsys, content, problem):
    params = tmp_path / "params.yaml"
    (params.write_bytes if isinstance(content, bytes) else params.write_text)(content)
    assert train_main(["train", "--config", str(params)]) == 2
    assert problem in one_line_error(capsys)


@pytest.mark.parametrize(("override", "problem"), [
    ("train.max_steps=[1,", "override 'train.max_steps=[1,': the value is not valid YAML (expected the node content"),
    ("train.learning_rate=.nan", "train.learning_rate: expected a finite number, got nan"),
    ("train.gradient_clip=.inf", "train.gradient_clip: expected a finite number, got inf"),
    ("model.layers=[" + ",".join(["7"] * 20_000) + "]", "model.layers: expected int, got [7, 7, 7"),
])
def test_a_bad_override_is_one_short_line(tmp_path, train_main, capsys, override, problem):
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    assert train_main(["train", "--config", str(params), "--set", override]) == 2
    err = one_line_error(capsys)
    assert problem in err and len(err) < 400  # the long list is cut


def test_validation_refuses_nan_in_dataclasses_built_in_code():
    from sparse_transformer.config import TrainConfig

    with pytest.raises(ConfigError, match="train.learning_rate: must be positive, got nan"):
        TrainConfig(learning_rate=float("nan")).validate()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu:0"], ids=["named-gpu", "cuda-x", "tpu"])
def test_unknown_device_names_are_refused(device):
    from sparse_transformer.config import EvalConfig, SampleConfig

    for section, where in ((EvalConfig(device=device), "evaluate"), (SampleConfig(device=device), "sample")):
        with pytest.raises(ConfigError, match=f"{where}.device: unknown device '{device}': use auto, cpu, cuda or cuda:N"):
            section.validate(where)


def test_unknown_precisions_are_refused_for_evaluation_and_sampling():
    from sparse_transformer.config import EvalConfig, SampleConfig

    for section, where in ((EvalConfig(precision="bf16"), "evaluate"), (SampleConfig(precision="bf16"), "sample")):
        with pytest.raises(ConfigError, match=f"{where}.precision: unknown precision 'bf16': choose one of 32-true"):
            section.validate(where)


def test_the_string_choices_are_the_annotations_and_the_loader_checks_them():
    """Config types say the choices (Literal[...]); the loader refuses anything else
    naming them, for sections read from params.yaml and for those built in code."""
    import typing

    from sparse_transformer import attention
    from sparse_transformer.config import AttentionBackend, TrainConfig, load_experiment_config

    assert attention.BACKENDS == typing.get_args(AttentionBackend)
    with pytest.raises(ConfigError, match="x.train.strategy: unknown strategy 'deepspeed': choose one of auto, ddp, "
                                          "ddp_spawn, fsdp"):
        load_experiment_config({"data": {"input": "x"}, "train": {"strategy": "deepspeed"}}, "x")
    with pytest.raises(ConfigError, match="train.strategy: unknown strategy 'horovod'"):
        TrainConfig(strategy="horovod").validate()
    assert load_experiment_config({"data": {"input": "x"}, "train": {"strategy": "fsdp", "precision": None}},
                                  "x").train.strategy == "fsdp"


def test_a_named_experiment_takes_its_paths_from_its_name_unless_it_states_them(tmp_path):
    """params.yaml states no paths: the loader fills them in by the convention the
    workflow files declare; a path in the section or a --set override departs from it,
    and a file of one unnamed experiment keeps the dataclasses' own defaults."""
    from sparse_transformer.config import load_experiment

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"mine": {"data": {"input": "x.txt"}},
                                      "other": {"data": {"input": "x.txt", "hdf5": "elsewhere.h5"}, "evaluate": None}}))
    cfg = load_experiment(params, "mine")
    assert (cfg.data.hdf5, cfg.train.checkpoint_dir, cfg.train.curve_file, cfg.evaluate.metrics_file,
            cfg.sample.output_dir) == ("data/prepared/mine.h5", "runs/mine/checkpoints", "runs/mine/curve.csv",
                                       "runs/mine/metrics.json", "runs/mine/samples")
    other = load_experiment(params, "other", ("train.curve_file=null",))
    assert other.data.hdf5 == "elsewhere.h5" and other.train.curve_file is None
    assert other.evaluate.metrics_file == "runs/other/metrics.json"
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump({"data": {"input": "x.txt"}}))
    assert load_experiment(single).train.checkpoint_dir == "checkpoints"
