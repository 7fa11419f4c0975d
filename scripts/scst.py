"""Self-critical fine-tuning of a cross-entropy checkpoint on CIDEr-D (same code as `captioner scst`).

    python scripts/scst.py --config configs/coco_subset_scst.yaml --init runs/<xe-run>/best
    python scripts/scst.py --init runs/<xe-run>/best scst.epochs=5 scst.baseline=mean
    python scripts/scst.py --resume runs/<scst-run>/
"""
import sys

from captioner.cli import main

if __name__ == "__main__":
    sys.exit(main(["scst", *sys.argv[1:]]))
