"""Feature cache: run the frozen CNN once per (encoder, preprocessing, image set), then train the decoder from disk.

With a frozen encoder the CNN is >95% of the compute of a tutorial-style training step; caching pooled features makes
a decoder epoch on CPU take seconds instead of many minutes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import FeatureConfig
from .data import DataError, Sample
from .encoders import Encoder, build_transform, create_encoder, spec_fingerprint
from .images import ImageError, load_image

log = logging.getLogger(__name__)
CACHE_FORMAT = "captioner-features-v1"


class ImageDataset(Dataset):
    """Images by path through the shared transform; an unreadable image yields None instead of killing a worker."""

    def __init__(self, paths: Sequence[Path], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(load_image(self.paths[i])), ""
        except ImageError as err:
            return i, None, str(err)


def collate_images(batch):
    ok = [(i, x) for i, x, _ in batch if x is not None]
    failed = [(i, msg) for i, x, msg in batch if x is None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    images = torch.stack([x for _, x in ok]) if ok else None
    return idx, images, failed


@dataclass
class FeatureStore:
    """Pooled features for a set of images, row-aligned with `ids`."""

    ids: list[str]
    features: torch.Tensor
    failed: dict[str, str] = field(default_factory=dict)  # image id -> why it could not be read

    def __post_init__(self) -> None:
        self.index = {k: i for i, k in enumerate(self.ids)}

    def rows(self, image_ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.index[k] for k in image_ids], dtype=torch.long)


def image_set_hash(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.image_id):
        h.update(f"{s.image_id}\t{s.path.name}\n".encode())
    return h.hexdigest()


def image_files_signature(samples: Sequence[Sample]) -> str:
    """Size and modification time of every image file: an image replaced on disk (say, a corrupt file downloaded
    again) makes the cache stale, though its name, and so the cache file's name, stays the same."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.image_id):
        try:
            st = s.path.stat()
            h.update(f"{s.image_id}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{s.image_id}\t-\n".encode())
    return h.hexdigest()[:16]


def cache_file(cache_dir: str | os.PathLike, encoder_name: str, fingerprint: str, set_hash: str) -> Path:
    return Path(cache_dir).expanduser() / f"{encoder_name}-{fingerprint[:16]}-{set_hash[:16]}.safetensors"


def extract_features(
    encoder: Encoder, samples: Sequence[Sample], cfg: FeatureConfig, device: torch.device, desc: str = "features"
) -> FeatureStore:
    """Encoder forward over all images, batched, with a progress bar in images/s."""
    dataset = ImageDataset([s.path for s in samples], build_transform(encoder.spec, train=False))
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    encoder = encoder.to(device).eval()
    feats = torch.zeros(len(samples), encoder.spec.feature_dim)
    have = torch.zeros(len(samples), dtype=torch.bool)
    failed: dict[str, str] = {}
    with torch.inference_mode(), tqdm(total=len(samples), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for idx, images, bad in loader:
            for i, msg in bad:
                failed[samples[i].image_id] = msg
            if images is not None:
                images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                feats[idx] = encoder(images).float().cpu()
                have[idx] = True
            bar.update(len(idx) + len(bad))
    keep = have.nonzero().flatten()
    return FeatureStore([samples[i].image_id for i in keep.tolist()], feats[keep].contiguous(), failed)


def _read_cache(path: Path, fingerprint: str, feature_dim: int, expected_ids: set[str], files: str) -> FeatureStore | None:
    """A cache file only counts when its fingerprint, dtype, shape and image ids all match; anything else is rebuilt."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != fingerprint:
            log.warning("feature cache %s was written by another encoder, preprocessing or format; rebuilding it", path)
            return None
        if meta.get("files", files) != files:  # caches written before this check carry no "files" entry
            log.warning("feature cache %s: image files changed on disk since it was written; rebuilding it", path)
            return None
        ids, failed = json.loads(meta["ids"]), json.loads(meta["failed"])
        feats = load_file(str(path))["features"]
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        log.warning("feature cache %s is damaged (%s); rebuilding it", path, err)
        return None
    if not (isinstance(ids, list) and all(isinstance(k, str) for k in ids) and isinstance(failed, dict)
            and all(isinstance(v, str) for v in failed.values())):
        log.warning("feature cache %s has malformed image id lists; rebuilding it", path)
        return None
    # Sizes as well as sets: a repeated id would silently shift every later row.
    if (feats.dtype != torch.float32 or feats.ndim != 2 or feats.shape != (len(ids), feature_dim)
            or len(ids) + len(failed) != len(expected_ids) or set(ids) | set(failed) != expected_ids):
        log.warning("feature cache %s does not match the image set or encoder; rebuilding it", path)
        return None
    if not torch.isfinite(feats).all():
        log.warning("feature cache %s holds non-finite values; rebuilding it", path)
        return None
    return FeatureStore(ids, feats, failed)


def load_or_extract(
    encoder_name: str,
    samples: Sequence[Sample],
    cfg: FeatureConfig,
    device: torch.device,
    *,
    strict: bool = False,
    desc: str = "features",
    encoder: Encoder | None = None,
) -> FeatureStore:
    """Features for `samples` from the cache when valid, else extracted now and cached atomically."""
    encoder = encoder or create_encoder(encoder_name, pretrained=True)
    fingerprint = spec_fingerprint(encoder.spec)
    path = cache_file(cfg.cache_dir, encoder_name, fingerprint, image_set_hash(samples))
    files = image_files_signature(samples)
    store = _read_cache(path, fingerprint, encoder.spec.feature_dim, {s.image_id for s in samples}, files) if path.is_file() else None
    if store is None:
        store = extract_features(encoder, samples, cfg, device, desc=desc)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        meta = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "files": files, "ids": json.dumps(store.ids),
                "failed": json.dumps(store.failed)}
        try:
            save_file({"features": store.features}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("cached %d features in %s", len(store.ids), path)
    if store.failed:
        first = next(iter(store.failed.items()))
        msg = f"{len(store.failed)} of {len(samples)} images could not be read (e.g. {first[0]}: {first[1]})"
        if strict:
            raise DataError(msg + " (data.strict is set)")
        log.warning("%s; they are skipped", msg)
    return store
