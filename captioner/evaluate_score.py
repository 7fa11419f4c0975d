"""`captioner score`: score any COCO results file against any COCO caption file, with no model involved.

    captioner score --results results/captions_val.json --annotations captions_val2017.json
    captioner score --results mine.json --annotations captions_val2017.json --out scored/ --compare results/report_val.json

Only the images in the results file are scored (a result whose image is not in the annotations is an error), with
the same metrics and the same report as `captioner evaluate` (see captioner/evaluate.py).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .evaluate import (build_report, coco_ids, cross_check, finish, load_report, per_image_records, read_results,
                       reference_samples)
from .metrics import score_captions


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("captioner score", add_help=add_help,
                                description="Score a COCO results file against a COCO caption file.")
    p.add_argument("--results", required=True, help='COCO results JSON: [{"image_id": ..., "caption": ...}, ...]')
    p.add_argument("--annotations", required=True, help="COCO caption JSON with the reference captions")
    p.add_argument("--out", default=None, help="also write per-image scores and the report (JSON + Markdown) here")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR even when Java is available")
    p.add_argument("--cross-check", action="store_true",
                   help="also score with pycocoevalcap's own Java tokenizer and scorers, and record the difference")
    p.add_argument("--examples", type=int, default=5, help="example images in the report (default 5)")
    p.add_argument("--compare", metavar="REPORT.json", help="compare with another report (refused unless on the same images)")
    return p


def output_tag(results_path: str) -> str:
    """results/captions_val.json -> report_captions_val.json: named after the results, never overwriting evaluate's
    own report_val.json when written to the same folder."""
    return Path(results_path).stem


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    other = load_report(args.compare) if args.compare else None
    captions = read_results(args.results)
    samples = reference_samples(captions, args.annotations, args.results)
    ids = coco_ids(list(captions))
    gts = {ids[s.image_id]: s.captions for s in samples}
    res = {ids[s.image_id]: captions[s.image_id] for s in samples}
    scores = score_captions(gts, res, use_meteor=False if args.no_meteor else None)
    report = build_report(
        scores, samples, captions, ids, title=f"Scores of {Path(args.results).name} ({len(samples)} images)",
        n_examples=max(args.examples, 0), command="score", results_file=str(Path(args.results).resolve()),
        annotations=str(Path(args.annotations).resolve()), meteor_skipped=args.no_meteor, cross_check=cross_check(scores, gts, res) if args.cross_check else None,
        seconds=round(time.perf_counter() - start, 3))
    finish(report, per_image_records(scores, samples, captions, ids), args.out, output_tag(args.results), other=other,
           other_name=Path(args.compare).name if args.compare else "other")
    return 0
