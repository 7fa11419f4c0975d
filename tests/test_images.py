"""load_image: one clear ImageError for every bad input, correct RGB for every odd-but-valid one."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from captioner import images
from captioner.images import ImageError, load_image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _noise(width: int = 48, height: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_header(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR claims width x height, with one tiny IDAT: nothing is allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return tuple(int(v) for v in image.getpixel(xy))


# ----------------------------------------------------------------- bad inputs


def test_missing_path_names_the_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="no such file") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_zero_byte_file(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        load_image(_write(tmp_path, "empty.jpg", b""))
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_random_bytes(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="not a recognized image format") as info:
        load_image(_write(tmp_path, "noise.jpg", data))
    assert "noise.jpg" in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b"<svg width='10' height='10'><rect/></svg>", "SVG"),
        (b"<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>", "HTML"),
        (b"\xef\xbb\xbfjust some caption text, caf\xc3\xa9\n", "text file"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    ],
)
def test_non_images_renamed_jpg(tmp_path, content, expected):
    with pytest.raises(ImageError, match=expected):
        load_image(_write(tmp_path, "photo.jpg", content))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.995])
def test_truncated_files_are_rejected(tmp_path, fmt, keep):
    data = _encode(_noise(64, 48), fmt)
    cut = data[: int(len(data) * keep)]
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(_write(tmp_path, "cut." + fmt.lower(), cut))


def test_png_missing_its_end_is_rejected():
    data = _encode(_noise(), "PNG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[:-20])  # all pixel rows present, IDAT CRC and IEND cut off


def test_huge_header_is_refused_without_decoding():
    bomb = _png_with_header(20_000, 20_000)
    assert len(bomb) < 200
    with pytest.raises(ImageError, match="pixel"):
        load_image(bomb)
    # Past our cap, Pillow's own DecompressionBombError is reported the same way.
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(bomb, max_pixels=10**12)


def test_own_pixel_cap_below_pillows():
    with pytest.raises(ImageError, match="8000x8000 pixels is more than"):
        load_image(_png_with_header(8000, 8000))


def test_byte_cap(tmp_path):
    data = _encode(_noise(), "PNG")
    with pytest.raises(ImageError, match="larger than"):
        load_image(_write(tmp_path, "big.png", data), max_bytes=100)
    with pytest.raises(ImageError, match="larger than"):
        load_image(data, max_bytes=100)


def test_unsupported_input_type():
    with pytest.raises(ImageError, match="int"):
        load_image(42)  # type: ignore[arg-type]


def test_excluded_format_is_not_opened():
    """EPS would run Ghostscript; only photo formats are tried."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError):
        load_image(eps)


def test_formats_missing_from_this_pillow_build_are_skipped(monkeypatch):
    monkeypatch.setattr(images, "SUPPORTED_FORMATS", ("NOT_A_PLUGIN",) + images.SUPPORTED_FORMATS)
    assert load_image(_encode(_noise(), "PNG")).size == (48, 32)


# ----------------------------------------------------------------- odd but valid inputs


def test_returns_rgb_from_path_bytes_and_pil(tmp_path):
    image = _noise()
    data = _encode(image, "PNG")
    for src in (_write(tmp_path, "a.png", data), str(tmp_path / "a.png"), data, bytearray(data), image):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (48, 32)
        assert np.array_equal(np.asarray(out), np.asarray(image))


def test_pil_input_is_not_modified():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    load_image(image)
    assert image.mode == "RGBA"


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_gives_first_frame(fmt):
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    r, g, b = _rgb(load_image(data), (8, 8))
    assert r > 200 and g < 50 and b < 50


def test_cmyk_jpeg():
    data = _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red ink mix
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data)
    r, g, b = _rgb(out, (8, 8))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = _encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(load_image(data))
    assert out.shape == (64, 64, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert abs(int(out[32, 32, 0]) - 128) <= 2  # mid-gray stays mid-gray (clipping would make it 255)
    assert len(np.unique(out)) > 200


def test_grayscale_and_bilevel():
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L")
    out = np.asarray(load_image(_encode(gray, "PNG")))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], np.asarray(gray))
    assert load_image(_encode(gray.convert("1"), "PNG")).mode == "RGB"


def test_palette_with_transparency_on_white():
    image = Image.new("P", (4, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    data = _encode(image, "PNG", transparency=0)
    out = load_image(data)
    assert _rgb(out, (0, 0)) == (255, 255, 255)  # transparent index -> white, not black
    assert _rgb(out, (1, 0)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_on_white(mode):
    image = Image.new("RGBA", (3, 1))
    image.putdata([(0, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 128)])
    out = load_image(_encode(image.convert(mode), "PNG"))
    assert _rgb(out, (0, 0)) == (255, 255, 255)
    assert _rgb(out, (1, 0)) == (0, 0, 0)
    assert 120 <= _rgb(out, (2, 0))[0] <= 135


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # stored: red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    out = load_image(_encode(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.size == (20, 40)
    assert _rgb(out, (10, 5))[0] > 200  # the left half is now on top
    assert _rgb(out, (10, 35))[2] > 200


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns "Corrupt EXIF data"
def test_broken_exif_keeps_the_pixels():
    data = bytearray(_encode(_noise(), "JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff"))
    out = load_image(bytes(data))
    assert out.size == (48, 32)


def test_one_pixel_image_is_accepted_unless_a_minimum_is_asked():
    data = _encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")
    out = load_image(data)
    assert out.size == (1, 1) and _rgb(out, (0, 0)) == (10, 20, 30)
    with pytest.raises(ImageError, match="1x1 is smaller than the 8-pixel minimum"):
        load_image(data, min_size=8)


def test_jpeg_draft_decodes_smaller_but_large_enough():
    big = Image.fromarray(np.full((1500, 2000, 3), 90, np.uint8), "RGB")
    data = _encode(big, "JPEG")
    assert load_image(data).size == (2000, 1500)
    small = load_image(data, draft_size=224)
    assert small.mode == "RGB" and 224 <= min(small.size) < 1500
    assert load_image(_encode(big, "PNG"), draft_size=224).size == (2000, 1500)  # JPEG only


# ----------------------------------------------------------------- fuzz


def _seeds() -> list[bytes]:
    base = _noise(16, 12, seed=3)
    return [
        _encode(base, "JPEG", quality=80),
        _encode(base, "PNG"),
        _encode(base.convert("P"), "GIF"),
        _encode(base, "WEBP"),
        _encode(base, "BMP"),
        _encode(base, "TIFF"),
    ]


SEEDS = _seeds()


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "zero":
            data[pos : pos + 8] = b"\x00" * len(data[pos : pos + 8])
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_mutated(), st.binary(max_size=512)))
def test_fuzz_only_image_error_escapes(data):
    try:
        out = load_image(data, max_pixels=1_000_000)
    except ImageError as exc:
        assert str(exc)
    else:
        assert out.mode == "RGB" and min(out.size) >= 1
