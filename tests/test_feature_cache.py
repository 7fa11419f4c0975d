"""The feature cache is trusted only when it provably matches: encoder fingerprint, image set, shape, dtype, values.

Anything else (a torn write, a file copied from another config, a hand-edited file) is rebuilt, never used.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from captioner import encoders, features
from captioner.config import FeatureConfig
from captioner.data import DataError, Sample
from captioner.features import load_or_extract

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


@pytest.fixture
def samples(tmp_path) -> list[Sample]:
    out = []
    for i, c in enumerate(COLOURS):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), c).save(p)
        out.append(Sample(str(100 + i), p, [f"caption {i}"]))
    return out


@pytest.fixture
def cfg(tmp_path) -> FeatureConfig:
    return FeatureConfig(cache_dir=str(tmp_path / "cache"), batch_size=4, num_workers=0)


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Counts real extractions (the cache is bypassed exactly when this grows)."""
    seen: list[int] = []
    real = features.extract_features

    def counting(encoder, samples, cfg, device, desc="features"):
        seen.append(len(samples))
        return real(encoder, samples, cfg, device, desc=desc)

    monkeypatch.setattr(features, "extract_features", counting)
    return seen


def _extract(samples, cfg, **kw) -> features.FeatureStore:
    return load_or_extract("thumbnail", samples, cfg, torch.device("cpu"), **kw)


def _cache_path(cfg: FeatureConfig) -> Path:
    (path,) = Path(cfg.cache_dir).glob("*.safetensors")
    return path


def _rewrite(path: Path, edit) -> None:
    """Rewrite a cache file through `edit(tensors, meta)`, keeping everything else as written."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    edit(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def test_valid_cache_is_reused_without_extraction(samples, cfg, calls, monkeypatch):
    first = _extract(samples, cfg)
    assert calls == [len(samples)] and first.features.shape == (6, 192) and not first.failed

    def must_not_run(*a, **k):
        raise AssertionError("a valid cache was re-extracted")

    monkeypatch.setattr(features, "extract_features", must_not_run)
    again = _extract(list(reversed(samples)), cfg)  # same image set, any order
    assert again.ids == first.ids and torch.equal(again.features, first.features)
    assert [p.name for p in Path(cfg.cache_dir).iterdir()] == [_cache_path(cfg).name]  # no temp files left


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff" * 300)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _wrong_fingerprint(path: Path) -> None:
    _rewrite(path, lambda t, m: m.update(fingerprint="0" * 16))


def _wrong_format(path: Path) -> None:
    _rewrite(path, lambda t, m: m.update(format="something-else"))


def _one_row_short(path: Path) -> None:
    def edit(t, m):
        t["features"] = t["features"][:-1].contiguous()
    _rewrite(path, edit)


def _ids_of_another_set(path: Path) -> None:
    _rewrite(path, lambda t, m: m.update(ids=json.dumps([str(i) for i in range(6)])))


def _wrong_width(path: Path) -> None:
    _rewrite(path, lambda t, m: t.update(features=torch.zeros(6, 193)))


def _non_finite(path: Path) -> None:
    def edit(t, m):
        t["features"][2, 5] = float("nan")
        t["features"][4, 0] = float("inf")
    _rewrite(path, edit)


def _half_precision(path: Path) -> None:
    _rewrite(path, lambda t, m: t.update(features=t["features"].half()))


def _ids_not_a_list(path: Path) -> None:
    _rewrite(path, lambda t, m: m.update(ids="6"))


def _failed_not_a_mapping(path: Path) -> None:
    _rewrite(path, lambda t, m: m.update(failed="[1, 2]"))


def _ids_not_json(path: Path) -> None:
    _rewrite(path, lambda t, m: m.update(ids="[\"100\", "))


def _repeated_id(path: Path) -> None:
    # ids and failed together name every image, but "100" twice would shift every later row by one
    _rewrite(path, lambda t, m: m.update(ids=json.dumps(["100", "100", "102", "103", "104", "105"]),
                                         failed=json.dumps({"101": "unreadable"})))


def _no_features_tensor(path: Path) -> None:
    def edit(t, m):
        t["other"] = t.pop("features")
    _rewrite(path, edit)


@pytest.mark.parametrize("damage", [
    _truncate, _garbage, _empty, _wrong_fingerprint, _wrong_format, _one_row_short, _ids_of_another_set, _wrong_width,
    _non_finite, _half_precision, _ids_not_a_list, _failed_not_a_mapping, _ids_not_json, _repeated_id,
    _no_features_tensor,
])
def test_damaged_or_stale_cache_is_rebuilt(samples, cfg, calls, caplog, damage):
    good = _extract(samples, cfg)
    path = _cache_path(cfg)
    damage(path)
    with caplog.at_level(logging.WARNING, logger="captioner.features"):
        rebuilt = _extract(samples, cfg)
    assert calls == [6, 6], "the damaged cache was used instead of being rebuilt"
    assert f"feature cache {path}" in caplog.text and "rebuilding it" in caplog.text
    assert rebuilt.ids == good.ids and torch.equal(rebuilt.features, good.features)
    assert rebuilt.features.dtype == torch.float32
    _extract(samples, cfg)  # and the rewritten file is valid again
    assert calls == [6, 6]


def test_changed_preprocessing_or_image_set_uses_a_new_cache(samples, cfg, calls, monkeypatch):
    _extract(samples, cfg)
    _extract(samples[:4], cfg)  # another image set: its own file
    assert calls == [6, 4]
    monkeypatch.setattr(encoders, "TRANSFORM_VERSION", encoders.TRANSFORM_VERSION + 1)  # preprocessing changed
    _extract(samples, cfg)
    assert calls == [6, 4, 6]
    assert len(list(Path(cfg.cache_dir).glob("*.safetensors"))) == 3


def test_unreadable_images_are_cached_as_failed_and_reported(samples, cfg, calls, caplog):
    samples[1].path.write_bytes(b"not an image at all")
    samples[4].path.write_bytes(samples[4].path.read_bytes()[:60])  # truncated PNG
    with caplog.at_level(logging.WARNING, logger="captioner.features"):
        store = _extract(samples, cfg)
    assert sorted(store.failed) == ["101", "104"] and len(store.ids) == 4
    assert "2 of 6 images could not be read" in caplog.text and "skipped" in caplog.text
    again = _extract(samples, cfg)  # the failures are part of the valid cache: no second attempt
    assert calls == [6] and again.failed == store.failed
    with pytest.raises(DataError, match=r"2 of 6 images could not be read \(e\.g\. 101: .*1\.png.*data\.strict"):
        _extract(samples, cfg, strict=True)


def test_image_replaced_on_disk_makes_the_cache_stale(samples, cfg, calls, caplog):
    samples[3].path.write_bytes(b"<html>404 not found</html>")  # a failed download
    assert sorted(_extract(samples, cfg).failed) == ["103"]
    Image.new("RGB", (40, 30), (1, 2, 3)).save(samples[3].path)  # downloaded again
    with caplog.at_level(logging.WARNING, logger="captioner.features"):
        fixed = _extract(samples, cfg)
    assert calls == [6, 6] and "image files changed on disk" in caplog.text
    assert not fixed.failed and "103" in fixed.index
    _rewrite(_cache_path(cfg), lambda t, m: m.pop("files"))  # caches written before the check are still trusted
    assert torch.equal(_extract(samples, cfg).features, fixed.features) and calls == [6, 6]
