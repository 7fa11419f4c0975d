"""Decoder training speed: an epoch on cached features vs the same epoch running the CNN on every batch.

    python benchmarks/decoder_training.py                          # COCO subset from ../shared when present
    python benchmarks/decoder_training.py --n-images 500 --cnn-batches 10
    python benchmarks/decoder_training.py --synthetic              # synthetic shapes set (no ../shared needed)

Data: the COCO subset's training part (../shared/coco-subset: annotations/captions_train_val2017part.json with
images/val2017, loaded with captioner.data.load_split), or the synthetic shapes set when that is absent or with
--synthetic. Model, vocabulary and training settings are those of --config (configs/coco_subset.yaml: Lite0
features, 512/512 LSTM, batch 64, AdamW, label smoothing 0.1), on CPU.

1. cached features (the real path of `captioner train`): features from `load_or_extract` (the cache in --cache-dir
   is filled first if needed; that time is printed but not part of the epoch), `CaptionSet.build`,
   `CaptionSet.loader`, then one full epoch of `captioner.train.train_one_epoch`. Reported: seconds per epoch and
   tokens/s (target tokens, i.e. words + <end>, per second).
2. CNN on every batch (the tutorial way): the same captions in the same order (same sampler and seed), but each
   batch loads and preprocesses its images (captioner.features.ImageDataset in --workers DataLoader workers,
   `train.num_workers` by default; one image load per caption, as tutorials do) and runs the frozen encoder under
   torch.no_grad before the same `train_one_epoch` decoder step. To keep the run short only the first
   --cnn-batches batches are timed, and the epoch is ESTIMATED as first batch (includes worker start-up)
   + mean of the other timed batches x (batches per epoch - 1). The output says so.

Target (issue, 2-core CPU): an epoch on cached features >= 20x faster than the CNN-every-batch epoch.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGET_SPEEDUP = 20.0


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("decoder_training", add_help=add_help, description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(_common.REPO / "configs" / "coco_subset.yaml"),
                   help="its model, vocab and train sections are used")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic shapes set even when ../shared exists")
    p.add_argument("--n-images", type=int, default=0, help="use only the first N training images (0 = all)")
    p.add_argument("--cnn-batches", type=int, default=8, help="batches timed on the CNN-every-batch path (>= 2)")
    p.add_argument("--workers", type=int, default=None, help="image loading workers of the CNN path (default train.num_workers)")
    p.add_argument("--cache-dir", default="/tmp/captioner-bench/features", help="feature cache for pass 1")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    return p


class EncodeEveryBatch:
    """A loader for train_one_epoch that yields (features, captions, lengths) like CaptionSet.loader, but computes
    the features now: images loaded + preprocessed by the DataLoader, then the encoder forward under no_grad."""

    def __init__(self, loader, encoder, train_set):
        self.loader, self.encoder, self.train_set = loader, encoder, train_set

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        import torch

        for idx, images, _failed in self.loader:
            if images is None:  # every image of the batch unreadable: nothing to train on
                continue
            with torch.no_grad():
                feats = self.encoder(images)
            _, caps, lengths = self.train_set.collate(idx.tolist())  # its cached features are not used
            yield feats, caps, lengths


def load_data(args: argparse.Namespace, tmp: Path):
    from captioner.config import load_config
    from captioner.data import load_split

    common = ["train.device=cpu", "train.tensorboard=false"]
    if not args.synthetic and _common.COCO_TRAIN_JSON.is_file():
        overrides = [f"data.root={_common.COCO_SUBSET}",
                     "data.train=[{format: coco, annotations: annotations/captions_train_val2017part.json, images: images/val2017}]"]
        source = f"COCO subset ({_common.COCO_TRAIN_JSON.name}, images/val2017)"
    else:
        from captioner.synthetic import config_overrides, make_dataset

        n = args.n_images or 400
        make_dataset(tmp / "synth", n_train=n, n_val=4)
        overrides = config_overrides(tmp / "synth", encoder="efficientnet_lite0")
        source = f"synthetic shapes set ({n} images)"
    cfg = load_config(args.config, [*overrides, *common])
    samples, _ = load_split(cfg.data, "train")
    if args.n_images:
        samples = samples[: args.n_images]
    return cfg, samples, source


def main(args: argparse.Namespace) -> int:
    if args.cnn_batches < 2:
        raise SystemExit("--cnn-batches must be >= 2")
    _common.set_threads(args.threads)
    import torch
    from torch.utils.data import DataLoader

    from captioner.distributed import DistInfo
    from captioner.encoders import build_transform, create_encoder
    from captioner.features import ImageDataset, collate_images, load_or_extract
    from captioner.model import ShowTellDecoder
    from captioner.train import CaptionSet, TrainState, build_optimizer, train_one_epoch
    from captioner.vocab import Vocabulary

    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp_name:
        cfg, samples, source = load_data(args, Path(tmp_name))
        vocab = Vocabulary.build((c for s in samples for c in s.captions), cfg.vocab.min_count)
        encoder = create_encoder(cfg.model.encoder, pretrained=True)
        feat_cfg = dataclasses.replace(cfg.features, cache_dir=args.cache_dir)
        t0 = time.perf_counter()
        store = load_or_extract(cfg.model.encoder, samples, feat_cfg, device, encoder=encoder, desc="feature cache")
        cache_s = time.perf_counter() - t0
        train_set = CaptionSet.build(samples, store, vocab, cfg.vocab.max_len)
        model_cfg = dataclasses.replace(cfg.model, feature_dim=encoder.spec.feature_dim, vocab_size=len(vocab))
        tcfg = cfg.train
        n_tokens = int((train_set.lengths - 1).sum())
        print(f"decoder training: {source}: {len(store.ids)} images, {len(train_set)} captions, {n_tokens} target tokens; "
              f"vocab {len(vocab)}; decoder embed {model_cfg.embed_size} hidden {model_cfg.hidden_size}; batch {tcfg.batch_size}; "
              f"torch threads {torch.get_num_threads()}")
        print(f"  feature cache ready in {cache_s:.1f} s ({args.cache_dir}; not part of any epoch time)")

        def fresh():
            torch.manual_seed(tcfg.seed)
            decoder = ShowTellDecoder(model_cfg).to(device)
            return decoder, build_optimizer(decoder, tcfg)

        # ---- 1. cached features: one full epoch of the real training loop
        decoder, optimizer = fresh()
        loader, sampler = train_set.loader(tcfg.batch_size, DistInfo(), tcfg.seed, shuffle=True)
        sampler.set_epoch(0)
        n_batches = len(loader)
        t0 = time.perf_counter()
        loss, _ = train_one_epoch(decoder, loader, optimizer, TrainState(), tcfg, device, tcfg.epochs * n_batches,
                                  lambda: False, show_progress=False)
        cached_s = time.perf_counter() - t0
        print(f"  cached features:   {cached_s:8.2f} s/epoch ({n_batches} batches, measured)   "
              f"{n_tokens / cached_s:10.0f} tokens/s   loss {loss:.3f}", flush=True)

        # ---- 2. CNN on every batch: same sampler order, first --cnn-batches batches timed
        workers = tcfg.num_workers if args.workers is None else args.workers
        decoder, optimizer = fresh()
        per_caption_paths = _caption_paths(samples, train_set)
        _, sampler = train_set.loader(tcfg.batch_size, DistInfo(), tcfg.seed, shuffle=True)
        sampler.set_epoch(0)
        image_loader = DataLoader(ImageDataset(per_caption_paths, build_transform(encoder.spec, train=False)),
                                  batch_size=tcfg.batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_images)
        cnn_loader = EncodeEveryBatch(image_loader, encoder, train_set)
        k = min(args.cnn_batches, n_batches)
        stamps: list[float] = []

        def stop_after_k() -> bool:
            stamps.append(time.perf_counter())
            return len(stamps) >= k

        t0 = time.perf_counter()
        train_one_epoch(decoder, cnn_loader, optimizer, TrainState(), tcfg, device, tcfg.epochs * n_batches,
                        stop_after_k, show_progress=False)
        times = [b - a for a, b in zip([t0, *stamps[:-1]], stamps)]
        first, rest = times[0], times[1:]
        per_batch = statistics.fmean(rest) if rest else first
        cnn_est_s = first + per_batch * (n_batches - 1)
        timed_tokens = int(sum((train_set.lengths[list(idx)] - 1).sum() for idx in _batches(sampler, tcfg.batch_size, k)))
        cnn_tok_s = timed_tokens / sum(times)
        print(f"  CNN every batch:   {cnn_est_s:8.2f} s/epoch ESTIMATED from {k} of {n_batches} batches "
              f"(first {first:.2f} s incl. {workers} worker start-up, then mean {per_batch:.3f} s, median "
              f"{statistics.median(rest) if rest else first:.3f} s per batch)   {cnn_tok_s:10.0f} tokens/s", flush=True)
        speedup = cnn_est_s / cached_s
        print(f"  cached features are {speedup:.1f}x faster per epoch")
        results = {"source": source, "images": len(store.ids), "captions": len(train_set), "tokens": n_tokens,
                   "batches_per_epoch": n_batches, "batch_size": tcfg.batch_size, "vocab": len(vocab),
                   "cache_ready_seconds": round(cache_s, 2),
                   "cached_epoch_seconds": round(cached_s, 3), "cached_tokens_s": round(n_tokens / cached_s, 1),
                   "cnn_epoch_seconds_estimated": round(cnn_est_s, 2), "cnn_batches_timed": k, "cnn_workers": workers,
                   "cnn_first_batch_seconds": round(first, 3), "cnn_batch_seconds_mean": round(per_batch, 4),
                   "cnn_tokens_s": round(cnn_tok_s, 1), "speedup": round(speedup, 2)}
        checks = [_common.check("cached-feature epoch speed-up over CNN every batch", speedup, ">=", TARGET_SPEEDUP, "x")]
        _common.print_summary("decoder_training", args, results, checks)
    return 0


def _caption_paths(samples, train_set) -> list[Path]:
    """The image file of every caption row of train_set (CaptionSet keeps image ids, one per caption)."""
    by_id = {s.image_id: s.path for s in samples}
    return [by_id[i] for i in train_set.image_ids]


def _batches(sampler, batch_size: int, k: int):
    order = list(iter(sampler))
    return [order[i * batch_size: (i + 1) * batch_size] for i in range(k)]


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
