"""Files shipped with the package: example photos for the demo, the docs and the encoder tests."""
from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLES_DIR", "example_images"]

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


def example_images() -> list[Path]:
    """The bundled example photos (licenses in examples/CREDITS.md), sorted by file name."""
    return sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
