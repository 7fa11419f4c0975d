"""Caption a split and score it: shared by `captioner evaluate`, checkpoint selection during training, and SCST."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .decoding import DecodeConfig, SpecialTokens, decode
from .features import FeatureStore
from .data import Sample
from .metrics import score_captions
from .vocab import Vocabulary


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
