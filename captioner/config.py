"""Experiment configuration: YAML files mapped onto one dataclass per concern.

Why dataclasses and not a free-form dict: an unknown key or a wrong type is a typo
in somebody's experiment, and it must stop the run with a message naming the key
instead of silently training the default.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


@dataclass
class SourceConfig:
    """One caption file plus the folder its images live in."""

    format: str = "coco"  # coco | karpathy | flickr8k
    annotations: str = ""  # COCO caption JSON, Karpathy dataset_*.json or Flickr8k captions.txt
    images: str = ""  # image folder (Karpathy: the root that `filepath/filename` is relative to)
    split: str = ""  # karpathy: train|val|test; flickr8k: train|val|test (by `holdout`)
    include_restval: bool = False  # karpathy: merge `restval` into this split
    holdout: int = 0  # flickr8k: images (last by file name) kept out of train for val and for test each

    def __post_init__(self) -> None:
        if self.format not in ("coco", "karpathy", "flickr8k"):
            raise ConfigError(f"data source format must be coco, karpathy or flickr8k, got {self.format!r}")


@dataclass
class DataConfig:
    root: str = "."  # relative annotation/image paths are resolved against this
    train: list[SourceConfig] = field(default_factory=list)
    val: list[SourceConfig] = field(default_factory=list)
    test: list[SourceConfig] = field(default_factory=list)
    strict: bool = False  # fail on unreadable/missing images instead of skipping and counting them


@dataclass
class VocabConfig:
    min_count: int = 5
    max_len: int = 16  # words per caption; longer training captions are truncated


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network. Stored in every checkpoint."""

    encoder: str = "efficientnet_lite0"
    feature_dim: int = 0  # filled from the encoder's spec
    vocab_size: int = 0  # filled from the vocabulary
    embed_size: int = 512
    hidden_size: int = 512
    num_layers: int = 1
    dropout: float = 0.5
    feature_dropout: float = 0.0  # dropout on the image feature before the projection
    tie_weights: bool = False
    max_len: int = 20  # default decoding length


@dataclass
class FeatureConfig:
    cache_dir: str = "~/.cache/captioner/features"
    batch_size: int = 64
    num_workers: int = 2


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 4e-4
    encoder_lr: float = 1e-5  # used only with finetune_encoder
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | step | constant
    warmup_steps: int = 200
    step_size: int = 5  # epochs between decays for the step schedule
    gamma: float = 0.5
    min_lr_ratio: float = 0.05  # cosine floor as a fraction of lr
    grad_clip: float = 2.0
    label_smoothing: float = 0.0
    early_stop_patience: int = 0  # epochs without improvement; 0 = off
    select_metric: str = "loss"  # loss | cider: which validation figure picks `best`
    cider_every: int = 1  # epochs between CIDEr validations when select_metric = cider
    finetune_encoder: bool = False  # train end to end from images (slow on CPU)
    num_workers: int = 2  # image loading workers when training from images
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    scheduled_sampling: float = 0.0  # max probability of feeding the model's own prediction
    scheduled_sampling_ramp: int = 5  # epochs to ramp it up linearly (0 = constant)
    log_every: int = 50
    tensorboard: bool = True  # when tensorboard is installed

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"train.schedule must be cosine, step or constant, got {self.schedule!r}")
        if self.select_metric not in ("loss", "cider"):
            raise ConfigError(f"train.select_metric must be loss or cider, got {self.select_metric!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"train.amp must be auto, off, bf16 or fp16, got {self.amp!r}")


@dataclass
class ScstConfig:
    """Self-critical fine-tuning (`captioner scst`, Rennie et al. 2017) of a cross-entropy checkpoint."""

    init: str = ""  # XE checkpoint to start from (run/best); `captioner scst --init` sets it
    epochs: int = 10
    batch_size: int = 50  # images per step; each contributes `samples` sampled captions
    samples: int = 5  # captions sampled per image (on-policy, at `temperature`)
    # mean: mean reward of the image's other samples; greedy: the model's greedy caption (Rennie et al.). On the COCO
    # subset the greedy baseline with T = 1 samples made the model stop ending captions (docs/research.md)
    baseline: str = "mean"
    temperature: float = 0.5  # policy = the model at this temperature (greedy decoding is the same at any T)
    sample_dropout: bool = False  # draw samples with dropout on (train mode, as ruotianluo's code; T = 1 only)
    lr: float = 5e-5
    weight_decay: float = 0.0
    grad_clip: float = 2.0
    max_len: int = 16  # words per sampled, greedy and validation caption
    select: str = "greedy"  # greedy | beam: validation CIDEr-D that picks `best`
    beam_size: int = 3  # for select = beam (and the beam column of the log)
    val_beam: bool = True  # also log beam CIDEr-D every epoch (costs a beam search over val)

    def __post_init__(self) -> None:
        if self.baseline not in ("greedy", "mean"):
            raise ConfigError(f"scst.baseline must be greedy or mean, got {self.baseline!r}")
        if self.select not in ("greedy", "beam"):
            raise ConfigError(f"scst.select must be greedy or beam, got {self.select!r}")
        if self.baseline == "mean" and self.samples < 2:
            raise ConfigError(f"scst.baseline=mean needs scst.samples >= 2, got {self.samples}")
        for name in ("epochs", "batch_size", "samples", "max_len", "beam_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"scst.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"scst.lr must be > 0, got {self.lr}")
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"scst.temperature must be in (0, 10], got {self.temperature}")
        if self.temperature != 1.0 and self.sample_dropout:
            raise ConfigError("scst.sample_dropout=true needs scst.temperature=1.0: other temperatures re-score the "
                              "draws in a second pass, where dropout would draw other masks")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)


# --------------------------------------------------------------------------- building from dicts


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string; accept what any Python user means by it
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got a boolean {value!r}")
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {full!r} (known: {', '.join(sorted(names))})")
        kwargs[key] = _check_type(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix + ': ' if prefix else ''}{err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {err}") from None
        node: Any = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):  # data.train.0.holdout=100
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {key}: {part!r} is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {key}: {parts[i - 1]!r} is not a section")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file (or the defaults) and apply CLI overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    apply_overrides(data, overrides or [])
    return from_dict(ExperimentConfig, data)


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def config_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)
