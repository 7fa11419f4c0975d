"""Caption datasets: one record type, three file formats (COCO JSON, Karpathy split JSON, Flickr8k captions.txt)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DataConfig, SourceConfig

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A caption file that cannot be used; the message names the file and the record."""


@dataclass
class Sample:
    """One image and its reference captions. `image_id` is a string so ids of all formats share one key space."""

    image_id: str
    path: Path
    captions: list[str] = field(default_factory=list)


@dataclass
class LoadReport:
    """What was dropped while loading, so a user sees it instead of a silent shrink."""

    missing_images: list[str] = field(default_factory=list)
    empty_captions: int = 0
    duplicate_ids: int = 0

    def summary(self) -> str:
        parts = []
        if self.missing_images:
            parts.append(f"{len(self.missing_images)} missing image files (e.g. {self.missing_images[0]})")
        if self.empty_captions:
            parts.append(f"{self.empty_captions} empty captions dropped")
        if self.duplicate_ids:
            parts.append(f"{self.duplicate_ids} duplicate image entries merged")
        return "; ".join(parts)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def _require(obj: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")


def _list(obj: Any, where: str) -> list:
    if not isinstance(obj, list):
        raise DataError(f"{where}: expected a list, got {type(obj).__name__}")
    return obj


def _string(obj: Any, where: str) -> str:
    if not isinstance(obj, str):
        raise DataError(f"{where}: expected a string, got {type(obj).__name__} {obj!r:.40}")
    return obj


def _id(obj: Any, where: str) -> int | str:
    """Image and annotation ids: integers (COCO) or strings; never floats, booleans or containers."""
    if isinstance(obj, bool) or not isinstance(obj, (int, str)):
        raise DataError(f"{where}: expected an integer or string id, got {type(obj).__name__} {obj!r:.40}")
    return obj


def load_coco(annotations: Path, images: Path) -> list[Sample]:
    """Official COCO caption JSON, read through pycocotools (the format's reference reader)."""
    from pycocotools.coco import COCO

    data = _read_json(annotations)  # validate first: pycocotools fails with bare KeyErrors/asserts
    _require(data, ["images", "annotations"], str(annotations))
    image_list, ann_list = _list(data["images"], f"{annotations}: images"), _list(data["annotations"], f"{annotations}: annotations")
    first: dict[str, int] = {}  # str(id) -> index of its first record; Sample ids are strings, so 1 and "1" collide
    repeats: list[int] = []
    for i, img in enumerate(image_list):
        where = f"{annotations}: images[{i}]"
        _require(img, ["id", "file_name"], where)
        _id(img["id"], f"{where}.id")
        if not _string(img["file_name"], f"{where}.file_name").strip():
            raise DataError(f"{where}.file_name is empty")
        j = first.setdefault(str(img["id"]), i)
        if j != i:
            if img["file_name"] != image_list[j]["file_name"] or img["id"] != image_list[j]["id"]:
                raise DataError(f"{where}: image id {img['id']!r} is already used by images[{j}] "
                                f"({image_list[j]['file_name']!r}); ids must be unique")
            repeats.append(i)
    if repeats:
        log.warning("%s: %d repeated image records ignored (e.g. images[%d], same id and file as an earlier one)",
                    annotations, len(repeats), repeats[0])
        skip = set(repeats)
        image_list = [img for i, img in enumerate(image_list) if i not in skip]
    for i, ann in enumerate(ann_list):
        where = f"{annotations}: annotations[{i}]"
        _require(ann, ["id", "image_id", "caption"], where)
        _id(ann["id"], f"{where}.id")
        _id(ann["image_id"], f"{where}.image_id")
        if not isinstance(ann["caption"], str):
            raise DataError(f"{where}.caption is not a string")
    coco = COCO()
    coco.dataset = {"images": image_list, "annotations": ann_list}  # only what is validated reaches pycocotools
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()
    samples = []
    for image_id in sorted(coco.imgs, key=lambda k: (isinstance(k, str), k)):
        info = coco.imgs[image_id]
        caps = [a["caption"] for a in coco.imgToAnns.get(image_id, [])]
        samples.append(Sample(str(image_id), images / info["file_name"], caps))
    unknown = {a["image_id"] for a in ann_list} - set(coco.imgs)
    if unknown:
        example = min(unknown, key=lambda k: (isinstance(k, str), k))
        raise DataError(f"{annotations}: {len(unknown)} annotations refer to unknown image ids (e.g. {example!r})")
    return samples


def load_karpathy(path: Path, images: Path, split: str, include_restval: bool = False) -> list[Sample]:
    """Karpathy's dataset_{coco,flickr8k,flickr30k}.json: `images[].split`, `sentences[].raw`."""
    if split not in ("train", "val", "test", "restval"):
        raise DataError(f"{path}: karpathy split must be train, val, test or restval, got {split!r}")
    data = _read_json(path)
    _require(data, ["images"], str(path))
    wanted = {split} | ({"restval"} if include_restval else set())
    samples = []
    for i, img in enumerate(_list(data["images"], f"{path}: images")):
        where = f"{path}: images[{i}]"
        _require(img, ["split", "filename", "sentences"], where)
        if _string(img["split"], f"{where}.split") not in wanted:
            continue
        if not _string(img["filename"], f"{where}.filename").strip():
            raise DataError(f"{where}.filename is empty")
        caps = []
        for j, sent in enumerate(_list(img["sentences"], f"{where}.sentences")):
            _require(sent, ["raw"], f"{where}.sentences[{j}]")
            caps.append(_string(sent["raw"], f"{where}.sentences[{j}].raw"))
        key = "cocoid" if "cocoid" in img else "imgid" if "imgid" in img else "filename"
        image_id = _id(img[key], f"{where}.{key}")
        samples.append(Sample(str(image_id), images / _string(img.get("filepath", ""), f"{where}.filepath") / img["filename"], caps))
    return samples


def load_flickr8k(path: Path, images: Path, split: str = "", holdout: int = 0) -> list[Sample]:
    """Flickr8k `captions.txt` (CSV `image,caption` with a header). The last `holdout` images by name are val, the
    `holdout` before them test, the rest train; an empty split takes all images."""
    if not path.is_file():
        raise DataError(f"{path}: captions file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: not readable as CSV ({err})") from None
    if not rows or [c.strip().lower() for c in rows[0][1]] != ["image", "caption"]:
        raise DataError(f"{path}: expected a header line 'image,caption'")
    by_image: dict[str, list[str]] = {}
    for lineno, row in rows[1:]:
        if not row:
            continue
        if len(row) < 2 or not row[0].strip():
            raise DataError(f"{path}: line {lineno}: expected 'image,caption', got {row!r:.80}")
        by_image.setdefault(row[0].strip(), []).append(",".join(row[1:]))
    names = sorted(by_image)
    if split:
        if split not in ("train", "val", "test"):
            raise DataError(f"{path}: flickr8k split must be train, val or test, got {split!r}")
        if 2 * holdout >= len(names):
            raise DataError(f"{path}: holdout={holdout} leaves no training images out of {len(names)}")
        cut_test, cut_val = len(names) - 2 * holdout, len(names) - holdout
        names = {"train": names[:cut_test], "test": names[cut_test:cut_val], "val": names[cut_val:]}[split]
    return [Sample(n, images / n, by_image[n]) for n in names]


def load_source(src: SourceConfig, root: Path) -> list[Sample]:
    ann, img = root / Path(src.annotations).expanduser(), root / Path(src.images).expanduser()
    if src.format == "coco":
        return load_coco(ann, img)
    if src.format == "karpathy":
        return load_karpathy(ann, img, src.split or "train", src.include_restval)
    return load_flickr8k(ann, img, src.split, src.holdout)


def load_split(cfg: DataConfig, split: str) -> tuple[list[Sample], LoadReport]:
    """All sources of one split, merged by image id, with missing images and empty captions dropped and counted."""
    sources: list[SourceConfig] = getattr(cfg, split)
    if not sources:
        raise DataError(f"no data sources configured for split {split!r} (config key data.{split})")
    root = Path(cfg.root).expanduser()
    report = LoadReport()
    merged: dict[str, Sample] = {}
    for src in sources:
        for s in load_source(src, root):
            keep = [c for c in s.captions if c.strip() and any(ch.isalnum() for ch in c)]
            report.empty_captions += len(s.captions) - len(keep)
            s.captions = keep
            if s.image_id in merged:
                report.duplicate_ids += 1
                merged[s.image_id].captions.extend(keep)
            else:
                merged[s.image_id] = s
    samples = []
    for s in merged.values():
        if not s.path.is_file():
            report.missing_images.append(str(s.path))
            continue
        if s.captions:
            samples.append(s)
    if report.missing_images and cfg.strict:
        raise DataError(f"split {split}: {report.summary()} (data.strict is set)")
    if report.summary():
        log.warning("split %s: %s", split, report.summary())
    if not samples:
        raise DataError(f"split {split}: no usable images with captions ({report.summary() or 'sources are empty'})")
    return samples, report
