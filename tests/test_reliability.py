"""Training survives what happens to real runs: kills, signals, broken datasets, NaNs, edited run folders.

The subprocess tests run the real `python -m captioner train` and kill it from outside; everything else calls the
CLI in-process. All runs use the synthetic shapes set and the weight-free `thumbnail` encoder, so they take seconds.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from captioner import cli
from captioner import train as train_mod
from captioner.checkpoint import load_checkpoint
from captioner.config import load_config, save_config
from captioner.data import DataError, Sample, load_coco, load_flickr8k, load_karpathy
from captioner.synthetic import config_overrides, make_dataset
from captioner.train import TrainingInterrupted, train

EPOCHS = 5
STEPS_PER_EPOCH = 18  # 96 images x 3 captions / batch 16
SMALL = ["model.embed_size=32", "model.hidden_size=64", "model.dropout=0.2", "train.batch_size=16", "train.lr=3e-3",
         "train.warmup_steps=5", "vocab.max_len=10", f"train.epochs={EPOCHS}", "name=rel"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bit-identical comparisons with the 1-thread subprocesses need the same thread count here."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, n_train=96, n_val=24)
    return root


@pytest.fixture(scope="module")
def cfg_file(synth) -> Path:
    path = synth / "rel.yaml"
    save_config(load_config(None, config_overrides(synth) + SMALL), path)
    return path


@pytest.fixture(scope="module")
def reference(cfg_file, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    return train(load_config(cfg_file), tmp_path_factory.mktemp("ref") / "run", show_progress=False)


@pytest.fixture(scope="module")
def partial(cfg_file, tmp_path_factory) -> Path:
    """A run stopped mid-epoch 2 (as by Ctrl-C): a resumable run folder for the damage tests to copy."""
    run = tmp_path_factory.mktemp("partial") / "run"
    with pytest.raises(TrainingInterrupted):
        train(load_config(cfg_file), run, show_progress=False, stop_after_steps=STEPS_PER_EPOCH + 5)
    return run


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run_dir / "last.safetensors")).items() if k.startswith("decoder.")}


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    a, b = _weights(reference), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from the uninterrupted run"
    assert _logged(run_dir) == _logged(reference)


def _logged(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if "error" in line.lower()]


# --------------------------------------------------------------------------- kills and signals (real subprocesses)


class Launch:
    """`python -m captioner train` in a subprocess, started fresh (`config`) or with --resume."""

    def __init__(self, run: Path, config: Path | None = None):
        self.run, self.started_ns = run, time.time_ns()
        args = ["--config", str(config), "--run-dir", str(run)] if config else ["--resume", str(run)]
        self.err_path = run.parent / f"stderr-{self.started_ns}.txt"
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "captioner", "train", "--quiet", *args],
                                         stdout=subprocess.DEVNULL, stderr=err, env=ENV)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_until_training(self, epochs_done: int, timeout: float = 180) -> None:
        """Until this process has started its training loop (it rewrites config.yaml right before) and `last`
        records at least `epochs_done` finished epochs."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"training exited early (rc {self.proc.returncode}):\n{self.stderr}"
            cfg = self.run / "config.yaml"
            if cfg.exists() and cfg.stat().st_mtime_ns >= self.started_ns and max(_epochs_done(self.run), 0) >= epochs_done:
                return
            time.sleep(0.01)
        raise AssertionError(f"no progress within {timeout}s:\n{self.stderr}")

    def stop(self, signum: int, timeout: float = 120) -> int:
        assert self.proc.poll() is None, f"training exited before the signal (rc {self.proc.returncode}):\n{self.stderr}"
        self.proc.send_signal(signum)
        return self.proc.wait(timeout)


def _epochs_done(run: Path) -> int:
    """Epochs finished according to `last` (-1: no `last` yet)."""
    try:
        with safe_open(str(run / "last.safetensors"), framework="pt") as f:
            return json.loads(f.metadata()["train_state"])["epoch"]
    except (FileNotFoundError, SafetensorError):
        return -1


def _assert_whole(run: Path) -> None:
    """Whatever moment a kill hit, every file a resume reads is complete."""
    for name in ("last", "best"):
        if (run / f"{name}.safetensors").exists():
            load_checkpoint(run / name)
    if (run / "config.yaml").exists():
        load_config(run / "config.yaml")


def _epoch_seconds(reference: Path) -> float:
    return sorted(float(r["seconds"]) for r in csv.DictReader(open(reference / "metrics.csv")))[EPOCHS // 2]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_identical_weights(reference, cfg_file, tmp_path, capsys):
    """Three SIGKILLs at seeded random points (epoch, fraction of it); the first always before any checkpoint
    exists. After each kill: everything on disk is whole; `--resume` continues from the last epoch end, or says
    there is nothing to resume, in which case the run is started again. The final weights equal an uninterrupted
    run's, bit for bit."""
    rng = random.Random(1234)
    points = [(0, rng.uniform(0.05, 0.5))] + sorted((rng.randrange(1, EPOCHS - 1), rng.uniform(0.1, 0.9)) for _ in range(2))
    epoch_s = _epoch_seconds(reference)
    run, kills = tmp_path / "run", []
    for epochs_done, frac in points:
        if (run / "last.safetensors").exists():
            launch = Launch(run)
        else:
            config = cfg_file
            if (run / "config.yaml").exists():  # killed before the first epoch ended: nothing to resume, start again
                assert cli.main(["train", "--quiet", "--resume", str(run)]) == 2
                (line,) = _error_lines(capsys.readouterr().err)
                assert "nothing to resume" in line and f"--config {run / 'config.yaml'} --run-dir {run}" in line
                config = run / "config.yaml"  # as the message says
            launch = Launch(run, config)
        launch.wait_until_training(epochs_done)
        time.sleep(frac * epoch_s)
        assert launch.stop(signal.SIGKILL) == -signal.SIGKILL
        _assert_whole(run)
        kills.append((epochs_done, round(frac, 2), _epochs_done(run), sorted(p.name for p in run.glob(".*.tmp-*"))))
    print("kills (wait for epoch, fraction, epochs in last after the kill, torn temp files):", kills)
    assert kills[0][2] == -1, "the first kill should come before any checkpoint exists"
    assert _epochs_done(run) < EPOCHS, "the last kill came too late to test anything"
    # A save torn by a kill leaves only its temp file; resuming must not pick it up.
    last = (run / "last.safetensors").read_bytes()
    (run / ".last.safetensors.tmp-424242").write_bytes(last[: len(last) // 2])
    assert cli.main(["train", "--quiet", "--resume", str(run)]) == 0
    _assert_same_run(run, reference)


@pytest.mark.slow
def test_sigterm_and_sigint_save_a_checkpoint_and_resume_identically(reference, cfg_file, tmp_path):
    epoch_s = _epoch_seconds(reference)
    run = tmp_path / "run"
    for launch, epochs_done, signum in ((lambda: Launch(run, cfg_file), 1, signal.SIGTERM), (lambda: Launch(run), 3, signal.SIGINT)):
        proc = launch()
        proc.wait_until_training(epochs_done)
        time.sleep(0.5 * epoch_s)
        assert proc.stop(signum) == 128 + signum  # 143, 130: the shell convention for "ended by this signal"
        assert f"resume with: captioner train --resume {run}" in proc.stderr
        state = load_checkpoint(run / "last").train_state
        assert state["epoch"] >= epochs_done and state["batch_in_epoch"] >= 1  # saved mid-epoch, not at an epoch end
    assert cli.main(["train", "--quiet", "--resume", str(run)]) == 0
    _assert_same_run(run, reference)


# --------------------------------------------------------------------------- damaged or edited run folders


def _resume_error(run: Path, capsys) -> str:
    assert cli.main(["train", "--quiet", "--resume", str(run)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("captioner train: error:")
    return line


def _edit_config(run: Path, **model) -> None:
    cfg = load_config(run / "config.yaml")
    for k, v in model.items():
        setattr(cfg.model, k, v)
    save_config(cfg, run / "config.yaml")


RUN_DAMAGE = {
    "last truncated": (lambda r: (r / "last.safetensors").write_bytes((r / "last.safetensors").read_bytes()[:5000]),
                       "last.safetensors: not a readable safetensors checkpoint"),
    "last is garbage": (lambda r: (r / "last.safetensors").write_bytes(os.urandom(20000)), "not a readable safetensors checkpoint"),
    "last is empty": (lambda r: (r / "last.safetensors").write_bytes(b""), "not a readable safetensors checkpoint"),
    "no last yet": (lambda r: (r / "last.safetensors").unlink(), "nothing to resume"),
    "no config.yaml": (lambda r: (r / "config.yaml").unlink(), "is not a run folder"),
    "config.yaml not YAML": (lambda r: (r / "config.yaml").write_text("model: [unclosed\n"), "not valid YAML"),
    "hidden size edited": (lambda r: _edit_config(r, hidden_size=128), "model.hidden_size: checkpoint 64, config.yaml 128"),
    "encoder edited": (lambda r: _edit_config(r, encoder="efficientnet_lite0"),
                       "model.encoder: checkpoint 'thumbnail', config.yaml 'efficientnet_lite0'"),
    "tied weights edited": (lambda r: _edit_config(r, tie_weights=True), "model.tie_weights: checkpoint False, config.yaml True"),
}


@pytest.mark.parametrize("case", list(RUN_DAMAGE))
def test_resume_of_a_damaged_or_edited_run_gives_one_clear_error(partial, synth, tmp_path, capsys, case):
    damage, needle = RUN_DAMAGE[case]
    run = shutil.copytree(partial, tmp_path / "run")
    caches = sorted((synth / "cache").iterdir())
    damage(run)
    assert needle in _resume_error(run, capsys)
    assert sorted((synth / "cache").iterdir()) == caches  # refused before any feature extraction


def test_untouched_partial_run_resumes(partial, reference, tmp_path):
    """Control for the damage cases: the same copy, undamaged, resumes to the reference weights."""
    run = shutil.copytree(partial, tmp_path / "run")
    assert cli.main(["train", "--quiet", "--resume", str(run)]) == 0
    _assert_same_run(run, reference)


def test_same_seed_same_run_with_or_without_feature_cache(synth, tmp_path):
    """Extracting features draws random numbers (a DataLoader's base seed); a cache hit does not. The decoder is
    seeded after data preparation, so a run does not depend on whether the cache existed."""
    cfg = load_config(None, config_overrides(synth) + SMALL + ["train.epochs=1", f"features.cache_dir={tmp_path / 'cache'}"])
    cold = train(cfg, tmp_path / "cold", show_progress=False)
    warm = train(cfg, tmp_path / "warm", show_progress=False)
    a, b = _weights(cold), _weights(warm)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- NaN / inf


def _poisoned_loss(monkeypatch, from_call: int, kind: str) -> None:
    """caption_loss that goes wrong from the `from_call`-th training step: a NaN loss, or a finite loss whose
    gradients are NaN (sqrt at 0 has an infinite derivative, times 0)."""
    real, calls = train_mod.caption_loss, [0]

    def loss_fn(logits, targets, label_smoothing=0.0):
        loss = real(logits, targets, label_smoothing)
        if not torch.is_grad_enabled():  # validation
            return loss
        calls[0] += 1
        if calls[0] <= from_call:
            return loss
        if kind == "loss":
            return loss * float("nan")
        return loss + 0.0 * (logits - logits.detach()).abs().sqrt().sum()

    monkeypatch.setattr(train_mod, "caption_loss", loss_fn)


@pytest.mark.parametrize("kind, at_step, needle", [
    ("loss", STEPS_PER_EPOCH + 5, f"loss became nan at epoch 2, step {STEPS_PER_EPOCH + 5}"),
    # the last batch of epoch 2: without a gradient check, NaN weights would reach the epoch-end `last`
    ("gradients", 2 * STEPS_PER_EPOCH - 1, f"gradients became nan at epoch 2, step {2 * STEPS_PER_EPOCH - 1}"),
])
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(cfg_file, reference, tmp_path, capsys, monkeypatch,
                                                                       kind, at_step, needle):
    run = tmp_path / "run"
    _poisoned_loss(monkeypatch, at_step, kind)
    assert cli.main(["train", "--quiet", "--config", str(cfg_file), "--run-dir", str(run)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("captioner train: error:") and needle in line and "last good checkpoint kept" in line
    for name in ("last", "best"):  # loadable (load_checkpoint also refuses non-finite weights) and from epoch 1
        ck = load_checkpoint(run / name)
        assert ck.train_state["epoch"] == 1 and ck.train_state["step"] == STEPS_PER_EPOCH
    monkeypatch.undo()
    assert cli.main(["train", "--quiet", "--resume", str(run)]) == 0  # the kept checkpoint is the true epoch-1 state
    _assert_same_run(run, reference)


# --------------------------------------------------------------------------- datasets with problems, through the CLI


@pytest.fixture
def messy(tmp_path) -> tuple[Path, Path]:
    """A synthetic set with 3 unreadable images, 1 missing, 2 empty captions and a repeated image record."""
    root = tmp_path / "messy"
    make_dataset(root, n_train=48, n_val=12)
    img = root / "train"
    png = (img / "train_00003.png").read_bytes()
    (img / "train_00003.png").write_bytes(png[: len(png) // 2])  # truncated download
    (img / "train_00010.png").write_text("<html><body>404 Not Found</body></html>")  # error page saved as .png
    (img / "train_00020.png").write_bytes(b"")  # empty file
    (img / "train_00030.png").unlink()  # missing
    ann = json.loads((root / "captions_train.json").read_text())
    ann["annotations"] += [{"id": 9_000_001, "image_id": 100_001, "caption": ""},
                           {"id": 9_000_002, "image_id": 100_002, "caption": " ... !"}]
    ann["images"].append(dict(ann["images"][5]))  # the same record twice (a sloppy merge)
    (root / "captions_train.json").write_text(json.dumps(ann))
    cfg = tmp_path / "messy.yaml"
    save_config(load_config(None, config_overrides(root) + SMALL + ["train.epochs=2", "features.num_workers=2"]), cfg)
    return root, cfg


def test_broken_images_are_skipped_counted_and_named(messy, tmp_path, caplog):
    root, cfg = messy
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert cli.main(["train", "--quiet", "--config", str(cfg), "--run-dir", str(run)]) == 0
    log = caplog.text
    assert f"split train: 1 missing image files (e.g. {root / 'train' / 'train_00030.png'}); 2 empty captions dropped" in log
    assert "1 repeated image records ignored (e.g. images[48]" in log
    assert "3 of 47 images could not be read (e.g. 100003: " in log and "train_00003.png" in log
    assert "they are skipped" in log
    assert "(44 images)" in log  # 48 - 1 missing - 3 unreadable
    assert len(_logged(run)) == 2 and load_checkpoint(run / "best").train_state["epoch"] >= 1


def test_strict_data_fails_with_one_clear_line(messy, capsys):
    root, cfg = messy
    args = ["train", "--quiet", "--config", str(cfg), "--run-dir", str(root / "run"), "data.strict=true"]
    assert cli.main(args) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("captioner train: error: split train: 1 missing image files") and "train_00030.png" in line
    assert line.endswith("(data.strict is set)")
    shutil.copy(root / "train" / "train_00031.png", root / "train" / "train_00030.png")  # only unreadable ones left
    assert cli.main(args) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("captioner train: error: 3 of 48 images could not be read (e.g. 100003: ")
    assert "train_00003.png" in line and line.endswith("(data.strict is set)")


def _set(path_in_json: str, value):
    def edit(d):
        node, *keys = d, *path_in_json.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return d
    return edit


ANNOTATION_PROBLEMS = {
    "not JSON": (b'{"images": [', r"not valid JSON"),
    "not UTF-8": ('{"images": [], "annotations": [{"caption": "caf\xe9"}]}'.encode("latin-1"), r"not UTF-8"),
    "a list at the top": (lambda d: d["images"], r"expected an object, got list"),
    "no annotations key": (lambda d: {"images": d["images"]}, r"missing key\(s\) annotations"),
    "images is null": (_set("images", None), r"images: expected a list, got NoneType"),
    "image without file_name": (lambda d: d["images"][2].pop("file_name") and d, r"images\[2\]: missing key\(s\) file_name"),
    "caption not a string": (_set("annotations.4.caption", 7), r"annotations\[4\]\.caption is not a string"),
    "image id is a list": (_set("images.3.id", [1]), r"images\[3\]\.id: expected an integer or string id"),
    "one id, two files": (_set("images.5.id", 100_001), r"images\[5\]: image id 100001 is already used by images\[1\]"),
    "caption for no image": (_set("annotations.0.image_id", 999), r"annotations refer to unknown image ids \(e\.g\. 999\)"),
}


@pytest.mark.parametrize("case", list(ANNOTATION_PROBLEMS))
def test_broken_annotation_file_gives_one_line_naming_file_and_record(synth, cfg_file, tmp_path, capsys, case):
    problem, needle = ANNOTATION_PROBLEMS[case]
    root = tmp_path / "data"
    shutil.copytree(synth / "train", root / "train")
    shutil.copy(synth / "captions_val.json", root / "captions_val.json")
    ann = root / "captions_train.json"
    if isinstance(problem, bytes):
        ann.write_bytes(problem)
    else:
        ann.write_text(json.dumps(problem(json.loads((synth / "captions_train.json").read_text()))))
    assert cli.main(["train", "--quiet", "--config", str(cfg_file), "--run-dir", str(tmp_path / "run"), f"data.root={root}"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"captioner train: error: {ann}")
    assert re.search(needle, line), line


# Malformed records of every kind: the loaders return well-formed samples or raise DataError naming the file.
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.floats(-2, 2, width=16), st.text(max_size=3))
_junk = st.recursive(_scalar, lambda c: st.one_of(st.lists(c, max_size=2), st.dictionaries(st.text(max_size=2), c, max_size=2)),
                     max_leaves=4)


def _or_junk(valid):
    return st.one_of(valid, valid, valid, _junk)  # mostly valid, so the fuzz reaches the deeper records


_ids = st.one_of(st.integers(0, 3), st.sampled_from(["a", "b", "1"]))
_coco = st.fixed_dictionaries({
    "images": _or_junk(st.lists(_or_junk(st.fixed_dictionaries({"id": _or_junk(_ids), "file_name": _or_junk(st.sampled_from(["x.png", "y.png", ""]))})), max_size=4)),
    "annotations": _or_junk(st.lists(_or_junk(st.fixed_dictionaries({"id": _or_junk(st.integers(0, 9)), "image_id": _or_junk(_ids), "caption": _or_junk(st.text(max_size=6))})), max_size=5)),
})
_karpathy_image = st.fixed_dictionaries(
    {"split": _or_junk(st.sampled_from(["train", "val"])), "filename": _or_junk(st.sampled_from(["x.jpg", "y.jpg", ""])),
     "sentences": _or_junk(st.lists(_or_junk(st.fixed_dictionaries({"raw": _or_junk(st.text(max_size=6))})), max_size=3))},
    optional={"cocoid": _or_junk(_ids), "imgid": _or_junk(_ids), "filepath": _or_junk(st.sampled_from(["", "val2014"]))})
_karpathy = st.fixed_dictionaries({"images": _or_junk(st.lists(_or_junk(_karpathy_image), max_size=4))})
_flickr = st.one_of(st.binary(max_size=50), st.text(max_size=50).map(lambda t: ("image,caption\n" + t).encode("utf-8", "replace")))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _well_formed(path: Path, load) -> None:
    try:
        out = load()
    except DataError as err:
        assert str(path) in str(err)
        return
    for s in out:
        assert isinstance(s, Sample) and isinstance(s.image_id, str) and isinstance(s.path, Path)
        assert all(isinstance(c, str) for c in s.captions)


@FUZZ
@given(data=_or_junk(_coco))
def test_coco_loader_never_crashes(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("coco") / "captions.json"
    p.write_text(json.dumps(data))
    _well_formed(p, lambda: load_coco(p, p.parent))


@FUZZ
@given(data=_or_junk(_karpathy), split=st.sampled_from(["train", "val"]))
def test_karpathy_loader_never_crashes(tmp_path_factory, data, split):
    p = tmp_path_factory.mktemp("karpathy") / "dataset.json"
    p.write_text(json.dumps(data))
    _well_formed(p, lambda: load_karpathy(p, p.parent, split))


@FUZZ
@given(raw=_flickr, split=st.sampled_from(["", "train", "val"]), holdout=st.integers(0, 2))
def test_flickr8k_loader_never_crashes(tmp_path_factory, raw, split, holdout):
    p = tmp_path_factory.mktemp("flickr") / "captions.txt"
    p.write_bytes(raw)
    _well_formed(p, lambda: load_flickr8k(p, p.parent, split, holdout))


def test_non_finite_validation_loss_never_overwrites_checkpoints(cfg_file, tmp_path, capsys, monkeypatch):
    """The backstop behind the loss and gradient checks: weights that evaluate to NaN are never saved."""
    real, epochs = train_mod.evaluate, [0]

    def evaluate(*args, **kwargs):
        epochs[0] += 1
        return float("inf") if epochs[0] == 2 else real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    run = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--config", str(cfg_file), "--run-dir", str(run), "train.epochs=3"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "validation loss became inf after epoch 2" in line and "last good checkpoint kept" in line
    assert load_checkpoint(run / "last").train_state["epoch"] == 1 and len(_logged(run)) == 1
