"""Caption decoding: greedy, batched beam search and sampling over a step-wise decoder.

One module for every caller (evaluation, ``captioner caption``, the demo, SCST training),
so that "a caption" means the same thing everywhere. Everything is batched over images
and works on token ids only; turning ids into text is the vocabulary's job.

Conventions shared by all methods:

* Reported log-probs are always the model's own: ``log_softmax`` of the raw logits at
  temperature 1. Constraints (banned tokens, ``min_len``, trigram blocking) and sampling
  knobs (temperature, top-k, top-p) only decide which token is *chosen*; they never
  renormalize what is reported. That is why beam size 1 equals greedy exactly, and why
  :func:`sample` gives the log-probs REINFORCE/SCST needs.
* A caption has at most ``max_len`` words. Decoding runs at most ``max_len + 1`` steps;
  at the last step a hypothesis finishes only if the search picks ``<end>`` there by the
  same rule as at any other step. Otherwise it is returned unfinished (``finished=False``,
  no ``<end>`` log-prob): a caption that wanted to go on is never silently forced to end.
* ``<pad>`` and ``<start>`` are never emitted; ``<unk>`` neither unless ``block_unk=False``.
* Lengths for the length penalty count the scored tokens: the words, plus 1 for ``<end>``
  when finished.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "State",
    "StepDecoder",
    "SpecialTokens",
    "Hypothesis",
    "DecodeConfig",
    "METHODS",
    "LENGTH_PENALTIES",
    "length_penalty",
    "decode",
    "greedy",
    "sample",
    "beam_search",
]

State = tuple[Tensor, ...]  # every tensor has the batch in dim 1 (LSTM h, c: [num_layers, B, H])

METHODS = ("greedy", "beam", "sample")
LENGTH_PENALTIES = ("none", "avg", "gnmt")
_NEG_INF = float("-inf")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@runtime_checkable
class StepDecoder(Protocol):
    """What decoding needs from a model: start from image features, then one token at a time."""

    def init_state(self, features: Tensor) -> State:
        """features [B, ...] -> initial recurrent state (the image is fed before <start>)."""
        ...

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """tokens LongTensor [B] -> (unnormalized logits [B, V], new state)."""
        ...

    def reorder_state(self, state: State, index: Tensor) -> State:
        """index_select every state tensor along its batch dim (dim 1)."""
        ...


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the vocabulary's special tokens; passed in so no algorithm hard-codes them."""

    pad: int = 0
    start: int = 1
    end: int = 2
    unk: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"SpecialTokens.{f.name} must be a non-negative int, got {value!r}")
        if self.end in (self.pad, self.start, self.unk):
            raise ValueError(f"SpecialTokens.end ({self.end}) must differ from pad, start and unk")


@dataclass
class Hypothesis:
    """One caption. tokens: words only (no <start>/<end>); logprob: sum of token log-probs,
    including <end> when finished; score: logprob after the length penalty."""

    tokens: list[int]
    logprob: float
    score: float
    finished: bool


@dataclass
class DecodeConfig:
    """All decoding knobs in one place (CLI, YAML configs, demo and evaluation share it)."""

    method: str = "beam"  # "greedy" | "beam" | "sample"
    beam_size: int = 3
    n_best: int = 1  # beam: <= beam_size; sample: samples per image; greedy: 1
    max_len: int = 20  # max number of words (excluding <start>/<end>)
    min_len: int = 1  # <end> forbidden before this many words
    length_penalty: str = "none"  # "none" | "avg" (mean token log-prob) | "gnmt" (Wu et al. 2016)
    alpha: float = 0.7  # gnmt exponent
    block_trigrams: bool = False
    block_unk: bool = True  # never emit <unk> (<pad>/<start> are never emitted anyway)
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None  # sampling only; None = torch's global RNG

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (also re-run by decode(), since the
        dataclass is mutable)."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"DecodeConfig.{name} {why}, got {getattr(self, name)!r}")

        if self.method not in METHODS:
            raise bad("method", f"must be one of {METHODS}")
        if not _is_int(self.beam_size) or self.beam_size < 1:
            raise bad("beam_size", "must be an int >= 1")
        if not _is_int(self.n_best) or self.n_best < 1:
            raise bad("n_best", "must be an int >= 1")
        if self.method == "beam" and self.n_best > self.beam_size:
            raise bad("n_best", f"must be <= beam_size ({self.beam_size}) for beam search")
        if self.method == "greedy" and self.n_best != 1:
            raise bad("n_best", "must be 1 for greedy decoding")
        _check_lengths(self.max_len, self.min_len, prefix="DecodeConfig.")
        if self.length_penalty not in LENGTH_PENALTIES:
            raise bad("length_penalty", f"must be one of {LENGTH_PENALTIES}")
        if not _is_real(self.alpha) or self.alpha < 0:
            raise bad("alpha", "must be a finite number >= 0")
        if not isinstance(self.block_trigrams, bool):
            raise bad("block_trigrams", "must be a bool")
        if not isinstance(self.block_unk, bool):
            raise bad("block_unk", "must be a bool")
        _check_sampling(self.temperature, self.top_k, self.top_p, prefix="DecodeConfig.")
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", "must be an int or None")


def length_penalty(length: int, kind: str = "none", alpha: float = 0.7) -> float:
    """Divisor applied to a summed log-prob of `length` scored tokens.

    "avg" ranks by mean token log-prob; "gnmt" is ((5 + length) / 6) ** alpha (Wu et al. 2016).
    Both grow with length, which is what makes the early-stopping bound in beam_search safe.
    """
    if kind == "none":
        return 1.0
    if kind == "avg":
        return float(max(length, 1))
    if kind == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    raise ValueError(f"length_penalty must be one of {LENGTH_PENALTIES}, got {kind!r}")


# --------------------------------------------------------------------------- entry point


def decode(
    decoder: StepDecoder,
    features: Tensor,
    cfg: DecodeConfig | None = None,
    special: SpecialTokens = SpecialTokens(),
) -> list[list[Hypothesis]]:
    """Decode a batch of B images -> per image up to cfg.n_best hypotheses, best score first.

    Beam search returns finished hypotheses first and fills up with unfinished ones only
    when fewer than n_best finished exist (or returns fewer if the search space is smaller).
    Sampling returns n_best independent samples per image (duplicates possible), sorted.
    """
    cfg = DecodeConfig() if cfg is None else cfg
    cfg.validate()
    if cfg.method == "beam":
        return beam_search(
            decoder, features, cfg.max_len, special,
            beam_size=cfg.beam_size, n_best=cfg.n_best, min_len=cfg.min_len,
            length_penalty=cfg.length_penalty, alpha=cfg.alpha,
            block_trigrams=cfg.block_trigrams, block_unk=cfg.block_unk,
        )  # fmt: skip
    n = 1
    with torch.inference_mode():
        if cfg.method == "greedy":
            tokens, logprobs, mask = greedy(
                decoder, features, cfg.max_len, special,
                min_len=cfg.min_len, block_unk=cfg.block_unk, block_trigrams=cfg.block_trigrams,
            )  # fmt: skip
        else:
            n = cfg.n_best
            generator = None
            if cfg.seed is not None:
                generator = torch.Generator(device=features.device).manual_seed(cfg.seed)
            tokens, logprobs, mask = sample(
                decoder, features, cfg.max_len, special, cfg.temperature, cfg.top_k, cfg.top_p,
                n=n, generator=generator,
                min_len=cfg.min_len, block_unk=cfg.block_unk, block_trigrams=cfg.block_trigrams,
            )  # fmt: skip
    return _rows_to_hypotheses(tokens, logprobs, mask, n, special.end, cfg.length_penalty, cfg.alpha)


# --------------------------------------------------------------------------- greedy / sample


def greedy(
    decoder: StepDecoder,
    features: Tensor,
    max_len: int = 20,
    special: SpecialTokens = SpecialTokens(),
    *,
    min_len: int = 1,
    block_unk: bool = True,
    block_trigrams: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched argmax decoding (also the SCST baseline).

    Returns tokens LongTensor[B, T], logprobs [B, T] and mask BoolTensor[B, T], where mask
    marks real tokens including <end>; padded positions hold <pad> and log-prob 0.
    T <= max_len + 1 and decoding stops as soon as every row has finished. The outputs are
    ordinary tensors (cloned out of inference mode), safe to use in autograd code.
    """
    _check_lengths(max_len, min_len)
    with torch.inference_mode():
        out = _rollout(
            decoder, features, max_len, special, min_len, block_unk, block_trigrams,
            pick=lambda scores: scores.argmax(dim=-1),
        )  # fmt: skip
    return tuple(t.clone() for t in out)  # type: ignore[return-value]


def sample(
    decoder: StepDecoder,
    features: Tensor,
    max_len: int = 20,
    special: SpecialTokens = SpecialTokens(),
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    n: int = 1,
    generator: torch.Generator | None = None,
    *,
    min_len: int = 1,
    block_unk: bool = True,
    block_trigrams: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw n captions per image -> (tokens [B*n, T], token_logprobs [B*n, T], mask [B*n, T]).

    Rows i*n .. i*n+n-1 belong to image i. Runs under the caller's grad mode: with grad
    enabled, token_logprobs carry gradients to the decoder (REINFORCE / SCST).

    token_logprobs are always log p_model(token | prefix) at temperature 1, before bans,
    min_len, top-k and top-p: the log-prob under the model itself, *not* under the tempered /
    truncated distribution the token was drawn from. With temperature 1 and no truncation
    this is the on-policy log-prob SCST needs (up to the tiny mass on banned tokens, which
    is not renormalized away); with temperature != 1 or top-k/top-p it is an off-policy
    quantity, so draw SCST samples at temperature 1.

    Draws use the Gumbel-max trick with `generator` (torch's global RNG when None); the
    random numbers drawn depend on the batch size, so a batch does not reproduce
    one-by-one draws even with the same seed.
    """
    _check_lengths(max_len, min_len)
    _check_sampling(temperature, top_k, top_p)
    if not _is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if n > 1:
        features = features.repeat_interleave(n, dim=0)
    pick = _sampler(temperature, top_k, top_p, generator)
    return _rollout(decoder, features, max_len, special, min_len, block_unk, block_trigrams, pick)


def _rollout(
    decoder: StepDecoder,
    features: Tensor,
    max_len: int,
    special: SpecialTokens,
    min_len: int,
    block_unk: bool,
    block_trigrams: bool,
    pick: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """One token per row per step, chosen by `pick` from constrained scores [N, V]."""
    n, device = features.size(0), features.device
    if n == 0:
        empty = torch.zeros(0, 0, device=device)
        return empty.long(), empty, empty.bool()
    state = decoder.init_state(features)
    feed = torch.full((n,), special.start, dtype=torch.long, device=device)
    words = torch.full((n, max_len), special.pad, dtype=torch.long, device=device)  # trigram history
    alive = torch.ones(n, dtype=torch.bool, device=device)
    ban: Tensor | None = None
    out_tokens: list[Tensor] = []
    out_logprobs: list[Tensor] = []
    out_mask: list[Tensor] = []
    for t in range(max_len + 1):
        logits, state = decoder.step(feed, state)
        logp = torch.log_softmax(logits.float(), dim=-1)
        if ban is None:
            ban = _ban_vector(logp.size(-1), special, block_unk, device)
        scores = _constrain(logp.detach(), t, words[:, :t], ban, special.end, min_len, block_trigrams)
        with torch.no_grad():
            tok = pick(scores)
        is_end = tok == special.end
        # After max_len words only <end> may be kept; any other choice leaves the row unfinished.
        keep = alive & is_end if t == max_len else alive
        out_tokens.append(torch.where(keep, tok, special.pad))
        out_logprobs.append(torch.where(keep, logp.gather(1, tok[:, None]).squeeze(1), 0.0))
        out_mask.append(keep)
        alive = alive & ~is_end
        if t == max_len or not bool(alive.any()):
            break
        words[:, t] = tok
        feed = tok
    tokens, logprobs, mask = (torch.stack(x, dim=1) for x in (out_tokens, out_logprobs, out_mask))
    length = int(mask.sum(dim=1).max())  # drop a trailing all-padding column
    return tokens[:, :length], logprobs[:, :length], mask[:, :length]


def _sampler(
    temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> Callable[[Tensor], Tensor]:
    """Temperature -> top-k -> top-p filtering, then a Gumbel-max draw (never picks -inf)."""

    def pick(scores: Tensor) -> Tensor:
        z = scores / temperature if temperature != 1.0 else scores
        vocab = z.size(-1)
        if 0 < top_k < vocab:
            kth = z.topk(top_k, dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, _NEG_INF)
        if top_p < 1.0:
            sorted_z, order = z.sort(dim=-1, descending=True)
            probs = torch.softmax(sorted_z, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
            drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
            z = z.masked_fill(drop, _NEG_INF)
        u = torch.rand(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(z.dtype).tiny)))
        return (z + gumbel).argmax(dim=-1)

    return pick


# --------------------------------------------------------------------------- beam search


def beam_search(
    decoder: StepDecoder,
    features: Tensor,
    max_len: int = 20,
    special: SpecialTokens = SpecialTokens(),
    *,
    beam_size: int = 3,
    n_best: int = 1,
    min_len: int = 1,
    length_penalty: str = "none",
    alpha: float = 0.7,
    block_trigrams: bool = False,
    block_unk: bool = True,
) -> list[list[Hypothesis]]:
    """Batched beam search: B images x k beams live in one [B*k] batch; the only Python loop
    is over time steps.

    Each step ranks the top 2k of the k*V extensions per image (as in Hugging Face's beam
    search): an <end> among the top k becomes a finished hypothesis, and the best k non-<end>
    extensions stay alive. So k=1 is exactly greedy. Returns per image up to n_best
    hypotheses: finished ones by score first; unfinished ones (max_len words, no <end>
    chosen) only to fill up. Fewer than n_best come back only when fewer distinct
    hypotheses exist (e.g. k larger than the vocabulary and a tiny max_len).

    Early stop (per image; the loop ends when all images are done): when the n_best-th
    finished score is >= best_alive_logprob / penalty(max_len + 1). Log-probs only go down
    and every penalty grows with length, so no alive beam can still beat it; for "none" this
    is exact pruning, for "avg"/"gnmt" a safe (looser) bound. Results equal running to max_len.
    """
    _check_lengths(max_len, min_len)
    if not _is_int(beam_size) or beam_size < 1:
        raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")
    if not _is_int(n_best) or not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be an int in [1, beam_size={beam_size}], got {n_best!r}")
    if length_penalty not in LENGTH_PENALTIES:
        raise ValueError(f"length_penalty must be one of {LENGTH_PENALTIES}, got {length_penalty!r}")
    if not _is_real(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    with torch.inference_mode():
        return _beam_search(
            decoder, features, max_len, special, beam_size, n_best, min_len,
            length_penalty, alpha, block_trigrams, block_unk,
        )  # fmt: skip


def _beam_search(
    decoder: StepDecoder,
    features: Tensor,
    max_len: int,
    special: SpecialTokens,
    k: int,
    n_best: int,
    min_len: int,
    penalty: str,
    alpha: float,
    block_trigrams: bool,
    block_unk: bool,
) -> list[list[Hypothesis]]:
    batch, device = features.size(0), features.device
    if batch == 0:
        return []
    state = decoder.init_state(features)
    state = decoder.reorder_state(state, torch.arange(batch, device=device).repeat_interleave(k))
    feed = torch.full((batch * k,), special.start, dtype=torch.long, device=device)
    offsets = torch.arange(batch, device=device)[:, None] * k

    # Alive beams: words so far and summed log-prob; beam 0 alone starts (others are copies).
    seq = torch.full((batch, k, max_len), special.pad, dtype=torch.long, device=device)
    beam_lp = torch.full((batch, k), _NEG_INF, device=device)
    beam_lp[:, 0] = 0.0
    # Finished pool: the k best finished hypotheses per image so far, best score first.
    pool = _Pool(
        seq=torch.full((batch, k, max_len), special.pad, dtype=torch.long, device=device),
        length=torch.zeros(batch, k, dtype=torch.long, device=device),
        logprob=torch.full((batch, k), _NEG_INF, device=device),
        score=torch.full((batch, k), _NEG_INF, device=device),
    )
    unfinished_lp: Tensor | None = None  # set only if the search reaches max_len
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    bound_divisor = length_penalty(max_len + 1, penalty, alpha)
    ban: Tensor | None = None

    for t in range(max_len + 1):
        logits, state = decoder.step(feed, state)
        logp = torch.log_softmax(logits.float(), dim=-1)
        vocab = logp.size(-1)
        if ban is None:
            ban = _ban_vector(vocab, special, block_unk, device)
        history = seq.view(batch * k, max_len)[:, :t]
        scores = _constrain(logp, t, history, ban, special.end, min_len, block_trigrams)
        cand = (beam_lp.view(batch * k, 1) + scores).view(batch, k * vocab)
        n_cand = min(2 * k, k * vocab)
        top_lp, top_idx = cand.topk(n_cand, dim=1)
        parent, tok = top_idx // vocab, top_idx % vocab
        is_end = tok == special.end

        # 1) <end> within the top k: a finished hypothesis (t words + <end>).
        fin = is_end[:, :k] & torch.isfinite(top_lp[:, :k]) & ~done[:, None]
        fin_lp = top_lp[:, :k].masked_fill(~fin, _NEG_INF)
        fin_seq = seq.gather(1, parent[:, :k, None].expand(-1, -1, max_len))
        divisor = length_penalty(t + 1, penalty, alpha)
        pool = pool.merge(
            _Pool(fin_seq, torch.full_like(parent[:, :k], t), fin_lp, fin_lp / divisor), k
        )

        if t == max_len:
            # max_len words and <end> not chosen: these beams survive only as unfinished.
            ended = torch.zeros(batch, k, dtype=torch.long, device=device)
            ended.scatter_add_(1, parent[:, :k], fin.long())
            keep = torch.isfinite(beam_lp) & (ended == 0) & ~done[:, None]
            unfinished_lp = beam_lp.masked_fill(~keep, _NEG_INF)
            break

        # 2) The k best non-<end> extensions stay alive (ranks are unique, so the sort is exact).
        rank = torch.arange(n_cand, device=device)
        order = (rank + n_cand * is_end.long()).sort(dim=1).indices[:, :k]
        beam_lp = top_lp.gather(1, order).masked_fill(is_end.gather(1, order), _NEG_INF)
        new_parent, new_tok = parent.gather(1, order), tok.gather(1, order)
        seq = seq.gather(1, new_parent[..., None].expand(-1, -1, max_len))
        seq[:, :, t] = new_tok
        state = decoder.reorder_state(state, (new_parent + offsets).view(-1))
        feed = new_tok.view(-1)

        # 3) Done when no alive beam can beat the n_best-th finished (or none is alive).
        best_alive = beam_lp.max(dim=1).values
        done |= best_alive / bound_divisor <= pool.score[:, n_best - 1]
        if bool(done.all()):
            break

    return _collect(pool, seq, unfinished_lp, n_best, max_len, penalty, alpha)


@dataclass
class _Pool:
    """Per-image finished hypotheses (tensors [B, M, ...]) kept sorted by score."""

    seq: Tensor
    length: Tensor
    logprob: Tensor
    score: Tensor

    def merge(self, new: _Pool, size: int) -> _Pool:
        """Keep the `size` best of both; stable, so on ties the older hypothesis wins."""
        score = torch.cat([self.score, new.score], dim=1)
        order = score.sort(dim=1, descending=True, stable=True).indices[:, :size]
        seq = torch.cat([self.seq, new.seq], dim=1)
        return _Pool(
            seq=seq.gather(1, order[..., None].expand(-1, -1, seq.size(-1))),
            length=torch.cat([self.length, new.length], dim=1).gather(1, order),
            logprob=torch.cat([self.logprob, new.logprob], dim=1).gather(1, order),
            score=score.gather(1, order),
        )


def _collect(
    pool: _Pool,
    seq: Tensor,
    unfinished_lp: Tensor | None,
    n_best: int,
    max_len: int,
    penalty: str,
    alpha: float,
) -> list[list[Hypothesis]]:
    """Tensors -> Hypothesis lists (the only per-hypothesis Python work, once, at the end)."""
    fin_seq, fin_len = pool.seq.tolist(), pool.length.tolist()
    fin_lp, fin_score = pool.logprob.tolist(), pool.score.tolist()
    if unfinished_lp is not None:
        un_lp, order = unfinished_lp.sort(dim=1, descending=True, stable=True)
        un_seq = seq.gather(1, order[..., None].expand(-1, -1, max_len)).tolist()
        un_lp_list = un_lp.tolist()
    divisor = length_penalty(max_len, penalty, alpha)
    results: list[list[Hypothesis]] = []
    for b in range(len(fin_seq)):
        hyps = [
            Hypothesis(fin_seq[b][j][: fin_len[b][j]], fin_lp[b][j], fin_score[b][j], True)
            for j in range(len(fin_seq[b]))
            if fin_score[b][j] != _NEG_INF
        ][:n_best]
        if len(hyps) < n_best and unfinished_lp is not None:
            for j, lp in enumerate(un_lp_list[b]):
                if lp == _NEG_INF or len(hyps) == n_best:
                    break
                hyps.append(Hypothesis(un_seq[b][j], lp, lp / divisor, False))
        results.append(hyps)
    return results


# --------------------------------------------------------------------------- shared helpers


def _ban_vector(vocab: int, special: SpecialTokens, block_unk: bool, device: torch.device) -> Tensor:
    """Additive mask [V]: -inf on tokens that may never be emitted."""
    if special.end >= vocab:
        raise ValueError(f"special.end={special.end} is outside the decoder's vocabulary of {vocab}")
    ban = torch.zeros(vocab, device=device)
    ids = [special.pad, special.start] + ([special.unk] if block_unk else [])
    ban[[i for i in ids if i < vocab]] = _NEG_INF
    return ban


def _constrain(
    logp: Tensor,
    step: int,
    history: Tensor,
    ban: Tensor,
    end: int,
    min_len: int,
    block_trigrams: bool,
) -> Tensor:
    """logp [N, V] -> a copy with -inf on every token not allowed after `history` [N, step]."""
    scores = logp + ban
    if step < min_len:
        scores[:, end] = _NEG_INF
    if block_trigrams and step >= 3:
        _block_trigrams_(scores, history)
    return scores


def _block_trigrams_(scores: Tensor, history: Tensor) -> None:
    """In place: x gets -inf after (a, b) if "a b x" already occurred in history [N, t].

    O(N * t) via scatter_add of 0 / -inf (duplicate indices are safe, -inf + -inf = -inf),
    instead of materializing an [N, V] ban mask every step.
    """
    t = history.size(1)
    match = (history[:, : t - 2] == history[:, t - 2 : t - 1]) & (history[:, 1 : t - 1] == history[:, t - 1 :])
    penalty = torch.zeros(match.shape, dtype=scores.dtype, device=scores.device).masked_fill_(match, _NEG_INF)
    scores.scatter_add_(1, history[:, 2:], penalty)


def _rows_to_hypotheses(
    tokens: Tensor, logprobs: Tensor, mask: Tensor, n: int, end: int, penalty: str, alpha: float
) -> list[list[Hypothesis]]:
    """Rollout rows (n contiguous rows per image) -> per-image hypotheses sorted by score."""
    lengths = mask.sum(dim=1).tolist()
    totals = (logprobs * mask).sum(dim=1).tolist()
    rows = tokens.tolist()
    results: list[list[Hypothesis]] = []
    for start in range(0, len(rows), n):
        hyps = []
        for i in range(start, start + n):
            toks = rows[i][: lengths[i]]
            finished = bool(toks) and toks[-1] == end
            words = toks[:-1] if finished else toks
            score = totals[i] / length_penalty(lengths[i], penalty, alpha)
            hyps.append(Hypothesis(words, totals[i], score, finished))
        hyps.sort(key=lambda h: h.score, reverse=True)
        results.append(hyps)
    return results


def _check_lengths(max_len: object, min_len: object, prefix: str = "") -> None:
    if not _is_int(max_len) or max_len < 1:  # type: ignore[operator]
        raise ValueError(f"{prefix}max_len must be an int >= 1, got {max_len!r}")
    if not _is_int(min_len) or not 0 <= min_len <= max_len:  # type: ignore[operator]
        raise ValueError(f"{prefix}min_len must be an int in [0, max_len={max_len}], got {min_len!r}")


def _check_sampling(temperature: object, top_k: object, top_p: object, prefix: str = "") -> None:
    if not _is_real(temperature) or temperature <= 0:  # type: ignore[operator]
        raise ValueError(f"{prefix}temperature must be a finite number > 0, got {temperature!r}")
    if not _is_int(top_k) or top_k < 0:  # type: ignore[operator]
        raise ValueError(f"{prefix}top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not _is_real(top_p) or not 0 < top_p <= 1:  # type: ignore[operator]
        raise ValueError(f"{prefix}top_p must be a number in (0, 1] (1 = off), got {top_p!r}")

