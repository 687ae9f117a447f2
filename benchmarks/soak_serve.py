"""Soak test of `deeplab serve` on loopback: mixed good and bad requests at saturation.

    DEEPLAB_WEIGHTS_DIR=../shared/weights python benchmarks/soak_serve.py --minutes 10

Starts `deeplab serve` (default VOC model, concurrency 2, queue 8, 20 MB uploads) and runs
``--clients`` threads (more than concurrency + queue, so the server is saturated and some
requests get 503) for ``--minutes``, each drawing its next request from a fixed mix with
a seeded generator: photos as JSON or as overlay/portrait pictures (CamVid frames and the
shipped photos), and the refusals (not an image, a TGA, a 25 MB body, a decompression
bomb, a malformed form, an unknown model, a chunked upload over the limit). Reports
requests by outcome and cause, p50/p95 latency of the answered photos, and the server's
resident memory after warm-up, at the end, and its peak (VmHWM): memory must not grow
beyond ``--rss-bound`` MB over the run.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

from deeplab.data.images import example_photos
from deeplab.system import cpu_name

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def requests_mix(photos: list[bytes]) -> list[tuple[str, float]]:
    """(kind, weight): what a client sends, good mostly."""
    return [("photo", 0.55), ("overlay", 0.10), ("portrait", 0.05), ("not an image", 0.05),
            ("tga", 0.05), ("too big", 0.04), ("bomb", 0.04), ("malformed", 0.04),
            ("unknown model", 0.04), ("chunked too big", 0.04)]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--clients", type=int, default=14)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--camvid", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    p.add_argument("--rss-bound", type=float, default=150.0)
    args = p.parse_args()
    photos = [f.read_bytes() for f in sorted((args.camvid / "val").glob("*.png"))[:12]]
    photos += [f.read_bytes() for f in example_photos()]
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 40)).save(buffer, format="TGA")
    tga = buffer.getvalue()
    buffer = io.BytesIO()
    Image.new("L", (12_000, 6_000)).save(buffer, format="PNG")  # 72 megapixels, 70 KB
    bomb = buffer.getvalue()
    big = os.urandom(25 * 2**20)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "deeplab.cli", "serve", "--port", str(port),
                               "--concurrency", "2", "--queue", "8"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    for photo in photos[:4]:  # warm-up: every size the mix sends
        httpx.post(url + "/v1/segment", files={"image": ("p.png", photo)}, timeout=60)
    rss_start = rss_mb(server.pid)
    outcomes: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + 60 * args.minutes
    kinds, weights = zip(*requests_mix(photos), strict=True)

    def client(k: int) -> None:
        rng = random.Random(args.seed * 1000 + k)
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                kind = rng.choices(kinds, weights)[0]
                photo = photos[rng.randrange(len(photos))]
                started = time.perf_counter()
                try:
                    if kind == "chunked too big":
                        def chunks():
                            yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; " \
                                  b"filename=\"x.png\"\r\n\r\n"
                            for _ in range(40):
                                yield os.urandom(2**20)
                        r = http.post(url + "/v1/segment", content=chunks(), headers={
                            "content-type": "multipart/form-data; boundary=b"})  # fmt: skip
                    elif kind == "malformed":
                        r = http.post(url + "/v1/segment", content=b"--b\r\ngarbage",
                                      headers={"content-type": "multipart/form-data; "
                                               "boundary=zz"})  # fmt: skip
                    else:
                        data, fields = {"not an image": (b"hello", {}), "tga": (tga, {}),
                                        "too big": (big, {}), "bomb": (bomb, {}),
                                        "unknown model": (photo, {"model": "nope"}),
                                        "overlay": (photo, {"output": "overlay"}),
                                        "portrait": (photo, {"output": "portrait",
                                                             "portrait": "person"}),
                                        }.get(kind, (photo, {}))  # fmt: skip
                        r = http.post(url + "/v1/segment", files={"image": ("p.png", data)},
                                      data=fields)  # fmt: skip
                    status = r.status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    outcomes[(kind, status)] += 1
                    if status == 200 and kind in ("photo", "overlay", "portrait"):
                        latencies.append(elapsed)

    samples: list[tuple[float, float]] = []  # (minutes, RSS MB) every 5 s

    def watch() -> None:
        while time.monotonic() < stop:
            samples.append(((time.monotonic() - began) / 60, rss_mb(server.pid)))
            time.sleep(5)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    began = time.monotonic()
    for t in [*threads, threading.Thread(target=watch, daemon=True)]:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    rss_end, rss_peak = rss_mb(server.pid), rss_mb(server.pid, "VmHWM")
    alive = httpx.get(url + "/healthz", timeout=5).status_code == 200
    server.terminate()
    server.wait(20)

    total = sum(outcomes.values())
    print(f"deeplab serve, default VOC model, concurrency 2, queue 8; {args.clients} clients "
          f"for {elapsed / 60:.1f} min, seed {args.seed}; {cpu_name()}, {os.cpu_count()} cores")
    print("| request | status | count |")
    print("|---|---|---|")
    for (kind, status), n in sorted(outcomes.items(), key=lambda x: (x[0][0], str(x[0][1]))):
        print(f"| {kind} | {status} | {n} |")
    q = statistics.quantiles(latencies, n=20)
    served = sum(n for (k, s), n in outcomes.items() if s == 200)
    print(f"\n{total} requests, {served} answered 200 ({served / elapsed:.2f}/s); photos: p50 "
          f"{1000 * statistics.median(latencies):.0f} ms, p95 {1000 * q[18]:.0f} ms; 5xx: "
          f"{sum(n for (k, s), n in outcomes.items() if isinstance(s, int) and s >= 500)}")
    # Growth is judged from the end of the first tenth of the run: the allocator's arenas and
    # onnxruntime's buffers for every image size fill up first, then must stay flat.
    settled = next((mb for minute, mb in samples if minute >= args.minutes / 10), rss_start)
    print(f"server RSS: {rss_start:.0f} MB after warm-up, {settled:.0f} MB after a tenth of "
          f"the run, {rss_end:.0f} MB at the end (+{rss_end - settled:.0f} since, bound "
          f"{args.rss_bound:g}), peak {rss_peak:.0f} MB; /healthz after: "
          f"{'ok' if alive else 'FAILED'}")
    print("RSS by minute: " + ", ".join(f"{m:.0f}: {mb:.0f}" for m, mb in samples[::12]))
    if rss_end - settled > args.rss_bound or not alive:
        sys.exit(1)


if __name__ == "__main__":
    main()
