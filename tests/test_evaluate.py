"""`captioner evaluate` and `captioner score` end to end: the files they write, that their numbers are
captioner.metrics' on those files (and pycocoevalcap's, where Java is present), and their errors."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from captioner import cli, metrics
from captioner.checkpoint import save_checkpoint
from captioner.config import load_config, to_dict
from captioner.decoding import DecodeConfig
from captioner.encoders import create_encoder
from captioner.evaluate import coco_ids, compare_reports, load_report
from captioner.inference import Captioner
from captioner.metrics import ImageSetMismatchError, score_captions
from captioner.model import ShowTellDecoder
from captioner.synthetic import config_overrides, make_dataset
from captioner.text import tokenize
from captioner.vocab import Vocabulary

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")

try:
    import pycocoevalcap  # noqa: F401

    HAVE_COCOEVAL = True
except ImportError:
    HAVE_COCOEVAL = False
needs_java = pytest.mark.skipif(not (HAVE_COCOEVAL and shutil.which("java")),
                                reason="needs Java on the PATH and pycocoevalcap (the official tools)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint of an untrained decoder (seeded random weights) for the synthetic shapes set, recording its
    experiment config as training does. Its captions are nonsense but differ from image to image, which is what
    checks that every caption lands on its own image need (a briefly trained model says one caption for all)."""
    root = tmp_path_factory.mktemp("synth")
    files = make_dataset(root, n_train=40, n_val=40)
    cfg = load_config(None, config_overrides(root))
    vocab = Vocabulary.build([a["caption"] for a in json.loads(files["train"].read_text())["annotations"]], min_count=1)
    model_cfg = dataclasses.replace(cfg.model, feature_dim=create_encoder("thumbnail").spec.feature_dim, vocab_size=len(vocab),
                                    embed_size=32, hidden_size=64, dropout=0.0)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "run" / "best", model_config=model_cfg, vocab=vocab, decoder=ShowTellDecoder(model_cfg),
                           experiment=to_dict(cfg))
    return {"root": root, "val_json": files["val"], "val_images": root / "val", "ckpt": ckpt}


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory) -> Path:
    """`captioner evaluate --annotations/--images` on the synthetic val set, written to a folder."""
    out = tmp_path_factory.mktemp("eval")
    argv = ["evaluate", "--checkpoint", str(run["ckpt"]), "--annotations", str(run["val_json"]), "--images",
            str(run["val_images"]), "--beam", "2", "--out", str(out), "--no-meteor", "--quiet", "--workers", "0"]
    assert cli.main(argv) == 0
    return out


def _references(annotations: Path) -> dict[int, list[str]]:
    data = json.loads(annotations.read_text())
    refs: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        refs[ann["image_id"]].append(ann["caption"])
    return refs


def _score_file(results: Path, annotations: Path, **kw) -> metrics.ScoreReport:
    res = {r["image_id"]: r["caption"] for r in json.loads(results.read_text())}
    refs = _references(annotations)
    return score_captions({k: refs[k] for k in res}, res, **kw)


def test_evaluate_writes_results_scores_and_report(run, evaluated):
    results = json.loads((evaluated / "captions_val.json").read_text())
    val = _references(run["val_json"])
    assert [r["image_id"] for r in results] == sorted(val)  # every val image once, ids as the ints COCO uses
    assert all(isinstance(r["image_id"], int) and isinstance(r["caption"], str) for r in results)

    report = json.loads((evaluated / "report_val.json").read_text())
    expected = _score_file(evaluated / "captions_val.json", run["val_json"], use_meteor=False)
    assert report["metrics"] == expected.corpus  # exactly the numbers of captioner.metrics on the written file
    assert report["metrics"]["METEOR"] is None and report["meteor_skipped"] is True
    assert report["n_images"] == 40 and report["image_set_hash"] == expected.image_set_hash
    assert len({r["caption"] for r in results}) >= 10  # captions differ by image, so a misplaced one would show
    assert report["checkpoint"] == str(run["ckpt"].resolve())
    assert report["decoding"]["method"] == "beam" and report["decoding"]["beam_size"] == 2
    assert report["feature_cache"] is True

    words = [tokenize(r["caption"]) for r in results]
    caps = report["captions"]
    assert caps["length_mean"] == pytest.approx(sum(map(len, words)) / len(words))
    assert (caps["length_min"], caps["length_max"]) == (min(map(len, words)), max(map(len, words)))
    vocab_words = len(Captioner.from_checkpoint(run["ckpt"]).vocab) - 4
    assert caps["distinct_words"] == len({w for ws in words for w in ws}) and caps["vocab_words"] == vocab_words

    assert len(report["examples"]) == 5
    ex = report["examples"][0]
    assert ex["file_name"].endswith(".png") and ex["references"] == val[ex["image_id"]]
    assert [e["CIDEr-D"] for e in report["examples"]] == sorted((e["CIDEr-D"] for e in report["examples"]), reverse=True)

    per_image = json.loads((evaluated / "scores_val.json").read_text())
    assert [p["image_id"] for p in per_image] == [r["image_id"] for r in results]
    for p in per_image:
        assert {m: p[m] for m in METRICS} == expected.per_image[p["image_id"]]

    md = (evaluated / "report_val.md").read_text()
    assert "| CIDEr-D |" in md and "METEOR | skipped" in md and ex["file_name"] in md and "image-set hash" in md


def test_cached_features_and_images_give_the_same_captions(run, evaluated, tmp_path):
    """--no-cache goes from the images through Captioner; it must caption exactly like the feature-cache path."""
    argv = ["evaluate", "--checkpoint", str(run["ckpt"]), "--annotations", str(run["val_json"]), "--images",
            str(run["val_images"]), "--beam", "2", "--out", str(tmp_path), "--no-meteor", "--quiet", "--no-cache",
            "--workers", "0", "--batch-size", "7"]
    assert cli.main(argv) == 0
    direct = json.loads((tmp_path / "captions_val.json").read_text())
    assert direct == json.loads((evaluated / "captions_val.json").read_text())
    assert json.loads((tmp_path / "report_val.json").read_text())["feature_cache"] is False
    # ...and like captioning the image files one call at a time
    captioner = Captioner.from_checkpoint(run["ckpt"])
    first = sorted(run["val_images"].iterdir())[:4]
    texts = [c[0].text for c in captioner.caption(first, DecodeConfig(method="beam", beam_size=2))]
    assert texts == [r["caption"] for r in direct[:4]]


def test_split_from_checkpoint_config_and_compare(run, evaluated, tmp_path, capsys):
    """Without --annotations the split comes from the checkpoint's recorded experiment; --compare accepts a report of
    the same images and refuses one of other images."""
    argv = ["evaluate", "--checkpoint", str(run["ckpt"]), "--split", "val", "--greedy", "--out", str(tmp_path / "a"),
            "--no-meteor", "--quiet", "--workers", "0", "--compare", str(evaluated / "report_val.json")]
    assert cli.main(argv) == 0
    report = load_report(tmp_path / "a" / "report_val.json")
    beam = load_report(evaluated / "report_val.json")
    assert report["image_set_hash"] == beam["image_set_hash"] and report["decoding"]["method"] == "greedy"
    assert report["data"]["split"] == "val" and "| CIDEr-D |" in report["comparison"]
    assert "| METEOR | skipped | skipped |  |" in report["comparison"]
    assert "## Comparison" in (tmp_path / "a" / "report_val.md").read_text()

    # a results file of 3 images is another image set: scoring it works, comparing it with the full set does not
    subset = json.loads((evaluated / "captions_val.json").read_text())[:3]
    (tmp_path / "three.json").write_text(json.dumps(subset))
    capsys.readouterr()
    argv = ["score", "--results", str(tmp_path / "three.json"), "--annotations", str(run["val_json"]), "--no-meteor",
            "--out", str(tmp_path / "b"), "--compare", str(evaluated / "report_val.json")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "different image sets" in err and "3 images" in err and "40 images" in err
    small = load_report(tmp_path / "b" / "report_three.json")  # written before the comparison was refused
    assert small["n_images"] == 3
    with pytest.raises(ImageSetMismatchError):
        compare_reports(small, beam)


def test_score_hand_made_results(run, tmp_path):
    refs = _references(run["val_json"])
    ids = sorted(refs)[:4]
    results = [{"image_id": ids[0], "caption": refs[ids[0]][0]},  # a reference itself
               {"image_id": ids[1], "caption": " ".join(refs[ids[1]][0].split()[:-1])},  # a reference less its last word
               {"image_id": ids[2], "caption": "A purple hexagon, in the corner!"},
               {"image_id": ids[3], "caption": ""}]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(results))
    assert cli.main(["score", "--results", str(path), "--annotations", str(run["val_json"]), "--no-meteor", "--out", str(tmp_path)]) == 0
    report = load_report(tmp_path / "report_mine.json")
    expected = score_captions({k: refs[k] for k in ids}, {r["image_id"]: r["caption"] for r in results}, use_meteor=False)
    assert report["metrics"] == expected.corpus and report["n_images"] == 4
    assert report["image_set_hash"] == expected.image_set_hash
    per_image = {p["image_id"]: p for p in json.loads((tmp_path / "scores_mine.json").read_text())}
    assert per_image[ids[0]]["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and per_image[ids[0]]["ROUGE-L"] == 1.0
    assert 0 < per_image[ids[1]]["BLEU-1"] < 1 and per_image[ids[1]]["CIDEr-D"] > 0
    assert per_image[ids[3]]["CIDEr-D"] == 0 and per_image[ids[3]]["BLEU-1"] < 1e-6
    assert report["captions"]["length_min"] == 0 and report["captions"]["length_max"] == len(tokenize(refs[ids[0]][0]))
    assert "vocab_words" not in report["captions"] and report["command"] == "score"


def test_score_string_ids(tmp_path):
    """Ids that are not integers stay strings, on both sides."""
    ann = {"images": [{"id": "a1", "file_name": "a1.jpg"}, {"id": "b2", "file_name": "b2.jpg"}],
           "annotations": [{"id": 1, "image_id": "a1", "caption": "a red circle"}, {"id": 2, "image_id": "b2", "caption": "a blue square"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "res.json").write_text(json.dumps([{"image_id": "b2", "caption": "a blue square"}]))
    assert cli.main(["score", "--results", str(tmp_path / "res.json"), "--annotations", str(tmp_path / "ann.json"),
                     "--no-meteor", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "scores_res.json").read_text())[0]["image_id"] == "b2"
    assert coco_ids(["1", "22"]) == {"1": 1, "22": 22}
    assert coco_ids(["1", "x"]) == {"1": "1", "x": "x"} and coco_ids(["007"]) == {"007": "007"}


@pytest.mark.parametrize("content, message", [
    ([{"image_id": 999999, "caption": "a cat"}], "record 0: image_id 999999 is not in"),
    ("[{\"image_id\": 1,", "not a valid JSON results file"),
    ({"image_id": 1, "caption": "x"}, "a results file is a JSON list"),
    ([], "holds no captions"),
    (["a red circle"], "record 0: expected an object with"),
    ([{"image_id": "VAL0", "caption": "x"}, {"image_id": "VAL0", "caption": "y"}], "record 1: duplicate image_id 'VAL0' (also record 0)"),
    ([{"image_id": "VAL0", "caption": 3}], "record 0: caption must be a string"),
    ([{"image_id": True, "caption": "x"}], "record 0: image_id must be an integer or a string"),
    ([{"image_id": "VAL0"}], 'record 0: expected an object with "image_id" and "caption"'),
])
def test_score_rejects_bad_results(run, tmp_path, capsys, content, message):
    first = min(_references(run["val_json"]))
    if isinstance(content, list):
        content = [{**r, "image_id": first if r.get("image_id") == "VAL0" else r["image_id"]} if isinstance(r, dict) and "image_id" in r else r
                   for r in content]
        message = message.replace("'VAL0'", str(first))
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert cli.main(["score", "--results", str(path), "--annotations", str(run["val_json"]), "--no-meteor"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("captioner score: error: ") and str(path) in err and message in err, err


def test_evaluate_rejects_bad_arguments(run, tmp_path, capsys):
    base = ["evaluate", "--checkpoint", str(run["ckpt"]), "--out", str(tmp_path), "--quiet"]
    cases = [(["--annotations", str(run["val_json"])], "--annotations needs --images"),
             (["--images", str(run["val_images"])], "--images goes with --annotations"),
             (["--split", "test"], "no data sources configured for split 'test'"),
             (["--beam", "2", "--n-best", "3"], "decoding flags"),
             (["--compare", str(tmp_path / "nope.json")], "report not found")]
    for extra, message in cases:
        assert cli.main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written for a refused command


def test_meteor_unavailable_without_java(run, evaluated, tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "meteor_available", lambda: False)
    assert cli.main(["score", "--results", str(evaluated / "captions_val.json"), "--annotations", str(run["val_json"]),
                     "--out", str(tmp_path)]) == 0
    report = load_report(tmp_path / "report_captions_val.json")
    assert report["metrics"]["METEOR"] is None and report["meteor_available"] is False and not report["meteor_skipped"]
    assert "| METEOR | unavailable |" in (tmp_path / "report_captions_val.md").read_text()
    assert all("METEOR" not in p for p in json.loads((tmp_path / "scores_captions_val.json").read_text()))
    # everything else as in the evaluate report of the same captions
    assert report["metrics"] == json.loads((evaluated / "report_val.json").read_text())["metrics"]


def _pycocoevalcap(results: Path, annotations: Path) -> dict[str, float]:
    """The official pipeline (COCOEvalCap.evaluate) minus METEOR/SPICE, run directly on the two files."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    coco = COCO(str(annotations))
    res = coco.loadRes(str(results))
    ids = res.getImgIds()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: coco.imgToAnns[i] for i in ids})
    cands = tokenizer.tokenize({i: res.imgToAnns[i] for i in ids})
    bleu, _ = Bleu(4).compute_score(gts, cands, verbose=0)
    return {"BLEU-4": bleu[3], "ROUGE-L": Rouge().compute_score(gts, cands)[0], "CIDEr-D": Cider().compute_score(gts, cands)[0]}


@pytest.mark.java
@needs_java
def test_report_equals_pycocoevalcap(run, evaluated, tmp_path):
    results = evaluated / "captions_val.json"
    official = _pycocoevalcap(results, run["val_json"])
    report = json.loads((evaluated / "report_val.json").read_text())
    for m, value in official.items():
        assert report["metrics"][m] == pytest.approx(value, abs=1e-9), m
    # the built-in cross-check reaches the same verdict
    assert cli.main(["score", "--results", str(results), "--annotations", str(run["val_json"]), "--no-meteor",
                     "--cross-check", "--out", str(tmp_path)]) == 0
    check = load_report(tmp_path / "report_captions_val.json")["cross_check"]
    assert check["max_abs_diff_corpus"] < 1e-9 and check["max_abs_diff_per_image"] < 1e-9
    assert check["official"]["CIDEr-D"] == pytest.approx(official["CIDEr-D"], abs=1e-12)


COCO_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "coco-subset"
COCO_VAL = COCO_SUBSET / "annotations" / "captions_val_val2017part.json"


@pytest.mark.shared
@pytest.mark.java
@needs_java
@pytest.mark.skipif(not COCO_VAL.is_file(), reason=f"shared COCO subset not found at {COCO_SUBSET}")
def test_score_equals_pycocoevalcap_on_real_coco_val(tmp_path):
    """Real, messy human captions (400 COCO val images): each image's first caption is scored as a candidate
    against the other four, by `captioner score` and by pycocoevalcap's own pipeline."""
    data = json.loads(COCO_VAL.read_text())
    first: dict[int, dict] = {}
    rest = []
    for ann in data["annotations"]:
        if ann["image_id"] in first:
            rest.append(ann)
        else:
            first[ann["image_id"]] = ann
    annotations = tmp_path / "refs.json"
    annotations.write_text(json.dumps({**data, "annotations": rest}))
    results = tmp_path / "captions_human.json"
    results.write_text(json.dumps([{"image_id": a["image_id"], "caption": a["caption"]} for a in first.values()]))
    assert cli.main(["score", "--results", str(results), "--annotations", str(annotations), "--no-meteor", "--out", str(tmp_path)]) == 0
    report = load_report(tmp_path / "report_captions_human.json")
    assert report["n_images"] == 400
    official = _pycocoevalcap(results, annotations)
    for m, value in official.items():
        assert report["metrics"][m] == pytest.approx(value, abs=1e-6), m
