"""Captioning with a trained model: the one path used by `captioner caption`, `captioner evaluate` and the demo.

    captioner caption photo.jpg                              # bundled model
    captioner caption photo.jpg --checkpoint runs/<run>/best --beam 5 --n-best 3
    captioner caption photos/ --batch-size 32 --out captions.json
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from .config import ModelConfig
from .decoding import DecodeConfig, decode
from .evaluate import special_tokens
from .encoders import Encoder, WeightsUnavailableError, build_transform, create_encoder
from .images import ImageError, load_image
from .model import ShowTellDecoder
from .vocab import Vocabulary

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Caption:
    text: str
    logprob: float  # sum of token log-probabilities (incl. <end> when finished)
    score: float  # ranking score after the length penalty


class Captioner:
    """Encoder + decoder + vocabulary, rebuilt from a checkpoint's own config (never from flags)."""

    def __init__(self, encoder: Encoder, decoder: ShowTellDecoder, vocab: Vocabulary, model_config: ModelConfig,
                 device: torch.device | str = "cpu", source: str = ""):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.decoder = decoder.to(self.device).eval()
        self.vocab, self.model_config, self.source = vocab, model_config, source
        self.transform = build_transform(encoder.spec, train=False)
        self.special = special_tokens(vocab)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "Captioner":
        ckpt = load_checkpoint(path)
        cfg = ckpt.model_config
        try:
            encoder = create_encoder(cfg.encoder, pretrained=ckpt.encoder is None)
        except (ValueError, WeightsUnavailableError) as err:  # unknown name, or weights not available here
            raise CheckpointError(f"{path}: cannot build its encoder: {err}") from None
        if encoder.spec.feature_dim != cfg.feature_dim:
            raise CheckpointError(f"{path}: model expects {cfg.feature_dim}-d features but encoder {cfg.encoder} gives {encoder.spec.feature_dim}")
        if ckpt.encoder is not None:
            try:
                encoder.load_state_dict(ckpt.encoder)
            except RuntimeError as err:
                raise CheckpointError(f"{path}: encoder weights do not match encoder {cfg.encoder} ({err})") from None
        decoder = ShowTellDecoder(cfg)
        try:
            decoder.load_state_dict(ckpt.decoder)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not match the stored model config ({err})") from None
        return cls(encoder, decoder, ckpt.vocab, cfg, device, source=str(resolve_checkpoint(path)))

    def info(self) -> dict[str, Any]:
        return {"checkpoint": self.source, "encoder": self.model_config.encoder, "vocab_size": len(self.vocab),
                "embed_size": self.model_config.embed_size, "hidden_size": self.model_config.hidden_size}

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.encoder(images).float()

    def preprocess(self, images: Sequence[Image.Image | str | os.PathLike | bytes]) -> torch.Tensor:
        return torch.stack([self.transform(load_image(im)) for im in images])

    @torch.inference_mode()
    def caption_features(self, features: torch.Tensor, decode_cfg: DecodeConfig | None = None) -> list[list[Caption]]:
        hyps = decode(self.decoder, features.to(self.device), decode_cfg or DecodeConfig(), self.special)
        return [[Caption(self.vocab.decode(h.tokens), h.logprob, h.score) for h in per_image] for per_image in hyps]

    def caption(self, images: Sequence[Image.Image | str | os.PathLike | bytes], decode_cfg: DecodeConfig | None = None) -> list[list[Caption]]:
        """n-best captions per image, best first. Unreadable input raises ImageError naming it."""
        if not images:
            return []
        return self.caption_features(self.encode(self.preprocess(images)), decode_cfg)


def load_pretrained(device: torch.device | str = "cpu") -> Captioner:
    """The model shipped inside the package (trained on the COCO subset; see MODEL_CARD.md)."""
    path = PRETRAINED_DIR / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"the bundled model is missing ({path}); reinstall captioner or pass --checkpoint")
    return Captioner.from_checkpoint(path, device)


def load_captioner(checkpoint: str | os.PathLike | None, device: torch.device | str = "cpu") -> Captioner:
    return load_pretrained(device) if checkpoint in (None, "", "pretrained") else Captioner.from_checkpoint(checkpoint, device)


def list_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders expanded to their image files (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise ImageError(f"{p}: no such file or folder")
    return out


def iter_batches(captioner: Captioner, paths: Sequence[Path], batch_size: int, num_workers: int) -> Iterator[tuple[list[Path], torch.Tensor | None, dict[Path, str]]]:
    """Decode and preprocess images in DataLoader workers so JPEG decoding hides behind the encoder."""
    from torch.utils.data import DataLoader

    from .features import ImageDataset, collate_images

    loader = DataLoader(ImageDataset(paths, captioner.transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_images, pin_memory=captioner.device.type == "cuda")
    for idx, images, failed in loader:
        yield [paths[i] for i in idx.tolist()], images, {paths[i]: msg for i, msg in failed}


# --------------------------------------------------------------------------- CLI: captioner caption


def add_decode_args(p) -> None:
    """Decoding flags shared by `caption` and `evaluate`."""
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of beam search")
    p.add_argument("--beam", type=int, default=3, help="beam size (default 3)")
    p.add_argument("--n-best", type=int, default=1, help="captions to print per image")
    p.add_argument("--sample", action="store_true", help="sample instead of searching")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--length-penalty", default="none", choices=["none", "avg", "gnmt"])
    p.add_argument("--seed", type=int, default=None, help="seed for --sample")


def decode_config_from_args(args) -> DecodeConfig:
    method = "greedy" if args.greedy else "sample" if args.sample else "beam"
    return DecodeConfig(method=method, beam_size=args.beam, n_best=args.n_best, max_len=args.max_len,
                        length_penalty=args.length_penalty, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed)


def get_args_parser(add_help: bool = True):
    import argparse

    p = argparse.ArgumentParser("captioner caption", add_help=add_help, description="Caption images or folders of images.")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="image decoding workers")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write [{file, caption, score}] JSON here")
    add_decode_args(p)
    return p


def main(args) -> int:
    import json
    import sys

    from tqdm.auto import tqdm

    captioner = load_captioner(args.checkpoint, args.device)
    cfg = decode_config_from_args(args)
    paths = list_images(args.images)
    if not paths:
        raise ImageError(f"no images found in {' '.join(args.images)}")
    results, n_failed = [], 0
    single = len(paths) == 1
    with tqdm(total=len(paths), unit="img", disable=single or not sys.stderr.isatty()) as bar:
        for batch_paths, images, failed in iter_batches(captioner, paths, args.batch_size, 0 if single else args.workers):
            for path, msg in failed.items():
                n_failed += 1
                print(f"{path}: error: {msg}", file=sys.stderr)
            if images is not None:
                for path, caps in zip(batch_paths, captioner.caption_features(captioner.encode(images), cfg)):
                    for c in caps:
                        print(f"{c.text}" if single and cfg.n_best == 1 else f"{path}\t{c.score:.3f}\t{c.text}")
                    results.append({"file": str(path), "captions": [{"caption": c.text, "score": c.score, "logprob": c.logprob} for c in caps]})
            bar.update(len(batch_paths) + len(failed))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 1 if n_failed and not results else 0
