"""Caption a split and score it: shared by `captioner evaluate`, checkpoint selection during training, and SCST.

    captioner evaluate --checkpoint runs/<run>/best --split val --beam 3 --out results/
    captioner evaluate --annotations captions_val2017.json --images val2017/ --checkpoint runs/<run>/best
    captioner evaluate ... --compare results_old/report_val.json     # refuses reports of other image sets

Writes, under --out: the captions in the COCO results format (captions_<split>.json),
per-image scores (scores_<split>.json) and a report (report_<split>.json / .md). The
scores are captioner.metrics' (the official COCO numbers without Java); --cross-check
also runs pycocoevalcap's own tokenizer and scorers (Java) and records the difference.
`captioner score` (evaluate_score.py) scores any results file with the same report.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError, DataConfig, ExperimentConfig, FeatureConfig, SourceConfig, from_dict, load_config
from .data import DataError, LoadReport, Sample, load_coco, load_split
from .decoding import DecodeConfig, SpecialTokens, decode
from .features import FeatureStore
from .metrics import METRIC_NAMES, MetricsError, ScoreReport, check_same_image_set, score_captions
from .text import tokenize
from .vocab import SPECIALS, Vocabulary

log = logging.getLogger(__name__)
REPORT_FORMAT = "captioner-eval-report-v1"


def special_tokens(vocab: Vocabulary) -> SpecialTokens:
    return SpecialTokens(pad=vocab.pad_id, start=vocab.start_id, end=vocab.end_id, unk=vocab.unk_id)


@torch.no_grad()
def caption_features(decoder: torch.nn.Module, vocab: Vocabulary, features: torch.Tensor, cfg: DecodeConfig,
                     device: torch.device, batch_size: int = 200) -> list[str]:
    """Best caption per feature row, decoded in batches."""
    was_training = decoder.training
    decoder.eval()
    out: list[str] = []
    for i in range(0, len(features), batch_size):
        hyps = decode(decoder, features[i : i + batch_size].to(device), cfg, special_tokens(vocab))
        out.extend(vocab.decode(h[0].tokens) if h else "" for h in hyps)
    decoder.train(was_training)
    return out


def greedy_cider(decoder: torch.nn.Module, samples: Sequence[Sample], store: FeatureStore, vocab: Vocabulary,
                 device: torch.device, max_len: int = 20) -> float:
    """CIDEr-D of greedy captions on a split (document frequencies from its references, as in evaluation)."""
    samples = [s for s in samples if s.image_id in store.index]
    feats = store.features[store.rows([s.image_id for s in samples])]
    caps = caption_features(decoder, vocab, feats, DecodeConfig(method="greedy", max_len=max_len), device)
    report = score_captions({s.image_id: s.captions for s in samples}, {s.image_id: c for s, c in zip(samples, caps)}, use_meteor=False)
    return float(report.corpus["CIDEr-D"])


# --------------------------------------------------------------------------- results files and references


def coco_ids(image_ids: Sequence[str]) -> dict[str, int | str]:
    """captioner's string image ids -> the ids written to results files: ints when every id is an integer (as in
    COCO, whose tools match ids by type), else the strings. evaluate and score use the same rule, so the image-set
    hash of a report does not depend on which command made it."""
    as_int: dict[str, int | str] = {}
    for k in image_ids:
        try:
            v = int(k)
        except ValueError:
            return {k: k for k in image_ids}
        if str(v) != k:  # "007", "+7", " 7" are names, not numbers
            return {k: k for k in image_ids}
        as_int[k] = v
    return as_int


def read_results(path: str | os.PathLike) -> dict[str, str]:
    """A COCO results file (``[{"image_id": ..., "caption": ...}, ...]``) -> {image id as a string: caption}, in file
    order. Anything else (not JSON, not such records, a non-string caption, an id twice) raises MetricsError naming
    the file and the record, because a silently skipped or doubled image changes every corpus score."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: results file not found")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetricsError(f"{path}: not a valid JSON results file ({err})") from None
    if not isinstance(data, list):
        raise MetricsError(f'{path}: a results file is a JSON list of {{"image_id": ..., "caption": ...}} records, got a {type(data).__name__}')
    if not data:
        raise MetricsError(f"{path}: the results file holds no captions")
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for i, rec in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict) or "image_id" not in rec or "caption" not in rec:
            raise MetricsError(f'{where}: expected an object with "image_id" and "caption", got {json.dumps(rec)[:80]}')
        image_id, caption = rec["image_id"], rec["caption"]
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            raise MetricsError(f"{where}: image_id must be an integer or a string, got {image_id!r}")
        if not isinstance(caption, str):
            raise MetricsError(f"{where}: caption must be a string, got {caption!r}")
        key = str(image_id)
        if key in out:
            raise MetricsError(f"{where}: duplicate image_id {image_id!r} (also record {first[key]}); one caption per image")
        out[key], first[key] = caption, i
    return out


def reference_samples(results: Mapping[str, str], annotations: str | os.PathLike, results_name: str = "results") -> list[Sample]:
    """The references of exactly the images in ``results`` (in its order), from a COCO caption file. A result whose
    image is not in the file, or has no reference caption there, is an error naming it."""
    by_id = {s.image_id: s for s in load_coco(Path(annotations), Path())}
    order = list(results)
    unknown = [k for k in order if k not in by_id]
    if unknown:
        raise MetricsError(f"{results_name}: record {order.index(unknown[0])}: image_id {unknown[0]} is not in {annotations} "
                           f"({len(unknown)} result id(s) unknown there, e.g. {', '.join(unknown[:3])})")
    empty = [k for k in order if not by_id[k].captions]
    if empty:
        raise MetricsError(f"{annotations}: image {empty[0]} has no reference caption ({len(empty)} such result image(s)); it cannot be scored")
    return [by_id[k] for k in order]


# --------------------------------------------------------------------------- reports


def caption_stats(captions: Sequence[str], vocab: Vocabulary | None = None) -> dict[str, Any]:
    """Length in words (the tokens that are scored) and distinct words used: short, generic captions from a
    handful of words are the usual failure that corpus scores hide."""
    tokens = [tokenize(c) for c in captions]
    lengths = [len(t) for t in tokens]
    distinct = {w for t in tokens for w in t}
    out: dict[str, Any] = {"length_mean": float(np.mean(lengths)) if lengths else 0.0, "length_min": min(lengths, default=0),
                           "length_max": max(lengths, default=0), "distinct_words": len(distinct)}
    if vocab is not None:
        size = len(vocab) - len(SPECIALS)
        out["vocab_words"] = size
        out["vocab_usage"] = len(distinct) / size if size else None
    return out


def pick_examples(per_image: Mapping[Hashable, Mapping[str, float]], k: int) -> list[Hashable]:
    """k image ids spread evenly over the CIDEr-D ranking (best first, worst last): successes and failures both."""
    ranked = sorted(per_image, key=lambda i: (-per_image[i]["CIDEr-D"], str(i)))
    if k <= 0:
        return []
    if k >= len(ranked):
        return ranked
    return [ranked[i] for i in sorted(set(np.linspace(0, len(ranked) - 1, k).round().astype(int).tolist()))]


def per_image_records(scores: ScoreReport, samples: Sequence[Sample], captions: Mapping[str, str], ids: Mapping[str, int | str]) -> list[dict[str, Any]]:
    """One record per scored image: id, file name, caption and its scores (a list, so int ids stay ints in JSON)."""
    return [{"image_id": ids[s.image_id], "file_name": s.path.name, "caption": captions[s.image_id], **scores.per_image[ids[s.image_id]]}
            for s in samples]


def build_report(scores: ScoreReport, samples: Sequence[Sample], captions: Mapping[str, str], ids: Mapping[str, int | str], *,
                 title: str, vocab: Vocabulary | None = None, n_examples: int = 5, **meta: Any) -> dict[str, Any]:
    """The JSON report. It records the image set (count and hash) so that reports of different sets are never compared."""
    by_id = {ids[s.image_id]: s for s in samples}
    examples = []
    for k in pick_examples(scores.per_image, n_examples):
        s = by_id[k]
        examples.append({"image_id": k, "file_name": s.path.name, "caption": captions[s.image_id], "references": list(s.captions),
                         "CIDEr-D": scores.per_image[k]["CIDEr-D"]})
    return {"format": REPORT_FORMAT, "title": title, "n_images": scores.n_images, "image_set_hash": scores.image_set_hash,
            "metrics": dict(scores.corpus), "meteor_available": scores.meteor_available, "tokenizer": scores.tokenizer,
            "captions": caption_stats([captions[s.image_id] for s in samples], vocab), **meta, "examples": examples}


def _fmt(value: float | None, missing: str = "unavailable") -> str:
    return missing if value is None else f"{value:.4f}"


def _missing(report: Mapping[str, Any]) -> str:
    """How a metric without a value is shown: skipped on request (--no-meteor), or unavailable here (no Java)."""
    return "skipped" if report.get("meteor_skipped") else "unavailable"


def render_markdown(report: Mapping[str, Any], examples: bool = True) -> str:
    """The report for people: metric table, what was scored and how, a few examples."""
    lines = [f"# {report['title']}", "", "| metric | score |", "|---|---|"]
    lines += [f"| {m} | {_fmt(report['metrics'].get(m), _missing(report))} |" for m in METRIC_NAMES]
    lines.append("")
    if report.get("meteor_skipped"):
        lines += ["METEOR skipped (--no-meteor).", ""]
    elif not report["meteor_available"]:
        lines += ["METEOR unavailable: it needs Java on the PATH and pycocoevalcap (`pip install 'captioner[dev]'`). "
                  "It is left out, never reported as 0.", ""]
    caps = report["captions"]
    facts = [f"images: {report['n_images']} (image-set hash `{report['image_set_hash']}`)"]
    for key in ("checkpoint", "results_file", "annotations"):
        if report.get(key):
            facts.append(f"{key.replace('_', ' ')}: `{report[key]}`")
    if report.get("data"):
        facts.append("data: " + ", ".join(f"{k} `{v}`" for k, v in report["data"].items() if k != "sources"))
    if report.get("decoding"):
        facts.append("decoding: " + " ".join(f"{k}={v}" for k, v in report["decoding"].items()))
    facts.append(f"caption length: mean {caps['length_mean']:.2f} words (min {caps['length_min']}, max {caps['length_max']})")
    if caps.get("vocab_words"):
        facts.append(f"vocabulary usage: {caps['distinct_words']} distinct words of {caps['vocab_words']} ({100 * caps['vocab_usage']:.1f}%)")
    else:
        facts.append(f"distinct words: {caps['distinct_words']}")
    skipped = {k: v for k, v in (report.get("skipped") or {}).items() if v}
    if skipped:
        facts.append("skipped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
    check = report.get("cross_check")
    if check:
        facts.append(f"cross-check with {check['tool']}: max |difference| {check['max_abs_diff_corpus']:.2e} (corpus), "
                     f"{check['max_abs_diff_per_image']:.2e} (per image)")
    if report.get("seconds") is not None:
        parts = [f"{name} {report[key]:.1f} s" for key, name in (("seconds_captioning", "captioning"), ("seconds_scoring", "scoring"))
                 if report.get(key) is not None]
        facts.append(f"time: {report['seconds']:.1f} s in all" + (f" ({', '.join(parts)})" if parts else ""))
    lines += [f"- {f}" for f in facts]
    if report.get("comparison"):
        lines += ["", "## Comparison", "", report["comparison"]]
    if examples and report.get("examples"):
        lines += ["", "## Examples (spread from best to worst CIDEr-D)", ""]
        for i, ex in enumerate(report["examples"], 1):
            lines += [f"{i}. `{ex['file_name']}` (image {ex['image_id']}, CIDEr-D {ex['CIDEr-D']:.3f})",
                      f"   - caption: {ex['caption'] or '(empty)'}"]
            lines += [f"   - reference: {r.strip()}" for r in ex["references"]]
    return "\n".join(lines) + "\n"


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report JSON written by `captioner evaluate` or `captioner score`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetricsError(f"{path}: report not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetricsError(f"{path}: not a JSON report ({err})") from None
    if not isinstance(data, dict) or not {"metrics", "n_images", "image_set_hash"} <= data.keys():
        raise MetricsError(f"{path}: not a captioner score report (needs metrics, n_images and image_set_hash)")
    return data


def compare_reports(report: Mapping[str, Any], other: Mapping[str, Any], other_name: str = "other") -> str:
    """Markdown table of two reports' scores and their difference. Raises ImageSetMismatchError when they were scored
    on different image sets: CIDEr-D's document frequencies (and every corpus mean) depend on the set."""
    check_same_image_set(report, other)
    lines = [f"| metric | this | {other_name} | difference |", "|---|---|---|---|"]
    for m in METRIC_NAMES:
        a, b = report["metrics"].get(m), other["metrics"].get(m)
        diff = "" if a is None or b is None else f"{a - b:+.4f}"
        lines.append(f"| {m} | {_fmt(a, _missing(report))} | {_fmt(b, _missing(other))} | {diff} |")
    return "\n".join(lines)


def official_available() -> bool:
    """pycocoevalcap importable and Java on the PATH (its PTBTokenizer is Java)."""
    import importlib.util
    import shutil

    return shutil.which("java") is not None and importlib.util.find_spec("pycocoevalcap") is not None


def official_scores(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, str]) -> tuple[dict[str, float], dict[Hashable, dict[str, float]]]:
    """BLEU-1..4, ROUGE-L and CIDEr-D from pycocoevalcap itself, the way COCOEvalCap.evaluate runs them: the Java
    PTBTokenizer over references and candidates, then its Bleu(4), Rouge and Cider (which is CIDEr-D)."""
    if not official_available():
        raise MetricsError("the cross-check needs Java on the PATH and pycocoevalcap (pip install 'captioner[dev]')")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    g = tokenizer.tokenize({k: [{"caption": c} for c in gts[k]] for k in gts})
    r = tokenizer.tokenize({k: [{"caption": res[k]}] for k in gts})
    keys = list(g)
    bleu_c, bleu_i = Bleu(4).compute_score(g, r, verbose=0)
    rouge_c, rouge_i = Rouge().compute_score(g, r)
    cider_c, cider_i = Cider().compute_score(g, r)
    corpus = {f"BLEU-{n + 1}": float(bleu_c[n]) for n in range(4)} | {"ROUGE-L": float(rouge_c), "CIDEr-D": float(cider_c)}
    per_image = {k: {f"BLEU-{n + 1}": float(bleu_i[n][j]) for n in range(4)} | {"ROUGE-L": float(rouge_i[j]), "CIDEr-D": float(cider_i[j])}
                 for j, k in enumerate(keys)}
    return corpus, per_image


def cross_check(scores: ScoreReport, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, str]) -> dict[str, Any]:
    """Our scores against pycocoevalcap's on the same captions: the largest absolute differences, per metric."""
    from importlib.metadata import version

    official, official_images = official_scores(gts, res)
    by_metric = {}
    for m in official:
        corpus_diff = abs(float(scores.corpus[m]) - official[m])
        image_diff = max(abs(scores.per_image[k][m] - official_images[k][m]) for k in official_images)
        by_metric[m] = {"corpus": corpus_diff, "per_image": image_diff}
    return {"tool": f"pycocoevalcap {version('pycocoevalcap')} (Java PTBTokenizer, Bleu, Rouge, Cider)", "official": official,
            "max_abs_diff_corpus": max(d["corpus"] for d in by_metric.values()),
            "max_abs_diff_per_image": max(d["per_image"] for d in by_metric.values()), "by_metric": by_metric}


def finish(report: dict[str, Any], per_image: list[dict[str, Any]], out_dir: str | os.PathLike | None, tag: str, *,
           results: list[dict[str, Any]] | None = None, other: Mapping[str, Any] | None = None, other_name: str = "other") -> dict[str, Path]:
    """Compare (if asked), write the files, print the summary. A comparison across image sets is refused with an
    error, after this report has been written."""
    mismatch: MetricsError | None = None
    if other is not None:
        try:
            report["comparison"] = compare_reports(report, other, other_name)
        except MetricsError as err:
            mismatch = err
    files: dict[str, Path] = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if results is not None:
            files["results"] = out / f"captions_{tag}.json"
        files |= {"per_image": out / f"scores_{tag}.json", "report_json": out / f"report_{tag}.json", "report_md": out / f"report_{tag}.md"}
        report["files"] = {k: p.name for k, p in files.items()}
        if results is not None:
            files["results"].write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
        files["per_image"].write_text(json.dumps(per_image, indent=1, ensure_ascii=False), encoding="utf-8")
        files["report_json"].write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        files["report_md"].write_text(render_markdown(report), encoding="utf-8")
    print(render_markdown(report, examples=False), end="")
    for p in files.values():
        print(f"wrote {p}")
    if mismatch is not None:
        raise mismatch
    return files


# --------------------------------------------------------------------------- CLI: captioner evaluate


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from .inference import add_decode_args

    p = argparse.ArgumentParser("captioner evaluate", add_help=add_help,
                                description="Caption a split with a checkpoint and score it (BLEU, METEOR, ROUGE-L, CIDEr-D).")
    p.add_argument("--checkpoint", default=None, help="checkpoint file or run folder (default: the bundled model)")
    data = p.add_argument_group("data (default: --split of the experiment recorded in the checkpoint)")
    data.add_argument("--split", default="val", choices=["train", "val", "test"],
                      help="split to evaluate (default val); with --annotations it only names the output files")
    data.add_argument("--config", help="experiment YAML whose data.<split> to use instead of the checkpoint's")
    data.add_argument("--annotations", help="any COCO caption JSON to evaluate on (with --images)")
    data.add_argument("--images", help="the folder the file names in --annotations are relative to")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--batch-size", type=int, default=100, help="images decoded together (default 100)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="image loading workers")
    p.add_argument("--cache-dir", help="feature cache folder (default: the experiment's features.cache_dir)")
    p.add_argument("--no-cache", action="store_true", help="encode the images now instead of using the feature cache")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR even when Java is available")
    p.add_argument("--cross-check", action="store_true",
                   help="also score with pycocoevalcap's own Java tokenizer and scorers, and record the difference")
    p.add_argument("--examples", type=int, default=5, help="example images in the report (default 5)")
    p.add_argument("--compare", metavar="REPORT.json", help="compare with another report (refused unless on the same images)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_decode_args(p)
    return p


def _evaluation_set(args: argparse.Namespace, experiment: dict[str, Any]) -> tuple[list[Sample], LoadReport, dict[str, Any], FeatureConfig]:
    """The samples to evaluate, what they are (for the report), and the feature cache settings."""
    def recorded() -> ExperimentConfig:
        try:
            return from_dict(ExperimentConfig, experiment)
        except ConfigError as err:
            raise ConfigError(f"the checkpoint's recorded experiment config: {err}; pass --config FILE") from None

    if args.annotations:
        if not args.images:
            raise ConfigError("--annotations needs --images (the folder its file names are relative to)")
        if args.config:
            raise ConfigError("use either --config (a configured split) or --annotations with --images, not both")
        ann, img = Path(args.annotations).expanduser().resolve(), Path(args.images).expanduser().resolve()
        if not img.is_dir():
            raise DataError(f"{img}: image folder not found")
        data = DataConfig(root="/", val=[SourceConfig(format="coco", annotations=str(ann), images=str(img))])
        samples, load_report = load_split(data, "val")
        features = recorded().features if experiment else FeatureConfig()
        return samples, load_report, {"annotations": str(ann), "images": str(img)}, features
    if args.images:
        raise ConfigError("--images goes with --annotations")
    if args.config:
        cfg = load_config(args.config)
    elif experiment:
        cfg = recorded()
    else:
        raise ConfigError("the checkpoint records no experiment config: pass --config FILE, or --annotations FILE --images DIR")
    samples, load_report = load_split(cfg.data, args.split)
    info = {"split": args.split, "root": str(Path(cfg.data.root).expanduser().resolve()),
            "sources": [dataclasses.asdict(s) for s in getattr(cfg.data, args.split)]}
    return samples, load_report, info, cfg.features


def main(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .checkpoint import load_checkpoint
    from .features import load_or_extract
    from .inference import decode_config_from_args, iter_batches, load_captioner

    start = time.perf_counter()
    try:
        decode_cfg = decode_config_from_args(args)
    except ValueError as err:
        raise ConfigError(f"decoding flags: {err}") from None
    if args.batch_size < 1 or args.examples < 0 or args.workers < 0:
        raise ConfigError("--batch-size must be >= 1, --examples and --workers >= 0")
    other = load_report(args.compare) if args.compare else None
    device = torch.device(args.device)
    captioner = load_captioner(args.checkpoint, device)
    ckpt = load_checkpoint(captioner.source)  # for its recorded experiment and whether the encoder was fine-tuned
    samples, load_report_, data_info, feature_cfg = _evaluation_set(args, ckpt.experiment)
    feature_cfg = dataclasses.replace(feature_cfg, num_workers=args.workers, **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    use_cache = not args.no_cache and ckpt.encoder is None
    if not args.no_cache and not use_cache:
        log.info("the checkpoint's encoder was fine-tuned: encoding the images now instead of using the feature cache")

    captions: dict[str, str] = {}
    failed: dict[str, str] = {}
    label = args.split
    store = None
    if use_cache:  # before the captioning bar, so that an extraction shows its own progress bar
        store = load_or_extract(captioner.model_config.encoder, samples, feature_cfg, device, desc=f"{label} features",
                                encoder=captioner.encoder)
        failed.update(store.failed)
    loaded = time.perf_counter()
    with tqdm(total=len(samples), desc=f"captioning {label}", unit="img", disable=args.quiet, dynamic_ncols=True) as bar:
        if store is not None:
            bar.update(len(store.failed))
            kept = [s for s in samples if s.image_id in store.index]
            for i in range(0, len(kept), args.batch_size):
                batch = kept[i : i + args.batch_size]
                hyps = captioner.caption_features(store.features[store.rows([s.image_id for s in batch])], decode_cfg)
                captions.update((s.image_id, h[0].text if h else "") for s, h in zip(batch, hyps))
                bar.update(len(batch))
        else:
            by_path: dict[Path, list[Sample]] = {}
            for s in samples:
                by_path.setdefault(s.path, []).append(s)
            paths = list(by_path)
            for batch_paths, images, bad in iter_batches(captioner, paths, args.batch_size, args.workers):
                for path, msg in bad.items():
                    failed.update((s.image_id, msg) for s in by_path[path])
                if images is not None:
                    for path, h in zip(batch_paths, captioner.caption_features(captioner.encode(images), decode_cfg)):
                        captions.update((s.image_id, h[0].text if h else "") for s in by_path[path])
                bar.update(sum(len(by_path[p]) for p in (*batch_paths, *bad)))
            if failed:
                first = next(iter(failed.items()))
                log.warning("%d of %d images could not be read (e.g. %s: %s); they are skipped", len(failed), len(samples), *first)
    if not captions:
        raise DataError(f"none of the {len(samples)} images could be read")
    captioned = time.perf_counter()

    scored = [s for s in samples if s.image_id in captions]
    ids = coco_ids([s.image_id for s in scored])
    gts = {ids[s.image_id]: s.captions for s in scored}
    res = {ids[s.image_id]: captions[s.image_id] for s in scored}
    scores = score_captions(gts, res, use_meteor=False if args.no_meteor else None)
    check = cross_check(scores, gts, res) if args.cross_check else None
    report = build_report(
        scores, scored, captions, ids, title=f"Evaluation on {label} ({len(scored)} images)", vocab=captioner.vocab,
        n_examples=args.examples, command="evaluate", checkpoint=str(Path(captioner.source).resolve()), model=captioner.info(), data=data_info,
        decoding=dataclasses.asdict(decode_cfg), feature_cache=use_cache, meteor_skipped=args.no_meteor, cross_check=check,
        skipped={"missing_images": len(load_report_.missing_images), "unreadable_images": len(failed),
                 "empty_reference_captions": load_report_.empty_captions},
        seconds_captioning=round(captioned - loaded, 3), seconds_scoring=round(time.perf_counter() - captioned, 3),
        seconds=round(time.perf_counter() - start, 3))
    results = [{"image_id": ids[s.image_id], "caption": captions[s.image_id]} for s in scored]
    finish(report, per_image_records(scores, scored, captions, ids), args.out, label, results=results, other=other,
           other_name=Path(args.compare).name if args.compare else "other")
    return 0
