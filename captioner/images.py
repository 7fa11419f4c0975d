"""Safe image loading: the one place where every entry point turns user input into RGB.

Training, evaluation, the CLI and the demo all call :func:`load_image`, so every
odd file (wrong path, text renamed .jpg, truncated download, decompression bomb,
16-bit PNG, CMYK JPEG, EXIF-rotated phone photo, transparent logo, animation)
behaves the same everywhere, and the only exception callers need to handle is
:class:`ImageError`, whose message names the input and what is wrong with it.

Decisions:

* Truncated or corrupt files are rejected, not padded with gray: a half-decoded
  photo gives a confidently wrong caption. Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES``
  is a process-wide switch, so it is never touched here (if some other library set
  it, Pillow may pad truncated files instead).
* Pixel count is capped (``max_pixels``, default 40 MP) from the header, before any
  pixel is decoded; Pillow's own ``DecompressionBombError`` (and its warning, when
  warnings are errors) are reported as ImageError too. Warning filters are not
  changed (process-global, not thread-safe), so Pillow may still *print* its
  warning for a 90-180 MP header that we then reject.
* Tiny images (down to 1x1) are accepted by default (``min_size=1``): the encoder
  transform resizes anything, and refusing a valid image is worse than a poor
  caption. Callers that want a floor pass ``min_size``.
* Only raster formats that photos come in are opened (JPEG, PNG, GIF, WebP, BMP,
  TIFF, AVIF): this keeps exotic decoders (EPS runs Ghostscript) off untrusted input.
* Animated GIF/APNG/WebP: the first frame. Transparency is composited on white.
"""
from __future__ import annotations

import codecs
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageError", "load_image", "SUPPORTED_FORMATS"]

SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1")


class ImageError(ValueError):
    """An input that cannot be used as an image; the message says which input and why."""


def load_image(
    src: str | os.PathLike | bytes | bytearray | memoryview | Image.Image,
    *,
    max_pixels: int = 40_000_000,
    max_bytes: int = 50 * 2**20,
    min_size: int = 1,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``src`` (path, encoded bytes or PIL image) to an upright RGB image.

    ``draft_size``: for JPEGs, let libjpeg decode at 1/2, 1/4 or 1/8 scale while
    both sides stay >= ``draft_size`` (much faster for big photos headed to a
    224-pixel encoder). Off by default because DCT-domain downscaling changes
    pixels slightly compared to a full decode + resize, so features differ a bit.
    """
    if isinstance(src, Image.Image):
        return _finish(src, "<PIL image>", max_pixels, min_size, draft_size=None)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        name = f"<{len(data)} bytes>"
    elif isinstance(src, (str, os.PathLike)):
        name = os.fspath(src)
        data = _read_file(Path(name), max_bytes)
    else:
        raise ImageError(f"cannot load an image from a {type(src).__name__}; pass a path, bytes or PIL image")
    if not data:
        raise ImageError(f"{name}: empty input (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data)} bytes is larger than the {max_bytes}-byte limit")
    try:
        image = Image.open(io.BytesIO(data), formats=_available_formats())
        if image.format == "PNG":  # Pillow decodes PNGs cut after the last pixel row; check chunk CRCs/IEND
            Image.open(io.BytesIO(data), formats=("PNG",)).verify()
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: {_describe_unknown(data)}") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure is a bad file
        raise _decode_error(name, exc) from None
    return _finish(image, name, max_pixels, min_size, draft_size)


def _available_formats() -> tuple[str, ...]:
    """SUPPORTED_FORMATS that this Pillow build can decode (AVIF is optional)."""
    Image.init()  # Pillow's own idempotent plugin registration
    return tuple(f for f in SUPPORTED_FORMATS if f in Image.OPEN)


def _read_file(path: Path, max_bytes: int) -> bytes:
    """Read at most max_bytes + 1 bytes, turning every OS error into an ImageError."""
    try:
        if path.is_dir():
            raise ImageError(f"{path}: is a directory, not an image file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"{path}: {size} bytes is larger than the {max_bytes}-byte limit")
        with path.open("rb") as f:
            return f.read(max_bytes + 1)  # +1: a file that grew after stat still trips the limit
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def _describe_unknown(data: bytes) -> str:
    """Say what an unidentified file probably is (HTML error page, SVG, HEIC, text)."""
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    supported = ", ".join(SUPPORTED_FORMATS)
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return f"is an SVG (vector) file, not a raster image; convert it to PNG or JPEG (supported: {supported})"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head[:512]:
        return "is an HTML page, not an image (a failed download saved under an image name?)"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return f"is HEIC/HEIF, which is not supported; convert it to JPEG (supported: {supported})"
    try:  # incremental decoder: a character cut at byte 2048 is not an error
        if b"\x00" not in data[:2048]:
            codecs.getincrementaldecoder("utf-8")().decode(data[:2048], final=False)
            return "is a text file, not an image"
    except UnicodeDecodeError:
        pass
    return f"not a recognized image format (supported: {supported})"


def _finish(image: Image.Image, name: str, max_pixels: int, min_size: int, draft_size: int | None) -> Image.Image:
    """Check the header size, decode the first frame, fix orientation and convert to RGB."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} pixels is more than the {max_pixels}-pixel limit")
    if min(width, height) < min_size:
        raise ImageError(f"{name}: {width}x{height} is smaller than the {min_size}-pixel minimum side")
    try:
        if draft_size and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        image.load()  # first frame only; raises on truncated/corrupt data
        upright = _exif_upright(image)
        return _to_rgb(upright)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - SyntaxError, ValueError, struct.error, ... from decoders
        raise _decode_error(name, exc) from None


def _decode_error(name: str, exc: Exception) -> ImageError:
    """One wording per failure class, with Pillow's detail in parentheses."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageError(f"{name}: refused as a possible decompression bomb ({exc})")
    if isinstance(exc, (OSError, EOFError, SyntaxError)):
        return ImageError(f"{name}: image data is truncated or corrupt ({exc})")
    return ImageError(f"{name}: image data is corrupt ({type(exc).__name__}: {exc})")


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken metadata must not reject good pixels
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: high-bit-depth scaled (not clipped), alpha composited on white."""
    mode = image.mode
    if mode.startswith("I;16"):
        return _gray(np.asarray(image).astype(np.float64) * (255.0 / 65535.0))
    if mode in ("I", "F"):
        return _gray(_rescale(np.asarray(image).astype(np.float64), is_float=mode == "F"))
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # RGB (copied), L, 1, P, CMYK, YCbCr, ...


def _gray(values: np.ndarray) -> Image.Image:
    """0..255 float gray values -> RGB image."""
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")


def _rescale(values: np.ndarray, is_float: bool) -> np.ndarray:
    """32-bit int / float pixels (no declared range) -> 0..255 by the range they fit in."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not np.isfinite([low, high]).all():
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
    if is_float and low >= 0 and high <= 1.0:
        return values * 255.0  # float image in [0, 1]
    if low >= 0 and high <= 255:
        return values  # 8-bit data in a 32-bit mode
    if low >= 0 and high <= 65535:
        return values * (255.0 / 65535.0)  # 16-bit data (older Pillow opens 16-bit PNG as "I")
    return (values - low) * (255.0 / max(high - low, 1e-12))
