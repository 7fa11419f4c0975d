"""Helpers shared by the benchmark scripts: machine description, timing statistics, target lines, inputs.

Nothing here re-implements package behaviour: images are decoded, preprocessed, encoded and captioned only through
captioner's own functions (load_image, build_transform, Captioner.encode/caption/caption_features, iter_batches,
extract_features, train_one_epoch). This module only makes inputs and formats figures.
"""
from __future__ import annotations

import io
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO_SUBSET = SHARED / "coco-subset"
COCO_TRAIN_JSON = COCO_SUBSET / "annotations" / "captions_train_val2017part.json"
COCO_VAL2017 = COCO_SUBSET / "images" / "val2017"
DEFAULT_PHOTO = REPO / "captioner" / "assets" / "examples" / "bus_176037.jpg"


# --------------------------------------------------------------------------- machine, summary


def machine() -> dict[str, Any]:
    """What the figures depend on; printed in every JSON summary."""
    import torch

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": cpu_model or platform.processor(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1_5_15": load,  # a busy machine shows here: figures measured with load > cores are noisy
    }


def print_summary(benchmark: str, args: Any, results: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    """The one JSON line every script ends with."""
    out = {
        "benchmark": benchmark,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        "targets": checks,
        "machine": machine(),
    }
    print(json.dumps(out, sort_keys=False), flush=True)


def check(name: str, measured: float, op: str, target: float, unit: str = "") -> dict[str, Any]:
    """Print `name: measured (target op target) PASS/MISS` and return it as a dict for the summary."""
    ok = measured <= target if op == "<=" else measured >= target
    print(f"  TARGET {name}: {measured:.4g}{unit}   target {op} {target:g}{unit}   {'PASS' if ok else 'MISS'}", flush=True)
    return {"name": name, "measured": round(measured, 4), "op": op, "target": target, "unit": unit.strip(),
            "status": "PASS" if ok else "MISS"}


def set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------- timing


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_stats(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"runs": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p95_ms": round(percentile(ms, 95), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3)}


def format_latency(name: str, st: dict[str, float]) -> str:
    return (f"  {name:<34} p50 {st['p50_ms']:8.2f} ms   p95 {st['p95_ms']:8.2f} ms   "
            f"mean {st['mean_ms']:8.2f}   min {st['min_ms']:8.2f}   ({st['runs']} runs)")


# --------------------------------------------------------------------------- inputs


def photo_jpeg_bytes(source: str | os.PathLike | None = None, size: tuple[int, int] = (640, 480), quality: int = 90) -> bytes:
    """A deterministic, photo-like JPEG of `size`: a real photo (default: a bundled example) resized to it."""
    from PIL import Image

    with Image.open(source or DEFAULT_PHOTO) as im:
        im = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def folder_images(folder: str | os.PathLike | None, n: int, tmp: Path) -> tuple[list[Path], str]:
    """The first `n` images of `folder` in the order `captioner caption DIR/` lists them; else `n` generated
    640x480 JPEGs (bundled photos resized, with a shifted crop each, so no two files are identical)."""
    from captioner.inference import list_images

    if folder and Path(folder).is_dir():
        paths = list_images([folder])[:n]
        if len(paths) < n:
            print(f"  note: {folder} holds only {len(paths)} images (asked for {n})", flush=True)
        return paths, str(folder)
    if folder:
        print(f"  note: {folder} not found; generating {n} JPEGs instead", flush=True)
    return generate_jpegs(tmp / "images", n), f"{n} generated 640x480 JPEGs"


def generate_jpegs(out: Path, n: int, size: tuple[int, int] = (640, 480)) -> list[Path]:
    from PIL import Image

    from captioner.assets import example_images

    out.mkdir(parents=True, exist_ok=True)
    photos = []
    for p in example_images():
        with Image.open(p) as im:
            photos.append(im.convert("RGB").resize((size[0] + 64, size[1] + 48), Image.Resampling.BICUBIC))
    paths = []
    for i in range(n):
        im = photos[i % len(photos)]
        dx, dy = (i * 7) % 64, (i * 5) % 48
        path = out / f"img_{i:05d}.jpg"
        im.crop((dx, dy, dx + size[0], dy + size[1])).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- model


def load_model(checkpoint: str | None, device: str = "cpu"):
    """`load_captioner(checkpoint)`; a missing bundled model ends the script with a hint instead of a traceback."""
    from captioner.checkpoint import CheckpointError
    from captioner.inference import load_captioner

    try:
        return load_captioner(checkpoint, device)
    except CheckpointError as err:
        sys.exit(f"error: {err}\n  (no bundled model yet? make a stand-in with:  python benchmarks/make_dev_checkpoint.py"
                 f"  and pass --checkpoint /tmp/captioner-bench/dev.safetensors)")


def describe_model(captioner) -> str:
    info = captioner.info()
    return (f"model {info['checkpoint']}: encoder {info['encoder']}, vocab {info['vocab_size']}, "
            f"embed {info['embed_size']}, hidden {info['hidden_size']}")
