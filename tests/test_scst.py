"""Self-critical training: the reward is the metric module's CIDEr-D, and SCST raises held-out CIDEr-D."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from captioner import cli
from captioner.checkpoint import load_checkpoint
from captioner.config import ConfigError, ModelConfig, ScstConfig, load_config
from captioner.evaluate import special_tokens
from captioner.metrics import CiderD, score_captions
from captioner.model import ShowTellDecoder
from captioner.scst import CiderReward, scst, scst_loss
from captioner.synthetic import config_overrides, make_dataset
from captioner.text import tokenize
from captioner.train import TrainingInterrupted, train
from captioner.vocab import Vocabulary

torch.set_num_threads(1)

REFS = {
    "1": ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave.", "Man surfing in the ocean."],
    "2": ["Two dogs play with a frisbee in the park.", "A dog catches a frisbee.", "Dogs playing on the grass."],
    "3": ["A plate of food with broccoli and rice.", "Broccoli, rice and chicken on a white plate."],
    "4": ["A red double decker bus on a city street.", "A bus driving down the street.", "The bus is red."],
    "5": ["A cat sleeping on a laptop keyboard.", "A cat lies on a computer.", "Cat on a laptop."],
}
CANDIDATES = {"1": "a man riding a wave on a surfboard", "2": "a dog playing with a frisbee", "3": "a plate of food",
              "4": "a red bus on a street", "5": "a dog on a bus"}


def test_reward_equals_metric_cider_per_image():
    reward = CiderReward(REFS)
    ids = list(REFS)
    got = reward(ids, [CANDIDATES[i] for i in ids])
    report = score_captions(REFS, CANDIDATES, use_meteor=False)  # df from the same five images' references
    want = np.array([report.per_image[i]["CIDEr-D"] for i in ids])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got.mean() == pytest.approx(report.corpus["CIDEr-D"], abs=1e-12)
    assert got[0] > 1.0 and got[4] < got[0]  # the numbers mean something: a good caption beats a wrong one


def test_reward_document_frequencies_are_fixed_by_the_corpus():
    """A caption's reward does not depend on which other captions share its batch (unlike evaluation's df)."""
    reward = CiderReward(REFS)
    ids = list(REFS)
    whole = reward(ids, [CANDIDATES[i] for i in ids])
    single = reward(["4"], [CANDIDATES["4"]])
    assert single[0] == pytest.approx(whole[3], abs=1e-12)
    repeated = reward(["2", "2", "1"], [CANDIDATES["2"], "a frisbee", CANDIDATES["1"]])
    assert repeated[0] == pytest.approx(whole[1], abs=1e-12) and repeated[2] == pytest.approx(whole[0], abs=1e-12)
    corpus = CiderD(corpus_references=[[" ".join(tokenize(c)) for c in REFS[i]] for i in ids])
    assert reward.cider.log_document_frequency == corpus.log_document_frequency
    with pytest.raises(ConfigError):
        CiderReward({})


def test_mean_baseline_centres_the_advantage():
    """With the leave-one-out baseline, the advantages of an image's samples sum to zero: the loss has no
    component along the plain log-likelihood of the samples."""
    torch.manual_seed(0)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + sorted({w for c in CANDIDATES.values() for w in c.split()}))
    decoder = ShowTellDecoder(ModelConfig(feature_dim=8, vocab_size=len(vocab), embed_size=16, hidden_size=16, dropout=0.0))
    feats = torch.randn(5, 8)
    cfg = ScstConfig(samples=4, baseline="mean", max_len=8)
    loss, stats = scst_loss(decoder, feats, list(REFS), CiderReward(REFS), vocab, cfg, special_tokens(vocab))
    loss.backward()
    assert torch.isfinite(loss) and decoder.head.weight.grad is not None
    assert stats["baseline"] == pytest.approx(stats["reward"], abs=1e-9)  # mean of leave-one-out means = mean
    greedy_loss, greedy_stats = scst_loss(decoder, feats, list(REFS), CiderReward(REFS), vocab,
                                          ScstConfig(samples=4, baseline="greedy", max_len=8), special_tokens(vocab))
    assert "greedy_reward" in greedy_stats and torch.isfinite(greedy_loss)


def test_tempered_logprobs_score_the_draws_like_the_sampler():
    """Teacher forcing the drawn tokens gives back sample()'s own log-probs at T = 1 (same positions, same values)."""
    from captioner.decoding import sample
    from captioner.scst import tempered_logprobs

    torch.manual_seed(0)
    decoder = ShowTellDecoder(ModelConfig(feature_dim=8, vocab_size=30, embed_size=16, hidden_size=16)).eval()
    special = special_tokens(Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(26)]))
    feats = torch.randn(6, 8)
    tokens, logprobs, mask = sample(decoder, feats, 7, special, n=3)
    assert (~mask).any() and mask[:, 0].all()  # some captions ended early: padding is handled
    again = tempered_logprobs(decoder, feats.repeat_interleave(3, dim=0), tokens, mask, 1.0, special)
    torch.testing.assert_close(again, logprobs, atol=1e-5, rtol=1e-5)
    cold = tempered_logprobs(decoder, feats.repeat_interleave(3, dim=0), tokens, mask, 0.5, special)
    assert (cold[~mask] == 0).all() and not torch.allclose(cold[mask], logprobs[mask])
    cold.sum().backward()
    assert decoder.head.weight.grad is not None


def test_config_rejects_bad_scst_settings():
    with pytest.raises(ConfigError, match="scst.baseline"):
        load_config(None, ["scst.baseline=critic"])
    with pytest.raises(ConfigError, match="unknown config key 'scst.critic'"):
        load_config(None, ["scst.critic=true"])
    with pytest.raises(ConfigError, match="samples >= 2"):
        load_config(None, ["scst.baseline=mean", "scst.samples=1"])


# ------------------------------------------------------------------------------------------------ end to end

XE = ["model.embed_size=32", "model.hidden_size=64", "model.dropout=0.1", "train.batch_size=32", "train.lr=3e-3",
      "train.warmup_steps=0", "train.epochs=4", "vocab.max_len=10"]
SCST = ["scst.batch_size=20", "scst.lr=3e-3", "scst.max_len=10", "scst.val_beam=false"]
RENNIE = ["scst.baseline=greedy", "scst.temperature=1.0"]  # the paper's setting: greedy baseline, the model's own samples


@pytest.fixture(scope="module")
def under_trained(tmp_path_factory) -> tuple[Path, list[str]]:
    """A synthetic set and a deliberately under-trained XE model on it (4 short epochs)."""
    root = tmp_path_factory.mktemp("scst")
    make_dataset(root / "data", n_train=200, n_val=40)
    overrides = config_overrides(root / "data") + XE
    train(load_config(None, overrides), root / "xe", show_progress=False)
    return root, overrides


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_scst_raises_held_out_cider(under_trained, tmp_path):
    root, overrides = under_trained
    run_dir = tmp_path / "scst"
    code = cli.main(["scst", "--quiet", "--init", str(root / "xe" / "best"), "--run-dir", str(run_dir),
                     *overrides, *SCST, *RENNIE, "scst.epochs=5"])
    assert code == 0
    rows = _rows(run_dir)
    start, after = float(rows[0]["val_cider_greedy"]), [float(r["val_cider_greedy"]) for r in rows[1:]]
    print("held-out greedy CIDEr-D: start", start, "after each SCST epoch", after)
    assert len(rows) == 6 and rows[0]["epoch"] == "0"
    assert max(after) > start + 0.2  # CIDEr-D on the synthetic val images, greedy decoding
    rewards = [float(r["train_reward"]) for r in rows[1:]]
    assert rewards[-1] > rewards[0]  # the sampled captions' reward went up too
    best = load_checkpoint(run_dir / "best")
    assert best.train_state["best_epoch"] == 1 + after.index(max(after))
    assert best.model_config == load_checkpoint(root / "xe" / "best").model_config  # rebuilt from the XE checkpoint
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.safetensors", "config.yaml", "last.safetensors",
                                                         "metrics.csv", "vocab.json"]


def test_scst_resume_is_exact_and_default_setting_learns(under_trained, tmp_path):
    root, overrides = under_trained
    cfg_overrides = overrides + SCST + ["scst.epochs=2", f"scst.init={root / 'xe' / 'best'}", "scst.select=beam"]
    full = scst(load_config(None, cfg_overrides), tmp_path / "full", show_progress=False)
    with pytest.raises(TrainingInterrupted):
        scst(load_config(None, cfg_overrides), tmp_path / "cut", show_progress=False, stop_after_steps=13)  # mid epoch 2
    assert load_checkpoint(tmp_path / "cut" / "last").train_state["step"] == 13
    assert cli.main(["scst", "--quiet", "--resume", str(tmp_path / "cut")]) == 0
    a, b = load_file(str(full / "last.safetensors")), load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_rows(full)) == strip(_rows(tmp_path / "cut"))
    # the default setting (mean baseline, temperature 0.5) learns too, and select=beam picks best on beam CIDEr-D
    rows = _rows(full)
    cider = [float(r["val_cider_greedy"]) for r in rows]
    assert max(cider[1:]) > cider[0] + 0.2, cider
    beam = [float(r["val_cider_beam3"]) for r in rows]
    assert load_checkpoint(full / "best").train_state["best_epoch"] == beam.index(max(beam))


def test_cli_errors_are_clear(under_trained, tmp_path, capsys):
    root, overrides = under_trained
    assert cli.main(["scst", *overrides]) == 2
    assert "needs --init" in capsys.readouterr().err
    assert cli.main(["scst", "--init", str(tmp_path / "missing"), *overrides]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert cli.main(["scst", "--resume", str(tmp_path), "--init", str(root / "xe" / "best")]) == 2
    assert "do not pass --config or --init" in capsys.readouterr().err
