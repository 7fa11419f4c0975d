"""captioner.metrics and captioner.text against the official COCO caption evaluation (pycocoevalcap 1.2).

Tests marked ``java`` compare with the Java tools themselves and are skipped where
Java or pycocoevalcap is missing; the others run anywhere.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner import metrics, text
from captioner.metrics import (
    CiderD,
    ImageSetMismatchError,
    MetricsError,
    bleu,
    check_same_image_set,
    meteor,
    meteor_available,
    rouge_l,
    score_captions,
)
from captioner.text import tokenize

try:
    import pycocoevalcap  # noqa: F401

    HAVE_COCOEVAL = True
except ImportError:
    HAVE_COCOEVAL = False
HAVE_JAVA = shutil.which("java") is not None

needs_cocoeval = pytest.mark.skipif(not HAVE_COCOEVAL, reason="pycocoevalcap is not installed (dev dependency)")
needs_java = pytest.mark.skipif(
    not (HAVE_COCOEVAL and HAVE_JAVA), reason="needs Java on the PATH and pycocoevalcap (the official Java tools)"
)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# ---------------------------------------------------------------------------
# A fixed example with the official values. They were computed once with
# pycocoevalcap 1.2 (PTBTokenizer and METEOR under Java 17) exactly as
# COCOEvalCap.evaluate does: tokenize gts and res, then Bleu(4), Meteor(), Rouge(),
# Cider().compute_score(gts, res); numbers printed with repr().
# ---------------------------------------------------------------------------
GTS = {
    1: [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave in the ocean.",
        "A person on a surf board riding a wave.",
        "Man in a wetsuit surfing a big wave.",
        "A surfer is catching a wave at the beach.",
    ],
    2: [
        "Two dogs playing with a frisbee in the park.",
        "A couple of dogs run across the grass.",
        "Dogs chase a red frisbee on a lawn.",
        "Two brown dogs are playing outside.",
        "A dog jumps to catch a frisbee while another watches.",
    ],
    3: [
        "A plate of food with broccoli, rice and chicken.",
        "A white plate topped with meat and vegetables.",
        "Chicken and broccoli served over rice.",
        "A healthy meal on a plate (with a fork).",
        "A close up of a dinner plate with food.",
    ],
    4: [
        "A kitchen with a stove, sink and cabinets.",
        "An empty kitchen with wooden cabinets.",
        "The kitchen has white appliances and a window.",
        "A small kitchen isn't very clean.",
        "A view of a kitchen with a refrigerator.",
    ],
}
RES = {
    1: "A man is surfing a wave.",
    2: "Two dogs playing with a frisbee on the grass.",
    3: "A plate of rice, chicken and broccoli.",
    4: "A kitchen with white cabinets and a stove.",
}
OFFICIAL_CORPUS = {
    "BLEU-1": 0.9672161004175249,
    "BLEU-2": 0.8047724410386394,
    "BLEU-3": 0.5841374126399732,
    "BLEU-4": 0.4233790203966579,
    "METEOR": 0.3510983065862584,
    "ROUGE-L": 0.6427694620595834,
    "CIDEr-D": 1.7162715099023889,
}
OFFICIAL_PER_IMAGE = {
    "BLEU-1": [0.7165313103349458, 0.9999999997777782, 0.9999999998571429, 0.9999999997500004],
    "BLEU-2": [0.5550227663834344, 0.9354143464791199, 0.8164965808013636, 0.7559289458227232],
    "BLEU-3": [3.807140684927322e-06, 0.7937005257956488, 0.6436595896277667, 0.4566711402730659],
    "BLEU-4": [1.07146422154031e-08, 0.7071067810115249, 9.036020034382682e-05, 6.60632863415386e-05],
    "METEOR": [0.2741563451102782, 0.40757116328828635, 0.35791962579694403, 0.3766199316792342],
    "ROUGE-L": [0.5570776255707762, 0.7777777777777778, 0.6112224448897796, 0.625],
    "CIDEr-D": [1.2400035293411087, 2.1493926183916554, 1.648537193425788, 1.8271526984510027],
}
NATIVE = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"]


def test_fixed_example_matches_official_values():
    report = score_captions(GTS, RES, use_meteor=False)
    assert report.n_images == 4 and report.corpus["METEOR"] is None and not report.meteor_available
    for name in NATIVE:
        assert report.corpus[name] == pytest.approx(OFFICIAL_CORPUS[name], abs=1e-6), name
        got = [report.per_image[i][name] for i in GTS]
        assert got == pytest.approx(OFFICIAL_PER_IMAGE[name], abs=1e-6), name
    assert json.loads(json.dumps(report.to_dict()))["corpus"]["CIDEr-D"] == report.corpus["CIDEr-D"]


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------
# (raw caption, tokens the Java PTBTokenizer gives through pycocoevalcap); the
# right-hand sides were produced by pycocoevalcap's PTBTokenizer.
TOKENIZER_CASES = [
    ("A man on the beach. A dog runs.", "a man on the beach a dog runs"),
    ("a man on the beach. a dog runs", "a man on the beach a dog runs"),
    ("The person is standing in the deep snow. The trees are covered with snow.", "the person is standing in the deep snow the trees are covered with snow"),
    ("A dog (maybe a puppy) sits on a [red] couch {inside}.", "a dog -lrb- maybe a puppy -rrb- sits on a -lsb- red -rsb- couch -lcb- inside -rcb-"),
    ("I'm gonna wanna eat; it cannot be.", "i 'm gon na wan na eat it can not be"),
    ("A man's dog isn't there and the dogs' bowls aren't full.", "a man 's dog is n't there and the dogs bowls are n't full"),
    ('A sign that says "STOP" and \'yield\'.', "a sign that says stop and yield"),
    ("A St. Bernard dog near Mr. Smith's car on 5th Ave. in the U.S.", "a st. bernard dog near mr. smith 's car on 5th ave. in the u.s."),
    ("A person I. A hood jacket capturing a photo", "a person i a hood jacket capturing a photo"),
    ("a car with letter a. a bus", "a car with letter a. a bus"),
    ("The young ducks are following their mother..", "the young ducks are following their mother"),
    ("An old- fashioned train rounds the corner.", "an old fashioned train rounds the corner"),
    ("A huge clock stating 5:54pm.", "a huge clock stating 5:54 pm"),
    ("a plate of food.a fork and knife", "a plate of food.a fork and knife"),
    ("A 3-year-old boy eats 1/2 a pizza, 3.5 apples and 1,000 grapes!", "a 3-year-old boy eats 1/2 a pizza 3.5 apples and 1,000 grapes"),
    ("A well-known T-shirt w/ a logo -- and more...", "a well-known t-shirt w / a logo and more"),
    ("It's 'cause they're y'all's", "it 's 'cause they 're y' all 's"),
    ("A man is leaning over a fence offering food to an elephant/", "a man is leaning over a fence offering food to an elephant /"),
    ("  leading and trailing spaces  ", "leading and trailing spaces"),
    ("A sticker on a Dell laptop: www.dell.com & photo.jpg", "a sticker on a dell laptop www.dell.com & photo.jpg"),
    ("2 people (a very tall person) standing in the rain", "2 people -lrb- a very tall person -rrb- standing in the rain"),
    ("three females waiting. Two of them are on their cell phones", "three females waiting two of them are on their cell phones"),
    ("A dog sitting on stairs.] with a red bow tie.", "a dog sitting on stairs -rsb- with a red bow tie"),
]


@pytest.mark.parametrize("caption, expected", TOKENIZER_CASES)
def test_tokenizer_matches_recorded_java_output(caption, expected):
    assert tokenize(caption) == expected.split()


def test_tokenizer_first_character_index_changes_nothing(monkeypatch):
    """The per-character rule index is only a speed-up: results equal trying every rule."""
    rng = random.Random(7)
    alphabet = list("aAbIstnxT'\".,;:!?-()[]/&1 2 3  ..''``$#@*%<>=_~^|\\{}") + ["www.", ".com", "n't", "U.S.", "etc.", "Mr.", "The ", "gonna", ":)", "1/2", "jpg"]
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))) for _ in range(400)]
    indexed = [tokenize(s) for s in samples]
    monkeypatch.setattr(text, "_ASCII_RULES", tuple(text._ALL_RULES for _ in range(128)))
    assert [tokenize(s) for s in samples] == indexed


REALISTIC = [
    "A cat is sleeping on a laptop keyboard.", "Two giraffes standing next to each other in a zoo enclosure",
    "a red double decker bus driving down a street", "A woman holding an umbrella in the rain.",
    "The man is throwing a frisbee to his dog at the park.", "A plate of spaghetti & meatballs with a glass of wine.",
    "A baseball player swinging a bat at a ball", "Kids playing soccer on a field; one is wearing #10.",
    "An airplane (a Boeing 747) is taking off from the runway.", "A close-up of a hot dog with mustard and relish",
    "A teddy bear sits on a shelf next to books.", "A skateboarder does a trick on a half-pipe!",
    "there's a clock tower in the middle of town", "A kitchen that's been remodeled w/ stainless steel appliances.",
    "A 'STOP' sign at an intersection", 'The sign reads "No Parking".', "A man in a suit and tie... smiling.",
    "A living room with a couch, a TV, and a coffee table.", "Elephants walking in a line -- a mother and her calves.",
    "A bathroom with a toilet, sink & shower", "a pizza cut into 8 slices on a wooden board",
    "A woman's hand holding a smartphone.", "Two people riding horses on the beach at sunset.",
    "A train pulling into the station at 3:15 p.m.", "a young boy wearing a baseball cap and a t-shirt",
    "A group of people standing around a table w/ food", "A bowl of fruit: apples, bananas and oranges",
    "THE SURFER IS RIDING A HUGE WAVE", "a motorcycle parked on the side of the road.",
    "a dog laying on a bed with it's toy", "A bus stop with an ad for Coca-Cola.",
    "The 2 zebras are grazing in the field.", "A sandwich cut in 1/2 on a plate.",
    "A little girl, about 5 years old, is brushing her teeth.", "a man riding skis down a snow covered slope",
    "Vase of flowers on a table ( roses and lilies )", "a stop sign that has graffiti on it",
    "A person snowboarding down a mountain!!!", "Why is the cat in the sink?", "A cake that says 'Happy B-day'.",
    "Street signs for Main St. and 1st Ave.", "A fire hydrant painted red, white & blue.",
    "A large jet flying through a blue sky.", "a tennis player hitting the ball with her racquet",
    "The giraffe's neck is very long.", "A tray of donuts; some have sprinkles", "A black and white photo of a city street in the 1950s.",
    "Mr. and Mrs. Smith cut their wedding cake.", "A boat docked at a pier in St. Louis", "An old man's hands holding a cane.",
    "A clock that reads 10:10.", "A bunch of bananas hanging at a market stall.", "a cat looking at itself in a mirror .",
    "A man w/ a beard wearing glasses", "A sign for the U.S. Post Office.", "Cows grazing in a green pasture",
    "A pair of scissors & some paper.", "A kite flying high above the beach.", "Two slices of pizza -- pepperoni and cheese.",
    "A person is holding a Wii remote.", "A laptop, a mouse, and a cup of coffee on a desk.", "The bear is eating fish (salmon?).",
]
FRAGMENTS = [
    "a dog", "the man's hat", "isn't", "can't", "won't", "two cats", "A", "The", "I", "U.S.", "St.", "Mr.", "etc.", "e.g.",
    "3.5", "1,000", "1/2", "10:30", "5pm", "2nd", "'90s", "co-worker", "x-ray", "t-shirt", "(red)", "[sic]", "{x}",
    '"quote"', "'single'", "gonna", "cannot", "www.example.com", "photo.jpg", "#1", "@home", "$5", "50%", "&", "--", "...",
    "..", ".", ",", ";", ":", "!", "?", "-", "/", "’s", "don’t", "“hi”", "…", "—", "½", "café", ":)", "O'Neil",
    "rock 'n' roll", "y'all", "a.m.", "No. 5", "vs.", "letter a.", "mid- air", "pro- choice",
]


def _varied_captions() -> list[str]:
    rng = random.Random(2024)
    generated = []
    for _ in range(320):
        parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(2, 9))]
        seps = [rng.choice([" ", " ", " ", "", ". ", ", ", "  "]) for _ in parts]
        caption = "".join(p + s for p, s in zip(parts, seps))
        generated.append(caption if rng.random() < 0.8 else "  " + caption)
    return [c for c, _ in TOKENIZER_CASES] + REALISTIC + generated


def _java_tokenize(captions: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer on ``captions``. Each caption is followed by the line
    "x" because Java looks into the next line for a few rules (see captioner.text)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = {i: [{"caption": c}, {"caption": "x"}] for i, c in enumerate(captions)}
    out = PTBTokenizer().tokenize(data)
    return [out[i][0] for i in range(len(captions))]


@pytest.mark.java
@needs_java
def test_tokenizer_agrees_with_java_ptbtokenizer():
    captions = _varied_captions()
    assert len(captions) > 400
    expected = _java_tokenize(captions)
    mismatches = [(c, e, " ".join(tokenize(c))) for c, e in zip(captions, expected) if " ".join(tokenize(c)) != e]
    assert mismatches == []


@pytest.mark.java
@pytest.mark.shared
@pytest.mark.slow
@needs_java
def test_tokenizer_agrees_with_java_on_real_coco_and_flickr_captions():
    annotations = SHARED / "coco-subset" / "annotations"
    if not annotations.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    captions = [a["caption"] for f in sorted(annotations.glob("*.json")) for a in json.loads(f.read_text())["annotations"]]
    flickr = SHARED / "flickr8k-subset" / "captions.txt"
    if flickr.is_file():
        captions += [line.split(",", 1)[1] for line in flickr.read_text().splitlines()[1:] if "," in line]
    expected = _java_tokenize(captions)
    mismatches = [(c, e) for c, e in zip(captions, expected) if " ".join(tokenize(c)) != e]
    assert mismatches == [], f"{len(mismatches)} of {len(captions)} differ, e.g. {mismatches[:3]}"


# ---------------------------------------------------------------------------
# Metrics against pycocoevalcap's own scorers, given the same tokens
# ---------------------------------------------------------------------------
WORDS = ["a", "the", "dog", "cat", "man", "on", "in", "with", "red", "big", "runs", "sits", "of", "and"]
caption_st = st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join)
# References are never empty: pycocoevalcap's CIDEr crashes when no reference has an n-gram.
reference_st = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)
image_st = st.tuples(caption_st, st.lists(reference_st, min_size=1, max_size=5))


@needs_cocoeval
@settings(max_examples=30, deadline=None)
@given(images=st.lists(image_st, min_size=1, max_size=8))
def test_bleu_rouge_cider_equal_pycocoevalcap(images):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    candidates = [c for c, _ in images]
    references = [refs for _, refs in images]
    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [c] for i, c in enumerate(candidates)}

    official, official_images = Bleu(4).compute_score(gts, res, verbose=0)
    ours, ours_images = bleu(candidates, references)
    np.testing.assert_allclose(ours, official, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours_images, np.array(official_images), rtol=0, atol=1e-6)

    official, official_images = Rouge().compute_score(gts, res)
    ours, ours_images = rouge_l(candidates, references)
    assert ours == pytest.approx(official, abs=1e-6)
    np.testing.assert_allclose(ours_images, official_images, rtol=0, atol=1e-6)

    official, official_images = Cider().compute_score(gts, res)
    for scorer in (CiderD(), CiderD(references)):  # df from the scored refs, or precomputed from the same
        ours, ours_images = scorer.compute_score(candidates, references)
        assert ours == pytest.approx(official, abs=1e-6)
        np.testing.assert_allclose(ours_images, official_images, rtol=0, atol=1e-6)


def test_lcs_matches_dynamic_programme():
    rng = random.Random(3)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                same = a[i - 1] == b[j - 1]
                table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
        assert metrics._lcs_length(a, b) == table[len(a)][len(b)]


# ---------------------------------------------------------------------------
# CIDEr-D as a reward
# ---------------------------------------------------------------------------
def test_cider_with_precomputed_df_equals_evaluation_cider():
    references = [[" ".join(tokenize(r)) for r in GTS[i]] for i in GTS]
    candidates = [tokenize(RES[i]) for i in GTS]  # token lists work as well as strings
    mean, per_image = CiderD(references)(candidates, references)
    report = score_captions(GTS, RES, use_meteor=False)
    assert mean == pytest.approx(report.corpus["CIDEr-D"], abs=1e-12)
    assert isinstance(per_image, np.ndarray) and per_image.shape == (4,)
    np.testing.assert_allclose(per_image, [report.per_image[i]["CIDEr-D"] for i in GTS], rtol=0, atol=1e-12)


def test_cider_reward_on_a_batch_of_samples():
    corpus = [[" ".join(tokenize(r)) for r in GTS[i]] for i in GTS]
    reward = CiderD(corpus)
    samples = [["a man is surfing a wave", "a dog", "a man riding a wave on top of a surfboard"]] + [
        ["two dogs playing", "a kitchen", ""]
    ]
    candidates = [c for group in samples for c in group]
    references = [corpus[0]] * 3 + [corpus[1]] * 3
    _, scores = reward(candidates, references)
    assert scores.shape == (6,) and np.all(scores >= 0) and scores[5] == 0.0
    assert scores[2] > scores[0] > scores[1]  # a reference caption scores best
    assert reward.ref_len == pytest.approx(np.log(4))
    # the same samples scored one by one give the same numbers
    singles = [reward([c], [r])[1][0] for c, r in zip(candidates, references)]
    np.testing.assert_allclose(scores, singles, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# METEOR
# ---------------------------------------------------------------------------
def test_meteor_is_none_not_zero_without_java(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    assert not meteor_available()
    report = score_captions(GTS, RES)
    assert report.corpus["METEOR"] is None and not report.meteor_available
    assert all("METEOR" not in scores for scores in report.per_image.values())
    assert report.to_dict()["corpus"]["METEOR"] is None
    assert meteor(["a dog"], [["a dog runs"]]) is None
    with pytest.raises(MetricsError, match="METEOR"):
        score_captions(GTS, RES, use_meteor=True)


@pytest.mark.java
@needs_java
def test_meteor_real_value_when_available():
    assert meteor_available()
    report = score_captions(GTS, RES, use_meteor=True)
    assert report.meteor_available
    assert report.corpus["METEOR"] == pytest.approx(OFFICIAL_CORPUS["METEOR"], abs=1e-6)
    got = [report.per_image[i]["METEOR"] for i in GTS]
    assert got == pytest.approx(OFFICIAL_PER_IMAGE["METEOR"], abs=1e-6)


# ---------------------------------------------------------------------------
# Image sets and input errors
# ---------------------------------------------------------------------------
def test_image_set_hash_mismatch_raises():
    full = score_captions(GTS, RES, use_meteor=False)
    subset = score_captions({i: GTS[i] for i in (1, 2, 3)}, {i: RES[i] for i in (1, 2, 3)}, use_meteor=False)
    with pytest.raises(ImageSetMismatchError, match="different image sets"):
        check_same_image_set(full, subset)
    with pytest.raises(ImageSetMismatchError):  # also from saved reports
        check_same_image_set(json.loads(json.dumps(full.to_dict())), subset.to_dict())
    reordered = score_captions(dict(reversed(list(GTS.items()))), RES, use_meteor=False)
    check_same_image_set(full, reordered)  # same images, any order: fine
    check_same_image_set(full.to_dict(), json.loads(json.dumps(reordered.to_dict())))
    as_strings = score_captions({str(k): v for k, v in GTS.items()}, {str(k): v for k, v in RES.items()}, use_meteor=False)
    with pytest.raises(ImageSetMismatchError):
        check_same_image_set(full, as_strings)
    assert full.n_images == 4 and len(full.image_set_hash) == 16


def test_clear_errors_for_bad_inputs():
    with pytest.raises(MetricsError, match="same image ids"):
        score_captions(GTS, {1: RES[1]}, use_meteor=False)
    with pytest.raises(MetricsError, match="non-empty list"):
        score_captions({1: []}, {1: "a dog"}, use_meteor=False)
    with pytest.raises(MetricsError, match="non-empty list"):
        score_captions({1: "a dog"}, {1: "a dog"}, use_meteor=False)
    with pytest.raises(MetricsError, match="one caption string"):
        score_captions({1: ["a dog"]}, {1: ["a dog"]}, use_meteor=False)
    with pytest.raises(MetricsError, match="reference lists"):
        CiderD()(["a dog", "a cat"], [["a dog"]])
    with pytest.raises(MetricsError, match="at least one image"):
        CiderD([])
