"""Word vocabulary. Saved as JSON inside every checkpoint, so a model never meets a foreign vocabulary."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence

from .text import tokenize

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)


class Vocabulary:
    """Index <-> word mapping; ids 0..3 are <pad> <start> <end> <unk>."""

    def __init__(self, itos: Sequence[str]):
        if tuple(itos[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {tuple(itos[:4])}")
        if len(set(itos)) != len(itos):
            raise ValueError("vocabulary has duplicate words")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5) -> "Vocabulary":
        """Words seen at least `min_count` times; most frequent first, ties alphabetical (deterministic)."""
        counts = Counter(tok for cap in captions for tok in tokenize(cap))
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """<start> w1 .. wn <end>, with n truncated to max_len words."""
        ids = [self.stoi.get(tok, self.unk_id) for tok in tokenize(caption)]
        if max_len is not None:
            ids = ids[:max_len]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first <end>; specials dropped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i >= 4:
                words.append(self.itos[i])
        return " ".join(words)

    def to_json(self) -> str:
        return json.dumps({"itos": self.itos})

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        return cls(json.loads(text)["itos"])
