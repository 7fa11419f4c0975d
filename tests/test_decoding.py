"""Tests for captioner.decoding, on hand-made decoders (no trained model needed).

Two decoders: a tiny random LSTM (realistic state handling), and a "transition table"
whose next-token distribution depends only on (image, previous token), so exact answers
can be computed by brute force.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captioner.decoding import (
    DecodeConfig,
    Hypothesis,
    SpecialTokens,
    StepDecoder,
    beam_search,
    decode,
    greedy,
    length_penalty,
    sample,
)

SP = SpecialTokens()
PAD, START, END, UNK = SP.pad, SP.start, SP.end, SP.unk


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tensors here are tiny: intra-op threads only add contention on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- test decoders


class LSTMDecoder(nn.Module):
    """Show-and-Tell-shaped decoder with random weights from a fixed seed."""

    def __init__(self, vocab: int = 12, feat: int = 6, hidden: int = 16, layers: int = 2,
                 end_bias: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.proj = nn.Linear(feat, hidden)
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers)
        self.out = nn.Linear(hidden, vocab)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 if name.startswith("out") else 0.5))
            self.out.bias[END] += end_bias

    def init_state(self, features):
        _, state = self.lstm(self.proj(features)[None])
        return state

    def step(self, tokens, state):
        y, state = self.lstm(self.embed(tokens)[None], state)
        return self.out(y[0]), state

    def reorder_state(self, state, index):
        return tuple(s.index_select(1, index) for s in state)


class TableDecoder:
    """logits = log probs[image, previous token]; features [B, 1] hold the image index."""

    def __init__(self, probs: torch.Tensor) -> None:  # [I, V, V] rows = previous token
        self.logp = probs.log()  # zero probability -> -inf logit

    def init_state(self, features):
        return (features[:, 0].long()[None],)

    def step(self, tokens, state):
        return self.logp[state[0][0], tokens], state

    def reorder_state(self, state, index):
        return tuple(s.index_select(1, index) for s in state)


def make_table(vocab: int, rows: dict[int, dict[int, float]]) -> torch.Tensor:
    """[V, V] transition probs: listed entries as given, the rest of each row spread evenly."""
    probs = torch.empty(vocab, vocab, dtype=torch.float64)
    for prev in range(vocab):
        given_ = rows.get(prev, {})
        rest = [t for t in range(vocab) if t not in given_]
        fill = (1.0 - sum(given_.values())) / len(rest) if rest else 0.0
        for t in range(vocab):
            probs[prev, t] = given_.get(t, fill)
    return probs.float()


def table_decoder(*tables: torch.Tensor) -> tuple[TableDecoder, torch.Tensor]:
    feats = torch.arange(len(tables), dtype=torch.float32)[:, None]
    return TableDecoder(torch.stack(tables)), feats


def random_table(vocab: int, seed: int, sharp: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(vocab, vocab, generator=g) * sharp, dim=-1)


def lstm_case(batch: int = 4, seed: int = 0, **kw) -> tuple[LSTMDecoder, torch.Tensor]:
    dec = LSTMDecoder(seed=seed, **kw).eval()
    feats = torch.randn(batch, 6, generator=torch.Generator().manual_seed(seed + 100))
    return dec, feats


def teacher_forced_logprob(dec, feats_row: torch.Tensor, words: list[int], finished: bool) -> float:
    """Independent re-scoring of one caption, to check beam bookkeeping and state reordering."""
    with torch.no_grad():
        state = dec.init_state(feats_row[None])
        total, prev = 0.0, START
        for tok in words + ([END] if finished else []):
            logits, state = dec.step(torch.tensor([prev]), state)
            total += torch.log_softmax(logits.float(), -1)[0, tok].item()
            prev = tok
    return total


def brute_force(logp: torch.Tensor, words: list[int], max_len: int, min_len: int,
                penalty: str, alpha: float) -> list[tuple[tuple[int, ...], float]]:
    """All finished captions of a table decoder, (tokens, score) best first."""
    out = []
    for n in range(min_len, max_len + 1):
        for seq in itertools.product(words, repeat=n):
            path = (START,) + seq + (END,)
            lp = sum(logp[a, b].item() for a, b in zip(path, path[1:]))
            if lp > -math.inf:
                out.append((seq, lp / length_penalty(n + 1, penalty, alpha)))
    return sorted(out, key=lambda x: -x[1])


def as_greedy(tokens, logprobs, mask, i) -> tuple[list[int], float]:
    n = int(mask[i].sum())
    return tokens[i, :n].tolist(), float(logprobs[i, :n].sum())


def has_repeated_trigram(words: list[int]) -> bool:
    grams = list(zip(words, words[1:], words[2:]))
    return len(grams) != len(set(grams))


# --------------------------------------------------------------------------- basics


def test_protocol_and_defaults():
    assert isinstance(LSTMDecoder(), StepDecoder)
    assert isinstance(table_decoder(random_table(6, 0))[0], StepDecoder)
    assert SpecialTokens() == SpecialTokens(pad=0, start=1, end=2, unk=3)
    assert length_penalty(4, "none") == 1.0 and length_penalty(4, "avg") == 4.0
    assert length_penalty(4, "gnmt", 0.7) == pytest.approx((9 / 6) ** 0.7)


@pytest.mark.parametrize(
    "field, value, extra",
    [
        ("method", "topk", {}),
        ("beam_size", 0, {}),
        ("beam_size", 2.5, {}),
        ("n_best", 0, {}),
        ("n_best", 4, {"beam_size": 3}),
        ("n_best", 2, {"method": "greedy"}),
        ("max_len", 0, {}),
        ("min_len", -1, {}),
        ("min_len", 30, {"max_len": 20}),
        ("length_penalty", "avgg", {}),
        ("alpha", -0.1, {}),
        ("alpha", float("nan"), {}),
        ("block_trigrams", "yes", {}),
        ("block_unk", 1, {}),
        ("temperature", 0.0, {}),
        ("top_k", -1, {}),
        ("top_p", 0.0, {}),
        ("top_p", 1.5, {}),
        ("seed", "7", {}),
    ],
)
def test_invalid_config_names_field(field, value, extra):
    with pytest.raises(ValueError, match=rf"DecodeConfig\.{field}\b"):
        DecodeConfig(**{**extra, field: value})


def test_mutated_config_is_revalidated_and_bad_special_tokens():
    dec, feats = lstm_case(1)
    cfg = DecodeConfig()
    cfg.beam_size = 0
    with pytest.raises(ValueError, match="beam_size"):
        decode(dec, feats, cfg)
    with pytest.raises(ValueError, match="SpecialTokens.end"):
        SpecialTokens(end=0)
    with pytest.raises(ValueError, match="special.end"):
        greedy(dec, feats, 5, SpecialTokens(end=50))


def test_empty_batch():
    dec = LSTMDecoder()
    feats = torch.zeros(0, 6)
    assert decode(dec, feats, DecodeConfig(method="beam")) == []
    assert decode(dec, feats, DecodeConfig(method="sample", n_best=2)) == []
    assert greedy(dec, feats, 5)[0].shape == (0, 0)


# --------------------------------------------------------------------------- greedy / beam agreement


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block_trigrams", [False, True])
def test_beam_size_one_equals_greedy(seed, block_trigrams):
    dec, feats = lstm_case(5, seed)
    kw = dict(min_len=2, block_trigrams=block_trigrams)
    g = greedy(dec, feats, 12, SP, **kw)
    hyps = beam_search(dec, feats, 12, SP, beam_size=1, **kw)
    for i, (h,) in enumerate(hyps):
        toks, lp = as_greedy(*g, i)
        assert h.tokens + ([END] if h.finished else []) == toks
        assert h.logprob == pytest.approx(lp, abs=1e-5)
    via_decode = decode(dec, feats, DecodeConfig(method="greedy", max_len=12, **kw))
    assert [h[0].tokens for h in via_decode] == [h[0].tokens for h in hyps]


@pytest.mark.parametrize("seed", range(6))
def test_beam_at_least_as_good_as_greedy_and_scores_are_true_logprobs(seed):
    dec, feats = lstm_case(4, seed)
    g = greedy(dec, feats, 15, SP)
    hyps = beam_search(dec, feats, 15, SP, beam_size=5, n_best=5)
    for i, hs in enumerate(hyps):
        greedy_toks, greedy_lp = as_greedy(*g, i)
        if greedy_toks and greedy_toks[-1] == END:  # compare like with like
            assert hs[0].finished
            assert hs[0].logprob >= greedy_lp - 1e-5
        for h in hs:
            assert h.logprob == pytest.approx(teacher_forced_logprob(dec, feats[i], h.tokens, h.finished), abs=1e-4)
            assert h.score == h.logprob  # "none" penalty


def test_beam_beats_greedy_when_greedy_is_suboptimal():
    # Greedy takes 4 (0.5) but then nothing is likely; 5 (0.4) leads to a sure <end>.
    table = make_table(8, {START: {4: 0.5, 5: 0.4}, 4: {END: 0.2}, 5: {END: 0.99}})
    dec, feats = table_decoder(table)
    g = greedy(dec, feats, 3, SP)
    (best,) = beam_search(dec, feats, 3, SP, beam_size=2)[0]
    assert g[0][0, 0].item() == 4
    assert best.tokens == [5] and best.finished
    assert best.logprob > as_greedy(*g, 0)[1] + 0.1
    assert best.logprob == pytest.approx(math.log(0.4) + math.log(0.99), abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    max_len=st.integers(1, 3),
    min_len=st.integers(0, 2),
    penalty=st.sampled_from(["none", "avg", "gnmt"]),
    block_unk=st.booleans(),
)
def test_exhaustive_beam_matches_brute_force(seed, max_len, min_len, penalty, block_unk):
    min_len = min(min_len, max_len)
    tables = [random_table(7, seed), random_table(7, seed + 1, sharp=4.0)]
    dec, feats = table_decoder(*tables)
    words = [4, 5, 6] + ([] if block_unk else [UNK])
    k = 200  # > all candidates at any step: the search is exhaustive
    n_best = 5
    hyps = beam_search(dec, feats, max_len, SP, beam_size=k, n_best=n_best, min_len=min_len,
                       length_penalty=penalty, alpha=0.7, block_unk=block_unk)
    for i, table in enumerate(tables):
        truth = brute_force(table.log(), words, max_len, min_len, penalty, 0.7)[:n_best]
        assert [tuple(h.tokens) for h in hyps[i]] == [seq for seq, _ in truth]
        assert [h.score for h in hyps[i]] == pytest.approx([s for _, s in truth], abs=1e-4)
        assert all(h.finished for h in hyps[i])


# --------------------------------------------------------------------------- batch / determinism


def test_batch_equals_one_by_one():
    dec, feats = lstm_case(5, seed=3)
    cfgs = [
        DecodeConfig(method="beam", beam_size=4, n_best=3, max_len=10, block_trigrams=True),
        DecodeConfig(method="beam", beam_size=3, n_best=2, max_len=10, length_penalty="gnmt"),
        DecodeConfig(method="greedy", max_len=10),
        DecodeConfig(method="sample", n_best=2, top_k=1, max_len=10, seed=0),  # deterministic draws
    ]
    for cfg in cfgs:
        batched = decode(dec, feats, cfg)
        for i in range(len(feats)):
            single = decode(dec, feats[i : i + 1], cfg)[0]
            assert [h.tokens for h in single] == [h.tokens for h in batched[i]], cfg
            assert [h.logprob for h in single] == pytest.approx([h.logprob for h in batched[i]], abs=1e-5)
            assert [h.finished for h in single] == [h.finished for h in batched[i]]


def test_deterministic():
    dec, feats = lstm_case(3, seed=4)
    for cfg in [DecodeConfig(method="beam", beam_size=5, n_best=5),
                DecodeConfig(method="greedy"),
                DecodeConfig(method="sample", n_best=4, seed=11, temperature=1.5, top_p=0.9)]:
        assert decode(dec, feats, cfg) == decode(dec, feats, cfg)
    a = sample(dec, feats, 10, SP, n=3, generator=torch.Generator().manual_seed(5))
    b = sample(dec, feats, 10, SP, n=3, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- constraints


def test_no_end_within_max_len_returns_unfinished():
    table = make_table(7, {p: {END: 0.0} for p in range(7)})  # <end> impossible (-inf logit)
    dec, feats = table_decoder(table, random_table(7, 3).index_fill(1, torch.tensor([END]), 0.0))
    for cfg in [DecodeConfig(method="beam", beam_size=4, n_best=3, max_len=5),
                DecodeConfig(method="greedy", max_len=5),
                DecodeConfig(method="sample", n_best=2, max_len=5, seed=0)]:
        for hs in decode(dec, feats, cfg):
            assert len(hs) == cfg.n_best
            for h in hs:
                assert not h.finished and len(h.tokens) == 5 and math.isfinite(h.logprob)
            assert len({tuple(h.tokens) for h in hs}) == len(hs) or cfg.method == "sample"
            assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)
    # A huge but finite <end> penalty: <end> is never chosen either, the search does not crash.
    dec, feats = lstm_case(2, end_bias=-1e4)
    g = greedy(dec, feats, 6, SP)
    assert g[2].all() and (g[0] != END).all() and g[0].shape == (2, 6)
    for h in decode(dec, feats, DecodeConfig(beam_size=3, n_best=3, max_len=6))[0]:
        assert not h.finished and len(h.tokens) == 6


def test_finished_hypotheses_rank_before_unfinished():
    # Only "4 <end>" can finish within max_len=1; n_best=3 fills up with unfinished captions.
    table = make_table(7, {START: {4: 0.3, 5: 0.3, 6: 0.3}, 4: {END: 0.3}, 5: {END: 0.0}, 6: {END: 0.0}})
    dec, feats = table_decoder(table)
    hs = beam_search(dec, feats, 1, SP, beam_size=3, n_best=3)[0]
    assert [h.finished for h in hs] == [True, False, False]
    assert hs[0].tokens == [4] and {tuple(h.tokens) for h in hs[1:]} == {(5,), (6,)}


def test_min_len_forbids_early_end():
    table = make_table(8, {p: {END: 0.9} for p in range(8)})  # <end> is almost certain
    dec, feats = table_decoder(table, table)
    assert decode(dec, feats, DecodeConfig(method="greedy", min_len=0))[0][0].tokens == []
    for method in ["greedy", "beam", "sample"]:
        cfg = DecodeConfig(method=method, min_len=3, max_len=6, beam_size=3, n_best=3 if method != "greedy" else 1, seed=1)
        for hs in decode(dec, feats, cfg):
            assert len(hs[0].tokens) == 3 or method == "sample"
            for h in hs:
                assert h.finished and len(h.tokens) >= 3
    tokens, _, mask = sample(dec, feats, 6, SP, n=50, min_len=2, generator=torch.Generator().manual_seed(0))
    assert (mask.sum(1) >= 3).all() and (tokens[:, :2] != END).all()
    assert (mask.sum(1) == 3).float().mean() > 0.8


def test_trigram_blocking():
    # 4 -> 5 -> 4 -> 5 ... is overwhelmingly likely; <end> is rare.
    table = make_table(8, {START: {4: 0.9}, 4: {5: 0.9, END: 0.001}, 5: {4: 0.9, END: 0.001},
                           6: {END: 0.001}, 7: {END: 0.001}})
    dec, feats = table_decoder(table)
    plain = decode(dec, feats, DecodeConfig(method="greedy", max_len=8))[0][0]
    assert has_repeated_trigram(plain.tokens)
    for cfg in [DecodeConfig(method="greedy", max_len=8, block_trigrams=True),
                DecodeConfig(method="beam", beam_size=4, n_best=4, max_len=8, block_trigrams=True),
                DecodeConfig(method="sample", n_best=20, max_len=8, block_trigrams=True, seed=0)]:
        for h in decode(dec, feats, cfg)[0]:
            assert not has_repeated_trigram(h.tokens), (cfg.method, h.tokens)
    dec, feats = lstm_case(4, seed=5, vocab=7, end_bias=-2.0)
    for hs in decode(dec, feats, DecodeConfig(beam_size=5, n_best=5, max_len=15, block_trigrams=True)):
        assert hs and all(not has_repeated_trigram(h.tokens) for h in hs)


def test_never_emits_banned_tokens():
    table = make_table(8, {p: {PAD: 0.3, START: 0.3, UNK: 0.3} for p in range(8)})
    dec, feats = table_decoder(table)
    for method in ["greedy", "beam", "sample"]:
        cfg = DecodeConfig(method=method, n_best=1 if method == "greedy" else 3, beam_size=3, seed=0)
        for h in decode(dec, feats, cfg)[0]:
            assert not {PAD, START, UNK, END} & set(h.tokens)
    assert UNK in decode(dec, feats, DecodeConfig(method="greedy", block_unk=False))[0][0].tokens


def test_length_penalty_changes_ranking():
    # "4 <end>": logprob -1.02 over 2 tokens; "5 6 7 <end>": -1.07 over 4 tokens.
    table = make_table(8, {START: {4: 0.6, 5: 0.4 - 1e-6}, 4: {END: 0.6},
                           5: {6: 0.95}, 6: {7: 0.95}, 7: {END: 0.95}})
    dec, feats = table_decoder(table)
    best = {p: beam_search(dec, feats, 5, SP, beam_size=4, n_best=2, length_penalty=p)[0]
            for p in ["none", "avg", "gnmt"]}
    assert best["none"][0].tokens == [4] and best["none"][1].tokens == [5, 6, 7]
    for p in ["avg", "gnmt"]:
        assert best[p][0].tokens == [5, 6, 7] and best[p][1].tokens == [4]
        for h in best[p]:
            assert h.score == pytest.approx(h.logprob / length_penalty(len(h.tokens) + 1, p, 0.7))
    assert best["none"][0].logprob == pytest.approx(2 * math.log(0.6), abs=1e-5)


def test_n_best_distinct_and_sorted():
    dec, feats = lstm_case(3, seed=6)
    for penalty in ["none", "avg", "gnmt"]:
        for hs in decode(dec, feats, DecodeConfig(beam_size=6, n_best=6, length_penalty=penalty)):
            assert len(hs) == 6
            assert len({(tuple(h.tokens), h.finished) for h in hs}) == 6
            assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)


def test_beam_larger_than_vocab():
    dec, feats = lstm_case(2, seed=7, vocab=6)  # two real words: 4, 5
    hyps = beam_search(dec, feats, 2, SP, beam_size=10, n_best=10)
    for hs in hyps:
        # Finished: <end> after 1..2 words (2 + 4); unfinished only to fill up: 2-word prefixes.
        assert 1 <= len(hs) <= 10
        assert len({(tuple(h.tokens), h.finished) for h in hs}) == len(hs)
        assert all(set(h.tokens) <= {4, 5} and math.isfinite(h.logprob) for h in hs)
    hyps = beam_search(dec, feats, 1, SP, beam_size=10, n_best=10)
    assert all(len(hs) <= 4 for hs in hyps)  # "4", "5", each finished or not


# --------------------------------------------------------------------------- sampling


def test_sample_shapes_mask_and_padding():
    dec, feats = lstm_case(3, seed=8)
    tokens, logprobs, mask = sample(dec, feats, 10, SP, n=4, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == logprobs.shape == mask.shape and tokens.shape[0] == 12
    assert tokens.dtype == torch.long and mask.dtype == torch.bool and tokens.shape[1] <= 11
    assert (mask[:, 1:] <= mask[:, :-1]).all()  # contiguous prefix
    assert (tokens[~mask] == PAD).all() and (logprobs[~mask] == 0).all()
    assert (logprobs[mask] <= 0).all() and mask[:, 0].all()
    lengths = mask.sum(1)
    last = tokens.gather(1, (lengths - 1)[:, None])[:, 0]
    assert ((last == END) | (lengths == 10)).all()
    assert ((tokens == END).sum(1) <= 1).all()


def test_sample_rows_grouped_per_image():
    # Image i's table forces word 4+i: rows i*n .. i*n+n-1 must all belong to image i.
    tables = [make_table(8, {START: {4 + i: 1.0}}) for i in range(3)]
    dec, feats = table_decoder(*tables)
    tokens, _, _ = sample(dec, feats, 4, SP, n=5, generator=torch.Generator().manual_seed(0))
    assert tokens[:, 0].tolist() == [4] * 5 + [5] * 5 + [6] * 5


def test_sample_gradients_flow():
    dec, feats = lstm_case(2, seed=9)
    dec.train()
    feats = feats.clone().requires_grad_(True)
    tokens, logprobs, mask = sample(dec, feats, 8, SP, n=3, generator=torch.Generator().manual_seed(1))
    assert logprobs.requires_grad and not tokens.requires_grad
    (-(logprobs * mask).sum()).backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats.grad is not None and feats.grad.abs().sum() > 0


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(top_p=1e-6), dict(top_k=1, temperature=3.0),
                                dict(top_p=1e-6, temperature=0.3, top_k=5)])
def test_sample_truncation_to_one_equals_greedy(kw):
    dec, feats = lstm_case(4, seed=10)
    g = greedy(dec, feats, 12, SP, min_len=2)
    s = sample(dec, feats, 12, SP, generator=torch.Generator().manual_seed(3), min_len=2, **kw)
    assert torch.equal(g[0], s[0]) and torch.equal(g[2], s[2])
    assert torch.allclose(g[1], s[1].detach(), atol=1e-6)


def test_sample_reports_model_logprobs_and_matches_distribution():
    probs = {4: 0.5, 5: 0.25, 6: 0.15, 7: 0.08}  # rest (0.02) on specials: pad/start/unk banned
    table = make_table(8, {START: probs})
    dec, feats = table_decoder(table)
    gen = torch.Generator().manual_seed(0)
    tokens, logprobs, _ = sample(dec, feats, 1, SP, temperature=2.0, n=4000, generator=gen)
    first = tokens[:, 0]
    # Whatever the temperature, the log-prob reported is the model's own (temperature 1).
    assert torch.allclose(logprobs[:, 0], table[START].log()[first], atol=1e-6)
    tokens, _, _ = sample(dec, feats, 1, SP, n=4000, generator=gen)
    allowed = table[START].clone()
    allowed[[PAD, START, UNK]] = 0
    allowed /= allowed.sum()
    freq = torch.bincount(tokens[:, 0], minlength=8).float() / 4000
    assert torch.allclose(freq, allowed, atol=0.03)
    tokens, _, _ = sample(dec, feats, 1, SP, top_k=2, n=500, generator=gen)
    assert set(tokens[:, 0].tolist()) == {4, 5}
    tokens, _, _ = sample(dec, feats, 1, SP, top_p=0.7, n=500, generator=gen)  # 0.5 + 0.25 reaches 0.7
    assert set(tokens[:, 0].tolist()) == {4, 5}


def test_decode_sample_returns_sorted_n_best():
    dec, feats = lstm_case(3, seed=11)
    hyps = decode(dec, feats, DecodeConfig(method="sample", n_best=4, seed=2, length_penalty="avg"))
    assert len(hyps) == 3
    for i, hs in enumerate(hyps):
        assert len(hs) == 4 and all(isinstance(h, Hypothesis) for h in hs)
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)
        for h in hs:
            assert h.logprob == pytest.approx(teacher_forced_logprob(dec, feats[i], h.tokens, h.finished), abs=1e-4)
            n_scored = len(h.tokens) + h.finished
            assert h.score == pytest.approx(h.logprob / n_scored)


def test_greedy_outputs_usable_in_autograd():
    dec, feats = lstm_case(2)
    tokens, logprobs, mask = greedy(dec, feats, 5, SP)
    assert not tokens.is_inference() and not mask.is_inference()
    w = torch.randn(2, 20, requires_grad=True)
    w.gather(1, tokens).sum().backward()  # would fail on an inference tensor index


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    tables = [random_table(9, s, sharp=3.0) for s in range(3)]
    dec, feats = table_decoder(*tables)
    gpu_dec = TableDecoder(torch.stack(tables).cuda())
    for cfg in [DecodeConfig(beam_size=4, n_best=3, block_trigrams=True, length_penalty="avg"),
                DecodeConfig(method="greedy", min_len=2),
                DecodeConfig(method="sample", n_best=3, top_k=1)]:
        cpu = decode(dec, feats, cfg)
        gpu = decode(gpu_dec, feats.cuda(), cfg)
        assert [[h.tokens for h in hs] for hs in cpu] == [[h.tokens for h in hs] for hs in gpu]
    out = sample(gpu_dec, feats.cuda(), 8, SP, n=2, top_p=0.9, generator=torch.Generator("cuda").manual_seed(0))
    assert all(t.is_cuda for t in out)
