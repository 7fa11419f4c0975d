"""A synthetic captioning set: coloured shapes whose captions state colour, shape and position.

Why: tests must prove that training really learns, without network or the shared data, in seconds. A model that
learned gets nearly every held-out caption right; an untrained or random one gets almost none.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (40, 60, 220), "yellow": (235, 210, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
TEMPLATES = ("a {c} {s} on the {p}", "a {c} {s} on the {p} side", "there is a {c} {s} on the {p}")


def draw_shape(colour: str, shape: str, position: str, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(rng.randint(200, 255) for _ in range(3)))
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 8, size // 5)
    cx, cy = {"left": (size // 4, size // 2), "right": (3 * size // 4, size // 2),
              "top": (size // 2, size // 4), "bottom": (size // 2, 3 * size // 4)}[position]
    cx += rng.randint(-size // 16, size // 16)
    cy += rng.randint(-size // 16, size // 16)
    fill = tuple(min(255, max(0, v + rng.randint(-20, 20))) for v in COLOURS[colour])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def make_split(root: Path, split: str, n: int, seed: int, size: int = 64, captions_per_image: int = 3) -> Path:
    """Write n PNG images under root/split/ and a COCO caption JSON root/captions_{split}.json; returns the JSON."""
    rng = random.Random(seed)
    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        c, s, p = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(POSITIONS)
        image_id = seed * 100_000 + i
        name = f"{split}_{i:05d}.png"
        draw_shape(c, s, p, size, rng).save(img_dir / name)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size, "license": 0})
        for t in rng.sample(TEMPLATES, k=min(captions_per_image, len(TEMPLATES))):
            anns.append({"id": len(anns) + seed * 1_000_000, "image_id": image_id, "caption": t.format(c=c, s=s, p=p).capitalize() + "."})
    path = root / f"captions_{split}.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns}))
    return path


def make_dataset(root: Path, n_train: int = 400, n_val: int = 80, size: int = 64) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {"train": make_split(root, "train", n_train, seed=1, size=size),
            "val": make_split(root, "val", n_val, seed=2, size=size)}


def config_overrides(root: Path, encoder: str = "thumbnail") -> list[str]:
    """key=value overrides pointing an experiment at a synthetic set made by make_dataset(root)."""
    src = "[{{format: coco, annotations: {ann}, images: {img}}}]"
    return [
        f"data.root={root}",
        "data.train=" + src.format(ann="captions_train.json", img="train"),
        "data.val=" + src.format(ann="captions_val.json", img="val"),
        f"model.encoder={encoder}",
        "vocab.min_count=1",
        f"features.cache_dir={root / 'cache'}",
        "features.num_workers=0",
        "train.device=cpu",
        "train.tensorboard=false",
    ]
