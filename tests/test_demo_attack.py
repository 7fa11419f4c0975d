"""The demo under attack: hundreds of hostile uploads each get a clear answer, and the app keeps captioning.

Most inputs go through the demo's handlers directly (fast); a good share goes through gradio_client to the live
app on loopback. A Hypothesis fuzzer checks that nothing but our own error types leaves the image handlers.
"""
from __future__ import annotations

import random
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from captioner import demo  # noqa: E402
from captioner.decoding import DecodeConfig  # noqa: E402
from captioner.images import ImageError  # noqa: E402
from captioner.inference import Captioner  # noqa: E402
from test_demo import animated_gif, encode, exif_rotated_jpeg, free_port, noise, png_with_header, sixteen_bit_png, tiny_checkpoint  # noqa: E402

LIMITS = demo.DemoLimits(max_file_mb=1, max_images=8, max_queue=32)
CAPTIONED = None  # expected outcome: captions (an odd but valid image)
ANY_REFUSAL = ""  # expected outcome: a clear refusal, wording not fixed (mutations can break a file many ways)
TRUNCATED, BOMB, PIXELS = "truncated or corrupt", "decompression bomb", "pixel limit"


def hostile_inputs() -> list[tuple[str, bytes, str | None]]:
    """(file name, bytes, CAPTIONED | phrase the refusal must contain) for >= 200 inputs of every kind we know."""
    rng = np.random.default_rng(0)
    r = random.Random(0)
    out: list[tuple[str, bytes, str | None]] = []
    valid = {fmt: encode(noise(64, 48, seed=i), fmt, **kw) for i, (fmt, kw) in enumerate(
        [("JPEG", {"quality": 85}), ("PNG", {}), ("GIF", {}), ("WEBP", {"quality": 80}), ("BMP", {}), ("TIFF", {})])}
    for i in range(50):  # random bytes, renamed as images
        n = int(rng.integers(1, 20_000))
        out.append((f"random{i}.{r.choice(['jpg', 'png', 'gif', 'webp'])}", rng.integers(0, 256, n, dtype=np.uint8).tobytes(), ANY_REFUSAL))
    for fmt, data in valid.items():  # truncated at many cut points
        cuts = sorted({int(c) for c in rng.integers(60, len(data) - 8, 20 if fmt in ("JPEG", "PNG") else 10)})
        out += [(f"cut{c}.{fmt.lower()}", data[:c], ANY_REFUSAL) for c in cuts]
    for i, magic in enumerate([b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x10\x00\x00WEBPVP8 ", b"BM"] * 3):
        out.append((f"magic{i}.jpg", magic + rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes(), ANY_REFUSAL))
    for i in range(30):  # JPEG/PNG with bytes overwritten after the header: refused or (JPEG) decoded as noise
        fmt = "JPEG" if i % 2 else "PNG"
        data = bytearray(valid[fmt])
        for k in rng.integers(100, len(data), 16):
            data[k] = int(rng.integers(0, 256))
        out.append((f"corrupt{i}.{fmt.lower()}", bytes(data), "either"))
    for w, h in [(8_000, 8_000), (7_000, 6_000), (40_001, 1_000), (100_000, 1_000)]:  # headers over our 40 MP cap
        out.append((f"header{w}x{h}.png", png_with_header(w, h), PIXELS))
    for w, h in [(20_000, 20_000), (65_535, 65_535), (30_000, 30_000), (100_000, 100_000)]:  # over Pillow's own bomb limit
        out.append((f"bomb{w}x{h}.png", png_with_header(w, h), BOMB))
    gif_header = b"GIF89a" + (20_000).to_bytes(2, "little") * 2 + b"\x00\x00\x00" + b"\x2c" + bytes(9) + b"\x02\x02\x44\x01\x00\x3b"
    out.append(("bomb.gif", gif_header, BOMB))
    zeros = Image.new("L", (6_000, 6_000))  # a real, highly compressed 36 MP image: under the cap, so it is captioned
    out.append(("flat36mp.png", encode(zeros, "PNG", optimize=True), CAPTIONED))
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):  # 1x1 images
        out.append((f"one.{fmt.lower()}", encode(Image.new("RGB", (1, 1), (200, 10, 10)), fmt), CAPTIONED))
    for frames in (2, 3):
        out.append((f"animated{frames}.gif", animated_gif(frames), CAPTIONED))
    out.append(("animated.webp", encode(Image.new("RGB", (30, 20), "red"), "WEBP", save_all=True,
                                        append_images=[Image.new("RGB", (30, 20), "blue")], duration=50), CAPTIONED))
    for i in range(3):
        out.append((f"cmyk{i}.jpg", encode(noise(50, 40, seed=i, mode="CMYK"), "JPEG"), CAPTIONED))
    out.append(("sixteen.png", sixteen_bit_png(), CAPTIONED))
    out.append(("sixteen.tif", encode(Image.fromarray(np.full((20, 30), 40_000, np.uint16)), "TIFF"), CAPTIONED))
    for i, mode in enumerate(["P", "L", "LA", "RGBA", "1", "I", "F"]):
        fmt = "TIFF" if mode in ("I", "F") else "PNG"
        out.append((f"mode{mode}.{fmt.lower()}", encode(noise(40, 30, seed=i).convert(mode), fmt), CAPTIONED))
    for orientation in range(1, 9):
        out.append((f"exif{orientation}.jpg", exif_rotated_jpeg(orientation), CAPTIONED))
    texts = {
        "svg.jpg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>', "SVG"),
        "xss.jpg": (b'<svg onload="alert(1)"><script>alert(1)</script></svg>', "SVG"),
        "page.jpg": (b"<!doctype html><html><head><title>403</title></head></html>", "HTML page"),
        "notes.jpg": (b"just some notes\nline two\n", "text file"),
        "data.png": (b'{"not": "an image"}', "text file"),
        "script.gif": (b"#!/bin/sh\nrm -rf /\n", "text file"),
        "unicode.jpg": ("émoji 📷 not an image".encode(), "text file"),
        "pdf.jpg": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "not a recognized image"),
        "zip.jpg": (b"PK\x03\x04" + bytes(40), "not a recognized image"),
        "elf.png": (b"\x7fELF\x02\x01\x01" + bytes(60), "not a recognized image"),
        "heic.jpg": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(40), "HEIC"),
        "eps.jpg": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "text file"),
        "empty.jpg": (b"", "empty input"),
        "nul.png": (bytes(1000), "not a recognized image"),
    }
    out += [(name, data, phrase) for name, (data, phrase) in texts.items()]
    for i in range(3):  # oversized: over the upload cap
        out.append((f"oversized{i}.jpg", valid["JPEG"] + bytes(LIMITS.max_bytes + i * 1000), "larger than"))
    return out


def check_refusal(name: str, message: str, expected: str) -> None:
    assert message.startswith(f"{name}:"), message  # names the upload
    assert "Traceback" not in message and "/tmp" not in message and len(message) < 400, message
    assert expected in message, (expected, message)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Captioner:
    import torch

    torch.set_num_threads(1)
    return Captioner.from_checkpoint(tiny_checkpoint(tmp_path_factory))


@pytest.fixture(scope="module")
def handlers(model) -> demo.DemoHandlers:
    return demo.DemoHandlers(demo.CaptionService(model, LIMITS))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[tuple[Path, str | None]]:
    root = tmp_path_factory.mktemp("hostile")
    written = []
    for i, (name, data, expected) in enumerate(hostile_inputs()):
        folder = root / f"{i:03d}"
        folder.mkdir()
        (folder / name).write_bytes(data)
        written.append((folder / name, expected))
    return written


def test_there_are_enough_hostile_inputs(files):
    assert len(files) >= 200
    assert sum(e is CAPTIONED for _, e in files) >= 25 and sum(e not in (CAPTIONED, "either") for _, e in files) >= 150


def test_hostile_uploads_through_the_handlers(handlers, files, model):
    """Every input, one by one through the API handler and in groups through the UI handler."""
    outcomes = {"captioned": 0, "refused": 0}
    for path, expected in files:
        try:
            out = handlers.caption(str(path), "greedy", 1, 1, 1.0, 20, -1)
        except gr.Error as err:
            assert expected is not CAPTIONED, (path.name, err.message)
            check_refusal(path.name, err.message, "" if expected == "either" else expected)
            outcomes["refused"] += 1
        else:
            assert expected in (CAPTIONED, "either"), (path.name, out)
            assert len(out) == 1 and out[0]["caption"]
            outcomes["captioned"] += 1
    print(f"\n{len(files)} hostile inputs through the handler: {outcomes}")
    for start in range(0, len(files), LIMITS.max_images):  # the UI handler: one batch per upload of several files
        group = files[start:start + LIMITS.max_images]
        gallery, md = handlers.caption_uploads([str(p) for p, _ in group], "beam", 3, 3, 1.0, 20, -1)
        assert md.count("⚠️") == len(group) - len(gallery)
        assert len(gallery) >= sum(e is CAPTIONED for _, e in group)
    good = Image.new("RGB", (64, 64), (220, 30, 30))
    assert model.caption([good], DecodeConfig(method="greedy"))[0][0].text  # the model itself is untouched


def test_exif_rotations_are_respected(handlers, files):
    for path, _ in files:
        if path.name.startswith("exif"):
            orientation = int(path.stem[4:])
            gallery, _ = handlers.caption_uploads([str(path)], "greedy", 1, 1, 1.0, 20, -1)
            assert gallery[0][0].size == ((40, 60) if orientation >= 5 else (60, 40)), path.name


def test_hostile_uploads_through_the_live_app(model, files, tmp_path):
    """A share of the inputs over HTTP; afterwards a good image still gets its captions."""
    app = demo.build_app(model, LIMITS, examples=[])
    url = demo.launch(app, LIMITS, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        picked = files[::4]  # every 4th input, all kinds
        assert len(picked) >= 50
        for path, expected in picked:
            if expected == "larger than":  # refused before upload by the client, and by the server itself
                with pytest.raises(ValueError, match="maximum file size"):
                    client.predict(handle_file(path), api_name="/caption")
                with path.open("rb") as f:
                    r = httpx.post(url + "gradio_api/upload", files={"files": (path.name, f)}, timeout=30)
                assert r.status_code == 413
                continue
            try:
                out = client.predict(handle_file(path), method="greedy", api_name="/caption")
            except Exception as err:  # noqa: BLE001 - gradio_client's AppError carries the message
                assert expected is not CAPTIONED, (path.name, err)
                check_refusal(path.name, str(err), "" if expected == "either" else expected)
            else:
                assert expected in (CAPTIONED, "either") and out[0]["caption"], (path.name, out)
        good = tmp_path / "good.png"
        Image.new("RGB", (64, 64), (40, 60, 220)).save(good)
        assert len(client.predict(handle_file(good), api_name="/caption")) == 3
        assert httpx.get(url, timeout=30).status_code == 200
    finally:
        app.close()


# --------------------------------------------------------------------------- fuzzing


def _seeds() -> list[bytes]:
    image = noise(24, 16, seed=3)
    return [encode(image, fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")] + [animated_gif(2), exif_rotated_jpeg(6, 24, 16)]


@st.composite
def mutated(draw) -> bytes:
    """A valid small image, then truncated, overwritten, spliced or replaced by arbitrary bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=4096))
    data = bytearray(draw(st.sampled_from(_seeds())))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 24))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    at = draw(st.integers(0, len(data)))
    return bytes(data[:at] + draw(st.binary(max_size=512)) + data[at:])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=mutated())
def test_fuzz_only_our_errors_escape(handlers, tmp_path, data):
    """CaptionService raises only ImageError; the Gradio handler only gr.Error with a one-line message."""
    cfg = DecodeConfig(method="greedy")
    try:
        out = handlers.service.caption_file(data, cfg)
        assert out and isinstance(out[0]["caption"], str)
    except ImageError as err:
        assert str(err)
    path = tmp_path / "upload.jpg"
    path.write_bytes(data)
    try:
        handlers.caption(str(path), "greedy", 1, 1, 1.0, 20, -1)
    except gr.Error as err:
        assert err.message.startswith("upload.jpg:") and "\n" not in err.message
