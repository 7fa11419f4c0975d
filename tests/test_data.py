import json

import pytest
from PIL import Image

from captioner.config import DataConfig, SourceConfig
from captioner.data import DataError, load_coco, load_flickr8k, load_karpathy, load_split


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


@pytest.fixture
def coco(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        _img(tmp_path / "img" / name)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "A dog."}, {"id": 11, "image_id": 1, "caption": "A brown dog"},
                        {"id": 12, "image_id": 2, "caption": "A cat"}],
    }
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps(data))
    return tmp_path, ann, data


def test_coco_loader(coco):
    root, ann, _ = coco
    samples = load_coco(ann, root / "img")
    assert [s.image_id for s in samples] == ["1", "2"]
    assert samples[0].captions == ["A dog.", "A brown dog"]
    assert samples[1].path == root / "img" / "b.jpg"


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d.pop("annotations"), "missing key.*annotations"),
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\].*file_name"),
        (lambda d: d["annotations"][2].update(caption=5), r"annotations\[2\].caption"),
        (lambda d: d["annotations"].append({"id": 1, "image_id": 99, "caption": "x"}), "unknown image ids"),
    ],
)
def test_coco_malformed_names_file_and_record(coco, mutate, needle):
    root, ann, data = coco
    mutate(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=needle) as e:
        load_coco(ann, root / "img")
    assert str(ann) in str(e.value)


def test_not_json_and_not_utf8(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco(p, tmp_path)
    p.write_bytes(b'{"images": ["\xff\xfe"]}')
    with pytest.raises(DataError, match="UTF-8"):
        load_coco(p, tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_coco(tmp_path / "missing.json", tmp_path)


def test_karpathy_loader_with_restval(tmp_path):
    data = {"images": [
        {"split": "train", "filepath": "train2014", "filename": "t.jpg", "cocoid": 1, "sentences": [{"raw": "A cat."}]},
        {"split": "restval", "filepath": "val2014", "filename": "r.jpg", "cocoid": 2, "sentences": [{"raw": "A dog."}]},
        {"split": "val", "filepath": "val2014", "filename": "v.jpg", "cocoid": 3, "sentences": [{"raw": "A bird."}]},
    ]}
    p = tmp_path / "dataset_coco.json"
    p.write_text(json.dumps(data))
    assert [s.image_id for s in load_karpathy(p, tmp_path, "train")] == ["1"]
    train = load_karpathy(p, tmp_path, "train", include_restval=True)
    assert [s.image_id for s in train] == ["1", "2"]
    assert train[1].path == tmp_path / "val2014" / "r.jpg"
    assert load_karpathy(p, tmp_path, "val")[0].captions == ["A bird."]
    data["images"][0]["sentences"] = [{"tokens": []}]
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"sentences\[0\].*raw"):
        load_karpathy(p, tmp_path, "train")


def test_flickr8k_loader_and_holdout(tmp_path):
    lines = ["image,caption"] + [f"im{i}.jpg,A dog, running number {i}" for i in range(6)] + ["im0.jpg,Second caption"]
    p = tmp_path / "captions.txt"
    p.write_text("\n".join(lines))
    all_ = load_flickr8k(p, tmp_path)
    assert len(all_) == 6 and all_[0].captions == ["A dog, running number 0", "Second caption"]
    train, val, test = (load_flickr8k(p, tmp_path, s, holdout=1) for s in ("train", "val", "test"))
    assert [s.image_id for s in val] == ["im5.jpg"] and [s.image_id for s in test] == ["im4.jpg"] and len(train) == 4
    p.write_text("file;text\nim0.jpg;x")
    with pytest.raises(DataError, match="header"):
        load_flickr8k(p, tmp_path)


def test_load_split_merges_sources_and_reports_problems(coco, tmp_path):
    root, ann, data = coco
    data["images"].append({"id": 3, "file_name": "missing.jpg"})
    data["annotations"] += [{"id": 13, "image_id": 3, "caption": "gone"}, {"id": 14, "image_id": 2, "caption": " ... "}]
    ann.write_text(json.dumps(data))
    src = SourceConfig(format="coco", annotations="captions.json", images="img")
    cfg = DataConfig(root=str(root), train=[src, src])
    samples, report = load_split(cfg, "train")
    assert [s.image_id for s in samples] == ["1", "2"]
    assert report.missing_images and report.missing_images[0].endswith("missing.jpg")
    assert report.empty_captions == 2  # the punctuation-only caption, once per source
    assert report.duplicate_ids == 3
    with pytest.raises(DataError, match="strict"):
        load_split(DataConfig(root=str(root), train=[src], strict=True), "train")
    with pytest.raises(DataError, match="data.val"):
        load_split(cfg, "val")
