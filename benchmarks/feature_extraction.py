"""Feature-cache builder throughput (images/s of features.extract_features) vs the encoder forward alone.

    python benchmarks/feature_extraction.py --folder ../shared/coco-subset/images/val2017    # first 500 COCO photos
    python benchmarks/feature_extraction.py                       # 500 generated 640x480 JPEGs in a temp folder
    python benchmarks/feature_extraction.py --n 1000 --batch-size 64 --workers 2 --encoder efficientnet_lite0

Both passes use the same --n images and the same encoder object (create_encoder(--encoder), pretrained), after a
one-batch warm-up:

1. extract_features: `captioner.features.extract_features(encoder, samples, FeatureConfig(batch_size, num_workers))`,
   the function `load_or_extract` (training, `captioner extract-features`) calls to fill the cache: DataLoader
   workers decode + preprocess with the shared eval transform, the encoder runs under inference_mode. Writing the
   cache file is not included (one safetensors write, well under a second).
2. encoder only: the same images preprocessed beforehand with the same transform (tensors in memory), then the
   encoder forward under inference_mode on batches of --batch-size.

Defaults (batch 64, 2 workers) are FeatureConfig's, i.e. what training uses.
Target (issue, 2-core CPU): extract_features images/s >= 0.9x encoder-only images/s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGET_RATIO = 0.9


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from captioner.config import FeatureConfig

    d = FeatureConfig()
    p = argparse.ArgumentParser("feature_extraction", add_help=add_help, description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=None, help="image folder (default: generate --n 640x480 JPEGs in a temp folder)")
    p.add_argument("--n", type=int, default=500, help="images (default 500)")
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"features.batch_size (default {d.batch_size})")
    p.add_argument("--workers", type=int, default=d.num_workers, help=f"features.num_workers (default {d.num_workers})")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    return p


def main(args: argparse.Namespace) -> int:
    _common.set_threads(args.threads)
    import torch

    from captioner.config import FeatureConfig
    from captioner.data import Sample
    from captioner.encoders import build_transform, create_encoder
    from captioner.features import ImageDataset, collate_images, extract_features

    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp_name:
        paths, source = _common.folder_images(args.folder, args.n, Path(tmp_name))
        samples = [Sample(f"{i:06d}", p, []) for i, p in enumerate(paths)]
        encoder = create_encoder(args.encoder, pretrained=True).to(device).eval()
        transform = build_transform(encoder.spec, train=False)  # the transform extract_features builds too
        cfg = FeatureConfig(batch_size=args.batch_size, num_workers=args.workers)
        print(f"feature extraction: encoder {args.encoder}; {len(paths)} images from {source}; batch size "
              f"{cfg.batch_size}, workers {cfg.num_workers}, torch threads {torch.get_num_threads()}")

        dataset = ImageDataset(paths, transform)  # what extract_features' DataLoader reads

        def preprocess(start: int):
            return collate_images([dataset[i] for i in range(start, min(start + args.batch_size, len(paths)))])[1]

        with torch.inference_mode():  # warm-up
            encoder(preprocess(0))

        t0 = time.perf_counter()
        batches = [preprocess(i) for i in range(0, len(paths), args.batch_size)]
        pre_s = time.perf_counter() - t0
        n_pre = sum(len(b) for b in batches)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                encoder(x.contiguous(memory_format=torch.channels_last))
        enc_s = time.perf_counter() - t0
        del batches
        enc_ips = n_pre / enc_s
        print(f"  preprocess only (untimed setup of pass 2): {n_pre / pre_s:8.1f} img/s in the main process")
        print(f"  encoder only:      {enc_ips:8.1f} img/s   ({n_pre} images in {enc_s:.2f} s)", flush=True)

        t0 = time.perf_counter()
        store = extract_features(encoder, samples, cfg, device, desc="extract_features")
        ext_s = time.perf_counter() - t0
        ext_ips = len(store.ids) / ext_s
        print(f"  extract_features:  {ext_ips:8.1f} img/s   ({len(store.ids)} images in {ext_s:.2f} s, "
              f"{len(store.failed)} unreadable)", flush=True)
        ratio = ext_ips / enc_ips
        print(f"  ratio extract_features / encoder-only: {ratio:.3f}")
        results = {"images": len(paths), "source": source, "encoder": args.encoder, "encoder_only_img_s": round(enc_ips, 2),
                   "extract_features_img_s": round(ext_ips, 2), "ratio": round(ratio, 4), "failed": len(store.failed)}
        checks = [_common.check("feature extraction / encoder-only", ratio, ">=", TARGET_RATIO, "x")]
        _common.print_summary("feature_extraction", args, results, checks)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
