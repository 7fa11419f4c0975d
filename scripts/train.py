"""Train a captioner (same code as `captioner train`).

    python scripts/train.py --config configs/coco_subset.yaml
    python scripts/train.py --config configs/coco_subset.yaml train.epochs=3 model.hidden_size=256
    python scripts/train.py --resume runs/<run>/
    torchrun --nproc_per_node=2 scripts/train.py --config configs/coco_subset.yaml
"""
import sys

from captioner.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
