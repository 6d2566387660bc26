"""Typed configuration: params.yaml sections -> frozen dataclasses, validated.

The one place where configuration is defined. A section of params.yaml maps onto
`ExperimentConfig`; every stage (prepare, train, evaluate, sample) receives it from the
CLI, which is the only code that reads params.yaml from disk.

Errors name the offending field with its full path (``enwik8.model.heads``) and say
what to change.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .patterns import Pattern


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


# ---------------------------------------------------------------------- model
@dataclass(frozen=True)
class PatternConfig:
    kind: str = "strided"
    stride: int = 128
    summary: int | None = None
    integration: str = "merged"
    distinct_summaries: bool = False

    def build(self) -> Pattern:
        return Pattern(self.kind, self.stride, self.summary, self.integration, self.distinct_summaries)


ATTENTION_BACKENDS = ("auto", "triton", "flex", "reference", "sdpa")


@dataclass(frozen=True)
class ModelConfig:
    """The Sparse Transformer of SPEC section 2.

    context: sequence length n (bytes per example: 3072 for a 32x32x3 image).
    image_shape: (height, width, channels) for image data: row, column and channel
        embeddings; None for 1-D data (text, audio): (i div l, i mod l) embeddings.
    ff_mult: feed-forward width as a multiple of d_model (4, or 2 for "half-size").
    half_qk: query/key projections of width d_model / 2 (values keep d_model).
    attention: backend: "triton" (fused kernels), "flex" (FlexAttention),
        "reference" (chunked masked attention in PyTorch), "sdpa" (dense patterns only)
        or "auto" (triton on CUDA, reference elsewhere).
    recompute: recompute each residual block in the backward pass (SPEC 5.4).
    """

    context: int = 1024
    layers: int = 2
    d_model: int = 64
    heads: int = 2
    ff_mult: int = 4
    half_qk: bool = False
    dropout: float = 0.0
    image_shape: tuple[int, int, int] | None = None
    attention: str = "auto"
    recompute: bool = False
    pattern: PatternConfig = field(default_factory=PatternConfig)
    vocab_size: int = 256

    def validate(self, where: str = "model") -> None:
        def fail(name: str, msg: str) -> None:
            raise ConfigError(f"{where}.{name}: {msg}")

        for name in ("context", "layers", "d_model", "heads", "ff_mult", "vocab_size"):
            if getattr(self, name) < 1:
                fail(name, f"must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.heads:
            fail("heads", f"d_model={self.d_model} is not divisible by heads={self.heads}: pick heads dividing d_model")
        qk_width = self.d_model // 2 if self.half_qk else self.d_model
        if self.half_qk and (self.d_model % 2 or qk_width % self.heads):
            fail("half_qk", f"d_model/2={self.d_model / 2} is not divisible by heads={self.heads}: turn half_qk off or change heads")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.attention not in ATTENTION_BACKENDS:
            fail("attention", f"unknown backend {self.attention!r}: choose one of {', '.join(ATTENTION_BACKENDS)}")
        try:
            pattern = self.pattern.build()
        except ValueError as err:
            raise ConfigError(f"{where}.pattern: {err}") from None
        if self.attention == "sdpa" and pattern.kind != "dense":
            fail("attention", f"'sdpa' computes dense causal attention only, but pattern.kind is {pattern.kind!r}: use triton, flex or reference")
        if self.image_shape is not None:
            if len(self.image_shape) != 3 or min(self.image_shape) < 1:
                fail("image_shape", f"must be [height, width, channels], got {list(self.image_shape)}")
            size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
            if size != self.context:
                fail("context", f"an image of shape {list(self.image_shape)} has {size} bytes but context is {self.context}: set context to {size}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads


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
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{k}]") for k, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected a list of {len(args)} items, got {list(value)}")
        return tuple(_convert(v, a, f"{where}[{k}]") for k, (v, a) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any:
        return value
    if tp in (int, float, str, bool):
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; the fields are {', '.join(names)}")
    kwargs = {name: _convert(data[name], hints[name], f"{where}.{name}") for name in names if name in data}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field without default
        raise ConfigError(f"{where}: {err}") from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_model_config(section: dict, where: str = "model") -> ModelConfig:
    cfg = from_dict(ModelConfig, section, where)
    cfg.validate(where)
    return cfg
