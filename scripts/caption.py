"""Caption images with the bundled model or a checkpoint (same code as `captioner caption`).

    python scripts/caption.py photo.jpg
    python scripts/caption.py photos/ --checkpoint runs/<run>/best --beam 5 --out captions.json
"""
import sys

from captioner.cli import main

if __name__ == "__main__":
    sys.exit(main(["caption", *sys.argv[1:]]))
