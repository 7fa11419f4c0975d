"""Self-critical sequence training (Rennie et al. 2017): fine-tune a cross-entropy model on its CIDEr-D reward.

    captioner scst --init runs/<xe-run>/best --config configs/coco_subset_scst.yaml
    captioner scst --init runs/<xe-run>/best                      # data and settings from the XE run itself
    captioner scst --init runs/<xe-run>/best scst.baseline=mean scst.samples=5 scst.lr=2e-5
    captioner scst --resume runs/<scst-run>/

Why: cross-entropy trains the decoder on ground-truth prefixes but it is judged on its own captions by CIDEr-D.
REINFORCE on sampled captions optimises the test metric directly; the greedy caption's reward as baseline
("self-critical") makes the gradient push up exactly the samples that beat what the model would say at test
time, with no learned critic. The reward's document frequencies come from the *training* references, computed
once (`metrics.CiderD(corpus_references=...)`), so the reward of a caption never depends on the batch.

Trains on cached features (one process, CPU or one GPU). The run folder has the same files and checkpoint schema as
`captioner train` (config.yaml, vocab.json, metrics.csv, best/last.safetensors); `best` is picked on validation
CIDEr-D (greedy or beam, `scst.select`), and epoch 0 of the log is the starting checkpoint, so `best` is never worse
on validation than what SCST started from.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from .config import ConfigError, ExperimentConfig, ScstConfig, from_dict, load_config, save_config, to_dict
from .data import Sample, load_split
from .decoding import DecodeConfig, SpecialTokens, greedy, sample
from .encoders import create_encoder
from .evaluate import caption_features, greedy_cider, special_tokens
from .features import FeatureStore, load_or_extract
from .metrics import CiderD, score_captions
from .model import ShowTellDecoder
from .text import tokenize
from .train import (StopFlag, TrainingError, TrainingInterrupted, TrainState, _new_run_dir, _replace_atomically,
                    _write_csv, autocast_context, check_amp, rng_state, resolve_device, set_rng_state)
from .vocab import Vocabulary

log = logging.getLogger("captioner.scst")


# --------------------------------------------------------------------------- reward


class CiderReward:
    """CIDEr-D of captions against their image's references, with document frequencies fixed by a corpus.

    `references`: image id -> raw reference captions. They are tokenized once like the evaluation does, and the
    same images' references form the document-frequency corpus (the training set for SCST).
    """

    def __init__(self, references: dict[str, Sequence[str]]):
        if not references:
            raise ConfigError("the SCST reward needs reference captions for at least one image")
        self.references = {k: [" ".join(tokenize(c)) for c in caps] for k, caps in references.items()}
        empty = [k for k, v in self.references.items() if not v]
        if empty:
            raise ConfigError(f"{len(empty)} image(s) have no reference captions (e.g. {empty[0]})")
        self.cider = CiderD(corpus_references=self.references.values())

    def __call__(self, image_ids: Sequence[str], captions: Sequence[str]) -> np.ndarray:
        """Per-caption reward. `captions` are vocabulary words joined by spaces (already in tokenizer form)."""
        return self.cider.compute_score(list(captions), [self.references[i] for i in image_ids])[1]


def _texts(vocab: Vocabulary, tokens: torch.Tensor) -> list[str]:
    return [vocab.decode(row) for row in tokens.tolist()]


def tempered_logprobs(decoder: ShowTellDecoder, features: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                      temperature: float, special: SpecialTokens) -> torch.Tensor:
    """log softmax(logits / T) of each drawn token [N, L] (0 where mask is False), with grad, by teacher forcing the
    draws (<start> + tokens) through the decoder's packed forward."""
    n = tokens.shape[0]
    start = torch.full((n, 1), special.start, dtype=tokens.dtype, device=tokens.device)
    captions = torch.cat([start, tokens], dim=1)
    lengths = mask.sum(dim=1) + 1
    logits, targets = decoder(features, captions, lengths)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1).gather(1, targets[:, None]).squeeze(1)
    return torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device).masked_scatter(mask, logp)


def scst_loss(
    decoder: ShowTellDecoder,
    features: torch.Tensor,
    image_ids: Sequence[str],
    reward: CiderReward,
    vocab: Vocabulary,
    cfg: ScstConfig,
    special: SpecialTokens,
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE with a baseline on one batch of images -> (loss, statistics).

    loss = -mean over sampled tokens of (r(w) - b) * log p_T(w_t | w_<t, image), p_T the model at temperature T
    (`cfg.temperature`; T = 1 is plain SCST). Samples are drawn in eval mode unless `cfg.sample_dropout`; the greedy
    baseline is the eval-mode caption the model would give at test time.
    """
    k = cfg.samples
    stats: dict[str, float] = {}
    if cfg.baseline == "greedy":
        decoder.eval()
        greedy_tokens, _, _ = greedy(decoder, features, cfg.max_len, special)
        baseline_reward = reward(image_ids, _texts(vocab, greedy_tokens))
        stats["greedy_reward"] = float(baseline_reward.mean())
    decoder.train(cfg.sample_dropout)
    if cfg.temperature == 1.0:  # the model's own distribution: sample's log-probs carry the gradient
        tokens, logprobs, mask = sample(decoder, features, cfg.max_len, special, n=k)
    else:  # the tempered policy p^(1/T): draw without a graph, then score the draws under it in one packed pass
        with torch.no_grad():
            tokens, _, mask = sample(decoder, features, cfg.max_len, special, temperature=cfg.temperature, n=k)
        logprobs = tempered_logprobs(decoder, features.repeat_interleave(k, dim=0), tokens, mask, cfg.temperature, special)
    sample_ids = [i for i in image_ids for _ in range(k)]  # rows i*k .. i*k+k-1 belong to image i
    sample_reward = reward(sample_ids, _texts(vocab, tokens)).reshape(len(image_ids), k)
    if cfg.baseline == "greedy":
        baseline = baseline_reward[:, None]
    else:  # mean reward of the image's other samples (leave-one-out)
        baseline = (sample_reward.sum(axis=1, keepdims=True) - sample_reward) / (k - 1)
    advantage = torch.as_tensor((sample_reward - baseline).reshape(-1), dtype=logprobs.dtype, device=logprobs.device)
    maskf = mask.to(logprobs.dtype)
    loss = -(advantage[:, None] * logprobs * maskf).sum() / maskf.sum().clamp_min(1.0)
    stats.update(reward=float(sample_reward.mean()), baseline=float(baseline.mean()),
                 sample_len=float(mask.sum(dim=1).float().mean()) - 1.0)
    return loss, stats


# --------------------------------------------------------------------------- validation


def val_cider(decoder: ShowTellDecoder, samples: Sequence[Sample], store: FeatureStore, vocab: Vocabulary,
              device: torch.device, cfg: ScstConfig, method: str) -> float:
    """Corpus CIDEr-D of greedy or beam captions on the validation images (evaluation's own df)."""
    if method == "greedy":
        return greedy_cider(decoder, samples, store, vocab, device, max_len=cfg.max_len)
    samples = [s for s in samples if s.image_id in store.index]
    feats = store.features[store.rows([s.image_id for s in samples])]
    caps = caption_features(decoder, vocab, feats, DecodeConfig(method="beam", beam_size=cfg.beam_size, max_len=cfg.max_len), device)
    report = score_captions({s.image_id: s.captions for s in samples}, {s.image_id: c for s, c in zip(samples, caps)}, use_meteor=False)
    return float(report.corpus["CIDEr-D"])


# --------------------------------------------------------------------------- the run


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Image order of an epoch as a function of (seed, epoch) only, so a resumed epoch skips exactly what was done."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _build_optimizer(decoder: torch.nn.Module, cfg: ScstConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def scst(cfg: ExperimentConfig, run_dir: Path | None = None, resume: bool = False, show_progress: bool = True,
         stop_after_steps: int | None = None) -> Path:
    """Fine-tune `cfg.scst.init` with SCST (or resume the run in `run_dir`); returns the run folder."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("captioner scst runs in one process; launch it without torchrun")
    device = resolve_device(cfg.train.device)
    check_amp(cfg.train.amp, device)
    s = cfg.scst
    if resume:
        assert run_dir is not None
        ckpt = load_checkpoint(run_dir / "last.safetensors")
        if ckpt.optimizer is None or not ckpt.train_state:
            raise CheckpointError(f"{run_dir}/last.safetensors holds no training state; it cannot be resumed")
        state = from_dict(TrainState, ckpt.train_state)
        if state.finished:
            log.info("run %s already finished (epoch %d); nothing to do", run_dir, state.epoch)
            return run_dir
    else:
        if not s.init:
            raise ConfigError("SCST starts from a cross-entropy checkpoint: pass --init RUN/best (or set scst.init)")
        s.init = str(resolve_checkpoint(s.init).resolve())
        ckpt = load_checkpoint(s.init)
        state = TrainState()
        run_dir = run_dir or _new_run_dir(cfg)
    if ckpt.encoder is not None:  # SCST samples on cached features of the pretrained encoder
        raise CheckpointError(f"{s.init if not resume else run_dir}: its encoder was fine-tuned (train.finetune_encoder); "
                              "captioner scst trains on cached features of the pretrained encoder and cannot start from it")
    model_cfg, vocab = ckpt.model_config, ckpt.vocab
    cfg.model = model_cfg  # the record says what was trained: the checkpoint's model, not the file's defaults

    encoder = create_encoder(model_cfg.encoder, pretrained=True)
    if encoder.spec.feature_dim != model_cfg.feature_dim:
        raise CheckpointError(f"{s.init}: the model expects {model_cfg.feature_dim}-d features but encoder "
                              f"{model_cfg.encoder} gives {encoder.spec.feature_dim}")
    train_samples, _ = load_split(cfg.data, "train")
    val_samples, _ = load_split(cfg.data, "val")
    train_store = load_or_extract(model_cfg.encoder, train_samples, cfg.features, device, strict=cfg.data.strict,
                                  desc="train features", encoder=encoder)
    val_store = load_or_extract(model_cfg.encoder, val_samples, cfg.features, device, strict=cfg.data.strict,
                                desc="val features", encoder=encoder)
    train_samples = [x for x in train_samples if x.image_id in train_store.index]
    val_samples = [x for x in val_samples if x.image_id in val_store.index]
    if not train_samples or not val_samples:
        raise ConfigError("SCST needs readable train and val images")
    reward = CiderReward({x.image_id: x.captions for x in train_samples})
    special = special_tokens(vocab)
    torch.manual_seed(cfg.train.seed)  # after the data: a feature extraction draws from the global RNG, a cache hit not

    decoder = ShowTellDecoder(model_cfg).to(device)
    try:
        decoder.load_state_dict(ckpt.decoder)
    except RuntimeError as err:
        raise CheckpointError(f"{s.init}: weights do not match the stored model config ({err})") from None
    optimizer = _build_optimizer(decoder, s)
    if resume:
        optimizer.load_state_dict(ckpt.optimizer)
        set_rng_state(ckpt.rng)

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    _replace_atomically(run_dir / "config.yaml", lambda tmp: save_config(cfg, tmp))  # --resume reads it back
    _replace_atomically(run_dir / "vocab.json", lambda tmp: tmp.write_text(vocab.to_json()))

    def save(name: str) -> None:
        save_checkpoint(run_dir / name, model_config=model_cfg, vocab=vocab, decoder=decoder, optimizer=optimizer,
                        rng=rng_state(), train_state=asdict(state), experiment=to_dict(cfg))

    def validate(row: dict[str, Any]) -> float:
        row["val_cider_greedy"] = round(val_cider(decoder, val_samples, val_store, vocab, device, s, "greedy"), 5)
        if s.val_beam or s.select == "beam":
            row[f"val_cider_beam{s.beam_size}"] = round(val_cider(decoder, val_samples, val_store, vocab, device, s, "beam"), 5)
        return row["val_cider_greedy"] if s.select == "greedy" else row[f"val_cider_beam{s.beam_size}"]

    if not state.history:  # epoch 0: the starting point, so every gain in the log is measured against it
        t0 = time.time()
        row: dict[str, Any] = {"epoch": 0, "step": 0}
        state.best, state.best_epoch = -validate(row), 0
        row["seconds"] = round(time.time() - t0, 2)
        state.history.append(row)
        log.info("start (%s): %s", s.init, " ".join(f"{k}={v}" for k, v in row.items()))
        _write_csv(run_dir / "metrics.csv", state.history)
        save("best")
        save("last")
    log.info("run folder %s: %d train images (%d captions), %d val images; %d samples per image, baseline %s",
             run_dir, len(train_samples), sum(len(x.captions) for x in train_samples), len(val_samples), s.samples, s.baseline)

    n_batches = (len(train_samples) + s.batch_size - 1) // s.batch_size
    with StopFlag() as flag:
        stop = (lambda: flag() or state.step >= stop_after_steps) if stop_after_steps is not None else flag
        while state.epoch < s.epochs:
            t0 = time.time()
            order = _epoch_order(len(train_samples), cfg.train.seed, state.epoch)
            bar = tqdm(total=n_batches, initial=state.batch_in_epoch, desc=f"scst epoch {state.epoch + 1}/{s.epochs}",
                       unit="batch", disable=not show_progress, dynamic_ncols=True, leave=False)
            interrupted = False
            for b in range(state.batch_in_epoch, n_batches):
                batch = [train_samples[i] for i in order[b * s.batch_size : (b + 1) * s.batch_size]]
                ids = [x.image_id for x in batch]
                feats = train_store.features[train_store.rows(ids)].to(device)
                with autocast_context(cfg.train.amp, device):
                    loss, stats = scst_loss(decoder, feats, ids, reward, vocab, s, special)
                if not torch.isfinite(loss):
                    raise TrainingError(f"SCST loss became {loss.item()} at epoch {state.epoch + 1}, step {state.step}; "
                                        "the last good checkpoint is kept (lower scst.lr)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if s.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(decoder.parameters(), s.grad_clip)
                optimizer.step()
                state.step += 1
                state.batch_in_epoch = b + 1
                # epoch_loss_sum carries the running sum of the sampled reward (what SCST maximises) for resume
                state.epoch_loss_sum += stats["reward"]
                bar.update(1)
                bar.set_postfix(reward=f"{state.epoch_loss_sum / state.batch_in_epoch:.3f}",
                                **({"greedy": f"{stats['greedy_reward']:.3f}"} if "greedy_reward" in stats else {}))
                if stop():
                    interrupted = True
                    break
            bar.close()
            if interrupted:
                save("last")
                log.warning("stopped at epoch %d, batch %d", state.epoch + 1, state.batch_in_epoch)
                raise TrainingInterrupted(run_dir, flag.signum)
            row = {"epoch": state.epoch + 1, "step": state.step,
                   "train_reward": round(state.epoch_loss_sum / max(state.batch_in_epoch, 1), 5)}
            figure = -validate(row)
            row["seconds"] = round(time.time() - t0, 2)
            improved = state.best is None or figure < state.best
            if improved:
                state.best, state.best_epoch = figure, state.epoch + 1
            state.history.append(row)
            state.epoch += 1
            state.batch_in_epoch, state.epoch_loss_sum = 0, 0.0
            state.finished = state.epoch >= s.epochs
            tqdm.write(" ".join(f"{k}={v}" for k, v in row.items()) + ("  *best*" if improved else ""))
            _write_csv(run_dir / "metrics.csv", state.history)
            if improved:
                save("best")
            save("last")
    return run_dir


# --------------------------------------------------------------------------- CLI


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("captioner scst", add_help=add_help,
                                description="Self-critical fine-tuning of a cross-entropy checkpoint on CIDEr-D.")
    p.add_argument("--init", help="XE checkpoint to start from (runs/<run>/best); sets scst.init")
    p.add_argument("--config", help="experiment YAML with an scst: section (default: the --init run's own config)")
    p.add_argument("--resume", help="SCST run folder to continue where it stopped (uses its config.yaml)")
    p.add_argument("--run-dir", help="write the run here instead of output_dir/name-timestamp")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. scst.lr=2e-5 scst.epochs=5")
    return p


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """--config file, or else the experiment recorded in the --init checkpoint; then --init and overrides."""
    overrides = list(args.overrides) + ([f"scst.init={args.init}"] if args.init else [])
    if args.config:
        return load_config(args.config, overrides)
    init = args.init
    if not init:
        raise ConfigError("captioner scst needs --init CHECKPOINT (with or without --config), or --resume RUN_DIR")
    recorded = load_checkpoint(init).experiment
    if not recorded:
        raise ConfigError(f"{init} records no experiment config (data paths); pass --config FILE")
    from .config import apply_overrides

    recorded = {k: v for k, v in recorded.items() if k != "scst"}  # an XE run's scst section is only defaults
    recorded["name"] = f"{recorded.get('name', 'experiment')}-scst"
    return from_dict(ExperimentConfig, apply_overrides(recorded, overrides))


def main(args: argparse.Namespace) -> int:
    try:
        if args.resume:
            if args.config or args.init:
                raise ConfigError("--resume uses the run's own config.yaml and checkpoint; do not pass --config or --init")
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
            run_dir = scst(load_config(run_dir / "config.yaml", args.overrides), run_dir, resume=True, show_progress=not args.quiet)
        else:
            cfg = config_from_args(args)
            run_dir = scst(cfg, Path(args.run_dir) if args.run_dir else None, show_progress=not args.quiet)
    except TrainingInterrupted as stopped:
        print(str(stopped).replace("captioner train", "captioner scst"), file=sys.stderr)
        return 128 + (stopped.signum or signal.SIGINT)
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    sys.exit(main(get_args_parser().parse_args()))
