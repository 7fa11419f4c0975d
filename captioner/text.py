"""Caption tokenization, shared by the vocabulary and the metrics.

One tokenizer for both, so that the words the model learns are the words the
COCO evaluation counts: lowercase, Penn Treebank rules, punctuation tokens removed
(the list is the one pycocoevalcap's PTBTokenizer removes).
"""
from __future__ import annotations

from nltk.tokenize import TreebankWordTokenizer

# Exactly pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_TREEBANK = TreebankWordTokenizer()  # stateless; needs no nltk data download


def tokenize(text: str) -> list[str]:
    """Lowercased PTB tokens of one caption, punctuation dropped."""
    text = text.replace("\n", " ").replace("\r", " ").lower()
    return [t for t in _TREEBANK.tokenize(text, convert_parentheses=True) if t not in PUNCTUATIONS]
