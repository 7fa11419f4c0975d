"""One checkpoint file: safetensors weights + model config + vocabulary (+ optimizer and RNG state for resuming).

Why a single safetensors file: loading it can never execute code (unlike pickle), a checkpoint is always
self-contained (no model without its vocabulary and config), and one `os.replace` makes the write atomic.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig, from_dict
from .vocab import Vocabulary

FORMAT = "captioner-checkpoint-v1"
SUFFIX = ".safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, of another format, or not matching the model."""


@dataclass
class Checkpoint:
    model_config: ModelConfig
    vocab: Vocabulary
    decoder: dict[str, torch.Tensor]
    encoder: dict[str, torch.Tensor] | None = None  # only when the encoder was fine-tuned
    optimizer: dict[str, Any] | None = None
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    train_state: dict[str, Any] = field(default_factory=dict)  # epoch, step, best figure, history...
    experiment: dict[str, Any] = field(default_factory=dict)  # the resolved experiment config


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept `run/best`, `run/best.safetensors` or a run folder (its `best`)."""
    p = Path(path).expanduser()
    for cand in (p, p.with_name(p.name + SUFFIX), p / ("best" + SUFFIX), p / ("last" + SUFFIX)):
        if cand.is_file():
            return cand
    raise CheckpointError(f"no checkpoint at {p} (tried {p.name}, {p.name}{SUFFIX}, and best/last{SUFFIX} inside it)")


def _state_without_aliases(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors that share memory (tied weights): store each storage once and record aliases."""
    seen: dict[tuple[int, int, tuple], str] = {}
    out, aliases = {}, {}
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            out[k] = v.detach().contiguous().cpu()
    return out, aliases


def _optimizer_to_tensors(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta_state = {}, {}
    for pid, st in sd["state"].items():
        meta_state[str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                meta_state[str(pid)][k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": meta_state}


def _optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for name, t in tensors.items():
        pid, k = name.split(".", 1)  # "optim." already stripped
        state.setdefault(int(pid), {})[k] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_config: ModelConfig,
    vocab: Vocabulary,
    decoder: torch.nn.Module,
    encoder: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    train_state: dict[str, Any] | None = None,
    experiment: dict[str, Any] | None = None,
) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then os.replace."""
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    dec, dec_alias = _state_without_aliases(decoder.state_dict())
    tensors.update({f"decoder.{k}": v for k, v in dec.items()})
    enc_alias: dict[str, str] = {}
    if encoder is not None:
        enc, enc_alias = _state_without_aliases(encoder.state_dict())
        tensors.update({f"encoder.{k}": v for k, v in enc.items()})
    meta: dict[str, str] = {
        "format": FORMAT,
        "model_config": json.dumps(dataclasses.asdict(model_config)),
        "vocab": vocab.to_json(),
        "aliases": json.dumps({"decoder": dec_alias, "encoder": enc_alias}),
        "has_encoder": json.dumps(encoder is not None),
        "train_state": json.dumps(train_state or {}),
        "experiment": json.dumps(experiment or {}),
    }
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_to_tensors(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer"] = json.dumps(opt_meta)
    for k, v in (rng or {}).items():
        tensors[f"rng.{k}"] = v.contiguous().cpu()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _restore_aliases(sd: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    for k, src in aliases.items():
        sd[k] = sd[src]
    return sd


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint without executing anything from it; every problem becomes a CheckpointError."""
    p = resolve_checkpoint(path)
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(p), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{p}: not a readable safetensors checkpoint ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a captioner checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        model_config = from_dict(ModelConfig, json.loads(meta["model_config"]))
        vocab = Vocabulary.from_json(meta["vocab"])
        aliases = json.loads(meta["aliases"])
        parts: dict[str, dict[str, torch.Tensor]] = {"decoder": {}, "encoder": {}, "optim": {}, "rng": {}}
        for name, t in tensors.items():
            head, rest = name.split(".", 1)
            parts[head][rest] = t
        optimizer = _optimizer_from_tensors(parts["optim"], json.loads(meta["optimizer"])) if "optimizer" in meta else None
        ckpt = Checkpoint(
            model_config=model_config,
            vocab=vocab,
            decoder=_restore_aliases(parts["decoder"], aliases["decoder"]),
            encoder=_restore_aliases(parts["encoder"], aliases["encoder"]) if json.loads(meta["has_encoder"]) else None,
            optimizer=optimizer,
            rng=parts["rng"],
            train_state=json.loads(meta.get("train_state", "{}")),
            experiment=json.loads(meta.get("experiment", "{}")),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{p}: damaged checkpoint metadata ({type(err).__name__}: {err})") from None
    if model_config.vocab_size != len(vocab):
        raise CheckpointError(f"{p}: model expects {model_config.vocab_size} words but the stored vocabulary has {len(vocab)}")
    _check_decoder(p, model_config, ckpt.decoder)
    return ckpt


def _check_decoder(p: Path, model_config: ModelConfig, decoder: dict[str, torch.Tensor]) -> None:
    """The weights must be exactly those the stored config builds, and finite: otherwise captions would be garbage."""
    from .model import ShowTellDecoder

    try:
        with torch.device("meta"):  # shapes only, no memory
            expected = {k: tuple(v.shape) for k, v in ShowTellDecoder(model_config).state_dict().items()}
    except (ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{p}: the stored model config cannot be built ({err})") from None
    problems = [f"missing decoder.{k}" for k in expected if k not in decoder]
    problems += [f"unexpected decoder.{k}" for k in decoder if k not in expected]
    problems += [f"decoder.{k} has shape {tuple(decoder[k].shape)}, the config needs {s}"
                 for k, s in expected.items() if k in decoder and tuple(decoder[k].shape) != s]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"{p}: the weights do not match the stored model config: {'; '.join(problems[:3])}{more}")
    bad = [k for k, v in decoder.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{p}: non-finite values in {', '.join('decoder.' + k for k in bad[:3])}; the checkpoint is damaged")


def export_model(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A slim copy of a checkpoint for shipping: weights, model config, vocabulary, the experiment config and the
    training history, without optimizer and RNG state (it can be captioned with, not resumed)."""
    from .encoders import create_encoder
    from .model import ShowTellDecoder

    ckpt = load_checkpoint(src)
    decoder = ShowTellDecoder(ckpt.model_config)
    decoder.load_state_dict(ckpt.decoder)
    encoder = None
    if ckpt.encoder is not None:
        encoder = create_encoder(ckpt.model_config.encoder, pretrained=False)
        encoder.load_state_dict(ckpt.encoder)
    keep = ("epoch", "step", "best", "best_epoch", "history", "finished")
    return save_checkpoint(dst, model_config=ckpt.model_config, vocab=ckpt.vocab, decoder=decoder, encoder=encoder,
                           train_state={k: v for k, v in ckpt.train_state.items() if k in keep},
                           experiment=ckpt.experiment)
