"""The Gradio demo: its API through gradio_client on a live loopback server, its UI handlers, bad input, limits, CLI.

The model is a tiny one trained here on synthetic shapes (seconds), so nothing depends on the bundled model.
Helpers at the top are shared with the other tests/test_demo_*.py files.
"""
from __future__ import annotations

import io
import re
import socket
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from captioner import cli, demo  # noqa: E402
from captioner.config import load_config  # noqa: E402
from captioner.decoding import DecodeConfig  # noqa: E402
from captioner.images import ImageError  # noqa: E402
from captioner.inference import Captioner  # noqa: E402
from captioner.synthetic import config_overrides, make_dataset  # noqa: E402
from captioner.train import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.embed_size=32", "model.hidden_size=64", "train.batch_size=32", "train.lr=3e-3", "train.warmup_steps=5",
        "vocab.max_len=10", "train.epochs=4", "name=tiny"]


# --------------------------------------------------------------------------- shared helpers


def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic-shapes model, trained once per test session (every demo test file reuses it)."""
    root = tmp_path_factory.getbasetemp() / "demo-tiny-model"
    best = root / "run" / "best.safetensors"
    if not best.is_file():
        torch.set_num_threads(1)
        make_dataset(root, n_train=200, n_val=40)
        train(load_config(None, config_overrides(root) + TINY + [f"output_dir={root}"]), root / "run", show_progress=False)
    return best


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert(mode)


def png_with_header(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims width x height, with one tiny IDAT (a bomb that allocates nothing)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def exif_rotated_jpeg(orientation: int, width: int = 60, height: int = 40) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noise(width, height), "JPEG", exif=exif.tobytes())


def animated_gif(frames: int = 3) -> bytes:
    images = [Image.new("RGB", (40, 30), c) for c in [(200, 0, 0), (0, 200, 0), (0, 0, 200)][:frames]]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def sixteen_bit_png() -> bytes:
    return encode(Image.fromarray(np.linspace(0, 65535, 48 * 32, dtype=np.uint16).reshape(32, 48)), "PNG")


# name -> (file bytes, None if it must be captioned, else a phrase the refusal message must contain)
def odd_inputs() -> dict[str, tuple[bytes, str | None]]:
    jpeg = encode(noise(), "JPEG", quality=90)
    return {
        "text.jpg": (b"hello, this is not a photo\n", "text file"),
        "page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML page"),
        "drawing.jpg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        "empty.jpg": (b"", "empty input"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        "corrupt.png": (encode(noise(), "PNG")[:60] + bytes(range(256)) * 4, "corrupt"),
        "random.jpg": (np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(), "not a recognized image"),
        "bomb.png": (png_with_header(20_000, 20_000), "decompression bomb"),
        "huge.png": (png_with_header(8_000, 8_000), "pixel limit"),
        "animated.gif": (animated_gif(), None),
        "cmyk.jpg": (encode(noise(mode="CMYK"), "JPEG"), None),
        "sixteen.png": (sixteen_bit_png(), None),
        "gray.png": (encode(noise(mode="L"), "PNG"), None),
        "rgba.png": (encode(noise(mode="RGBA"), "PNG"), None),
        "palette.png": (encode(noise(mode="P"), "PNG", transparency=0), None),
        "rotated.jpg": (exif_rotated_jpeg(6), None),
        "tiny.png": (encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), None),
    }


def unescape_md(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


# --------------------------------------------------------------------------- fixtures

LIMITS = demo.DemoLimits(max_file_mb=1, max_images=4, max_queue=16)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Captioner:
    torch.set_num_threads(1)
    return Captioner.from_checkpoint(tiny_checkpoint(tmp_path_factory))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory).parents[1] / "val" / "val_00000.png"


@pytest.fixture(scope="module")
def server(model):
    app = demo.build_app(model, LIMITS)
    url = demo.launch(app, LIMITS, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app, url
    app.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[1], verbose=False, download_files=False)


@pytest.fixture(scope="module")
def handlers(model) -> demo.DemoHandlers:
    return demo.DemoHandlers(demo.CaptionService(model, LIMITS))


# --------------------------------------------------------------------------- API


def test_api_captions_one_image_with_sorted_scores(client, model, image):
    out = client.predict(handle_file(image), api_name="/caption")
    assert isinstance(out, list) and len(out) == 3  # defaults: beam 3, 3-best
    assert all(isinstance(c["caption"], str) and c["caption"] and isinstance(c["score"], float) for c in out)
    scores = [c["score"] for c in out]
    assert scores == sorted(scores, reverse=True)
    direct = model.caption([image], DecodeConfig(method="beam", beam_size=3, n_best=3))[0]
    assert [c["caption"] for c in out] == [c.text for c in direct]
    assert scores == pytest.approx([c.score for c in direct], abs=1e-3)


def test_api_decoding_params_are_respected(client, model, image):
    def call(**params):
        return client.predict(handle_file(image), api_name="/caption", **params)

    def direct(**cfg):
        return [(c.text, c.score) for c in model.caption([image], DecodeConfig(**cfg))[0]]

    def pairs(out):
        return [(c["caption"], pytest.approx(c["score"], abs=1e-3)) for c in out]

    assert pairs(call(method="greedy")) == direct(method="greedy")
    assert pairs(call(method="beam", beam_size=5, n_best=5)) == direct(method="beam", beam_size=5, n_best=5)
    assert len(call(method="beam", beam_size=2, n_best=5)) == 2  # n-best capped at the beam size
    sampled = call(method="sample", n_best=4, temperature=1.5, seed=7)
    assert pairs(sampled) == direct(method="sample", n_best=4, temperature=1.5, seed=7)
    assert all(len(c["caption"].split()) <= 2 for c in call(max_len=2))


@pytest.mark.parametrize("params, phrase", [
    ({"beam_size": 2.5}, "beam_size must be a whole number"),
    ({"beam_size": 50}, "greater than maximum"),
    ({"temperature": 0}, "less than minimum"),
    ({"method": "nucleus"}, "nucleus"),
])
def test_api_bad_params_get_a_clear_error(client, image, params, phrase):
    with pytest.raises(Exception, match=phrase) as info:
        client.predict(handle_file(image), api_name="/caption", **params)
    assert "Traceback" not in str(info.value)


def test_api_model_info(client, model):
    info = client.predict(api_name="/model_info")
    assert info["encoder"] == model.info()["encoder"] == "thumbnail"
    assert info["vocab_size"] == len(model.vocab)
    assert info["checkpoint"] == "best.safetensors"  # the file name, not the server's folders


def test_api_is_documented(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(api) == {"/caption", "/model_info"}  # UI events are private
    params = [p["parameter_name"] for p in api["/caption"]["parameters"]]
    assert params == ["image", "method", "beam_size", "n_best", "temperature", "max_len", "seed"]
    assert not any(p["parameter_has_default"] for p in api["/caption"]["parameters"][:1])
    assert all(p["parameter_has_default"] for p in api["/caption"]["parameters"][1:])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", list(odd_inputs()))
def test_api_odd_inputs(client, tmp_path, name):
    data, phrase = odd_inputs()[name]
    path = tmp_path / name
    path.write_bytes(data)
    if phrase is None:
        out = client.predict(handle_file(path), api_name="/caption")
        assert len(out) == 3 and all(c["caption"] for c in out)
    else:
        with pytest.raises(Exception, match=phrase) as info:
            client.predict(handle_file(path), api_name="/caption")
        msg = str(info.value)
        assert msg.startswith(name + ":"), msg  # names the upload, not the server's temp path
        assert "Traceback" not in msg and "/tmp" not in msg


def test_ui_handler_reports_each_file(handlers, tmp_path):
    inputs = odd_inputs()
    paths = []
    for name, (data, _) in list(inputs.items())[:LIMITS.max_images]:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    gallery, md = handlers.caption_uploads(paths, "beam", 3, 3, 1.0, 20, -1)
    text = unescape_md(md)
    for path in paths:
        name = Path(path).name
        phrase = inputs[name][1]
        section = text.split(f"**{name}**", 1)[1].split("**", 1)[0]
        assert (phrase in section) if phrase else "score" in section, (name, section)
    assert len(gallery) == sum(inputs[Path(p).name][1] is None for p in paths)


def test_ui_handler_accepts_odd_images_and_respects_exif(handlers, tmp_path):
    accepted = {n: d for n, (d, phrase) in odd_inputs().items() if phrase is None}
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(accepted["rotated.jpg"])
    gallery, md = handlers.caption_uploads([str(rotated)], "greedy", 3, 3, 1.0, 20, -1)
    thumb, best = gallery[0]
    assert thumb.size == (40, 60)  # stored 60x40 with EXIF orientation 6: shown upright
    assert best and best in md
    for name, data in accepted.items():
        (tmp_path / name).write_bytes(data)
    for start in range(0, len(accepted), LIMITS.max_images):
        names = list(accepted)[start:start + LIMITS.max_images]
        gallery, md = handlers.caption_uploads([str(tmp_path / n) for n in names], "beam", 3, 3, 1.0, 20, -1)
        assert len(gallery) == len(names) and "⚠" not in md
        assert all(im.mode == "RGB" for im, _ in gallery)


def test_ui_handler_caps_images_per_request(handlers, image):
    gallery, md = handlers.caption_uploads([str(image)] * (LIMITS.max_images + 3), "greedy", 1, 1, 1.0, 20, -1)
    assert len(gallery) == LIMITS.max_images
    assert "3 more file(s) skipped" in unescape_md(md)


def test_ui_handler_without_files_and_with_bad_values(handlers):
    gallery, md = handlers.caption_uploads(None, "beam", 3, 3, 1.0, 20, -1)
    assert gallery == [] and "Upload" in md
    with pytest.raises(gr.Error, match="n_best must be between 1 and 10"):
        handlers.caption_uploads([], "beam", 3, 0, 1.0, 20, -1)
    with pytest.raises(gr.Error, match="no example number"):
        handlers.caption_example(99, "beam", 3, 3, 1.0, 20, -1)


def test_unexpected_failure_is_one_line_and_app_survives(model, image, caplog):
    class Broken(Captioner):
        def caption(self, images, decode_cfg=None):
            raise RuntimeError("simulated bug")

    handlers = demo.DemoHandlers(demo.CaptionService(Broken(model.encoder, model.decoder, model.vocab, model.model_config)))
    with pytest.raises(gr.Error, match="internal error") as info:
        handlers.caption(str(image))
    assert "simulated bug" not in str(info.value)
    assert "simulated bug" in caplog.text  # the traceback goes to the server log


def test_examples_are_captioned(model):
    from captioner.assets import example_images

    examples = example_images()[:1]
    if not examples:
        pytest.skip("no example photos shipped")
    handlers = demo.DemoHandlers(demo.CaptionService(model), examples)
    gallery, md = handlers.caption_example(0, "beam", 3, 3, 1.0, 20, -1)
    assert len(gallery) == 1 and examples[0].name in unescape_md(md)


def test_decode_config_mapping():
    assert demo.decode_config() == DecodeConfig(method="beam", beam_size=3, n_best=3)
    assert demo.decode_config("greedy", 5, 3).n_best == 1
    assert demo.decode_config("sample", 1, 4, 0.5, 10, 3) == DecodeConfig(method="sample", beam_size=1, n_best=4,
                                                                         temperature=0.5, max_len=10, seed=3)
    assert demo.decode_config(seed=-1).seed is None
    for bad in [dict(method="x"), dict(beam_size="three"), dict(max_len=0), dict(temperature=float("nan")), dict(seed=1.5)]:
        with pytest.raises(ValueError):
            demo.decode_config(**bad)


# --------------------------------------------------------------------------- limits and serving


def test_upload_size_cap_is_enforced_by_the_server(server, client, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(encode(noise(), "JPEG") + bytes(int(1.5 * 2**20)))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first ...
        client.predict(handle_file(big), api_name="/caption")
    with big.open("rb") as f:  # ... and the server refuses a raw upload too
        r = httpx.post(server[1] + "gradio_api/upload", files={"files": ("big.jpg", f, "image/jpeg")}, timeout=30)
    assert r.status_code == 413 and "maximum allowed size" in r.text
    with pytest.raises(ImageError, match="larger than"):  # and the loader keeps the same cap
        demo.CaptionService(None, LIMITS).load(big)


def test_server_never_reads_paths_it_did_not_receive(server):
    url = server[1]
    r = httpx.post(url + "gradio_api/call/caption",
                   json={"data": [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "beam", 3, 3, 1.0, 20, -1]})
    event = r.json()["event_id"]
    answer = httpx.get(f"{url}gradio_api/call/caption/{event}", timeout=30).text
    assert "event: error" in answer and "captions" not in answer


def test_binds_loopback_by_default(model):
    args = demo.get_args_parser().parse_args([])
    assert args.host == "127.0.0.1"
    app = demo.build_app(model, LIMITS, examples=[])
    port = free_port()
    url = demo.launch(app, LIMITS, port=port, prevent_thread_lock=True, quiet=True)  # host left at its default
    try:
        assert url.startswith("http://127.0.0.1:")
        tcp = Path("/proc/net/tcp")
        if tcp.is_file():  # the listening socket's own address: 127.0.0.1, not 0.0.0.0
            listening = [line.split()[1] for line in tcp.read_text().splitlines()[1:] if line.split()[3] == "0A"]
            assert f"0100007F:{port:04X}" in listening
            assert f"00000000:{port:04X}" not in listening
    finally:
        app.close()


class Recording(Captioner):
    """A Captioner that records its calls (and can be slowed down) to observe batching and overlap."""

    def __init__(self, model: Captioner, delay: float = 0.0, fail_on: str | None = None):
        super().__init__(model.encoder, model.decoder, model.vocab, model.model_config)
        self.delay, self.fail_on = delay, fail_on
        self.lock = threading.Lock()
        self.batches: list[int] = []
        self.running = self.max_running = 0

    def caption(self, images, decode_cfg=None):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.batches.append(len(images))
        try:
            time.sleep(self.delay)
            if self.fail_on and decode_cfg.method == self.fail_on:
                raise RuntimeError("simulated model failure")
            return super().caption(images, decode_cfg)
        finally:
            with self.lock:
                self.running -= 1


def test_micro_batcher_batches_concurrent_requests_without_changing_them(model, image):
    from concurrent.futures import ThreadPoolExecutor

    images = [Image.open(image).convert("RGB"), noise(64, 64, seed=1), noise(64, 64, seed=2), noise(32, 48, seed=3)]
    beam, greedy = DecodeConfig(beam_size=3, n_best=2), DecodeConfig(method="greedy")
    expected = {(i, c): model.caption([im], cfg)[0] for i, im in enumerate(images) for c, cfg in (("beam", beam), ("greedy", greedy))}
    rec = Recording(model, delay=0.05)
    batcher = demo.MicroBatcher(rec, max_images=8)
    requests = [(i % 4, "beam" if i % 3 else "greedy") for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda r: batcher.caption([images[r[0]]], beam if r[1] == "beam" else greedy)[0], requests))
    for (i, c), got in zip(requests, results):
        assert [(x.text, round(x.score, 4)) for x in got] == [(x.text, round(x.score, 4)) for x in expected[i, c]]
    assert rec.max_running == 1  # one model call at a time
    assert max(rec.batches) > 1 and max(rec.batches) <= 8 and sum(rec.batches) == 24  # shared calls, nothing lost


def test_micro_batcher_keeps_seeded_sampling_alone_and_passes_errors(model, image):
    from concurrent.futures import ThreadPoolExecutor

    rec = Recording(model, delay=0.05, fail_on="greedy")
    batcher = demo.MicroBatcher(rec)
    sample = DecodeConfig(method="sample", n_best=2, seed=5)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: batcher.caption([Image.open(image).convert("RGB")], sample), range(4)))
    assert rec.batches == [1, 1, 1, 1]  # seeded draws depend on the batch: never shared
    assert len({tuple(c.text for c in o[0]) for o in outs}) == 1  # so the same seed gives the same captions
    with pytest.raises(RuntimeError, match="simulated"):
        batcher.caption([noise()], DecodeConfig(method="greedy"))
    assert batcher.caption([noise()], DecodeConfig(method="beam"))[0]  # and the batcher still works


def test_queue_is_bounded_and_the_model_runs_one_batch_at_a_time(model, image):
    rec = Recording(model, delay=0.3)
    limits = demo.DemoLimits(concurrency=4, max_queue=2)
    app = demo.build_app(rec, limits, examples=[])
    url = demo.launch(app, limits, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        c = Client(url, verbose=False)
        jobs = [c.submit(handle_file(image), api_name="/caption") for _ in range(12)]
        ok, full = 0, 0
        for job in jobs:
            try:
                ok += bool(job.result(timeout=60))
            except Exception as err:  # noqa: BLE001
                assert "Queue is full" in str(err)
                full += 1
        assert ok >= 4 and full >= 1 and ok + full == 12  # max_size 2: the rest is told the queue is full
        assert rec.max_running == 1 and max(rec.batches) > 1  # concurrent requests shared model calls
        assert max(rec.batches) <= limits.concurrency
        assert c.predict(handle_file(image), method="greedy", api_name="/caption")  # and it still answers
    finally:
        app.close()


def test_offline_settings(server):
    app, url = server
    assert app.analytics_enabled is False
    fonts = demo.offline_theme()._font + demo.offline_theme()._font_mono
    assert not any(isinstance(f, gr.themes.GoogleFont) for f in fonts)
    page = httpx.get(url, timeout=30).text
    assert "fonts.googleapis" not in page and "cdn." not in page


# --------------------------------------------------------------------------- CLI


def test_cli_demo_bad_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert cli.main(["demo", "--checkpoint", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("captioner demo: error:") and "Traceback" not in err


def test_demo_app_script_is_the_same_command(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["demo/app.py", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "demo" / "app.py"), run_name="__main__")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "captioner demo" in out and "--port" in out and "--checkpoint" in out and "127.0.0.1" in out
