"""Memory of one request to `deeplab serve`, by output and photo size: what bounds a
server's memory, and how the --max-megapixels default was chosen.

    DEEPLAB_WEIGHTS_DIR=../shared/weights python benchmarks/bench_serve_memory.py \
        --megapixels 12 24 40

For each photo size (a smooth synthetic JPEG with several regions, at 4:3) and each output
(json, json with polygons, labels, overlay, portrait), a fresh `deeplab serve` (default
VOC model) answers one request after a warm-up on a small photo; the table gives its
resident memory before the request and at its peak (VmHWM), and the peak's growth, the
memory one request in flight costs. Concurrency N costs up to N times that.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from deeplab.system import cpu_name

OUTPUTS = (("json", {}), ("json + polygons", {"polygons": "true"}),
           ("labels", {"output": "labels"}), ("overlay", {"output": "overlay"}),
           ("portrait", {"output": "portrait", "portrait": "person"}))  # fmt: skip


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def photo(megapixels: float) -> bytes:
    w = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    h = int(w * 3 / 4)
    small = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    big = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    big.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megapixels", type=float, nargs="+", default=[12, 24, 40])
    args = p.parse_args()
    print(f"deeplab serve, default VOC model; {cpu_name()}; MB of resident memory")
    print("| photo | output | before | peak | one request |")
    print("|---|---|---|---|---|")
    small = photo(0.3)
    for mp in args.megapixels:
        data = photo(mp)
        for name, fields in OUTPUTS:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "deeplab.cli", "serve", "--port", str(port),
                   "--max-upload-mb", "100", "--max-megapixels", str(mp + 1)]  # fmt: skip
            server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}/v1/segment"
            try:
                while True:
                    try:
                        if httpx.post(url, files={"image": ("s.jpg", small)}, data=fields,
                                      timeout=60).status_code == 200:  # fmt: skip
                            break
                    except httpx.HTTPError:
                        time.sleep(0.3)
                before = status_mb(server.pid, "VmRSS")
                r = httpx.post(url, files={"image": ("big.jpg", data)}, data=fields, timeout=300)
                peak = status_mb(server.pid, "VmHWM")
                print(f"| {mp:g} MP | {name} ({r.status_code}) | {before:.0f} | {peak:.0f} | "
                      f"{peak - before:.0f} |", flush=True)
            finally:
                server.terminate()
                server.wait(20)


if __name__ == "__main__":
    main()
