"""End-to-end training (train.finetune_encoder=true): the encoder learns, checkpoints carry it, resume is exact."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from captioner.checkpoint import load_checkpoint
from captioner.config import ConfigError, load_config
from captioner.data import load_split
from captioner.decoding import DecodeConfig
from captioner.encoders import Encoder, EncoderSpec, create_encoder, list_encoders, register_encoder
from captioner.evaluate import greedy_cider
from captioner.features import FeatureStore
from captioner.inference import Captioner
from captioner.model import ShowTellDecoder
from captioner.synthetic import config_overrides, make_dataset
from captioner.train import TrainingInterrupted, build_optimizer, prepare_data, train

TEST_ENCODER = "test_finetune_tiny_conv"


def _tiny_conv(pretrained: bool = True) -> Encoder:
    """A conv + BatchNorm + 2x2 pooling encoder on 32 px inputs (32-d features). Its "pretrained" weights come from a
    fixed seed, so every instance (prepare_data's, the training run's, Captioner's) starts from the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(2), nn.Flatten())
    spec = EncoderSpec(name=TEST_ENCODER, input_size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       feature_dim=32, interpolation="bilinear", weights_id="test-seed-0")
    return Encoder(net, spec)


if TEST_ENCODER not in list_encoders():  # create_encoder is called by name inside prepare_data and Captioner
    register_encoder(TEST_ENCODER)(_tiny_conv)

SMALL = ["model.embed_size=64", "model.hidden_size=128", "model.dropout=0.1", "train.batch_size=32", "train.lr=5e-3",
         "train.encoder_lr=1e-3", "train.warmup_steps=5", "vocab.max_len=10", "train.finetune_encoder=true",
         "train.num_workers=0"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_ft")
    make_dataset(root, n_train=96, n_val=24)  # 288 train captions: 9 batches of 32 an epoch
    return root


def _overrides(root: Path, *extra: str) -> list[str]:
    return config_overrides(root, encoder=TEST_ENCODER) + SMALL + list(extra)


@pytest.fixture(scope="module")
def finetuned(synth, tmp_path_factory) -> tuple[Path, list[str]]:
    overrides = _overrides(synth, "train.epochs=10", "train.select_metric=cider")
    run_dir = train(load_config(None, overrides), tmp_path_factory.mktemp("ft") / "run", show_progress=False)
    return run_dir, overrides


def _logged(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_finetuning_trains_the_encoder_and_captioner_uses_it(finetuned, synth):
    run_dir, overrides = finetuned
    rows = _logged(run_dir)
    assert len(rows) == 10
    assert float(rows[-1]["train_loss"]) < 0.75 * float(rows[0]["train_loss"])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])

    initial = create_encoder(TEST_ENCODER).state_dict()
    best, last = load_checkpoint(run_dir / "best"), load_checkpoint(run_dir / "last")
    for ckpt in (best, last):
        assert ckpt.encoder is not None and ckpt.encoder.keys() == initial.keys()
        assert not torch.equal(ckpt.encoder["backbone.0.weight"], initial["backbone.0.weight"])  # conv weights learned
        assert not torch.equal(ckpt.encoder["backbone.1.running_mean"], initial["backbone.1.running_mean"])  # BN stats
        assert int(ckpt.encoder["backbone.1.num_batches_tracked"]) > 0

    captioner = Captioner.from_checkpoint(run_dir / "best")
    loaded = captioner.encoder.state_dict()
    assert all(torch.equal(loaded[k], best.encoder[k]) for k in best.encoder)
    cfg = load_config(None, overrides)
    val_samples, _ = load_split(cfg.data, "val")
    captions = captioner.caption([s.path for s in val_samples[:4]], DecodeConfig(method="greedy"))
    assert all(c[0].text for c in captions)

    # select_metric=cider scored the fine-tuned encoder's features: recompute it from `best` (same transform, same
    # batches of features.batch_size images) and find the number logged for the best epoch.
    paths, ids = [s.path for s in val_samples], [s.image_id for s in val_samples]
    step = cfg.features.batch_size
    feats = torch.cat([captioner.encode(captioner.preprocess(paths[i:i + step])) for i in range(0, len(paths), step)])
    cider = greedy_cider(captioner.decoder, val_samples, FeatureStore(ids, feats), captioner.vocab, torch.device("cpu"))
    assert cider > 0.5  # the model learned: a real number to compare, not a tie at zero
    assert round(cider, 5) == float(rows[best.train_state["best_epoch"] - 1]["val_cider"])


def test_encoder_param_groups_use_encoder_lr_and_the_schedule_scales_all(finetuned, synth):
    run_dir, overrides = finetuned
    cfg = load_config(None, overrides)
    groups = load_checkpoint(run_dir / "last").optimizer["param_groups"]
    assert [g["initial_lr"] for g in groups] == [5e-3, 5e-3, 1e-3, 1e-3]
    assert [g["weight_decay"] for g in groups] == [cfg.train.weight_decay, 0.0, cfg.train.weight_decay, 0.0]
    factors = [g["lr"] / g["initial_lr"] for g in groups]
    assert factors[0] < 1.0 and all(f == pytest.approx(factors[0], rel=1e-12) for f in factors)
    rows = _logged(run_dir)
    assert float(rows[-1]["encoder_lr"]) == pytest.approx(float(rows[-1]["lr"]) / 5.0, rel=1e-4)

    # Which parameters: the encoder's conv weight decays, its BatchNorm and biases do not, all at encoder_lr.
    prep = prepare_data(cfg, torch.device("cpu"))
    decoder, encoder = ShowTellDecoder(prep.model_config), create_encoder(TEST_ENCODER).unfreeze()
    opt = build_optimizer(decoder, cfg.train, encoder)
    enc = {id(p) for p in encoder.parameters()}
    for g in opt.param_groups:
        in_encoder = {id(p) in enc for p in g["params"]}
        assert len(in_encoder) == 1
        assert g["lr"] == g["initial_lr"] == (1e-3 if in_encoder == {True} else 5e-3)
    enc_groups = [g for g in opt.param_groups if id(g["params"][0]) in enc]
    assert [[tuple(p.shape) for p in g["params"]] for g in enc_groups] == [[(8, 3, 3, 3)], [(8,), (8,), (8,)]]
    assert [len(g["params"]) for g in build_optimizer(decoder, cfg.train).param_groups] == \
        [len(g["params"]) for g in opt.param_groups[:2]]  # the decoder groups are the frozen path's


def test_resume_after_interrupt_gives_identical_encoder_and_decoder(synth, tmp_path):
    overrides = _overrides(synth, "train.epochs=2", "model.dropout=0.3")
    cfg = load_config(None, overrides)
    full = train(cfg, tmp_path / "full", show_progress=False)
    with pytest.raises(TrainingInterrupted):  # mid-way through the second epoch (9 batches an epoch)
        train(load_config(None, overrides), tmp_path / "cut", show_progress=False, stop_after_steps=13)
    assert load_checkpoint(tmp_path / "cut" / "last").train_state["step"] == 13
    # Resumed with image loading in 2 worker processes: the augmentation does not depend on where it runs.
    train(load_config(tmp_path / "cut" / "config.yaml", ["train.num_workers=2"]), tmp_path / "cut", resume=True,
          show_progress=False)
    a, b = load_checkpoint(full / "last"), load_checkpoint(tmp_path / "cut" / "last")
    assert a.encoder.keys() == b.encoder.keys() and a.decoder.keys() == b.decoder.keys()
    assert all(torch.equal(a.encoder[k], b.encoder[k]) for k in a.encoder)
    assert all(torch.equal(a.decoder[k], b.decoder[k]) for k in a.decoder)
    assert _logged(full) == _logged(tmp_path / "cut")


def test_resume_must_keep_the_finetune_setting_and_encoder_needs_parameters(synth, tmp_path):
    overrides = _overrides(synth, "train.epochs=1")
    with pytest.raises(TrainingInterrupted):
        train(load_config(None, overrides), tmp_path / "cut", show_progress=False, stop_after_steps=2)
    from captioner.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="finetune_encoder=true"):
        train(load_config(tmp_path / "cut" / "config.yaml", ["train.finetune_encoder=false"]), tmp_path / "cut",
              resume=True, show_progress=False)
    thumb = config_overrides(synth) + ["train.finetune_encoder=true", "train.epochs=1"]
    with pytest.raises(ConfigError, match="no parameters to fine-tune"):
        train(load_config(None, thumb), tmp_path / "thumb", show_progress=False)


def test_resumed_epoch_does_not_read_the_images_of_batches_already_done():
    from captioner.train import _Indices, _ImageSampler

    sampler = _ImageSampler(_Indices(10), num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=False, batch_size=4)
    sampler.set_epoch(2)
    keys = list(sampler)
    sampler.skip_batches = 2
    skipped = list(sampler)
    assert [k[:2] for k in skipped] == [k[:2] for k in keys]  # the same rows in the same order, epoch passed on
    assert all(e == 2 for e, _, _ in keys) and all(load for _, _, load in keys)
    assert [load for _, _, load in skipped] == [False] * 8 + [True] * 2


def test_images_unreadable_at_cache_time_are_left_out(tmp_path):
    root = tmp_path / "synth"
    make_dataset(root, n_train=24, n_val=8)
    (root / "train" / "train_00003.png").write_bytes(b"not a png")
    overrides = _overrides(root, "train.epochs=1", "train.batch_size=8", "train.num_workers=1")
    run_dir = train(load_config(None, overrides), tmp_path / "run", show_progress=False)
    assert len(_logged(run_dir)) == 1
    prep = prepare_data(load_config(None, overrides), torch.device("cpu"))
    assert len(prep.train_samples) == 23 and "train_00003" not in {s.path.stem for s in prep.train_samples}
