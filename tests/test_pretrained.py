"""The bundled model: shipped in the package, small, loaded by `captioner.load_pretrained()`, and it captions the
shipped example photos (COCO val photos the model was not trained on) with captions that name what they show."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import captioner
from captioner.checkpoint import load_checkpoint
from captioner.decoding import DecodeConfig
from captioner.inference import PRETRAINED_DIR

MODEL = PRETRAINED_DIR / "model.safetensors"
EXAMPLES = Path(captioner.__file__).parent / "assets" / "examples"
# file -> words of which a caption must contain one (what the photo shows; held-out images)
EXPECTED = {
    "airliner_208901.jpg": {"airplane", "plane", "jet", "airliner"},
    "bus_176037.jpg": {"bus"},
    "clock_551780.jpg": {"clock", "tower"},
    "elephant_158945.jpg": {"elephant", "elephants"},
    "pizza_174123.jpg": {"pizza"},
    "steam_locomotive_186624.jpg": {"train", "locomotive"},
}


@pytest.fixture(scope="module")
def model():
    return captioner.load_pretrained()


def test_bundled_model_is_small_and_complete():
    assert MODEL.is_file() and MODEL.stat().st_size <= 25 * 2**20
    ck = load_checkpoint(MODEL)
    assert ck.model_config.encoder == "efficientnet_lite0"  # the offline default: no download needed
    assert ck.optimizer is None and not ck.rng  # shipped slim: weights, config, vocabulary, history
    assert len(ck.vocab) == ck.model_config.vocab_size > 1000
    assert ck.experiment["data"]["train"] and ck.train_state["history"]  # how it was trained travels with it


def test_bundled_model_names_what_the_example_photos_show(model):
    paths = [EXAMPLES / f for f in EXPECTED]
    captions = model.caption(paths, DecodeConfig(method="beam", beam_size=3))
    hits = {}
    for path, caps in zip(paths, captions):
        words = set(caps[0].text.split())
        print(f"{path.name}: {caps[0].text}")
        assert 4 <= len(words) and caps[0].text == caps[0].text.strip()
        hits[path.name] = bool(words & EXPECTED[path.name])
    assert sum(hits.values()) >= 5, hits


def test_caption_command_uses_the_bundled_model():
    out = subprocess.run([sys.executable, "-m", "captioner", "caption", str(EXAMPLES / "elephant_158945.jpg")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "elephant" in out.stdout.lower()
