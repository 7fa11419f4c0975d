from pathlib import Path

import pytest

from captioner.config import ConfigError, ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["coco_subset", "coco_karpathy", "flickr8k"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.data.train and cfg.data.val


def test_overrides_apply_with_types():
    cfg = load_config(REPO / "configs/coco_subset.yaml", ["train.epochs=3", "model.hidden_size=256", "train.lr=1e-3",
                                                           "data.train.0.format=coco", "train.tensorboard=false"])
    assert cfg.train.epochs == 3 and cfg.model.hidden_size == 256 and cfg.train.lr == 1e-3
    assert cfg.train.tensorboard is False


def test_int_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.epoch=3", "train.epoch"),  # typo -> unknown key named
        ("train.epochs=three", "train.epochs"),
        ("model.hidden_size=2.5", "model.hidden_size"),
        ("train.schedule=linear", "train.schedule"),
        ("bogus=1", "bogus"),
        ("train.epochs", "key=value"),
        ("data.train.5.format=coco", "index"),
        ("train.tensorboard=1", "train.tensorboard"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(REPO / "configs/coco_subset.yaml", [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("data:\n  train:\n    - {format: parquet}\n")
    with pytest.raises(ConfigError, match="format"):
        load_config(bad)
