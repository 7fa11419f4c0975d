"""Cross-entropy training of the Show and Tell decoder: one loop for CPU, GPU and DDP.

    captioner train --config configs/coco_subset.yaml
    captioner train --config configs/coco_subset.yaml train.epochs=3 model.hidden_size=256
    captioner train --resume runs/<run>/
    captioner train --config configs/coco_subset.yaml train.finetune_encoder=true   # end to end from images (GPU)
    torchrun --nproc_per_node=2 -m captioner train --config configs/coco_subset.yaml

Under torchrun, `train.batch_size` is the global batch: each of the N processes takes batch_size / N, so a run
optimises the same way whatever N is (docs/research.md has multi-node launch, AMP and SCST).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig, from_dict, load_config, save_config, to_dict
from .data import DataError, Sample, load_split
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, cleanup_distributed, init_distributed
from .encoders import Encoder, EncoderSpec, build_transform, create_encoder
from .features import FeatureStore, extract_features, load_or_extract
from .images import ImageError, load_image
from .model import ShowTellDecoder, caption_loss
from .vocab import Vocabulary

log = logging.getLogger("captioner.train")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Stopped by a signal (or `stop_after_steps`) after saving a resumable `last` checkpoint."""

    def __init__(self, run_dir: Path, signum: int | None):
        super().__init__(f"training stopped; resume with: captioner train --resume {run_dir}")
        self.run_dir, self.signum = run_dir, signum


# --------------------------------------------------------------------------- devices, schedules


def resolve_device(spec: str, dist_info: DistInfo | None = None) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and dist_info is not None and dist_info.enabled:
        spec = f"cuda:{dist_info.local_rank}"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec!r} but CUDA is not available here; use train.device=cpu")
    return torch.device(spec)


def cpu_bf16_lstm_supported() -> bool:
    """Whether this CPU runs an LSTM under bf16 autocast: oneDNN builds its bf16 LSTM only on CPUs with bf16
    instructions (AVX512-BF16 / AMX); elsewhere it fails deep inside the first forward pass."""
    lstm = torch.nn.LSTM(4, 4, batch_first=True)
    try:
        with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 2, 4))
    except RuntimeError:
        return False
    return True


def check_amp(amp: str, device: torch.device) -> None:
    """fp16 is a CUDA-only option: CPU autocast has no fp16 LSTM (and fp16 would need loss scaling anyway)."""
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (this run is on {device}); use train.amp=bf16 or off")
    if amp == "bf16" and device.type == "cpu" and not cpu_bf16_lstm_supported():
        raise ConfigError("train.amp=bf16: this CPU has no bf16 LSTM kernel (it needs AVX512-BF16 or AMX); "
                          "use train.amp=off")


def autocast_context(amp: str, device: torch.device):
    """bf16 autocast on CUDA by default; off on CPU unless asked (CPU bf16 is slower on most laptops)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier as a pure function of the step, so resuming needs no scheduler state."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** ((step // max(steps_per_epoch, 1)) // max(cfg.step_size, 1))
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def scheduled_sampling_prob(epoch: int, cfg: TrainConfig) -> float:
    if cfg.scheduled_sampling <= 0:
        return 0.0
    if cfg.scheduled_sampling_ramp <= 0:
        return cfg.scheduled_sampling
    return cfg.scheduled_sampling * min(1.0, epoch / cfg.scheduled_sampling_ramp)


def global_batch_split(batch_size: int, world_size: int) -> int:
    """Per-rank batch for a global `train.batch_size`: the same optimisation whatever the number of processes."""
    if batch_size % world_size != 0:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch and must be divisible by the "
                          f"{world_size} processes (each takes batch_size / {world_size})")
    return batch_size // world_size


# --------------------------------------------------------------------------- data


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@dataclass
class CaptionSet:
    """Every (image, caption) pair of a split, tokenized once into padded tensors; features gathered per batch."""

    image_ids: list[str]  # one per caption
    captions: torch.Tensor  # [N, max_len + 2] long, <start> .. <end> <pad>...
    lengths: torch.Tensor  # [N]
    feature_rows: torch.Tensor  # [N] rows into store.features
    store: FeatureStore

    @classmethod
    def build(cls, samples: Sequence[Sample], store: FeatureStore, vocab: Vocabulary, max_len: int) -> "CaptionSet":
        ids, encoded = [], []
        for s in samples:
            if s.image_id not in store.index:
                continue  # unreadable image, already reported by the feature cache
            for cap in s.captions:
                ids.append(s.image_id)
                encoded.append(vocab.encode(cap, max_len))
        if not encoded:
            raise ConfigError("no captions left to train on after dropping unreadable images")
        caps = torch.zeros(len(encoded), max_len + 2, dtype=torch.long)
        for i, e in enumerate(encoded):
            caps[i, : len(e)] = torch.tensor(e)
        lengths = torch.tensor([len(e) for e in encoded])
        return cls(ids, caps, lengths, store.rows(ids), store)

    def __len__(self) -> int:
        return len(self.image_ids)

    def collate(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx_t = torch.tensor(idx, dtype=torch.long)
        lengths = self.lengths[idx_t]
        caps = self.captions[idx_t, : int(lengths.max())]
        return self.store.features[self.feature_rows[idx_t]], caps, lengths

    def loader(self, batch_size: int, dist_info: DistInfo, seed: int, shuffle: bool) -> tuple[DataLoader, DistributedSampler]:
        # DistributedSampler with world size 1 is the single-process path too: one code path, seeded by set_epoch.
        sampler = DistributedSampler(
            _Indices(len(self)), num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        # A private generator keeps DataLoader from drawing on the global RNG, so dropout masks after a resume are
        # exactly those of an uninterrupted run.
        loader = DataLoader(_Indices(len(self)), batch_size=batch_size, sampler=sampler, collate_fn=self.collate,
                            generator=torch.Generator().manual_seed(seed))
        return loader, sampler


# --------------------------------------------------------------------------- end-to-end training (train.finetune_encoder)


class EncoderDecoder(torch.nn.Module):
    """Encoder and decoder as one module: forward(images, ...) = decoder(encoder(images), ...), so train_one_epoch,
    evaluate, gradient clipping and DDP take it exactly as they take the decoder on cached features."""

    def __init__(self, encoder: Encoder, decoder: ShowTellDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, images: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(self.encoder(images), captions, lengths, **kwargs)


def augmentation_seed(seed: int, epoch: int, row: int) -> int:
    """The random crop/jitter/flip of caption row `row` in `epoch`: a pure function of the three, so the images a run
    sees do not depend on the number of workers or processes, nor on whether the run was interrupted and resumed."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{row}".encode()).digest()[:8], "little")


class _ImageSampler(DistributedSampler):
    """CaptionSet's sampler (the same rows in the same order for the same seed and epoch) that hands the dataset
    (epoch, row, load) keys: the epoch for the augmentation seeds, and load=False for the first `skip_batches`
    batches, those a resumed epoch has already done, so that their images are not read only to be skipped."""

    def __init__(self, *args: Any, batch_size: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batch_size, self.skip_batches = batch_size, 0

    def __iter__(self) -> Iterator[tuple[int, int, bool]]:
        skip = self.skip_batches * self.batch_size
        return ((self.epoch, row, pos >= skip) for pos, row in enumerate(super().__iter__()))


class ImageCaptionSet(Dataset):
    """The (image, caption) pairs of a CaptionSet with the images read from disk and put through `build_transform`
    (train: random crop, jitter, flip; eval: resize and center crop) in DataLoader workers.

    Same rows, vocabulary encoding, sampler and seed as the CaptionSet, so captions come in the same order as on
    cached features. The CaptionSet holds only images that have cached features, so every image here was readable
    when prepare_data checked the cache; one that breaks during the run stops it with a DataError naming it.
    """

    def __init__(self, caption_set: CaptionSet, samples: Sequence[Sample], spec: EncoderSpec, train: bool, seed: int):
        by_id = {s.image_id: s.path for s in samples}
        self.paths = [by_id[k] for k in caption_set.image_ids]  # one per caption row
        self.captions, self.lengths = caption_set.captions, caption_set.lengths  # not the feature store: workers stay small
        self.transform = build_transform(spec, train=train)
        self.augment, self.seed = train, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, bool]) -> tuple[int, torch.Tensor | None]:
        epoch, row, load = key
        if not load:
            return row, None
        try:
            image = load_image(self.paths[row])
        except ImageError as err:
            raise DataError(f"{self.paths[row]} could not be read during training ({err}), though it was readable when "
                            "the feature cache was checked; restore the file and resume the run") from None
        if not self.augment:
            return row, self.transform(image)
        # The transforms draw from the global CPU generator: seed it per row, and give the caller's state back (with
        # train.num_workers=0 this runs in the training process, whose dropout masks must not depend on it).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(augmentation_seed(self.seed, epoch, row))
            return row, self.transform(image)

    def collate(self, batch: list[tuple[int, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.tensor([row for row, _ in batch], dtype=torch.long)
        lengths = self.lengths[idx]
        caps = self.captions[idx, : int(lengths.max())]
        if any(x is None for _, x in batch):  # a batch that a resumed epoch had already done: train_one_epoch skips it
            return torch.empty(0), caps, lengths
        return torch.stack([x for _, x in batch]), caps, lengths

    def loader(self, batch_size: int, dist_info: DistInfo, seed: int, shuffle: bool, num_workers: int,
               pin_memory: bool) -> tuple[DataLoader, _ImageSampler]:
        sampler = _ImageSampler(_Indices(len(self)), num_replicas=dist_info.world_size, rank=dist_info.rank,
                                shuffle=shuffle, seed=seed, drop_last=False, batch_size=batch_size)
        loader = DataLoader(self, batch_size=batch_size, sampler=sampler, collate_fn=self.collate, num_workers=num_workers,
                            pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
        return loader, sampler


def trainable_encoder(name: str, device: torch.device) -> Encoder:
    """The pretrained encoder, unfrozen (gradients on, train-mode BatchNorm) for end-to-end training."""
    encoder = create_encoder(name, pretrained=True)
    if not any(True for _ in encoder.parameters()):
        raise ConfigError(f"train.finetune_encoder=true: encoder {name!r} has no parameters to fine-tune")
    return encoder.to(device).unfreeze()


def encoder_val_features(encoder: Encoder, samples: Sequence[Sample], cfg: ExperimentConfig,
                         device: torch.device) -> FeatureStore:
    """Validation features from the encoder as it is now (eval mode, eval transform), for CIDEr while fine-tuning.
    The global RNG is given back untouched, so training draws the same numbers whatever `train.select_metric` is."""
    was_training = encoder.training
    try:
        with torch.random.fork_rng(devices=[]):
            return extract_features(encoder, samples, cfg.features, device, desc="val features (fine-tuned encoder)")
    finally:
        encoder.train(was_training)


# --------------------------------------------------------------------------- one epoch, evaluation


@dataclass
class TrainState:
    epoch: int = 0  # the epoch being run (or to run next)
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of `epoch` already done (non-zero only after an interrupt)
    epoch_loss_sum: float = 0.0  # running train loss of `epoch`, so a resumed epoch logs the same mean
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    cfg: TrainConfig,
    device: torch.device,
    total_steps: int,
    stop_requested: callable,
    show_progress: bool = True,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, bool]:
    """Run (the rest of) one epoch. Returns (mean train loss of the epoch so far, interrupted?).

    Under DDP the stop decision is all-reduced every step, so all ranks leave at the same batch (a rank that
    stopped alone would leave the others waiting in the gradient all-reduce).
    """
    model.train()
    steps_per_epoch = len(loader)
    base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    if scaler is None and cfg.amp == "fp16":
        scaler = torch.amp.GradScaler(device.type)  # fp16 only: bf16 has fp32's range and needs no loss scaling
    ss_prob = scheduled_sampling_prob(state.epoch, cfg)
    forward_kwargs = {"sample_prob": ss_prob} if ss_prob > 0 else {}  # off: the packed teacher-forcing call, unchanged
    interrupted = False
    bar = tqdm(total=steps_per_epoch, initial=state.batch_in_epoch, desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
               unit="batch", disable=not show_progress, dynamic_ncols=True, leave=False)
    for b, (feats, caps, lengths) in enumerate(loader):
        if b < state.batch_in_epoch:
            continue  # resuming mid-epoch: the sampler order is a function of (seed, epoch), so skip what was done
        factor = lr_factor(state.step, total_steps, steps_per_epoch, cfg)
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * factor
        feats, caps, lengths = feats.to(device, non_blocking=True), caps.to(device), lengths.to(device)
        with autocast_context(cfg.amp, device):
            logits, targets = model(feats, caps, lengths, **forward_kwargs)
        loss = caption_loss(logits, targets, cfg.label_smoothing)  # in fp32, outside autocast
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at epoch {state.epoch + 1}, step {state.step}; "
                                "stopping with the last good checkpoint kept (lower train.lr or set train.grad_clip)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        # The norm is needed anyway to catch non-finite gradients: a finite loss with NaN gradients would otherwise
        # poison the weights, and the epoch-end `last` checkpoint with them (max_norm=inf scales by exactly 1).
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if scaler is None and not torch.isfinite(norm):  # (fp16: the scaler skips such steps itself)
            raise TrainingError(f"gradients became {norm.item()} at epoch {state.epoch + 1}, step {state.step}; "
                                "stopping with the last good checkpoint kept (lower train.lr or set train.grad_clip)")
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        state.step += 1
        state.batch_in_epoch = b + 1
        state.epoch_loss_sum += loss.item()
        bar.update(1)
        if state.batch_in_epoch % 10 == 0:
            bar.set_postfix(loss=f"{state.epoch_loss_sum / state.batch_in_epoch:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        stop = stop_requested()
        if dist.is_available() and dist.is_initialized():
            stop = all_reduce_sum([float(stop)], device)[0] > 0
        if stop:
            interrupted = True
            break
    bar.close()
    return state.epoch_loss_sum / max(state.batch_in_epoch, 1), interrupted


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: str = "off") -> float:
    """Token-level mean cross-entropy on the validation captions, reduced across ranks."""
    model.eval()
    total, tokens = 0.0, 0
    for feats, caps, lengths in loader:
        with autocast_context(amp, device):
            logits, targets = model(feats.to(device), caps.to(device), lengths.to(device))
        total += caption_loss(logits, targets).item() * targets.numel()
        tokens += targets.numel()
    total, tokens = all_reduce_sum([total, float(tokens)], device)
    return total / max(tokens, 1.0)


# --------------------------------------------------------------------------- run folder, logging


def _write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def plot_losses(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    ax.plot(epochs, [r["val_loss"] for r in history], marker="o", label="val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per token")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _new_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output_dir).expanduser() / f"{cfg.name}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = Path(cfg.output_dir).expanduser() / f"{cfg.name}-{stamp}-{n}"
    return run_dir


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp file and os.replace, so a run killed mid-write keeps the previous file whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a resumable checkpoint at the next batch boundary and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("signal %d received: saving a resumable checkpoint and stopping", signum)

    def __enter__(self) -> "StopFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- the run


@dataclass
class Prepared:
    vocab: Vocabulary
    train_set: CaptionSet
    val_set: CaptionSet
    val_samples: list[Sample]
    model_config: ModelConfig
    train_samples: list[Sample] = field(default_factory=list)  # readable ones: the image files of end-to-end training


def prepare_data(cfg: ExperimentConfig, device: torch.device, vocab: Vocabulary | None = None, quiet: bool = False) -> Prepared:
    """Load captions, build (or reuse) the vocabulary, and get cached features for train and val."""
    train_samples, _ = load_split(cfg.data, "train")
    val_samples, _ = load_split(cfg.data, "val")
    if vocab is None:
        vocab = Vocabulary.build((c for s in train_samples for c in s.captions), cfg.vocab.min_count)
    encoder = create_encoder(cfg.model.encoder, pretrained=True)
    train_store = load_or_extract(cfg.model.encoder, train_samples, cfg.features, device, strict=cfg.data.strict, desc="train features", encoder=encoder)
    val_store = load_or_extract(cfg.model.encoder, val_samples, cfg.features, device, strict=cfg.data.strict, desc="val features", encoder=encoder)
    model_cfg = ModelConfig(**{**asdict(cfg.model), "feature_dim": encoder.spec.feature_dim, "vocab_size": len(vocab)})
    return Prepared(
        vocab,
        CaptionSet.build(train_samples, train_store, vocab, cfg.vocab.max_len),
        CaptionSet.build(val_samples, val_store, vocab, cfg.vocab.max_len),
        [s for s in val_samples if s.image_id in val_store.index],
        model_cfg,
        [s for s in train_samples if s.image_id in train_store.index],
    )


def build_optimizer(decoder: torch.nn.Module, cfg: TrainConfig,
                    encoder: torch.nn.Module | None = None) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings (the usual nanoGPT split).

    With a fine-tuned `encoder`, its parameters follow the two decoder groups in two more groups at `train.encoder_lr`
    (decay on conv/linear weights, none on BatchNorm and biases). Every group keeps its own `initial_lr`, which the
    schedule of train_one_epoch multiplies, so encoder and decoder follow the same warmup and decay.
    """
    decay, no_decay = [], []
    for name, p in decoder.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if encoder is not None:
        enc_decay = [p for p in encoder.parameters() if p.requires_grad and p.ndim >= 2]
        enc_no_decay = [p for p in encoder.parameters() if p.requires_grad and p.ndim < 2]
        groups += [g for g in ({"params": enc_decay, "weight_decay": cfg.weight_decay, "lr": cfg.encoder_lr},
                               {"params": enc_no_decay, "weight_decay": 0.0, "lr": cfg.encoder_lr}) if g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def set_rng_state(rng: dict[str, torch.Tensor]) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    if torch.cuda.is_available():
        states = [rng[f"cuda{i}"].cpu() for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def train(cfg: ExperimentConfig, run_dir: Path | None = None, resume: bool = False, show_progress: bool = True,
          stop_after_steps: int | None = None) -> Path:
    """Train (or resume) a run; returns the run folder. Everything the run needs is written into it.

    `stop_after_steps` behaves like a SIGINT after that many optimizer steps (for tests of exact resumption).
    """
    dist_info = init_distributed("cuda" if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = resolve_device(cfg.train.device, dist_info)
    try:
        check_amp(cfg.train.amp, device)
        return _train(cfg, run_dir, resume, device, dist_info, show_progress and dist_info.is_main, stop_after_steps)
    finally:
        cleanup_distributed()


def _train(cfg: ExperimentConfig, run_dir: Path | None, resume: bool, device: torch.device, dist_info: DistInfo,
           show_progress: bool, stop_after_steps: int | None) -> Path:
    ckpt = None
    if resume:
        assert run_dir is not None
        if not (run_dir / "last.safetensors").is_file():  # a run killed before its first epoch ended
            raise CheckpointError(f"nothing to resume in {run_dir}: it has no last.safetensors yet (the run stopped before "
                                  f"its first epoch ended); start it again with: captioner train --config "
                                  f"{run_dir / 'config.yaml'} --run-dir {run_dir}")
        ckpt = load_checkpoint(run_dir / "last.safetensors")
        if ckpt.optimizer is None or not ckpt.train_state:
            raise CheckpointError(f"{run_dir}/last.safetensors holds no training state; it cannot be resumed")
        if (ckpt.encoder is not None) != cfg.train.finetune_encoder:
            raise CheckpointError(f"{run_dir}: the run was trained with train.finetune_encoder="
                                  f"{str(ckpt.encoder is not None).lower()}; resume it with that setting")
        changed = [f"model.{k}: checkpoint {getattr(ckpt.model_config, k)!r}, config.yaml {v!r}" for k, v in asdict(cfg.model).items()
                   if k not in ("feature_dim", "vocab_size") and getattr(ckpt.model_config, k) != v]
        if changed:  # before any feature extraction, and naming the keys
            raise CheckpointError(f"{run_dir}: config.yaml no longer matches the run's checkpoint ({'; '.join(changed)}); "
                                  "undo the edit, or start a new run")
        state = from_dict(TrainState, ckpt.train_state)
        if state.finished:
            log.info("run %s already finished (epoch %d); nothing to do", run_dir, state.epoch)
            return run_dir
    else:
        state = TrainState()
        run_dir = run_dir or _new_run_dir(cfg)
    run_dir = all_gather_objects(run_dir)[0]  # rank 0's folder (a timestamped name could differ across ranks)
    per_rank_batch = global_batch_split(cfg.train.batch_size, dist_info.world_size)
    # Rank 0 fills the feature cache first; the others wait, then read it (one extraction, no racing writers).
    # If rank 0 fails, it still releases the others, which then meet the same error themselves instead of hanging.
    if dist_info.is_main:
        try:
            prep = prepare_data(cfg, device, vocab=ckpt.vocab if ckpt else None)
        finally:
            barrier()
    else:
        barrier()
        prep = prepare_data(cfg, device, vocab=ckpt.vocab if ckpt else None)
    if ckpt is not None and ckpt.model_config != prep.model_config:
        raise CheckpointError(f"{run_dir}: the checkpoint's model config differs from the run's config.yaml")
    # Seeded after data preparation, which may or may not draw random numbers (a feature extraction's DataLoader
    # does, a cache hit does not): the same seed must give the same run whether or not the cache existed.
    torch.manual_seed(cfg.train.seed)
    decoder = ShowTellDecoder(prep.model_config)
    decoder.set_feature_stats(prep.train_set.store.features)  # a resumed run loads the same values back below
    decoder = decoder.to(device)
    # Fine-tuning: the pretrained encoder, unfrozen. The decoder keeps the feature statistics of the pretrained
    # encoder's cached features (set above), which the fine-tuned encoder's features start from.
    encoder = trainable_encoder(cfg.model.encoder, device) if cfg.train.finetune_encoder else None
    optimizer = build_optimizer(decoder, cfg.train, encoder)
    if ckpt is not None:
        decoder.load_state_dict(ckpt.decoder)
        if encoder is not None:
            encoder.load_state_dict(ckpt.encoder)
        optimizer.load_state_dict(ckpt.optimizer)
        set_rng_state(ckpt.rng)
    net = decoder if encoder is None else EncoderDecoder(encoder, decoder)
    model = DistributedDataParallel(net) if dist_info.enabled else net
    if encoder is None:
        train_loader, sampler = prep.train_set.loader(per_rank_batch, dist_info, cfg.train.seed, shuffle=True)
        val_loader, _ = prep.val_set.loader(per_rank_batch * 2, dist_info, cfg.train.seed, shuffle=False)
    else:  # the same caption rows, sampler and seed, with images instead of cached features
        workers, pin = cfg.train.num_workers, device.type == "cuda"
        train_images = ImageCaptionSet(prep.train_set, prep.train_samples, encoder.spec, train=True, seed=cfg.train.seed)
        val_images = ImageCaptionSet(prep.val_set, prep.val_samples, encoder.spec, train=False, seed=cfg.train.seed)
        train_loader, sampler = train_images.loader(per_rank_batch, dist_info, cfg.train.seed, True, workers, pin)
        val_loader, _ = val_images.loader(per_rank_batch * 2, dist_info, cfg.train.seed, False, workers, pin)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.amp == "fp16" else None  # kept across epochs
    total_steps = cfg.train.epochs * len(train_loader)

    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # The recorded config is resolved: absolute data root, so `--resume` works from any working directory.
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
        _replace_atomically(run_dir / "config.yaml", lambda tmp: save_config(cfg, tmp))  # resume reads it back
        _replace_atomically(run_dir / "vocab.json", lambda tmp: tmp.write_text(prep.vocab.to_json()))
        log.info("run folder %s: %d train captions (%d images), %d val captions, vocabulary %d words, %d decoder parameters",
                 run_dir, len(prep.train_set), len(prep.train_set.store.ids), len(prep.val_set), len(prep.vocab),
                 sum(p.numel() for p in decoder.parameters()))
        if encoder is not None:
            log.info("fine-tuning encoder %s end to end: %d parameters at lr %g (decoder lr %g), %d image loading workers",
                     cfg.model.encoder, sum(p.numel() for p in encoder.parameters()), cfg.train.encoder_lr, cfg.train.lr,
                     cfg.train.num_workers)
    tb = _tensorboard(run_dir, cfg.train.tensorboard) if dist_info.is_main else None

    def save(name: str) -> None:
        if dist_info.is_main:
            save_checkpoint(run_dir / name, model_config=prep.model_config, vocab=prep.vocab, decoder=decoder,
                            encoder=encoder, optimizer=optimizer, rng=rng_state(), train_state=asdict(state),
                            experiment=to_dict(cfg))

    with StopFlag() as flag:
        stop = (lambda: flag() or state.step >= stop_after_steps) if stop_after_steps is not None else flag
        while state.epoch < cfg.train.epochs:
            t0 = time.time()
            sampler.set_epoch(state.epoch)
            if encoder is not None:
                sampler.skip_batches = state.batch_in_epoch  # done before an interrupt: their images are not read
            train_loss, interrupted = train_one_epoch(model, train_loader, optimizer, state, cfg.train, device, total_steps,
                                                      stop, show_progress, scaler)
            if interrupted:
                save("last")
                barrier()
                log.warning("stopped at epoch %d, batch %d", state.epoch + 1, state.batch_in_epoch)
                raise TrainingInterrupted(run_dir, flag.signum)
            if dist_info.enabled:  # the mean over all ranks' batches, as one process would log it
                loss_sum, batches = all_reduce_sum([state.epoch_loss_sum, float(state.batch_in_epoch)], device)
                train_loss = loss_sum / max(batches, 1.0)
            val_loss = evaluate(model, val_loader, device, cfg.train.amp)
            if not math.isfinite(val_loss):  # never let non-finite weights overwrite `last` or `best`
                raise TrainingError(f"validation loss became {val_loss} after epoch {state.epoch + 1}; "
                                    "stopping with the last good checkpoint kept (lower train.lr or set train.grad_clip)")
            row: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, "train_loss": round(train_loss, 5),
                                   "val_loss": round(val_loss, 5), "lr": optimizer.param_groups[0]["lr"],
                                   "seconds": round(time.time() - t0, 2)}
            if encoder is not None:
                row["encoder_lr"] = optimizer.param_groups[2]["lr"]
            if cfg.train.scheduled_sampling > 0:
                row["ss_prob"] = round(scheduled_sampling_prob(state.epoch, cfg.train), 5)
            figure = val_loss
            if cfg.train.select_metric == "cider" and ((state.epoch + 1) % cfg.train.cider_every == 0 or state.epoch + 1 == cfg.train.epochs):
                from .evaluate import greedy_cider

                # Rank 0 scores, every rank gets its number: best and early stopping agree across ranks. Fine-tuning:
                # on features of the encoder as it is now (eval mode), not on the pretrained encoder's cached ones.
                cider = None
                if dist_info.is_main:
                    val_store = (prep.val_set.store if encoder is None
                                 else encoder_val_features(encoder, prep.val_samples, cfg, device))
                    cider = greedy_cider(decoder, prep.val_samples, val_store, prep.vocab, device)
                row["val_cider"] = round(all_gather_objects(cider)[0], 5)
                figure = -row["val_cider"]
            elif cfg.train.select_metric == "cider":
                figure = None
            improved = figure is not None and (state.best is None or figure < state.best)
            if improved:
                state.best, state.best_epoch, state.bad_epochs = figure, state.epoch + 1, 0
            elif figure is not None:
                state.bad_epochs += 1
            state.history.append(row)
            state.epoch += 1
            state.batch_in_epoch, state.epoch_loss_sum = 0, 0.0
            stop_early = cfg.train.early_stop_patience > 0 and state.bad_epochs >= cfg.train.early_stop_patience
            state.finished = state.epoch >= cfg.train.epochs or stop_early
            if dist_info.is_main:
                msg = " ".join(f"{k}={v}" for k, v in row.items())
                tqdm.write(f"{msg}{'  *best*' if improved else ''}")
                _write_csv(run_dir / "metrics.csv", state.history)
                plot_losses(run_dir / "loss.png", state.history)
                if tb is not None:
                    for k, v in row.items():
                        if k not in ("epoch", "step"):
                            tb.add_scalar(k, v, state.epoch)
                if improved:
                    save("best")
                save("last")
            barrier()
            if stop_early:
                log.info("early stopping: no improvement for %d epochs", state.bad_epochs)
                break
    if tb is not None:
        tb.close()
    return run_dir


# --------------------------------------------------------------------------- CLI


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("captioner train", add_help=add_help, description="Train a captioning model.")
    p.add_argument("--config", help="experiment YAML (e.g. configs/coco_subset.yaml)")
    p.add_argument("--resume", help="run folder to continue exactly where it stopped (uses its config.yaml)")
    p.add_argument("--run-dir", help="write the run here instead of output_dir/name-timestamp")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3 model.hidden_size=256")
    return p


def main(args: argparse.Namespace) -> int:
    try:
        run_dir = _main(args)
    except TrainingInterrupted as stopped:
        print(str(stopped), file=sys.stderr)
        return 128 + (stopped.signum or signal.SIGINT)
    print(f"run folder: {run_dir}")
    return 0


def _main(args: argparse.Namespace) -> Path:
    if args.resume:
        if args.config:
            raise ConfigError("--resume uses the run's own config.yaml; do not pass --config with it")
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        return train(cfg, run_dir, resume=True, show_progress=not args.quiet)
    if not args.config:
        raise ConfigError("captioner train needs --config FILE (or --resume RUN_DIR)")
    cfg = load_config(args.config, args.overrides)
    return train(cfg, Path(args.run_dir) if args.run_dir else None, show_progress=not args.quiet)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    sys.exit(main(get_args_parser().parse_args()))
