"""Write a stand-in checkpoint for the benchmarks while the bundled model (captioner/pretrained/model.safetensors) is absent.

    python benchmarks/make_dev_checkpoint.py                      # -> /tmp/captioner-bench/dev.safetensors
    python benchmarks/make_dev_checkpoint.py --out my.safetensors --config configs/coco_subset.yaml

Same architecture as the bundled model (the model section of --config: EfficientNet-Lite0 encoder, 512/512 LSTM)
and a real-sized vocabulary (built from the COCO subset's training captions with the config's vocab.min_count, or
from the synthetic shapes set when ../shared is absent). The decoder weights are random (seeded), so captions are
nonsense and beam search never picks <end>: every caption runs the full max_len + 1 steps. For speed that is the
worst case of the decoding part; a trained model that stops after ~10 words decodes faster.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("make_dev_checkpoint", add_help=add_help, description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/captioner-bench/dev.safetensors")
    p.add_argument("--config", default=str(_common.REPO / "configs" / "coco_subset.yaml"), help="its model and vocab sections are used")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> int:
    import torch

    from captioner.checkpoint import save_checkpoint
    from captioner.config import load_config, to_dict
    from captioner.encoders import create_encoder
    from captioner.model import ShowTellDecoder
    from captioner.vocab import Vocabulary

    cfg = load_config(args.config)
    if _common.COCO_TRAIN_JSON.is_file():
        captions = [a["caption"] for a in json.loads(_common.COCO_TRAIN_JSON.read_text())["annotations"]]
        source = str(_common.COCO_TRAIN_JSON)
    else:
        from captioner.synthetic import make_split

        with tempfile.TemporaryDirectory() as tmp:
            ann = make_split(Path(tmp), "train", 400, seed=1)
            captions = [a["caption"] for a in json.loads(ann.read_text())["annotations"]]
        source = "synthetic shapes captions"
    vocab = Vocabulary.build(captions, cfg.vocab.min_count)
    feature_dim = create_encoder(cfg.model.encoder, pretrained=True).spec.feature_dim
    model_cfg = dataclasses.replace(cfg.model, feature_dim=feature_dim, vocab_size=len(vocab))
    torch.manual_seed(args.seed)
    path = save_checkpoint(args.out, model_config=model_cfg, vocab=vocab, decoder=ShowTellDecoder(model_cfg), experiment=to_dict(cfg))
    print(f"wrote {path}: encoder {model_cfg.encoder}, vocab {len(vocab)} words (from {source}), embed {model_cfg.embed_size}, "
          f"hidden {model_cfg.hidden_size}, random decoder weights (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
