"""Typed configuration: params.yaml sections -> frozen dataclasses, validated.

The one place where configuration is defined. A section of params.yaml maps onto
`ExperimentConfig`; `load_experiment` is the one reader of the file, called by the
commands (every stage: prepare, train, evaluate, sample) and by the benchmarks.

Errors name the offending field with its full path (``enwik8.model.heads``) and say
what to change.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from .errors import UserError, cut, shown
from .masks import MaskError, MaskSpec
from .patterns import Pattern, PatternError


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


# The string choices: each field's annotation says them, the loader checks them
# (`_convert`), and the tuples beside them serve the command line's --help.
AttentionBackend = Literal["auto", "reference", "flex", "sdpa", "triton"]
Dataset = Literal["enwik8", "cifar10", "imagenet64", "audio", "bytes", "images", "digits"]
#: Lightning precisions (None in the config: bf16-mixed on CUDA, 32-true elsewhere)
Precision = Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"]
#: Lightning strategies the training code supports (docs/workflow.md): one device or DDP, DDP by spawning, FSDP
Strategy = Literal["auto", "ddp", "ddp_spawn", "fsdp"]
Split = Literal["train", "valid", "test"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
DATASETS = get_args(Dataset)
COMPILE_MODES = get_args(CompileMode)


# ---------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelConfig:
    """The Sparse Transformer of the paper's section 5 (docs/architecture.md, "Model").

    context: sequence length n (bytes per example: 3072 for a 32x32x3 image).
    image_shape: (height, width, channels) for image data: row, column and channel
        embeddings; None for 1-D data (text, audio): (i div l, i mod l) embeddings.
    ff_mult: feed-forward width as a multiple of d_model (4, or 2 for "half-size").
    half_qk: query/key projections of width d_model / 2 (values keep d_model).
    attention: backend: "triton" (fused kernels), "flex" (FlexAttention),
        "reference" (chunked masked attention in PyTorch), "sdpa" (dense patterns only)
        or "auto" (triton on CUDA, reference elsewhere).
    recompute: recompute each residual block in the backward pass (the paper's section
        5.4), applied by the training side (acceleration.for_training).
    pattern: the attention pattern itself (`Pattern`, checked as it is built).
    mask: a named mask (masks.py) that attention is further restricted to: {name: NAME,
        <its parameters>}, e.g. {name: sliding_window, window: 64}. Attention then reads
        the pairs both the pattern and the mask allow (kind dense: the mask alone, kept
        causal); the stride still sets the position embedding of 1-D data. null: the
        pattern alone.
    """

    context: int = 1024
    layers: int = 2
    d_model: int = 64
    heads: int = 2
    ff_mult: int = 4
    half_qk: bool = False
    dropout: float = 0.0
    image_shape: tuple[int, int, int] | None = None
    attention: AttentionBackend = "auto"
    recompute: bool = False
    pattern: Pattern = field(default_factory=lambda: Pattern("strided", 128))
    mask: dict[str, Any] | None = None
    vocab_size: int = 256

    def validate(self, where: str = "model") -> None:
        def fail(name: str, msg: str) -> None:
            raise ConfigError(f"{where}.{name}: {msg}")

        _check_choices(self, where)
        for name in ("context", "layers", "d_model", "heads", "ff_mult", "vocab_size"):
            if getattr(self, name) < 1:
                fail(name, f"must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.heads:
            fail("heads", f"d_model={self.d_model} is not divisible by heads={self.heads}: pick heads dividing d_model")
        if self.half_qk and (self.d_model % 2 or self.qk_width % self.heads):
            fail("half_qk", f"d_model/2={self.d_model / 2} is not divisible by heads={self.heads}: turn half_qk off or change heads")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", f"must be in [0, 1), got {self.dropout}")
        pattern = self.pattern
        try:
            mask = self.mask_spec()
        except MaskError as err:
            raise ConfigError(f"{where}.mask: {err}") from None
        if not pattern.causal:
            fail("pattern.causal", "the model is autoregressive (each byte is predicted from the ones before it), "
                 "so its attention must be causal: set causal to true")
        if pattern.integration == "multihead" and pattern.factorized and self.heads < 2:
            fail("heads", "integration 'multihead' gives A1 to even heads and A2 to odd heads, so it needs heads >= 2")
        if self.attention == "sdpa" and pattern.kind != "dense":
            fail("attention", f"'sdpa' computes dense causal attention only, but pattern.kind is {pattern.kind!r}: use triton, flex or reference")
        if self.attention == "sdpa" and mask is not None:
            fail("attention", f"'sdpa' computes dense causal attention only, but mask is {mask.describe()}: use triton, flex or reference")
        if self.image_shape is not None:
            if len(self.image_shape) != 3 or min(self.image_shape) < 1:
                fail("image_shape", f"must be [height, width, channels], got {list(self.image_shape)}")
            size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
            if size != self.context:
                fail("context", f"an image of shape {list(self.image_shape)} has {size} bytes but context is {self.context}: set context to {size}")

    def mask_spec(self) -> MaskSpec | None:
        """The named mask, checked (MaskError), or None."""
        return None if self.mask is None else MaskSpec.parse(self.mask)

    def describe_attention(self) -> str:
        """The pattern, and the mask if any: "dense, l=16, mask sliding_window, window=64"."""
        mask = self.mask_spec()
        return self.pattern.describe() + ("" if mask is None else f", mask {mask.describe()}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def qk_width(self) -> int:
        """Width of the query/key projections: d_model, or d_model / 2 with half_qk."""
        return self.d_model // 2 if self.half_qk else self.d_model


# ---------------------------------------------------------------------- loading
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples and dicts to dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] + (" or null" if type(None) in args else ""))
    if origin is Literal:
        return _choice(value, tp, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{k}]") for k, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected a list of {len(args)} items, got {shown(list(value))}")
        return tuple(_convert(v, a, f"{where}[{k}]") for k, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {shown(value)}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value}")
    if tp is Any:
        return value
    if tp in (int, float, str, bool):
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {shown(value)}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")


def _choice(value: Any, tp: Any, where: str) -> str:
    """`value` if it is one of the Literal `tp`'s choices, else a ConfigError naming them."""
    choices = typing.get_args(tp)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{where}: unknown {where.rsplit('.', 1)[-1]} {shown(value)}: choose one of {', '.join(choices)}")
    return value


def _check_choices(section: Any, where: str) -> None:
    """Each field typed Literal[...] (or Literal[...] | None) holds one of its choices. The
    loader checks them as it reads (`_convert`); this is for sections built in code."""
    for name, tp in typing.get_type_hints(type(section)).items():
        value = getattr(section, name)
        options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        literal = next((option for option in options if typing.get_origin(option) is Literal), None)
        if literal is not None and not (value is None and type(None) in options):
            _choice(value, literal, f"{where}.{name}")


#: fields that moved, with where they are now: a config of the old form is refused with the move to make
MOVED_FIELDS = {(Pattern, "mask"): "mask is no longer part of the pattern since 2026-11-30: move it up one level, "
                                   "beside pattern (model.mask)"}


def from_dict(cls: type, data: Any, where: str, base: Any = None) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types. Fields
    the mapping leaves out keep their defaults, or `base`'s values when given (the
    enclosing section's default: `pattern: {kind: dense}` keeps the default stride)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    unknown = sorted(str(key) for key in set(data) - set(names))
    moved = [MOVED_FIELDS[cls, key] for key in unknown if (cls, key) in MOVED_FIELDS]
    if moved:
        raise ConfigError(f"{where}: {moved[0]}")
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {cut(', '.join(unknown))}; the fields are {', '.join(names)}")
    kwargs = {} if base is None else {name: getattr(base, name) for name in names}
    for f in fields:
        if f.name not in data:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(hints[f.name]) and dataclasses.is_dataclass(default):
            kwargs[f.name] = from_dict(hints[f.name], data[f.name], f"{where}.{f.name}", base=default)
        else:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], f"{where}.{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field without default
        raise ConfigError(f"{where}: {err}") from None
    except PatternError as err:  # a Pattern checks its own arguments as it is built
        raise ConfigError(f"{where}.{err.field}: {err.problem}") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's several-line error as one line: the problem and where it is."""
    if isinstance(err, yaml.reader.ReaderError):
        code = ord(err.character) if isinstance(err.character, str) else err.character
        return f"the character {code:#04x} at position {err.position + 1} is not allowed in YAML"
    problem = getattr(err, "problem", None) or type(err).__name__
    mark = getattr(err, "problem_mark", None)
    return cut(problem, 200) + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark else "")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a text file (byte {err.start} is not UTF-8): give the YAML configuration") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML ({yaml_problem(err)}): correct it there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def stored_model_section(section: dict) -> dict:
    """A model section as a checkpoint stored it, in this version's fields: checkpoints
    written before 2026-11-30 kept the named mask under pattern.mask (model.mask now)."""
    pattern = section.get("pattern")
    if not isinstance(pattern, dict) or "mask" not in pattern:
        return section
    pattern = dict(pattern)
    return {**section, "pattern": pattern, "mask": pattern.pop("mask")}


def load_model_config(section: dict, where: str = "model") -> ModelConfig:
    cfg = from_dict(ModelConfig, section, where)
    cfg.validate(where)
    return cfg


# ---------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is fed (`prepare` and the DataModules).

    dataset: the source, one of DATASETS (`sparse-transformer prepare DATASET`).
    input: the raw file or folder (--input); None for digits.
    hdf5: the prepared file (--output of prepare, input of training).
    download: fetch the raw archive into `input` when missing (enwik8, cifar10).
    split_fractions: train, valid, test for sources without an official split
        (bytes, images, audio, digits).
    sample_rate: audio is resampled to this rate (Hz).
    seed: the splits drawn by prepare, and the training order (windows, image shuffles).
    batch_size: examples per step on each device; eval_batch_size: for valid and test
        (None: batch_size).
    num_workers: DataLoader worker processes per device.
    context: bytes the model sees per window of a text/audio stream (windows hold
        context + 1 bytes); None: the model's context. Images always give H*W*C bytes.
    skip_undecodable: audio: skip files that fail to decode instead of stopping.
    """

    dataset: Dataset = "bytes"
    input: str | None = None
    hdf5: str = "data/prepared/data.h5"
    download: bool = False
    split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    sample_rate: int = 12_000
    seed: int = 0
    batch_size: int = 8
    eval_batch_size: int | None = None
    num_workers: int = 1
    context: int | None = None
    skip_undecodable: bool = False

    def validate(self, where: str = "data") -> None:
        def fail(name: str, msg: str) -> None:
            raise ConfigError(f"{where}.{name}: {msg}")

        _check_choices(self, where)
        if self.input is None and self.dataset != "digits":
            fail("input", f"the {self.dataset} source needs the path of its raw file or folder")
        fractions = self.split_fractions
        if min(fractions) < 0 or fractions[0] == 0 or abs(sum(fractions) - 1) > 1e-6:
            fail("split_fractions", f"give train, valid, test >= 0 with train > 0 summing to 1, got {list(fractions)}")
        for name in ("sample_rate", "batch_size"):
            if getattr(self, name) < 1:
                fail(name, f"must be a positive integer, got {getattr(self, name)}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            fail("eval_batch_size", f"must be a positive integer or null, got {self.eval_batch_size}")
        if self.num_workers < 0:
            fail("num_workers", f"must be 0 or more, got {self.num_workers}")
        if self.context is not None and self.context < 1:
            fail("context", f"must be a positive integer or null, got {self.context}")


def load_data_config(section: dict, where: str = "data") -> DataConfig:
    cfg = from_dict(DataConfig, section, where)
    cfg.validate(where)
    return cfg


# ---------------------------------------------------------------------- training, evaluation, sampling, tracking
def _positive(section: Any, where: str, *names: str, optional: bool = False) -> None:
    for name in names:
        value = getattr(section, name)
        if (value is not None or not optional) and (value is None or value < 1):
            raise ConfigError(f"{where}.{name}: must be a positive integer{' or null' if optional else ''}, got {value}")


def _device(value: str, where: str) -> None:
    """A device name torch knows ("auto", "cpu", "cuda", "cuda:1"); whether this machine
    has it is checked where it is used (evaluation.resolve_device)."""
    if value == "auto":
        return
    import torch  # here: the command line's help does not load torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{where}.device: unknown device {shown(value)}: use auto, cpu, cuda or cuda:N") from None


@dataclass(frozen=True)
class TrainConfig:
    """Optimization and the Lightning Trainer (`sparse-transformer train`).

    AdamW with `betas` and `weight_decay` on the weight matrices only (biases, LayerNorm
    and embeddings are not decayed); the learning rate rises linearly over `warmup_steps`
    optimizer steps and falls along a cosine to 0 at the last step (`max_steps`, or the
    steps of `max_epochs` when max_steps is null). Gradients are clipped to norm
    `gradient_clip`. One optimizer step uses `accumulate_grad_batches` batches per device.

    seed: the initialization and the dropout masks (which are a function of (seed,
        batch index, rank), so resumed runs repeat them); the data order has data.seed.
    precision: a Lightning precision; null: bf16-mixed on CUDA, 32-true elsewhere.
    accelerator, devices, num_nodes, strategy: passed to lightning.Trainer; strategy
        "ddp" for several GPUs or nodes, "fsdp" to shard a model that does not fit
        (one FSDP unit per residual block). Launch several nodes with torchrun or SLURM.
    checkpoint_dir: checkpoints every `checkpoint_every_steps` steps and `last.ckpt`;
        a run finding last.ckpt there resumes from it (`resume`).
    val_every_steps: validation bits per dim every so many steps (null: none during
        training) over `val_batches` batches (null: the whole split).
    log_every_steps: how often training metrics reach the logger.
    curve_file: also write the training curve there as CSV (step, train_bpd, valid_bpd;
        one row per log_every_steps, valid_bpd empty between validations) - the plot
        DVC draws; null: MLflow only.
    compile: torch.compile each residual block (acceleration.for_training): fuses
        the elementwise work around the matrix products; the first steps pay for compiling.
    compile_mode: torch.compile's mode with `compile`: "reduce-overhead" also replays
        each block as a CUDA graph, which removes the launch cost that bounds a step of
        the paper's models at batch 1-4 on a fast GPU (docs/benchmarks.md); "default"
        fuses only. CUDA graphs are skipped on the CPU.
    """

    seed: int = 0
    max_steps: int | None = 10_000
    max_epochs: int | None = None
    learning_rate: float = 3.5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 5000
    gradient_clip: float = 1.0
    accumulate_grad_batches: int = 1
    precision: Precision | None = None
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: Strategy = "auto"
    checkpoint_dir: str = "checkpoints"
    checkpoint_every_steps: int = 1000
    resume: bool = True
    val_every_steps: int | None = 1000
    val_batches: int | None = None
    log_every_steps: int = 50
    curve_file: str | None = None
    compile: bool = False
    compile_mode: CompileMode = "default"

    def validate(self, where: str = "train") -> None:
        _check_choices(self, where)
        if self.max_steps is None and self.max_epochs is None:
            raise ConfigError(f"{where}.max_steps: give max_steps or max_epochs (the length of training)")
        _positive(self, where, "max_steps", "max_epochs", "val_every_steps", "val_batches", optional=True)
        _positive(self, where, "accumulate_grad_batches", "num_nodes", "checkpoint_every_steps", "log_every_steps")
        if self.warmup_steps < 0:
            raise ConfigError(f"{where}.warmup_steps: must be 0 or more, got {self.warmup_steps}")
        if not self.learning_rate > 0:
            raise ConfigError(f"{where}.learning_rate: must be positive, got {self.learning_rate}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"{where}.betas: each must be in [0, 1), got {list(self.betas)}")
        if not (self.weight_decay >= 0 and self.gradient_clip > 0):
            raise ConfigError(f"{where}: weight_decay must be >= 0 and gradient_clip > 0, got {self.weight_decay}, {self.gradient_clip}")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ConfigError(f"{where}.devices: a number of devices or 'auto', got {shown(self.devices)}")


@dataclass(frozen=True)
class EvalConfig:
    """`sparse-transformer evaluate`: bits per dim over a whole split.

    Images are scored whole. Streams are cut into windows of the model's context that
    advance by context - min_context bytes; each window scores only its last
    context - min_context positions (the first window scores all), so every byte after
    a recording's first is scored once with at least min_context bytes before it
    (Table 3 of the paper). min_context null: half the context.
    checkpoint: null: train.checkpoint_dir/last.ckpt. metrics_file: the JSON for DVC.
    batch_size: windows or images per forward pass (null: data.eval_batch_size or data.batch_size).
    precision: null: bf16-mixed on CUDA, 32-true elsewhere. device: "auto", "cpu", "cuda", "cuda:1".
    """

    split: Split = "test"
    min_context: int | None = None
    checkpoint: str | None = None
    metrics_file: str = "metrics.json"
    batch_size: int | None = None
    precision: Precision | None = None
    device: str = "auto"

    def validate(self, where: str = "evaluate") -> None:
        _check_choices(self, where)
        _positive(self, where, "batch_size", optional=True)
        if self.min_context is not None and self.min_context < 0:
            raise ConfigError(f"{where}.min_context: must be 0 or more (or null: half the context), got {self.min_context}")
        _device(self.device, where)


@dataclass(frozen=True)
class PromptConfig:
    """Completions: continuations of given starts, drawn beside the unconditional samples.

    count: completions to draw (0: none).
    rows: images: the top rows of each test image that are given (null: the top half);
        the rest of the image is sampled, and the grid shows each completion next to its
        original.
    file: streams: a file whose start is the prompt of every completion - text (its
        bytes) or audio (decoded, resampled and mu-law encoded as the data was); null: the
        starts of the test split's recordings (audio) or evenly spaced test windows (text).
    length: text and bytes: the prompt's length in bytes. seconds: audio: in seconds.
    """

    count: int = 0
    rows: int | None = None
    file: str | None = None
    length: int = 128
    seconds: float = 1.0

    def validate(self, where: str = "sample.prompt") -> None:
        if self.count < 0:
            raise ConfigError(f"{where}.count: must be 0 (no completions) or more, got {self.count}")
        _positive(self, where, "rows", optional=True)
        _positive(self, where, "length")
        if not self.seconds > 0:
            raise ConfigError(f"{where}.seconds: must be positive, got {self.seconds}")


@dataclass(frozen=True)
class SampleConfig:
    """`sparse-transformer sample`: samples with cached decoding, and completions.

    count unconditional samples of `length` bytes (null: the model's context; images are
    always whole; a stream longer than the context is sampled with a sliding window: when
    the context is full, decoding goes on from the last half of it, read again in one
    pass), `batch_size` at a time (null: all), random draws from `seed`. Each byte is drawn
    from the softmax at `temperature`, restricted to the `top_k` most likely bytes and to
    the smallest set of them whose probability reaches `top_p` (nucleus sampling; null:
    no restriction). Streams have no start symbol: their first byte is drawn from the byte
    frequencies of the training split. `prompt`: completions (PromptConfig). `precision`
    as evaluate's (null: bf16-mixed on CUDA, 32-true elsewhere). Written to `output_dir`:
    images as one PNG grid (completions.png beside their originals), audio as WAV files at
    the data's sample rate, text as .txt files.
    """

    count: int = 16
    length: int | None = None
    batch_size: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    prompt: PromptConfig = field(default_factory=PromptConfig)
    checkpoint: str | None = None
    output_dir: str = "samples"
    precision: Precision | None = None
    device: str = "auto"

    def validate(self, where: str = "sample") -> None:
        _check_choices(self, where)
        _positive(self, where, "count")
        _positive(self, where, "length", "batch_size", "top_k", optional=True)
        if not self.temperature > 0:
            raise ConfigError(f"{where}.temperature: must be positive, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"{where}.top_p: must be in (0, 1] (or null: no nucleus), got {self.top_p}")
        self.prompt.validate(f"{where}.prompt")
        _device(self.device, where)


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. tracking_uri null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the
    working directory (artifacts in mlruns/ beside it). experiment null: the stem of
    data.hdf5 (enwik8.h5 -> "enwik8"; one experiment per dataset). run_name null: MLflow
    picks one. system_metrics: CPU/GPU/memory of the training run (rank 0).
    connect_timeout: seconds to wait for a tracking server before failing."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None
    system_metrics: bool = True
    connect_timeout: float = 5.0

    def validate(self, where: str = "tracking") -> None:
        if not self.connect_timeout > 0:
            raise ConfigError(f"{where}.connect_timeout: must be positive seconds, got {self.connect_timeout}")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment of params.yaml: every stage's settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self, where: str = "experiment") -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f"{where}.{f.name}")
        context = self.model.context
        if self.evaluate.min_context is not None and self.evaluate.min_context >= context:
            raise ConfigError(
                f"{where}.evaluate.min_context: must be below model.context={context} "
                f"(each window scores context - min_context bytes), got {self.evaluate.min_context}"
            )
        if self.data.context is not None and self.data.context > context:
            raise ConfigError(f"{where}.data.context: at most model.context={context} (the model's longest input), got {self.data.context}")

    def checkpoint(self, stage: EvalConfig | SampleConfig) -> Path:
        """The checkpoint a stage reads: its own setting, else the last one of training."""
        return Path(stage.checkpoint) if stage.checkpoint else Path(self.train.checkpoint_dir) / "last.ckpt"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"model": {"pattern": {"kind": "fixed"}}} -> {"model.pattern.kind": "fixed"}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_experiment_config(section: dict, where: str = "experiment") -> ExperimentConfig:
    cfg = from_dict(ExperimentConfig, section, where)
    cfg.validate(where)
    return cfg


def conventional_paths(name: str) -> dict[str, dict[str, str]]:
    """Where experiment `name` keeps its files unless its section says otherwise: the
    prepared data in data/prepared/NAME.h5, the run's outputs under runs/NAME/. dvc.yaml,
    paper/dvc.yaml and the Snakefile declare these paths as the stages' outputs, so
    params.yaml states a path only to depart from them (the stage then runs by hand)."""
    run = f"runs/{name}"
    return {"data": {"hdf5": f"data/prepared/{name}.h5"},
            "train": {"checkpoint_dir": f"{run}/checkpoints", "curve_file": f"{run}/curve.csv"},
            "evaluate": {"metrics_file": f"{run}/metrics.json"},
            "sample": {"output_dir": f"{run}/samples"}}


def load_experiment(path: str | Path, name: str | None = None, overrides: tuple[str, ...] = ()) -> ExperimentConfig:
    """The experiment `name` of a YAML file (the whole file when name is None), with
    overrides such as "train.max_steps=100" (values parsed as YAML) applied first. A
    named experiment's paths not given default to the convention (`conventional_paths`)."""
    data = load_yaml(path)
    where = name or Path(path).stem
    sections = [f.name for f in dataclasses.fields(ExperimentConfig)]
    if name is not None:
        if name not in data:
            raise ConfigError(f"{path} has no experiment {shown(name)}; it has {cut(', '.join(map(str, data)))}")
        data = data[name]
    elif not set(data) <= set(sections):
        experiments = [key for key, value in data.items() if isinstance(value, dict) and set(value) <= set(sections)]
        raise ConfigError(f"{path} is not one experiment (sections {', '.join(sections)}): choose one of its "
                          + (f"experiments with --experiment: {', '.join(map(str, experiments))}" if experiments
                             else "top-level entries with --experiment"))
    for override in overrides:
        keys, sep, value = override.partition("=")
        if not sep or not keys:
            raise ConfigError(f"override {shown(override)}: write SECTION.FIELD=VALUE, e.g. train.max_steps=100")
        *parents, last = keys.split(".")
        section = data
        for key in parents:
            section = section.setdefault(key, {})
            if not isinstance(section, dict):
                raise ConfigError(f"override {shown(override)}: {key} is not a section")
        try:
            section[last] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {shown(override)}: the value is not valid YAML ({yaml_problem(err)}); "
                              "quote it on the command line, e.g. --set 'train.betas=[0.9, 0.95]'") from None
    if name is not None and isinstance(data, dict):
        for section, paths in conventional_paths(name).items():
            fields = data.setdefault(section, {})
            if fields is None:
                fields = data[section] = {}
            if isinstance(fields, dict):  # anything else: from_dict names the problem
                for field_name, path in paths.items():
                    fields.setdefault(field_name, path)
    return load_experiment_config(data, where)
