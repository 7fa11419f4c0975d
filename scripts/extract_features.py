"""Fill the feature cache for a config's train and val splits (same code as `captioner extract-features`).

    python scripts/extract_features.py --config configs/coco_subset.yaml
    python scripts/extract_features.py --config configs/flickr8k.yaml --splits train,val,test
"""
import sys

from captioner.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract-features", *sys.argv[1:]]))
