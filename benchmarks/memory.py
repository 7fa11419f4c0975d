"""Peak memory (RSS) of `captioner caption IMAGE` and of the demo server while it answers caption requests.

    python benchmarks/memory.py                                  # bundled model
    python benchmarks/memory.py --checkpoint runs/<run>/best --requests 10
    python benchmarks/memory.py --no-demo                        # only `captioner caption`

1. `captioner caption IMAGE` runs as a child process (the installed console script of this Python, so exactly what
   a user types); its peak RSS is the ru_maxrss that os.wait4 reports for it. The image is a 640x480 JPEG made from
   a bundled photo (or --image). Wall time of the whole command (cold start) is printed too.
2. `captioner demo --port P` on 127.0.0.1 (a free port unless --port) as a child process: once it serves (polled
   over HTTP, at most --start-timeout seconds), --requests caption requests go to its documented /caption API with
   gradio_client, then its peak RSS is read from /proc/PID/status (VmHWM) and it is stopped (SIGINT, then SIGTERM,
   then SIGKILL after a grace period). Bounded: every wait has a timeout and the server is always stopped.

Target (issue, 2-core CPU): peak RSS of `captioner caption` <= 600 MB (MB = 10^6 bytes). The demo has no target.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGET_CAPTION_MB = 600.0


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("memory", add_help=add_help, description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--image", default=None, help="photo to resize to 640x480 (default: a bundled example photo)")
    p.add_argument("--requests", type=int, default=5, help="caption requests sent to the demo")
    p.add_argument("--port", type=int, default=0, help="demo port (default: a free one)")
    p.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for the demo to serve")
    p.add_argument("--command-timeout", type=float, default=300.0, help="seconds allowed to `captioner caption`")
    p.add_argument("--no-demo", action="store_true", help="skip the demo measurement")
    return p


def captioner_command() -> list[str]:
    """The `captioner` console script installed for this Python (not a pyenv shim in front of it)."""
    script = Path(sys.executable).parent / "captioner"
    if script.is_file():
        return [str(script)]
    found = shutil.which("captioner")
    return [found] if found else [sys.executable, "-m", "captioner"]


def run_with_rusage(cmd: list[str], timeout: float, env: dict[str, str]) -> tuple[int, float, float, str, dict[str, float]]:
    """Run cmd; return (exit status, peak RSS in MB from wait4's ru_maxrss, wall seconds, stdout+stderr, samples).

    ru_maxrss covers the whole life of the process, interpreter shutdown included (with the CUDA build of torch,
    C-level exit alone adds ~130 MB of library pages). `samples`: the largest VmRSS/RssAnon/RssFile seen by polling
    /proc/PID/status every 10 ms while it runs, and the last VmHWM read, which splits the peak into anonymous memory
    (heap, weights, activations) and file-backed pages (shared libraries).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    samples: dict[str, float] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                for key, mb in proc_status_mb(proc.pid).items():
                    samples[key] = max(samples.get(key, 0.0), mb) if key != "VmHWM" else mb
            except (OSError, ValueError, IndexError):
                pass
            done.wait(0.01)

    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    try:
        out = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        done.set()
        killer.cancel()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    return proc.returncode, usage.ru_maxrss * 1024 / 1e6, time.perf_counter() - t0, out, samples  # ru_maxrss: KiB


def proc_status_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024 / 1e6  # kB
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> int:
    """SIGINT (the demo's Ctrl+C path), then SIGTERM, then SIGKILL; returns the exit status."""
    for sig, grace in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait(5)


def measure_demo(args: argparse.Namespace, image: Path, env: dict[str, str], log_path: Path) -> dict:
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [*captioner_command(), "demo", "--port", str(port), "--host", "127.0.0.1"]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    print(f"  demo: {' '.join(cmd)}", flush=True)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while True:  # wait until it serves HTTP
                if proc.poll() is not None:
                    raise RuntimeError(f"the demo exited with status {proc.returncode} before serving:\n"
                                       + log_path.read_text(errors="replace")[-3000:])
                if time.perf_counter() - t0 > args.start_timeout:
                    raise RuntimeError(f"the demo did not serve {url} within {args.start_timeout:.0f} s:\n"
                                       + log_path.read_text(errors="replace")[-3000:])
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            ready_s = time.perf_counter() - t0
            idle = proc_status_mb(proc.pid)
            print(f"  demo serving after {ready_s:.1f} s; RSS {idle['VmRSS']:.0f} MB, peak so far {idle['VmHWM']:.0f} MB", flush=True)

            from gradio_client import Client, handle_file

            client = Client(url, verbose=False)
            latencies, first = [], None
            for _ in range(args.requests):
                t1 = time.perf_counter()
                result = client.predict(handle_file(str(image)), api_name="/caption")
                latencies.append(time.perf_counter() - t1)
                first = first or result
            mem = proc_status_mb(proc.pid)
            print(f"  demo answered {args.requests} /caption requests (p50 {_common.percentile(latencies, 50) * 1000:.0f} ms "
                  f"incl. upload; first answer {str(first)[:100]}...)")
            print(f"  demo peak RSS (VmHWM): {mem['VmHWM']:.0f} MB   (RSS now {mem['VmRSS']:.0f} MB: RssAnon "
                  f"{mem['RssAnon']:.0f} + RssFile {mem['RssFile']:.0f})", flush=True)
        finally:
            status = stop(proc)
    return {"demo_ready_seconds": round(ready_s, 2), "demo_rss_idle_mb": round(idle["VmRSS"], 1),
            "demo_peak_rss_mb": round(mem["VmHWM"], 1), "demo_rss_after_mb": round(mem["VmRSS"], 1),
            "demo_rss_anon_after_mb": round(mem["RssAnon"], 1), "demo_rss_file_after_mb": round(mem["RssFile"], 1),
            "demo_requests": args.requests, "demo_request_p50_ms": round(_common.percentile(latencies, 50) * 1000, 1),
            "demo_exit_status": status}


def main(args: argparse.Namespace) -> int:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "photo_640x480.jpg"
        image.write_bytes(_common.photo_jpeg_bytes(args.image))
        print(f"memory: 640x480 JPEG from {args.image or _common.DEFAULT_PHOTO.name}; MB = 10^6 bytes")

        cmd = [*captioner_command(), "caption", str(image)]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        print(f"  caption: {' '.join(cmd)}", flush=True)
        rc, peak_mb, wall_s, out, seen = run_with_rusage(cmd, args.command_timeout, env)
        print(f"  exit {rc} in {wall_s:.2f} s (cold start, incl. imports and model load); output: {out.strip()[-200:]!r}")
        if rc != 0:
            print(out[-3000:], file=sys.stderr)
            raise SystemExit(f"`captioner caption` failed with exit status {rc}")
        print(f"  caption peak RSS (ru_maxrss, whole process life incl. shutdown): {peak_mb:.0f} MB", flush=True)
        print(f"  polled while running: VmHWM {seen.get('VmHWM', 0):.0f} MB (last read), largest RssAnon "
              f"{seen.get('RssAnon', 0):.0f} MB (heap, weights, tensors) + RssFile {seen.get('RssFile', 0):.0f} MB "
              f"(shared libraries)", flush=True)
        results.update(caption_peak_rss_mb=round(peak_mb, 1), caption_seconds=round(wall_s, 2), caption_exit_status=rc,
                       caption_polled_vmhwm_mb=round(seen.get("VmHWM", 0), 1),
                       caption_polled_max_rss_anon_mb=round(seen.get("RssAnon", 0), 1),
                       caption_polled_max_rss_file_mb=round(seen.get("RssFile", 0), 1),
                       caption_output=out.strip()[-200:])
        checks = [_common.check("peak RSS of `captioner caption IMAGE`", peak_mb, "<=", TARGET_CAPTION_MB, " MB")]

        if not args.no_demo:
            results.update(measure_demo(args, image, env, tmp / "demo.log"))
    _common.print_summary("memory", args, results, checks)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
