"""The Gradio demo: drop photos, read their n-best captions with scores; plus a small documented API.

    captioner demo                                     # bundled model on http://127.0.0.1:7860
    captioner demo --checkpoint runs/<run>/best --port 8080
    captioner demo --host 0.0.0.0                      # reachable from other machines (think first)

API, with gradio_client (see docs/demo.md)::

    Client("http://127.0.0.1:7860/").predict(handle_file("photo.jpg"), api_name="/caption")
    # -> [{"caption": str, "score": float, "logprob": float}, ...] best first

Decisions:

* Every upload is decoded by :func:`captioner.images.load_image`, the project's one loader, so a bad file
  (text renamed .jpg, truncated JPEG, bomb, ...) gets the same clear message as on the CLI. Uploads arrive in
  ``gr.File`` components, not ``gr.Image``: gr.Image opens the file with Pillow before our code sees it.
* One model call at a time, but requests that arrive meanwhile share the next call (:class:`MicroBatcher`):
  batched beam search is much cheaper per image on CPU, so under load this raised throughput (docs/demo.md).
  Not Gradio's ``batch=True``: there one bad upload would fail every request batched with it, while here each
  request decodes its own upload and gets its own error. A bounded queue and a concurrency limit shared by all
  model events cap the work and memory in flight.
* Offline: analytics off, system fonts (no Google Fonts request), no server-side rendering (no Node), no MCP.
"""
# No `from __future__ import annotations`: Gradio reads the handlers' annotations (gr.SelectData) at runtime.
import argparse
import functools
import html
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from .decoding import METHODS, DecodeConfig
from .images import ImageError, load_image
from .inference import Caption, Captioner

if TYPE_CHECKING:  # gradio is an optional extra, imported only when the demo is built
    import gradio as gr

__all__ = ["DemoLimits", "RequestError", "MicroBatcher", "CaptionService", "DemoHandlers", "decode_config", "build_app",
           "launch", "warm_up", "get_args_parser", "main"]

log = logging.getLogger("captioner.demo")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
# UI/API ranges: wide enough to explore, small enough that one request cannot tie up the server for long.
BEAM_RANGE, NBEST_RANGE, MAX_LEN_RANGE = (1, 10), (1, 10), (1, 40)
TEMPERATURE_RANGE = (0.05, 3.0)
SEED_RANGE = (-1, 2**31 - 1)  # -1: a fresh random draw each time
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


@dataclass(frozen=True)
class DemoLimits:
    """What one visitor can make the server do."""

    max_file_mb: float = 10.0  # upload cap: Gradio refuses bigger uploads before they reach Python
    max_pixels: int = 40_000_000  # decompression-bomb guard, checked from the header before decoding
    max_images: int = 16  # images captioned per UI request; more are listed as skipped
    concurrency: int = 4  # requests handled at once (uploads decode in parallel; the model still runs one batch at a time)
    max_batch: int = 8  # images per model call when concurrent requests are batched together
    max_queue: int = 64  # requests allowed to wait; beyond that Gradio answers "queue is full"

    def __post_init__(self) -> None:
        for name in ("max_file_mb", "max_pixels", "max_images", "concurrency", "max_batch", "max_queue"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DemoLimits.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)


class RequestError(ValueError):
    """A decoding value a visitor sent that the demo does not accept; the message names the field."""


def _as_int(name: str, value: Any, low: int, high: int) -> int:
    """Accept 3, 3.0 or "3" (sliders send floats); anything else or out of range -> RequestError naming the field."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {int(number)}")
    return int(number)


def decode_config(method: str = "beam", beam_size: Any = 3, n_best: Any = 3, temperature: Any = 1.0,
                  max_len: Any = 20, seed: Any = -1) -> DecodeConfig:
    """UI/API values -> DecodeConfig, or RequestError naming the bad field.

    n-best is capped where the method cannot give more: 1 for greedy, the beam size for beam search.
    """
    if method not in METHODS:
        raise RequestError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    beam = _as_int("beam_size", beam_size, *BEAM_RANGE)
    n = _as_int("n_best", n_best, *NBEST_RANGE)
    length = _as_int("max_len", max_len, *MAX_LEN_RANGE)
    seed_value = _as_int("seed", seed, *SEED_RANGE)
    try:
        temp = float(temperature)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"temperature must be a number, got {temperature!r}") from None
    if not TEMPERATURE_RANGE[0] <= temp <= TEMPERATURE_RANGE[1]:  # also rejects NaN
        raise RequestError(f"temperature must be between {TEMPERATURE_RANGE[0]} and {TEMPERATURE_RANGE[1]}, got {temperature!r}")
    n = 1 if method == "greedy" else min(n, beam) if method == "beam" else n
    return DecodeConfig(method=method, beam_size=beam, n_best=n, max_len=length, temperature=temp,
                        seed=None if seed_value < 0 else seed_value)


def captions_json(captions: Sequence[Caption]) -> list[dict[str, Any]]:
    """The API's answer for one image: best first."""
    return [{"caption": c.text, "score": round(c.score, 4), "logprob": round(c.logprob, 4)} for c in captions]


class _Job:
    """One request's images waiting for the model."""

    def __init__(self, images: list[Image.Image], cfg: DecodeConfig):
        self.images, self.cfg = images, cfg
        self.done = False
        self.result: list[list[Caption]] | None = None
        self.error: BaseException | None = None

    def key(self) -> tuple:
        """Jobs with equal keys may share one model call. Seeded sampling never shares one: the random draws
        depend on the batch, and a seed must give the same captions as a request made alone."""
        return (astuple(self.cfg), id(self) if self.cfg.method == "sample" and self.cfg.seed is not None else 0)


class MicroBatcher:
    """Runs the requests that arrive while the model is busy as one model call, one call at a time.

    Why: on CPU, beam search over several images costs little more than over one (measured with the lite0 model:
    83 ms per image alone, 16 ms per image in a batch of 8), so under load one batch serves everyone sooner. No
    thread of its own: whichever waiting request finds the model free runs everything pending, oldest first.
    """

    def __init__(self, captioner: Captioner, max_images: int = 8):
        self.captioner, self.max_images = captioner, max_images
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._busy = False

    def caption(self, images: list[Image.Image], cfg: DecodeConfig) -> list[list[Caption]]:
        job = _Job(images, cfg)
        with self._cond:
            self._pending.append(job)
        while True:
            with self._cond:
                while self._busy and not job.done:
                    self._cond.wait()
                if job.done:
                    if job.error is not None:
                        raise job.error
                    return job.result  # type: ignore[return-value]
                self._busy = True
                batch = self._take()
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _take(self) -> list[_Job]:
        """The oldest pending job, plus later ones that can share its model call, up to max_images images."""
        first = self._pending[0]
        batch, size = [first], len(first.images)
        for job in self._pending[1:]:
            if job.key() == first.key() and size + len(job.images) <= self.max_images:
                batch.append(job)
                size += len(job.images)
        self._pending = [j for j in self._pending if all(j is not b for b in batch)]
        return batch

    def _run(self, batch: list[_Job]) -> None:
        try:
            captions = self.captioner.caption([im for job in batch for im in job.images], batch[0].cfg)
        except BaseException as err:  # noqa: BLE001 - handed to every waiting request, re-raised there
            for job in batch:
                job.error, job.done = err, True
            return
        start = 0
        for job in batch:
            job.result, job.done = captions[start:start + len(job.images)], True
            start += len(job.images)


class CaptionService:
    """The demo's work without Gradio: load through the one loader, caption through the micro-batcher.

    Raises ImageError for bad images (decoding values are checked before, by decode_config); the Gradio handlers
    turn it into a message. Tests and fuzzers drive this class directly.
    """

    def __init__(self, captioner: Captioner, limits: DemoLimits = DemoLimits()):
        self.captioner, self.limits = captioner, limits
        self.batcher = MicroBatcher(captioner, limits.max_batch)

    def load(self, src: str | os.PathLike | bytes) -> Image.Image:
        return load_image(src, max_pixels=self.limits.max_pixels, max_bytes=self.limits.max_bytes)

    def caption_images(self, images: Sequence[Image.Image], cfg: DecodeConfig) -> list[list[Caption]]:
        """Already-loaded RGB images -> n-best captions each, in one model call (shared with concurrent requests)."""
        return self.batcher.caption(list(images), cfg) if images else []

    def caption_file(self, src: str | os.PathLike | bytes, cfg: DecodeConfig) -> list[dict[str, Any]]:
        return captions_json(self.caption_images([self.load(src)], cfg)[0])

    def model_info(self) -> dict[str, Any]:
        """Captioner.info() without the server's folder layout."""
        info = dict(self.captioner.info())
        info["checkpoint"] = Path(str(info.get("checkpoint", ""))).name or "(in memory)"
        return info


# --------------------------------------------------------------------------- Gradio app


def _friendly(err: Exception, path: str | None) -> str:
    """Error text for a visitor: the upload's own file name instead of Gradio's temp path."""
    msg = str(err)
    return msg.replace(path, Path(path).name) if path else msg


def _md(text: str) -> str:
    """Escape user-controlled text (file names) for gr.Markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", html.escape(text, quote=False))


def _model_markdown(info: dict[str, Any]) -> str:
    name = str(info.get("checkpoint", "?")).replace("`", "'")
    return (f"**Model:** `{name}` · encoder `{info.get('encoder', '?')}` · "
            f"{info.get('vocab_size', '?')} words · LSTM {info.get('hidden_size', '?')}")


def _thumbnail(image: Image.Image, side: int = 384) -> Image.Image:
    """A small copy for the gallery (never a full-size copy first: uploads may be 40 MP)."""
    return ImageOps.contain(image, (side, side)) if max(image.size) > side else image.copy()


def _results_markdown(rows: list[tuple[str, list[Caption] | None, str | None]], note: str = "") -> str:
    """One section per image: its captions with scores, or the reason it was refused."""
    parts = []
    for name, captions, error in rows:
        if error is not None:
            parts.append(f"**{_md(name)}**: ⚠️ {_md(error)}")
        else:
            lines = "\n".join(f"{i}. {c.text} *(score {c.score:.2f})*" for i, c in enumerate(captions, 1))
            parts.append(f"**{_md(name)}**\n\n{lines}")
    if note:
        parts.append(f"*{_md(note)}*")
    return "\n\n".join(parts) if parts else "Upload one or more photos (or click an example) to caption them."


def _guarded(fn: Callable) -> Callable:
    """Every failure reaches the visitor as one clear line (gr.Error); unexpected ones are logged with their traceback."""

    @functools.wraps(fn)  # keeps the signature: Gradio names the API parameters after it
    def wrapper(*args, **kwargs):
        import gradio as gr

        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageError, RequestError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception:  # noqa: BLE001 - a bug or an OOM must not show a traceback or kill the app
            log.exception("demo request failed")
            raise gr.Error("internal error while captioning (logged on the server); please try again", print_exception=False) from None

    return wrapper


class DemoHandlers:
    """The app's event handlers, apart from the layout so that tests can call them without a browser.

    Each returns what its Gradio outputs show, or raises gr.Error with a message meant for the visitor.
    """

    def __init__(self, service: CaptionService, examples: Sequence[Path] = ()):
        self.service, self.examples = service, [Path(p) for p in examples]
        self.info = service.model_info()

    def _run(self, named: list[tuple[str, str]], cfg: DecodeConfig, note: str = "") -> tuple[list, str]:
        """Load every file (bad ones become messages), caption the good ones in one batch."""
        rows: list[tuple[str, list[Caption] | None, str | None]] = []
        good: list[tuple[int, Image.Image]] = []
        for name, path in named:
            try:
                good.append((len(rows), self.service.load(path)))
                rows.append((name, [], None))
            except ImageError as err:
                rows.append((name, None, _friendly(err, path)))
        if good:
            for (i, _), caps in zip(good, self.service.caption_images([im for _, im in good], cfg)):
                rows[i] = (rows[i][0], caps, None)
        gallery = [(_thumbnail(im), rows[i][1][0].text if rows[i][1] else "") for i, im in good]
        return gallery, _results_markdown(rows, note)

    @_guarded
    def caption_uploads(self, files: list[str] | None, method: str, beam_size: float, n_best: float,
                        temperature: float, max_len: float, seed: float) -> tuple[list, str]:
        """UI: every uploaded file -> (gallery of thumbnails with their best caption, n-best list as Markdown)."""
        cfg = decode_config(method, beam_size, n_best, temperature, max_len, seed)
        files = [str(f) for f in files or []]
        limit, note = self.service.limits.max_images, ""
        if len(files) > limit:
            note = f"{len(files) - limit} more file(s) skipped: at most {limit} images per request"
            files = files[:limit]
        return self._run([(Path(f).name, f) for f in files], cfg, note)

    @_guarded
    def caption_example(self, index: int, method: str, beam_size: float, n_best: float, temperature: float,
                        max_len: float, seed: float) -> tuple[list, str]:
        """UI: the shipped example photo number ``index``."""
        cfg = decode_config(method, beam_size, n_best, temperature, max_len, seed)
        if not isinstance(index, int) or not 0 <= index < len(self.examples):
            raise RequestError(f"no example number {index!r}")
        return self._run([(self.examples[index].name, str(self.examples[index]))], cfg)

    @_guarded
    def caption(self, image: str, method: str = "beam", beam_size: float = 3, n_best: float = 3,
                temperature: float = 1.0, max_len: float = 20, seed: float = -1) -> list[dict[str, Any]]:
        """Caption one image -> [{caption, score, logprob}], best first (score: log-probability after the length penalty)."""
        if not image:
            raise RequestError("no image given")
        cfg = decode_config(method, beam_size, n_best, temperature, max_len, seed)
        try:
            return self.service.caption_file(str(image), cfg)
        except ImageError as err:
            raise ImageError(_friendly(err, str(image))) from None

    def model_info(self) -> dict[str, Any]:
        """Which model is loaded (Captioner.info(), checkpoint by file name)."""
        return self.info


def offline_theme() -> "gr.themes.Base":
    """Gradio's default look with system fonts: nothing is fetched from Google Fonts."""
    import gradio as gr

    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))


def build_app(captioner: Captioner, limits: DemoLimits = DemoLimits(), examples: Sequence[Path] | None = None) -> "gr.Blocks":
    """The demo as a gr.Blocks with its queue configured (not launched). ``examples`` default: the shipped photos."""
    import gradio as gr

    if examples is None:
        from .assets import example_images

        examples = example_images()
    handlers = DemoHandlers(CaptionService(captioner, limits), examples)
    default = DecodeConfig(method="beam", beam_size=3, n_best=3)

    def on_example(method, beam_size, n_best, temperature, max_len, seed, evt: gr.SelectData):
        return handlers.caption_example(evt.index, method, beam_size, n_best, temperature, max_len, seed)

    with gr.Blocks(title="captioner demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("# captioner\nDrop one or more photos: each gets its best captions, best first, with their scores "
                    "(the model's log-probability: closer to 0 is more confident).")
        gr.Markdown(_model_markdown(handlers.info), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(file_count="multiple", label="Photos (JPEG, PNG, WebP, GIF, BMP, TIFF)", elem_id="uploads")
                run_btn = gr.Button("Caption", variant="primary", elem_id="caption-btn")
                with gr.Accordion("Decoding options", open=False):
                    method = gr.Radio(list(METHODS), value=default.method, label="Method",
                                      info="beam: best captions found; greedy: one fast caption; sample: random draws")
                    beam = gr.Slider(*BEAM_RANGE, value=default.beam_size, step=1, label="Beam size")
                    nbest = gr.Slider(*NBEST_RANGE, value=default.n_best, step=1, label="Captions per image",
                                      info="at most the beam size; 1 for greedy")
                    temperature = gr.Slider(*TEMPERATURE_RANGE, value=default.temperature, step=0.05, label="Temperature",
                                            info="sampling only: higher = more varied")
                    max_len = gr.Slider(*MAX_LEN_RANGE, value=default.max_len, step=1, label="Max words")
                    seed = gr.Number(value=-1, precision=0, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1],
                                     label="Seed", info="sampling only; -1 = random")
                if handlers.examples:
                    example_gallery = gr.Gallery([(_thumbnail(handlers.service.load(p), 256), p.stem) for p in handlers.examples],
                                                 label="Examples (click one)", columns=3, height="auto",
                                                 allow_preview=False, interactive=False, elem_id="examples")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Photos and best caption", columns=3, height="auto", fit_columns=False,
                                     interactive=False, elem_id="results-gallery")
                results = gr.Markdown(_results_markdown([]), elem_id="captions")
        controls = [method, beam, nbest, temperature, max_len, seed]
        ui = dict(outputs=[gallery, results], concurrency_id="model", api_visibility="private")
        files.upload(handlers.caption_uploads, [files, *controls], **ui)
        run_btn.click(handlers.caption_uploads, [files, *controls], **ui)
        if handlers.examples:
            example_gallery.select(on_example, controls, **ui)

        # API-only endpoints. Hidden components, not gr.api(): they bring Gradio's checks that an input file
        # really was uploaded (never a path on the server) and that values are in range.
        with gr.Column(visible=False):
            api_image = gr.File(label="image", type="filepath")
            api_out, info_out = gr.JSON(label="captions"), gr.JSON(label="model")
            api_btn, info_btn = gr.Button(), gr.Button()
        api_btn.click(handlers.caption, [api_image, *controls], api_out, api_name="caption", concurrency_id="model")
        info_btn.click(handlers.model_info, None, info_out, api_name="model_info", queue=False)
    app.queue(default_concurrency_limit=limits.concurrency, max_size=limits.max_queue)
    return app


def launch(app: "gr.Blocks", limits: DemoLimits = DemoLimits(), host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT,
           prevent_thread_lock: bool = False, quiet: bool = False) -> str:
    """Serve ``app`` (built with the same ``limits``) on host:port; returns the local URL."""
    app.launch(server_name=host, server_port=port, max_file_size=limits.max_bytes, theme=offline_theme(),
               prevent_thread_lock=prevent_thread_lock, quiet=quiet, ssr_mode=False, mcp_server=False,
               show_error=False, footer_links=["api"], pwa=False)
    return app.local_url


# --------------------------------------------------------------------------- CLI: captioner demo


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("captioner demo", add_help=add_help, description="Serve the Gradio captioning demo.")
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    limits = DemoLimits()
    p.add_argument("--max-file-mb", type=float, default=limits.max_file_mb, help="upload size cap in MiB")
    p.add_argument("--max-pixels", type=int, default=limits.max_pixels, help="largest image accepted (width x height)")
    p.add_argument("--concurrency", type=int, default=limits.concurrency,
                   help="requests handled at once (1 = no batching of concurrent requests)")
    p.add_argument("--max-batch", type=int, default=limits.max_batch, help="images per model call")
    p.add_argument("--max-queue", type=int, default=limits.max_queue, help="requests allowed to wait")
    return p


def warm_up(url: str) -> float:
    """One real request through the running server; returns its milliseconds.

    The first event pays one-time costs (model allocations, modules Gradio imports lazily on its first event:
    measured ~1 s), which would otherwise land on the first visitor. It also proves the server answers.
    """
    import tempfile
    import time

    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm-up.png"
        Image.new("RGB", (640, 480), (90, 120, 160)).save(path)
        client = Client(url, verbose=False)
        start = time.perf_counter()
        client.predict(handle_file(path), api_name="/caption")
        return (time.perf_counter() - start) * 1000


def main(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        raise SystemExit("captioner demo needs Gradio: pip install 'captioner[demo]'") from None
    import torch

    from .inference import load_captioner

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        limits = DemoLimits(max_file_mb=args.max_file_mb, max_pixels=args.max_pixels,
                            concurrency=args.concurrency, max_batch=args.max_batch, max_queue=args.max_queue)
    except ValueError as err:
        raise SystemExit(f"captioner demo: error: {err}") from None
    captioner = load_captioner(args.checkpoint, args.device)
    log.info("model: %s", captioner.info())
    app = build_app(captioner, limits)
    url = launch(app, limits, host=args.host, port=args.port, prevent_thread_lock=True)
    log.info("warm-up request answered in %.0f ms; serving on %s (Ctrl+C to stop)", warm_up(url), url)
    try:
        app.block_thread()
    finally:
        app.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    main(get_args_parser().parse_args())
