"""Show and Tell decoder (Vinyals et al. 2015): the image embedding is the LSTM's first input, then <start> and the words.

The encoder is kept out of this module: with a frozen CNN the decoder trains on cached pooled features, and the
same decoder serves end-to-end training when the caller runs the encoder first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .config import ModelConfig

State = tuple[torch.Tensor, ...]


class ShowTellDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.feature_dim <= 0 or cfg.vocab_size <= 4:
            raise ValueError(f"ModelConfig needs feature_dim and vocab_size filled in, got {cfg}")
        self.cfg = cfg
        # Per-dimension mean and std of the training features (set_feature_stats), as buffers so that they travel in
        # every checkpoint. Pooled CNN features share a large constant part; standardized, the part that tells images
        # apart drives the image embedding, and the LSTM learns to use the image many epochs sooner.
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_std", torch.ones(cfg.feature_dim))
        self.feature_dropout = nn.Dropout(cfg.feature_dropout)
        self.image_proj = nn.Linear(cfg.feature_dim, cfg.embed_size)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size, padding_idx=0)
        self.lstm = nn.LSTM(
            cfg.embed_size,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(cfg.dropout)
        # Weight tying needs the output layer to read embed-sized vectors; project when the sizes differ.
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.embed_size) if cfg.tie_weights and cfg.hidden_size != cfg.embed_size else None
        self.head = nn.Linear(cfg.embed_size if cfg.tie_weights else cfg.hidden_size, cfg.vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        for name, p in self.lstm.named_parameters():
            if "bias" in name:  # forget-gate bias 1: the usual LSTM trick for stable early training
                nn.init.zeros_(p)
                n = p.shape[0] // 4
                p.data[n : 2 * n] = 1.0

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Standardize image features with the statistics of the training set's features [N, feature_dim]."""
        features = features.float()
        self.feature_mean.copy_(features.mean(0))
        if len(features) < 2:
            return  # no spread to measure: keep the identity
        std = features.std(0)
        # A floor relative to the typical spread: a (nearly) constant dimension must not be blown up into noise.
        self.feature_std.copy_(std.clamp_min(0.1 * float(std.mean()) + 1e-6))

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        features = (features - self.feature_mean) / self.feature_std
        return self.image_proj(self.feature_dropout(features))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(hidden)
        if self.out_proj is not None:
            hidden = self.out_proj(hidden)
        return self.head(hidden)

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                sample_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing. captions [B, T] = <start> w1..wn <end> <pad>..., lengths = n + 2.

        Returns (logits [N, V], targets [N]) over the N real target positions only, so the vocabulary projection
        never runs on padding. `sample_prob` > 0 switches to scheduled sampling (a slower step-by-step loop);
        at 0 the packed single-call LSTM path runs, unchanged.
        """
        if sample_prob > 0:
            return self.forward_scheduled(features, captions, lengths, sample_prob)
        inputs, targets = captions[:, :-1], captions[:, 1:]
        x = torch.cat([self.embed_image(features).unsqueeze(1), self.embed(inputs)], dim=1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        out = out[:, 1:]  # the output after the image alone predicts nothing (Show and Tell's t = -1)
        mask = torch.arange(targets.shape[1], device=lengths.device)[None, :] < (lengths - 1)[:, None]
        return self.logits(out[mask]), targets[mask]

    def forward_scheduled(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                          sample_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Scheduled sampling (Bengio et al. 2015): same inputs and outputs as `forward`, but each input word after
        <start> is, with probability `sample_prob` per caption and step, a word drawn from the model's own previous
        prediction instead of the ground truth, so training sees the prefixes the model makes at test time.

        The draw is not differentiated through (as in the paper). Random numbers come from torch's global RNG and
        their number does not depend on the captions' words, so a seeded run is reproducible (and resumable).
        """
        if not 0.0 <= sample_prob <= 1.0:
            raise ValueError(f"sample_prob must be in [0, 1], got {sample_prob}")
        inputs, targets = captions[:, :-1], captions[:, 1:]
        batch, steps = inputs.shape[0], int(lengths.max()) - 1
        state = self.init_state(features)
        feed, step_logits = inputs[:, 0], []
        for t in range(steps):
            if t > 0 and sample_prob > 0:
                with torch.no_grad():
                    own = torch.multinomial(torch.softmax(step_logits[-1].detach().float(), dim=-1), 1).squeeze(1)
                    use_own = torch.rand(batch, device=inputs.device) < sample_prob
                feed = torch.where(use_own, own, inputs[:, t])
            elif t > 0:
                feed = inputs[:, t]
            logits, state = self.step(feed, state)
            step_logits.append(logits)
        logits = torch.stack(step_logits, dim=1)  # [B, steps, V]
        mask = torch.arange(steps, device=lengths.device)[None, :] < (lengths - 1)[:, None]
        return logits[mask], targets[:, :steps][mask]

    # ---- step interface used by captioner.decoding -------------------------------------------------------------

    def init_state(self, features: torch.Tensor) -> State:
        _, state = self.lstm(self.embed_image(features).unsqueeze(1))
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One time step through the LSTM's own weights with torch.lstm_cell: for a single step, nn.LSTM's oneDNN
        path costs ~4 ms of set-up on CPU against ~0.3 ms here (greedy captioning of one image went from 51 ms to
        12 ms), with the same numbers. Dropout between layers follows nn.LSTM's (training mode only)."""
        h, c = state
        x = self.embed(tokens)
        hs, cs = [], []
        for k in range(self.cfg.num_layers):
            hk, ck = torch.lstm_cell(x, (h[k], c[k]), getattr(self.lstm, f"weight_ih_l{k}"), getattr(self.lstm, f"weight_hh_l{k}"),
                                     getattr(self.lstm, f"bias_ih_l{k}"), getattr(self.lstm, f"bias_hh_l{k}"))
            hs.append(hk)
            cs.append(ck)
            x = F.dropout(hk, self.lstm.dropout, self.training) if k < self.cfg.num_layers - 1 else hk
        return self.logits(x), (torch.stack(hs), torch.stack(cs))

    def reorder_state(self, state: State, index: torch.Tensor) -> State:
        return tuple(s.index_select(1, index) for s in state)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
