"""Load test of `deeplab serve` on loopback: requests/s and latency by clients and workers.

    pip install -e ".[test]"
    DEEPLAB_WEIGHTS_DIR=../shared/weights python benchmarks/bench_serve.py \
        --photos ../shared/data/camvid/val

Starts `deeplab serve` in its own process for each ``--workers`` count (default VOC model,
``--concurrency`` images at once per worker, ``--threads`` network threads per worker, by
default cores / workers), then for each client count runs that many threads, each posting
photos back to back to ``POST /v1/segment`` (JSON answer) for ``--seconds``. Reports
requests/s, p50 and p95 latency and every status code seen: below the server's limit
(concurrency + queue) every request must succeed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from deeplab.system import cpu_name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: argparse.Namespace, port: int, workers: int) -> subprocess.Popen:
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "deeplab.cli", "serve", "--port", str(port),
           "--concurrency", str(args.concurrency), "--queue", str(args.queue),
           "--workers", str(workers), "--threads", str(threads)]  # fmt: skip
    if args.weights:
        cmd += ["--weights", args.weights]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("deeplab serve did not start")


def load(url: str, photos: list[bytes], clients: int, seconds: float):
    latencies: list[float] = []
    codes: Counter = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            i = k
            while time.monotonic() < stop:
                start = time.perf_counter()
                r = http.post(f"{url}/v1/segment",
                              files={"image": ("p.png", photos[i % len(photos)], "image/png")})
                elapsed = time.perf_counter() - start
                with lock:
                    codes[r.status_code] += 1
                    if r.status_code == 200:
                        latencies.append(elapsed)
                i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, codes, time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, default=Path("../shared/data/camvid/val"))
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--queue", type=int, default=32)
    p.add_argument("--threads", type=int, help="network threads per worker (default: cores / "
                   "workers)")
    p.add_argument("--workers", type=int, nargs="+", default=[1], help="worker processes")
    p.add_argument("--weights", help="serve this file instead of the default VOC model")
    args = p.parse_args()
    photos = [f.read_bytes() for f in sorted(args.photos.glob("*.png"))[: args.count]]
    print(f"deeplab serve ({args.weights or 'default VOC model'}), concurrency "
          f"{args.concurrency} and queue {args.queue} per worker; {cpu_name()}, "
          f"{os.cpu_count()} cores; {len(photos)} photos of {args.photos}, {args.seconds:g} s "
          f"per row")  # fmt: skip
    print("| workers x threads | clients | requests/s | p50 ms | p95 ms | status codes |")
    print("|---|---|---|---|---|---|")
    for workers in args.workers:
        port = free_port()
        server = start(args, port, workers)
        url = f"http://127.0.0.1:{port}"
        threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
        try:
            load(url, photos, 2 * workers, 3)  # warm-up, every worker
            for clients in args.clients:
                latencies, codes, elapsed = load(url, photos, clients, args.seconds)
                q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else \
                    latencies * 19  # fmt: skip
                print(f"| {workers} x {threads} | {clients} | {len(latencies) / elapsed:.2f} | "
                      f"{1000 * statistics.median(latencies):.0f} | {1000 * q[18]:.0f} | "
                      f"{dict(sorted(codes.items()))} |", flush=True)
        finally:
            server.terminate()
            server.wait(20)


if __name__ == "__main__":
    main()
