"""End-to-end: the real CLI and training loop learn a synthetic captioning task, and resume exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captioner import cli
from captioner.checkpoint import load_checkpoint
from captioner.config import load_config
from captioner.decoding import DecodeConfig
from captioner.inference import Captioner
from captioner.metrics import score_captions
from captioner.model import ShowTellDecoder
from captioner.synthetic import config_overrides, make_dataset
from captioner.train import TrainingInterrupted, train

SMALL = ["model.embed_size=64", "model.hidden_size=128", "model.dropout=0.1", "train.batch_size=32", "train.lr=3e-3",
         "train.warmup_steps=20", "train.label_smoothing=0.0", "vocab.max_len=10"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, n_train=400, n_val=80)
    return root


def _refs_and_preds(captioner: Captioner, root: Path, cfg_overrides: list[str]):
    from captioner.data import load_split

    cfg = load_config(None, cfg_overrides)
    samples, _ = load_split(cfg.data, "val")
    preds = captioner.caption([s.path for s in samples], DecodeConfig(method="greedy"))
    gts = {s.image_id: s.captions for s in samples}
    res = {s.image_id: p[0].text for s, p in zip(samples, preds)}
    return gts, res


def _exact(gts, res):
    from captioner.text import tokenize

    return sum(tokenize(res[k]) in [tokenize(r) for r in gts[k]] for k in gts) / len(gts)


def test_training_learns_held_out_captions(synth, tmp_path):
    overrides = config_overrides(synth) + SMALL + ["train.epochs=12", f"output_dir={tmp_path}", "name=synth"]
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--config", str(_write_cfg(tmp_path)), "--run-dir", str(run_dir), *overrides]) == 0
    for f in ("config.yaml", "vocab.json", "metrics.csv", "loss.png", "best.safetensors", "last.safetensors"):
        assert (run_dir / f).is_file(), f
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(lines) == 13
    first_val, last_val = float(lines[1].split(",")[3]), float(lines[-1].split(",")[3])
    assert last_val < 0.5 * first_val

    trained = Captioner.from_checkpoint(run_dir / "best")
    gts, res = _refs_and_preds(trained, synth, overrides)
    report = score_captions(gts, res, use_meteor=False)
    exact = _exact(gts, res)

    # The same architecture, untrained: what "not learned" scores on this set.
    ck = load_checkpoint(run_dir / "best")
    torch.manual_seed(0)
    untrained = Captioner(trained.encoder, ShowTellDecoder(ck.model_config), ck.vocab, ck.model_config)
    gts0, res0 = _refs_and_preds(untrained, synth, overrides)
    base = score_captions(gts0, res0, use_meteor=False)
    print(f"held-out BLEU-4 {report.corpus['BLEU-4']:.3f} exact {exact:.3f}; untrained BLEU-4 "
          f"{base.corpus['BLEU-4']:.3f} exact {_exact(gts0, res0):.3f}")
    assert report.corpus["BLEU-4"] >= 0.8
    assert exact >= 0.5  # an untrained model gets none (asserted below); shapes in 8x8 thumbnails cap it near 0.7
    assert base.corpus["BLEU-4"] < 0.2 and _exact(gts0, res0) < 0.05


def _write_cfg(tmp_path: Path) -> Path:
    p = tmp_path / "synth.yaml"
    p.write_text("name: synth\n")
    return p


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run_dir / "last.safetensors")).items() if k.startswith("decoder.")}


@pytest.mark.parametrize("stop_at", [7, 26])  # mid-epoch and exactly on an epoch boundary (13 batches an epoch)
def test_resume_after_interrupt_gives_identical_weights(synth, tmp_path, stop_at):
    overrides = config_overrides(synth) + SMALL + ["train.epochs=3", "train.batch_size=32", "model.dropout=0.3"]
    cfg = load_config(None, overrides)
    full = train(cfg, tmp_path / "full", show_progress=False)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "cut", show_progress=False, stop_after_steps=stop_at)
    assert load_checkpoint(tmp_path / "cut" / "last").train_state["step"] == stop_at
    train(load_config(tmp_path / "cut" / "config.yaml"), tmp_path / "cut", resume=True, show_progress=False)
    a, b = _final_weights(full), _final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _logged(tmp_path / "full") == _logged(tmp_path / "cut")  # same losses logged, wall time aside


def _logged(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
