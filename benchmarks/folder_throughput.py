"""Folder captioning throughput (images/s), `captioner caption DIR/ --batch-size N` style, vs the encoder alone.

    python benchmarks/folder_throughput.py --folder ../shared/coco-subset/images/val2017     # first 500 COCO photos
    python benchmarks/folder_throughput.py                        # 500 generated 640x480 JPEGs in a temp folder
    python benchmarks/folder_throughput.py --checkpoint runs/<run>/best --n 1000 --batch-size 32 --workers 2

Three timed passes over the same --n images (the first --n files in the order `captioner caption DIR/` lists them),
after a one-batch warm-up of the model:

1. encoder only: the images preprocessed beforehand (Captioner.preprocess, untimed, tensors in memory: ~0.6 MB per
   image), then `Captioner.encode` on batches of --batch-size: the upper bound the pipeline can reach.
2. pipeline: exactly the loop of `captioner caption` (captioner.inference.main) with a warm model:
   `iter_batches` (DataLoader workers decode + preprocess) -> `Captioner.encode` -> `Captioner.caption_features`
   (decoding flags parsed by the CLI's own parser, so the defaults are the CLI's: beam 3), printing skipped.
3. (unless --no-cli) the whole command, `captioner.inference.main` in-process on a folder of links to the same
   images, stdout discarded: adds model loading and start-up to pass 2.

Target (issue, 2-core CPU): pipeline images/s >= 0.9x encoder-only images/s.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGET_RATIO = 0.9


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("folder_throughput", add_help=add_help, description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--folder", default=None, help="image folder (default: generate --n 640x480 JPEGs in a temp folder)")
    p.add_argument("--n", type=int, default=500, help="images to caption (default 500)")
    p.add_argument("--batch-size", type=int, default=16, help="as `captioner caption --batch-size` (CLI default 16)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="as `captioner caption --workers`")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of the CLI default beam 3")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--no-cli", action="store_true", help="skip pass 3 (the whole command incl. model loading)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    return p


def cli_args(images: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """The namespace `captioner caption` itself would build (its own parser, so every default is the CLI's)."""
    from captioner import inference

    argv = [*images, "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--beam", str(args.beam)]
    if args.checkpoint:
        argv += ["--checkpoint", args.checkpoint]
    if args.greedy:
        argv.append("--greedy")
    return inference.get_args_parser().parse_args(argv)


def pipeline_pass(captioner, paths: list[Path], cfg, batch_size: int, workers: int) -> tuple[float, int, int]:
    """The loop of captioner.inference.main, minus printing. Returns (seconds, images captioned, failed)."""
    from captioner.inference import iter_batches

    done = failed_n = 0
    t0 = time.perf_counter()
    for _batch_paths, images, failed in iter_batches(captioner, paths, batch_size, 0 if len(paths) == 1 else workers):
        failed_n += len(failed)
        if images is not None:
            done += len(captioner.caption_features(captioner.encode(images), cfg))
    return time.perf_counter() - t0, done, failed_n


def encoder_pass(captioner, batches: list) -> float:
    t0 = time.perf_counter()
    for x in batches:
        captioner.encode(x)
    return time.perf_counter() - t0


def main(args: argparse.Namespace) -> int:
    _common.set_threads(args.threads)
    import torch

    from captioner import inference

    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp_name:
        tmp = Path(tmp_name)
        paths, source = _common.folder_images(args.folder, args.n, tmp)
        captioner = _common.load_model(args.checkpoint)
        parsed = cli_args([str(p) for p in paths[:1]], args)
        cfg = inference.decode_config_from_args(parsed)
        print(f"folder throughput: {_common.describe_model(captioner)}")
        print(f"images: {len(paths)} from {source}; batch size {args.batch_size}, workers {args.workers}, decoding "
              f"{cfg.method}{'' if cfg.method != 'beam' else f' {cfg.beam_size}'}, torch threads {torch.get_num_threads()}")

        # Warm-up: one batch through encoder and decoder (allocations, oneDNN primitive caches).
        warm = captioner.preprocess(paths[: args.batch_size])
        captioner.caption_features(captioner.encode(warm), cfg)

        t0 = time.perf_counter()
        batches = [captioner.preprocess(paths[i: i + args.batch_size]) for i in range(0, len(paths), args.batch_size)]
        preprocess_s = time.perf_counter() - t0
        enc_s = encoder_pass(captioner, batches)
        n_pre = sum(len(b) for b in batches)
        del batches
        enc_ips = n_pre / enc_s
        print(f"  preprocess only (untimed setup of pass 2): {n_pre / preprocess_s:8.1f} img/s in the main process")
        print(f"  encoder only:  {enc_ips:8.1f} img/s   ({n_pre} images in {enc_s:.2f} s)", flush=True)

        pipe_s, done, failed = pipeline_pass(captioner, paths, cfg, args.batch_size, args.workers)
        pipe_ips = done / pipe_s
        print(f"  pipeline:      {pipe_ips:8.1f} img/s   ({done} images in {pipe_s:.2f} s, {failed} unreadable)", flush=True)
        ratio = pipe_ips / enc_ips
        print(f"  ratio pipeline / encoder-only: {ratio:.3f}")

        results = {"images": len(paths), "source": source, "encoder_only_img_s": round(enc_ips, 2),
                   "pipeline_img_s": round(pipe_ips, 2), "ratio": round(ratio, 4), "failed": failed,
                   "decode": {"method": cfg.method, "beam_size": cfg.beam_size}, "model": captioner.info()}
        if not args.no_cli:
            links = tmp / "cli-folder"
            links.mkdir()
            for i, p in enumerate(paths):  # numbered so the folder lists in the same order
                (links / f"{i:06d}{p.suffix.lower()}").symlink_to(p.resolve())
            cli_ns = cli_args([str(links)], args)
            t0 = time.perf_counter()
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                rc = inference.main(cli_ns)
            cli_s = time.perf_counter() - t0
            print(f"  whole command (inference.main, incl. model load): {len(paths) / cli_s:8.1f} img/s "
                  f"({cli_s:.2f} s, exit {rc})")
            results.update(cli_img_s=round(len(paths) / cli_s, 2), cli_seconds=round(cli_s, 3))
        checks = [_common.check("folder throughput / encoder-only", ratio, ">=", TARGET_RATIO, "x")]
        _common.print_summary("folder_throughput", args, results, checks)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
