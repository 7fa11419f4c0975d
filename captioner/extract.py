"""Build the feature cache for a config's splits ahead of training (training also does this on first use).

    captioner extract-features --config configs/coco_subset.yaml
    python scripts/extract_features.py --config configs/coco_subset.yaml features.batch_size=32
"""
from __future__ import annotations

import argparse
import logging

import torch

from .config import load_config
from .data import load_split
from .encoders import create_encoder
from .features import load_or_extract

log = logging.getLogger("captioner.extract")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("captioner extract-features", add_help=add_help, description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="experiment YAML")
    p.add_argument("--splits", default="train,val", help="comma-separated splits (default train,val)")
    p.add_argument("--device", default="auto")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device)
    encoder = create_encoder(cfg.model.encoder, pretrained=True)
    for split in args.splits.split(","):
        samples, _ = load_split(cfg.data, split)
        store = load_or_extract(cfg.model.encoder, samples, cfg.features, device, strict=cfg.data.strict, desc=f"{split} features", encoder=encoder)
        log.info("%s: %d images with features, %d unreadable", split, len(store.ids), len(store.failed))
    return 0
