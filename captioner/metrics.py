"""COCO caption metrics in plain Python: the numbers of the official evaluation, without Java.

The field's yardstick is the COCO caption evaluation (pycocoevalcap). Its BLEU,
ROUGE-L and CIDEr-D are Python, but its tokenizer (Stanford PTBTokenizer) and
METEOR are Java. This module re-implements the tokenizer (``captioner.text``) and
the three Python metrics so that evaluation runs anywhere, and so that CIDEr-D can
be a fast reward for self-critical training. Given the same tokens, the scores
equal pycocoevalcap 1.2's to within 1e-6 (corpus and per image; the tests compare
them). METEOR has no Python equivalent: it is delegated to pycocoevalcap's jar when
Java and the package are installed, and reported as ``None`` (never 0) otherwise.

API::

    score_captions(gts, res, use_meteor=None) -> ScoreReport
        gts: {image_id: [raw reference caption, ...]}, res: {image_id: raw candidate}
        (the same ids). Tokenizes like the official tool, then scores.
    ScoreReport: .corpus {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D": float | None},
        .per_image {image_id: {metric: float}}, .n_images, .image_set_hash,
        .meteor_available, .to_dict()
    check_same_image_set(a, b)   raise ImageSetMismatchError unless two reports (or their
        to_dict()) were scored on the same images: CIDEr-D depends on the image set.
    CiderD(corpus_references=None, n=4, sigma=6.0)
        .compute_score(candidates, references) -> (mean, per-image np.ndarray); also callable.
        With corpus_references (e.g. the training references, one list per image) the
        document frequencies are computed once and reused (a reward for self-critical
        training); without, they come from the references scored (the official way).
    bleu(candidates, references, n=4) -> ([corpus BLEU-1..n], per-image array (n, N))
    rouge_l(candidates, references, beta=1.2) -> (mean, per-image np.ndarray)
    meteor(candidates, references) -> (corpus, per-image np.ndarray) | None
    meteor_available() -> bool
    image_set_hash(image_ids) -> str

A caption given to the metric functions is already tokenized: a list of tokens or a
string of tokens separated by spaces (pycocoevalcap's format; ``tokenize`` from
``captioner.text`` makes the tokens). ``candidates[i]`` is scored against the list
``references[i]``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import numbers
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence, Union

import numpy as np

from .text import tokenize

Caption = Union[str, Sequence[str]]
METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


class MetricsError(ValueError):
    """Captions that cannot be scored (mismatched ids, missing references, ...)."""


class ImageSetMismatchError(MetricsError):
    """Two score reports come from different image sets and must not be compared."""


# ---------------------------------------------------------------------------
# Caption forms. pycocoevalcap scores strings: BLEU and CIDEr split them with
# str.split(), ROUGE-L with str.split(" "). Keeping captions as such strings
# reproduces its results even for odd tokens (a no-break space inside "1 1/2").
# ---------------------------------------------------------------------------
def _as_text(caption: Caption) -> str:
    return caption if isinstance(caption, str) else " ".join(caption)


def _check_pairs(candidates: Sequence[Caption], references: Sequence[Sequence[Caption]]) -> None:
    if len(candidates) != len(references):
        raise MetricsError(
            f"{len(candidates)} candidates but {len(references)} reference lists; need one list per candidate"
        )
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise MetricsError(f"references[{i}] must be a non-empty list of captions, got {refs!r}")


# ---------------------------------------------------------------------------
# BLEU: pycocoevalcap/bleu/bleu_scorer.py with option "closest" (what Bleu uses).
# ---------------------------------------------------------------------------
_BLEU_SMALL = 1e-9
_BLEU_TINY = 1e-15  # so that if guess is 0 the score is still 0


def _ngram_counts(words: Sequence[str], k: int) -> Counter[tuple[str, ...]]:
    return Counter(zip(*(words[j:] for j in range(k))))


def bleu(
    candidates: Sequence[Caption], references: Sequence[Sequence[Caption]], n: int = 4
) -> tuple[list[float], np.ndarray]:
    """Corpus BLEU-1..n and per-image BLEU (shape (n, N)), exactly as pycocoevalcap computes them:
    clipped n-gram counts, "closest" reference length (ties to the shorter), corpus-level
    brevity penalty, and its tiny/small smoothing constants."""
    _check_pairs(candidates, references)
    total_guess, total_correct = [0] * n, [0] * n
    total_test = total_ref = 0
    per_image = np.zeros((n, len(candidates)))
    for i, (cand, refs) in enumerate(zip(candidates, references)):
        words = _as_text(cand).split()
        ref_words = [_as_text(r).split() for r in refs]
        test_len = len(words)
        ref_len = min((abs(len(r) - test_len), len(r)) for r in ref_words)[1]
        guess = [max(0, test_len - k + 1) for k in range(1, n + 1)]
        correct = []
        for k in range(1, n + 1):
            max_ref: dict[tuple[str, ...], int] = {}
            for r in ref_words:
                for gram, count in _ngram_counts(r, k).items():
                    if count > max_ref.get(gram, 0):
                        max_ref[gram] = count
            correct.append(sum(min(max_ref.get(g, 0), c) for g, c in _ngram_counts(words, k).items()))
        total_test += test_len
        total_ref += ref_len
        score = 1.0
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
            score *= (float(correct[k]) + _BLEU_TINY) / (float(guess[k]) + _BLEU_SMALL)
            per_image[k, i] = score ** (1.0 / (k + 1))
        ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
        if ratio < 1:
            per_image[:, i] *= math.exp(1 - 1 / ratio)
    corpus, score = [], 1.0
    for k in range(n):
        score *= float(total_correct[k] + _BLEU_TINY) / (total_guess[k] + _BLEU_SMALL)
        corpus.append(score ** (1.0 / (k + 1)))
    ratio = (total_test + _BLEU_TINY) / (total_ref + _BLEU_SMALL)
    if ratio < 1:
        corpus = [b * math.exp(1 - 1 / ratio) for b in corpus]
    return corpus, per_image


# ---------------------------------------------------------------------------
# ROUGE-L: pycocoevalcap/rouge/rouge.py (max precision and max recall over the
# references, taken separately; F-measure with beta 1.2).
# ---------------------------------------------------------------------------
def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): the same
    number as pycocoevalcap's dynamic programme, with a few integer operations per token."""
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    all_ones = (1 << len(a)) - 1
    v = all_ones
    for token in b:
        u = v & masks.get(token, 0)
        v = (v + u) | (v - u)
    return len(a) - bin(v & all_ones).count("1")


def rouge_l(
    candidates: Sequence[Caption], references: Sequence[Sequence[Caption]], beta: float = 1.2
) -> tuple[float, np.ndarray]:
    """Mean and per-image ROUGE-L as pycocoevalcap computes them."""
    _check_pairs(candidates, references)
    scores = np.zeros(len(candidates))
    for i, (cand, refs) in enumerate(zip(candidates, references)):
        tokens = _as_text(cand).split(" ")  # an empty caption is one empty token, as there
        precisions, recalls = [], []
        for ref in refs:
            ref_tokens = _as_text(ref).split(" ")
            lcs = _lcs_length(ref_tokens, tokens)
            precisions.append(lcs / float(len(tokens)))
            recalls.append(lcs / float(len(ref_tokens)))
        p, r = max(precisions), max(recalls)
        scores[i] = ((1 + beta**2) * p * r) / float(r + beta**2 * p) if p != 0 and r != 0 else 0.0
    return float(np.mean(scores)), scores


# ---------------------------------------------------------------------------
# CIDEr-D: pycocoevalcap/cider/cider_scorer.py. One implementation serves both the
# evaluation (document frequencies from the evaluated references) and the
# self-critical reward (document frequencies computed once from a corpus).
# ---------------------------------------------------------------------------
_Vector = tuple[dict[tuple[str, ...], float], list[float], int]


class CiderD:
    """CIDEr-D (n-grams 1..n, Gaussian length penalty sigma, clipped counts, x10).

    ``corpus_references``: reference captions grouped per image (an iterable of
    lists). Its document frequencies and its size (the log of the number of images,
    as pycocoevalcap's ``ref_len``) are computed once and used for every call, which
    is what a training reward needs. Leave it out to compute them from the
    references of each call, as the official evaluation does.
    """

    def __init__(self, corpus_references: Iterable[Sequence[Caption]] | None = None, n: int = 4, sigma: float = 6.0):
        self.n = n
        self.sigma = sigma
        self._df: tuple[dict[tuple[str, ...], float], float] | None = None
        if corpus_references is not None:
            self._df = self._document_frequencies(list(corpus_references))

    @property
    def log_document_frequency(self) -> Mapping[tuple[str, ...], float] | None:
        """log(max(1, df)) per n-gram of the precomputed corpus (None without one)."""
        return None if self._df is None else self._df[0]

    @property
    def ref_len(self) -> float | None:
        """log(number of images) of the precomputed corpus (None without one)."""
        return None if self._df is None else self._df[1]

    def _document_frequencies(self, references: Sequence[Sequence[Caption]]) -> tuple[dict[tuple[str, ...], float], float]:
        """Per n-gram log(max(1, number of images whose references contain it)), and log(number of images)."""
        if len(references) == 0:
            raise MetricsError("CIDEr-D needs at least one image of references for its document frequencies")
        counts: Counter[tuple[str, ...]] = Counter()
        for refs in references:
            if isinstance(refs, str):
                raise MetricsError(f"references must be grouped per image (lists of captions), got the string {refs!r}")
            grams: set[tuple[str, ...]] = set()
            for ref in refs:
                words = _as_text(ref).split()
                for k in range(1, self.n + 1):
                    grams.update(zip(*(words[j:] for j in range(k))))
            counts.update(grams)
        log_df = {gram: math.log(max(1.0, float(c))) for gram, c in counts.items()}
        return log_df, math.log(float(len(references)))

    def _vector(self, caption: Caption, log_df: Mapping[tuple[str, ...], float], ref_len: float) -> _Vector:
        """tf-idf weight of every n-gram (all orders in one dict: one pass is faster),
        the norm per order, and the length as pycocoevalcap counts it (its "length"
        sums the counts of the order-2 n-grams: the number of words less one)."""
        words = _as_text(caption).split()
        grams: Counter[tuple[str, ...]] = Counter(zip(words))
        for k in range(2, self.n + 1):
            grams.update(zip(*(words[j:] for j in range(k))))
        weights: dict[tuple[str, ...], float] = {}
        squares = [0.0] * self.n
        for gram, tf in grams.items():
            weight = float(tf) * (ref_len - log_df.get(gram, 0.0))
            weights[gram] = weight
            squares[len(gram) - 1] += weight * weight
        length = max(0, len(words) - 1) if self.n >= 2 else 0
        return weights, [math.sqrt(x) for x in squares], length

    def _similarity(self, hyp: _Vector, ref: _Vector, acc: list[float]) -> None:
        """Add the clipped, length-penalised cosine similarity per order to ``acc``."""
        values = [0.0] * self.n
        hyp_weights, ref_weights = hyp[0], ref[0]
        if len(ref_weights) < len(hyp_weights):  # walk the smaller vector
            for gram, r in ref_weights.items():
                h = hyp_weights.get(gram)
                if h is not None:
                    values[len(gram) - 1] += min(h, r) * r
        else:
            for gram, h in hyp_weights.items():
                r = ref_weights.get(gram)
                if r is not None:
                    values[len(gram) - 1] += min(h, r) * r
        delta = float(hyp[2] - ref[2])
        penalty = math.e ** (-(delta**2) / (2 * self.sigma**2))
        for k in range(self.n):
            value = values[k]
            if hyp[1][k] != 0 and ref[1][k] != 0:
                value /= hyp[1][k] * ref[1][k]
            acc[k] += value * penalty

    def _cached_vector(
        self, text: str, cache: dict[str, _Vector], log_df: Mapping[tuple[str, ...], float], ref_len: float
    ) -> _Vector:
        vector = cache.get(text)
        if vector is None:
            vector = cache[text] = self._vector(text, log_df, ref_len)
        return vector

    def compute_score(
        self, candidates: Sequence[Caption], references: Sequence[Sequence[Caption]]
    ) -> tuple[float, np.ndarray]:
        """Mean and per-image CIDEr-D of ``candidates[i]`` against ``references[i]``."""
        _check_pairs(candidates, references)
        log_df, ref_len = self._df if self._df is not None else self._document_frequencies(references)
        vectors: dict[str, _Vector] = {}  # samples of one image share references, and repeat
        scores = np.zeros(len(candidates))
        for i, (cand, refs) in enumerate(zip(candidates, references)):
            hyp = self._cached_vector(_as_text(cand), vectors, log_df, ref_len)
            acc = [0.0] * self.n
            for ref in refs:
                self._similarity(hyp, self._cached_vector(_as_text(ref), vectors, log_df, ref_len), acc)
            scores[i] = sum(acc) / self.n / len(refs) * 10.0
        return float(np.mean(scores)), scores

    __call__ = compute_score


# ---------------------------------------------------------------------------
# METEOR: Java only (pycocoevalcap's meteor-1.5.jar), optional.
# ---------------------------------------------------------------------------
def _meteor_jar() -> Path | None:
    spec = importlib.util.find_spec("pycocoevalcap")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        jar = Path(root) / "meteor" / "meteor-1.5.jar"
        if jar.is_file():
            return jar
    return None


def meteor_available() -> bool:
    """Whether METEOR can run here: Java on the PATH and pycocoevalcap with its jar."""
    return shutil.which("java") is not None and _meteor_jar() is not None


def meteor(candidates: Sequence[Caption], references: Sequence[Sequence[Caption]]) -> tuple[float, np.ndarray] | None:
    """Corpus and per-image METEOR 1.5 from pycocoevalcap's Java scorer, or None when it is
    not available. Failures of the Java process raise MetricsError."""
    _check_pairs(candidates, references)
    if not meteor_available():
        return None
    from pycocoevalcap.meteor.meteor import Meteor  # optional dependency, Java behind it

    gts = {i: [_as_text(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [_as_text(c)] for i, c in enumerate(candidates)}
    try:
        scorer = Meteor()
    except OSError as exc:
        raise MetricsError(f"could not start METEOR (Java): {exc}") from exc
    try:
        corpus, per_image = scorer.compute_score(gts, res)
    except Exception as exc:  # the jar died or answered garbage
        raise MetricsError(f"METEOR (Java) failed: {exc}") from exc
    finally:
        process = scorer.meteor_p
        process.stdin.close()
        process.kill()
        process.wait()
    return float(corpus), np.asarray(per_image, dtype=float)


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------
def image_set_hash(image_ids: Iterable[Hashable]) -> str:
    """Short SHA-256 of the sorted image ids (ints and strings kept distinct)."""
    keys = sorted(f"i:{int(i)}" if isinstance(i, numbers.Integral) else f"s:{i}" for i in image_ids)
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ScoreReport:
    """Scores of one set of candidates. ``corpus`` values are None for a metric that
    could not be computed here (METEOR without Java), never 0."""

    corpus: dict[str, float | None]
    per_image: dict[Hashable, dict[str, float]]
    n_images: int
    image_set_hash: str
    meteor_available: bool
    tokenizer: str = field(default="captioner.text.tokenize (PTBTokenizer 3.4.1 rules)")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form (image ids become strings in JSON)."""
        return {
            "corpus": dict(self.corpus),
            "per_image": {k: dict(v) for k, v in self.per_image.items()},
            "n_images": self.n_images,
            "image_set_hash": self.image_set_hash,
            "meteor_available": self.meteor_available,
            "tokenizer": self.tokenizer,
        }


def _set_info(report: ScoreReport | Mapping[str, Any]) -> tuple[str, int]:
    if isinstance(report, ScoreReport):
        return report.image_set_hash, report.n_images
    try:
        return str(report["image_set_hash"]), int(report["n_images"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MetricsError(f"not a score report (no image_set_hash/n_images): {exc}") from exc


def check_same_image_set(a: ScoreReport | Mapping[str, Any], b: ScoreReport | Mapping[str, Any]) -> None:
    """Raise ImageSetMismatchError unless ``a`` and ``b`` were scored on the same images."""
    hash_a, count_a = _set_info(a)
    hash_b, count_b = _set_info(b)
    if hash_a != hash_b:
        raise ImageSetMismatchError(
            f"score reports come from different image sets ({count_a} images, set hash {hash_a} vs "
            f"{count_b} images, set hash {hash_b}); CIDEr-D depends on the image set, so these "
            "scores are not comparable. Score both runs on the same images."
        )


def score_captions(
    gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, str], use_meteor: bool | None = None
) -> ScoreReport:
    """Score raw candidate captions against raw references the way the COCO evaluation does.

    gts: references per image id; res: one candidate per image id, for the same ids.
    use_meteor: None runs METEOR when Java and pycocoevalcap are available (else it is
    reported as None); True requires it; False skips it.
    """
    missing = [k for k in gts if k not in res]
    extra = [k for k in res if k not in gts]
    if missing or extra:
        raise MetricsError(
            f"references and candidates must cover the same image ids: {len(missing)} id(s) without a "
            f"candidate (e.g. {missing[:3]}), {len(extra)} candidate(s) without references (e.g. {extra[:3]})"
        )
    if not gts:
        raise MetricsError("no images to score")
    ids = list(gts)  # pycocoevalcap's order: that of the references
    for k in ids:
        if isinstance(gts[k], str) or len(gts[k]) == 0:
            raise MetricsError(f"image {k!r}: references must be a non-empty list of captions, got {gts[k]!r}")
        if not isinstance(res[k], str):
            raise MetricsError(f"image {k!r}: the candidate must be one caption string, got {res[k]!r}")
    references = [[" ".join(tokenize(r)) for r in gts[k]] for k in ids]
    candidates = [" ".join(tokenize(res[k])) for k in ids]

    bleu_corpus, bleu_images = bleu(candidates, references)
    rouge_corpus, rouge_images = rouge_l(candidates, references)
    cider_corpus, cider_images = CiderD().compute_score(candidates, references)
    meteor_result = None
    available = meteor_available()
    if use_meteor is True and not available:
        raise MetricsError("METEOR was requested but needs Java on the PATH and the pycocoevalcap package")
    if use_meteor is not False and available:
        try:
            meteor_result = meteor(candidates, references)
        except MetricsError as exc:
            if use_meteor:
                raise
            warnings.warn(f"{exc}; METEOR reported as unavailable", RuntimeWarning, stacklevel=2)

    corpus: dict[str, float | None] = {f"BLEU-{k + 1}": float(bleu_corpus[k]) for k in range(4)}
    corpus["METEOR"] = None if meteor_result is None else meteor_result[0]
    corpus["ROUGE-L"] = rouge_corpus
    corpus["CIDEr-D"] = cider_corpus
    per_image: dict[Hashable, dict[str, float]] = {}
    for i, k in enumerate(ids):
        scores = {f"BLEU-{j + 1}": float(bleu_images[j, i]) for j in range(4)}
        if meteor_result is not None:
            scores["METEOR"] = float(meteor_result[1][i])
        scores["ROUGE-L"] = float(rouge_images[i])
        scores["CIDEr-D"] = float(cider_images[i])
        per_image[k] = scores
    return ScoreReport(
        corpus=corpus,
        per_image=per_image,
        n_images=len(ids),
        image_set_hash=image_set_hash(ids),
        meteor_available=meteor_result is not None,
    )
