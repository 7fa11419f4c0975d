import pytest
import torch

from captioner.checkpoint import CheckpointError, export_model, load_checkpoint, resolve_checkpoint, save_checkpoint
from captioner.config import ModelConfig
from captioner.model import ShowTellDecoder
from captioner.vocab import Vocabulary


def _cfg(**kw):
    base = dict(feature_dim=12, vocab_size=20, embed_size=8, hidden_size=10, num_layers=2, dropout=0.1)
    base.update(kw)
    return ModelConfig(**base)


def _batch(b=3, t=6, v=20):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([6, 4, 3])[:b]
    caps = torch.randint(4, v, (b, t), generator=g)
    caps[:, 0] = 1
    for i, n in enumerate(lengths):
        caps[i, n - 1] = 2
        caps[i, n:] = 0
    return torch.randn(b, 12, generator=g), caps, lengths


@pytest.mark.parametrize("tie", [False, True])
def test_teacher_forcing_matches_step_by_step(tie):
    torch.manual_seed(0)
    dec = ShowTellDecoder(_cfg(tie_weights=tie)).eval()
    feats, caps, lengths = _batch()
    logits, targets = dec(feats, caps, lengths)
    assert logits.shape == (int((lengths - 1).sum()), 20)
    assert torch.equal(targets, torch.cat([caps[i, 1:n] for i, n in enumerate(lengths)]))
    rows = []
    for i, n in enumerate(lengths):
        state = dec.init_state(feats[i : i + 1])
        for t in range(n - 1):
            out, state = dec.step(caps[i, t : t + 1], state)
            rows.append(out[0])
    assert torch.allclose(logits, torch.stack(rows), atol=1e-5)


def test_tied_weights_share_storage():
    dec = ShowTellDecoder(_cfg(tie_weights=True))
    assert dec.head.weight.data_ptr() == dec.embed.weight.data_ptr()


@pytest.mark.parametrize("tie", [False, True])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, tie):
    torch.manual_seed(0)
    cfg = _cfg(tie_weights=tie)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(16)])
    dec = ShowTellDecoder(cfg).eval()
    opt = torch.optim.AdamW(dec.parameters())
    feats, caps, lengths = _batch()
    dec.train()
    dec(feats, caps, lengths)[0].sum().backward()
    opt.step()
    dec.eval()
    path = save_checkpoint(tmp_path / "best", model_config=cfg, vocab=vocab, decoder=dec, optimizer=opt,
                           rng={"torch": torch.get_rng_state()}, train_state={"epoch": 3})
    assert path.name == "best.safetensors" and not list(tmp_path.glob(".*tmp*"))
    ck = load_checkpoint(tmp_path / "best")
    assert ck.model_config == cfg and ck.vocab == vocab and ck.train_state == {"epoch": 3}
    dec2 = ShowTellDecoder(ck.model_config).eval()
    dec2.load_state_dict(ck.decoder)
    assert torch.equal(dec(feats, caps, lengths)[0], dec2(feats, caps, lengths)[0])
    opt2 = torch.optim.AdamW(dec2.parameters())
    opt2.load_state_dict(ck.optimizer)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert resolve_checkpoint(tmp_path) == path


def test_feature_statistics_standardize_and_travel_in_checkpoints(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg()
    feats = 5.0 + 3.0 * torch.randn(200, 12)
    feats[:, 0] = 7.0  # a constant dimension keeps a floor instead of dividing by zero
    dec = ShowTellDecoder(cfg).eval()
    dec.set_feature_stats(feats)
    z = (feats - dec.feature_mean) / dec.feature_std
    assert torch.allclose(z[:, 1:].mean(0), torch.zeros(11), atol=1e-5)
    assert torch.allclose(z[:, 1:].std(0), torch.ones(11), atol=1e-5)
    assert torch.isfinite(z).all() and z[:, 0].abs().max() == 0
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(16)])
    opt = torch.optim.AdamW(dec.parameters())
    full = save_checkpoint(tmp_path / "last", model_config=cfg, vocab=vocab, decoder=dec, optimizer=opt,
                           rng={"torch": torch.get_rng_state()}, train_state={"epoch": 3, "best": 1.5, "step": 9})
    slim = export_model(full, tmp_path / "model.safetensors")
    ck = load_checkpoint(slim)
    assert ck.optimizer is None and not ck.rng and ck.train_state == {"epoch": 3, "best": 1.5, "step": 9}
    assert slim.stat().st_size < full.stat().st_size
    dec2 = ShowTellDecoder(ck.model_config).eval()
    dec2.load_state_dict(ck.decoder)
    assert torch.equal(dec2.feature_mean, dec.feature_mean) and torch.equal(dec2.feature_std, dec.feature_std)
    _, caps, lengths = _batch()
    assert torch.equal(dec(feats[:3], caps, lengths)[0], dec2(feats[:3], caps, lengths)[0])


def test_damaged_and_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(bad)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match="not a captioner checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
