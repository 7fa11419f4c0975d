"""Scheduled sampling (Bengio et al. 2015): the schedule, the step-wise forward, and its use by the training loop."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from captioner.config import ModelConfig, TrainConfig, load_config
from captioner.model import ShowTellDecoder, caption_loss
from captioner.synthetic import config_overrides, make_dataset
from captioner.train import scheduled_sampling_prob, train

torch.set_num_threads(1)


def _decoder(vocab: int = 300, seed: int = 0) -> ShowTellDecoder:
    torch.manual_seed(seed)
    return ShowTellDecoder(ModelConfig(feature_dim=24, vocab_size=vocab, embed_size=32, hidden_size=48, dropout=0.3)).eval()


def _batch(n: int = 12, vocab: int = 300, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 11, (n,), generator=g)
    lengths[0] = 10  # collate trims the batch to its longest caption
    caps = torch.zeros(n, 10, dtype=torch.long)
    for i, n_tok in enumerate(lengths.tolist()):
        caps[i, 0], caps[i, n_tok - 1] = 1, 2
        caps[i, 1 : n_tok - 1] = torch.randint(4, vocab, (n_tok - 2,), generator=g)
    return torch.randn(n, 24, generator=g), caps, lengths


# ------------------------------------------------------------------------------------------------ the schedule


def test_schedule_is_off_by_default_and_ramps_linearly_per_epoch():
    assert TrainConfig().scheduled_sampling == 0.0
    assert [scheduled_sampling_prob(e, TrainConfig()) for e in range(4)] == [0.0] * 4
    cfg = TrainConfig(scheduled_sampling=0.25, scheduled_sampling_ramp=5)
    probs = [scheduled_sampling_prob(e, cfg) for e in range(8)]
    assert probs == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.25, 0.25])
    constant = TrainConfig(scheduled_sampling=0.3, scheduled_sampling_ramp=0)
    assert [scheduled_sampling_prob(e, constant) for e in range(3)] == [0.3] * 3


# ------------------------------------------------------------------------------------------------ the model


def test_probability_zero_is_the_packed_teacher_forcing_path(monkeypatch):
    dec = _decoder()
    feats, caps, lengths = _batch()
    reference = dec(feats, caps, lengths)

    def must_not_run(*a, **k):
        raise AssertionError("scheduled sampling path used with probability 0")

    monkeypatch.setattr(dec, "forward_scheduled", must_not_run)
    logits, targets = dec(feats, caps, lengths, sample_prob=0.0)
    assert torch.equal(logits, reference[0]) and torch.equal(targets, reference[1])


def test_stepwise_forward_at_probability_zero_matches_teacher_forcing():
    dec = _decoder()
    feats, caps, lengths = _batch()
    tf_logits, tf_targets = dec(feats, caps, lengths)
    logits, targets = dec.forward_scheduled(feats, caps, lengths, 0.0)
    assert logits.shape == tf_logits.shape == (int((lengths - 1).sum()), 300)
    assert torch.equal(targets, tf_targets)
    torch.testing.assert_close(logits, tf_logits, atol=1e-5, rtol=1e-5)


def test_probability_one_feeds_only_the_models_own_words():
    """At p = 1 only <start> comes from the caption: other ground-truth words cannot change the outputs."""
    dec = _decoder()
    feats, caps, lengths = _batch()
    other = caps.clone()
    inner = (other >= 4)
    other[inner] = 4 + (other[inner] - 4 + 17) % (300 - 4)  # different words, same lengths
    torch.manual_seed(5)
    a, ta = dec(feats, caps, lengths, sample_prob=1.0)
    torch.manual_seed(5)
    b, tb = dec(feats, other, lengths, sample_prob=1.0)
    torch.testing.assert_close(a, b)
    assert not torch.equal(ta, tb)  # the targets are still the ground truth
    tf, _ = dec(feats, caps, lengths)
    first = torch.zeros_like(caps[:, 1:], dtype=torch.bool)
    first[:, 0] = True  # the first output follows <start> + image only, identical to teacher forcing
    mask = torch.arange(caps.shape[1] - 1)[None, :] < (lengths - 1)[:, None]
    sel = first[mask]
    torch.testing.assert_close(a[sel], tf[sel], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[~sel], tf[~sel], atol=1e-3)


def test_fraction_of_replaced_inputs_follows_the_probability():
    """The output after input 1 equals teacher forcing exactly when input 1 was the ground-truth word."""
    vocab, n, p = 2000, 600, 0.25
    dec = _decoder(vocab)
    feats, caps, lengths = _batch(n, vocab, seed=3)
    tf_logits, _ = dec(feats, caps, lengths)
    torch.manual_seed(0)
    ss_logits, _ = dec(feats, caps, lengths, sample_prob=p)
    # position 1 of every caption (all have >= 1 word): its row in the flat outputs
    mask = torch.arange(caps.shape[1] - 1)[None, :] < (lengths - 1)[:, None]
    flat_index = mask.flatten().cumsum(0).view_as(mask) - 1
    rows = flat_index[:, 1]
    kept = (ss_logits[rows] - tf_logits[rows]).abs().amax(dim=1) < 1e-5
    assert abs(kept.float().mean().item() - (1 - p)) < 0.07, kept.float().mean().item()


def test_scheduled_forward_trains_and_rejects_bad_probabilities():
    dec = _decoder().train()
    feats, caps, lengths = _batch()
    logits, targets = dec(feats, caps, lengths, sample_prob=0.5)
    loss = caption_loss(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and dec.embed.weight.grad is not None and dec.image_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sample_prob"):
        dec(feats, caps, lengths, sample_prob=1.5)


# ------------------------------------------------------------------------------------------------ the training loop


def test_training_loop_uses_the_schedule(tmp_path: Path, monkeypatch):
    root = tmp_path / "synth"
    make_dataset(root, n_train=60, n_val=16)
    calls: list[float] = []
    original = ShowTellDecoder.forward_scheduled

    def spy(self, features, captions, lengths, sample_prob):
        calls.append(sample_prob)
        return original(self, features, captions, lengths, sample_prob)

    monkeypatch.setattr(ShowTellDecoder, "forward_scheduled", spy)
    cfg = load_config(None, config_overrides(root) + [
        "model.embed_size=32", "model.hidden_size=32", "train.batch_size=32", "train.epochs=3", "train.warmup_steps=0",
        "train.scheduled_sampling=0.4", "train.scheduled_sampling_ramp=2"])
    run_dir = train(cfg, tmp_path / "run", show_progress=False)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["ss_prob"]) for r in rows] == pytest.approx([0.0, 0.2, 0.4])
    assert all(float(r["train_loss"]) > 0 for r in rows)
    steps_per_epoch = int(rows[0]["step"])  # epoch 1 (p = 0) took the packed path: no step-wise calls
    assert calls == pytest.approx([0.2] * steps_per_epoch + [0.4] * steps_per_epoch)
