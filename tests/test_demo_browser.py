"""The demo in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Also the one command that re-takes docs/demo.png (bundled model unless --checkpoint is given):

    python tests/test_demo_browser.py docs/demo.png [--checkpoint runs/<run>/best]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


class BrowserSession:
    """A headless Chromium page on the demo that records every request leaving the machine."""

    def __init__(self, url: str, chromium: str, width: int = 1280, height: int = 900):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        self.page = self.browser.new_page(viewport={"width": width, "height": height})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.outside: list[str] = []
        self.page.on("request", self._record)
        self.page.goto(url)
        self.page.wait_for_selector("#caption-btn")

    def _record(self, request) -> None:
        host = urlparse(request.url).hostname
        if request.url.split(":", 1)[0] in ("http", "https", "ws", "wss") and host not in ("127.0.0.1", "localhost"):
            self.outside.append(request.url)

    def upload(self, paths: list[Path], expect: str, click: bool = True) -> str:
        """Drop files on the upload box (which captions them), optionally click Caption too, and wait until the
        results mention `expect`; returns their text."""
        self.page.set_input_files("#uploads input[type=file]", [str(p) for p in paths])
        if click:
            self.page.click("#caption-btn")
        self.page.wait_for_function("(s) => document.querySelector('#captions').innerText.includes(s)", arg=expect)
        return self.page.inner_text("#captions")

    def reload(self) -> None:
        """A fresh page: empty upload box and results."""
        self.page.reload()
        self.page.wait_for_selector("#caption-btn")

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


# --------------------------------------------------------------------------- tests

chromium = find_chromium()
pytestmark = pytest.mark.skipif(chromium is None, reason="Chromium not found (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    pytest.importorskip("playwright")
    import torch

    from captioner import demo
    from captioner.inference import Captioner
    from test_demo import LIMITS, free_port, tiny_checkpoint

    torch.set_num_threads(1)
    model = Captioner.from_checkpoint(tiny_checkpoint(tmp_path_factory))
    app = demo.build_app(model, LIMITS)
    url = demo.launch(app, LIMITS, port=free_port(), prevent_thread_lock=True, quiet=True)
    browser = BrowserSession(url, chromium)
    yield browser, model
    browser.close()
    app.close()


def test_upload_click_and_read_captions(session, tmp_path_factory):
    from captioner.decoding import DecodeConfig
    from test_demo import tiny_checkpoint

    browser, model = session
    image = tiny_checkpoint(tmp_path_factory).parents[1] / "val" / "val_00001.png"
    text = browser.upload([image], expect="score")
    best = model.caption([image], DecodeConfig(method="beam", beam_size=3, n_best=3))[0]
    assert image.name in text
    lines = [line for line in text.splitlines() if "(score" in line]
    assert len(lines) == 3  # default: beam 3, 3-best
    assert lines[0].startswith(best[0].text) and f"{best[0].score:.2f}" in lines[0]
    assert "thumbnail" in browser.page.inner_text("#model-info")  # which model is loaded
    assert browser.outside == []  # works offline: no font, analytics or CDN request


def test_bad_file_gets_a_message_and_the_page_keeps_working(session, tmp_path):
    browser, _ = session
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is a text file renamed .jpg\n")
    text = browser.upload([bad], expect="notes.jpg")
    assert "is a text file, not an image" in text and "Traceback" not in text
    good = tmp_path / "good.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (30, 60, 220)).save(good)
    assert "(score" in browser.upload([good], expect="good.png")


# --------------------------------------------------------------------------- docs/demo.png


def take_screenshot(out: Path, checkpoint: str | None, port: int = 7861) -> str:
    """Serve the demo with a real model, caption three example photos in Chromium, save a screenshot.

    Also times what a visitor waits for: dropping one 640x480 JPEG until its captions are on the page.
    """
    import tempfile
    import time

    from PIL import Image

    from captioner import demo
    from captioner.assets import example_images
    from captioner.inference import load_captioner

    path = find_chromium()
    if path is None:
        raise SystemExit("Chromium not found (Debian: apt-get install chromium)")
    model = load_captioner(checkpoint)
    app = demo.build_app(model)
    url = demo.launch(app, port=port, prevent_thread_lock=True, quiet=True)
    demo.warm_up(url)  # as `captioner demo` does before its first visitor
    try:
        browser = BrowserSession(url, path, width=1280, height=1000)
        try:
            photos = example_images()[:3]
            with tempfile.TemporaryDirectory() as tmp:
                for i in range(4):
                    browser.reload()
                    photo = Path(tmp) / f"drop{i}.jpg"
                    Image.open(photos[i % len(photos)]).convert("RGB").resize((640, 480)).save(photo, quality=90)
                    start = time.perf_counter()
                    browser.upload([photo], expect=photo.name, click=False)
                    print(f"drop {photo.name} (640x480 JPEG) -> captions on the page: {(time.perf_counter() - start) * 1000:.0f} ms")
            browser.reload()
            text = browser.upload(photos, expect=photos[-1].name, click=False)
            browser.page.wait_for_load_state("networkidle")  # thumbnails loaded
            browser.page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    finally:
        app.close()
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Re-take the demo screenshot with a real model.")
    parser.add_argument("out", type=Path, help="where to write the PNG (e.g. docs/demo.png)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--port", type=int, default=7861)
    args = parser.parse_args()
    print(take_screenshot(args.out, args.checkpoint, args.port))
    sys.exit(0)
