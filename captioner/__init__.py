"""captioner: a pretrained CNN encoder + Show-and-Tell LSTM decoder for image captioning.

    import captioner
    model = captioner.load_pretrained()          # the bundled model (MODEL_CARD.md)
    model.caption(["photo.jpg"])[0][0].text      # best caption of the first image

Names are imported lazily, so `import captioner` (and the `captioner` command) does not pay for torch up front.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Captioner", "DecodeConfig", "load_captioner", "load_pretrained"]

_LAZY = {"Captioner": "inference", "load_captioner": "inference", "load_pretrained": "inference", "DecodeConfig": "decoding"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
