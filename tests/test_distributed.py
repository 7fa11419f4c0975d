"""DDP on CPU (gloo, 2 processes under torchrun) and mixed precision options of the training loop.

The DDP test launches the real CLI under `python -m torch.distributed.run`; a tiny launcher installs an audit hook that
records which rank renames files into place (checkpoints and feature caches are written atomically by os.replace),
so "only rank 0 writes" is observed, not assumed.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from captioner.config import ConfigError, ModelConfig, TrainConfig, load_config
from captioner.distributed import DistInfo
from captioner.features import FeatureStore
from captioner.model import ShowTellDecoder
from captioner.synthetic import config_overrides, make_dataset
from captioner.train import (CaptionSet, TrainState, autocast_context, build_optimizer, check_amp,
                             cpu_bf16_lstm_supported, global_batch_split, train, train_one_epoch)
from captioner.vocab import Vocabulary

torch.set_num_threads(1)

EPOCHS = 5
COMMON = ["model.embed_size=32", "model.hidden_size=64", "model.dropout=0.0", "train.batch_size=32", "train.lr=3e-3",
          "train.warmup_steps=5", f"train.epochs={EPOCHS}", "vocab.max_len=10", "name=ddp"]

LAUNCHER = textwrap.dedent('''
    """Worker entry for the test: log this rank's file renames, then run the real CLI."""
    import os, sys

    _log = open(os.path.join(os.environ["WRITE_LOG_DIR"], "renames-rank" + os.environ.get("RANK", "0") + ".txt"), "a")

    def _hook(event, args):
        if event == "os.rename":
            _log.write(os.fspath(args[1]) + "\\n")
            _log.flush()

    sys.addaudithook(_hook)
    from captioner.cli import main

    sys.exit(main(sys.argv[1:]))
''')


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_processes_match_one_and_only_rank0_writes(tmp_path: Path):
    root = tmp_path / "synth"
    make_dataset(root, n_train=160, n_val=40)  # 480 train captions: 15 global batches of 32, no sampler padding
    overrides = config_overrides(root) + COMMON
    (tmp_path / "launch.py").write_text(LAUNCHER)
    (tmp_path / "cfg.yaml").write_text("name: ddp\n")
    logs = tmp_path / "writes"
    logs.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WRITE_LOG_DIR": str(logs), "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "launch.py"), "train", "--quiet", "--config", str(tmp_path / "cfg.yaml"),
           "--run-dir", str(tmp_path / "ddp"), *overrides]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]

    # One process, same global batch (32), same features (the cache rank 0 wrote).
    single = train(load_config(None, overrides), tmp_path / "single", show_progress=False)

    ddp_rows, one_rows = _rows(tmp_path / "ddp"), _rows(single)
    assert [r["epoch"] for r in ddp_rows] == [str(e) for e in range(1, EPOCHS + 1)]  # one row per epoch
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in one_rows]  # 15 steps an epoch in both: global batch
    for a, b in zip(ddp_rows, one_rows):
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=0.01), (key, a, b)
    assert float(ddp_rows[-1]["val_loss"]) < 0.85 * float(ddp_rows[0]["val_loss"])  # and it did learn
    print("val loss 1 process:", [r["val_loss"] for r in one_rows], "2 processes:", [r["val_loss"] for r in ddp_rows])

    # Logged once (rank 0 prints the epoch lines), files written once, nothing left behind.
    assert output.count("epoch=1 step=") == 1
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        ["config.yaml", "vocab.json", "metrics.csv", "loss.png", "best.safetensors", "last.safetensors"])
    rank0 = (logs / "renames-rank0.txt").read_text().split()
    rank1 = (logs / "renames-rank1.txt").read_text().split() if (logs / "renames-rank1.txt").exists() else []
    assert rank1 == [], f"rank 1 wrote files: {rank1}"
    assert sum(Path(p).name == "last.safetensors" for p in rank0) == EPOCHS
    assert sum(Path(p).parent == root / "cache" for p in rank0) == 2  # train and val features, extracted once


# ------------------------------------------------------------------------------------------------ global batch


def test_batch_size_is_global_and_must_divide():
    assert global_batch_split(64, 1) == 64
    assert global_batch_split(64, 4) == 16
    with pytest.raises(ConfigError, match="global batch"):
        global_batch_split(30, 4)


# ------------------------------------------------------------------------------------------------ mixed precision


def _tiny_training(amp: str, device: str = "cpu"):
    """Three epochs of 4 steps on random features through the real train_one_epoch."""
    torch.manual_seed(0)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(40)])
    ids = [f"img{i}" for i in range(32)]
    store = FeatureStore(ids, torch.randn(32, 24))
    from captioner.data import Sample

    g = torch.Generator().manual_seed(1)
    samples = [Sample(i, Path(f"{i}.jpg"), [" ".join(f"w{int(w)}" for w in torch.randint(0, 40, (6,), generator=g))])
               for i in ids]
    data = CaptionSet.build(samples, store, vocab, max_len=8)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, warmup_steps=0, amp=amp, grad_clip=1.0)
    decoder = ShowTellDecoder(ModelConfig(feature_dim=24, vocab_size=len(vocab), embed_size=32, hidden_size=32, dropout=0.0)).to(device)
    dtypes: list[torch.dtype] = []
    decoder.head.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    optimizer = build_optimizer(decoder, cfg)
    loader, _ = data.loader(cfg.batch_size, DistInfo(), seed=0, shuffle=True)
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    state = TrainState()
    losses = []
    for _ in range(3):
        loss, _ = train_one_epoch(decoder, loader, optimizer, state, cfg, torch.device(device), total_steps=12,
                                  stop_requested=lambda: False, show_progress=False)
        state.epoch, state.batch_in_epoch, state.epoch_loss_sum = state.epoch + 1, 0, 0.0
        losses.append(loss)
    changed = any(not torch.equal(before[k], v) for k, v in decoder.state_dict().items())
    return losses, set(dtypes), state.step, changed, decoder


def test_bf16_on_a_cpu_without_bf16_lstm_is_a_clear_config_error():
    if cpu_bf16_lstm_supported():
        pytest.skip("this CPU has a bf16 LSTM kernel; test_bf16_autocast_trains_on_cpu covers it")
    with pytest.raises(ConfigError, match="no bf16 LSTM kernel"):
        check_amp("bf16", torch.device("cpu"))


@pytest.mark.skipif(not cpu_bf16_lstm_supported(), reason="this CPU has no bf16 LSTM kernel (needs AVX512-BF16 or AMX)")
def test_bf16_autocast_trains_on_cpu():
    losses, dtypes, steps, changed, decoder = _tiny_training("bf16")
    assert dtypes == {torch.bfloat16}  # the head really ran under bf16 autocast
    assert steps == 12 and changed
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # it learns (the loss itself is computed in fp32)
    assert all(p.dtype == torch.float32 for p in decoder.parameters())  # master weights stay fp32


def test_amp_auto_is_off_on_cpu_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    for amp in ("auto", "off"):
        with autocast_context(amp, cpu):
            assert not torch.is_autocast_enabled("cpu")
    with autocast_context("bf16", cpu):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    _, dtypes, _, _, _ = _tiny_training("auto")
    assert dtypes == {torch.float32}
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        check_amp("fp16", cpu)
    if cpu_bf16_lstm_supported():
        check_amp("bf16", cpu)  # allowed where the CPU can run it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs CUDA (none here)")
def test_fp16_with_grad_scaler_on_cuda():  # pragma: no cover - no GPU in CI
    losses, dtypes, steps, changed, _ = _tiny_training("fp16", "cuda")
    assert dtypes == {torch.float16} and steps == 12 and changed
    assert losses[-1] < losses[0]
