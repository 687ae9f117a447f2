"""`deeplab serve` for the tests: a toy segmenter for in-process apps, and the real command
started as a user would, on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import torch
import torch.nn as nn

from deeplab.inference import Segmenter


class Brightness(nn.Module):
    """Class 0 where the image is dark, 1 where it is bright, 2 in between."""

    num_classes = 3

    def forward(self, x):
        v = x.mean(1, keepdim=True)
        return torch.cat([-v, v, -(v.abs())], 1) * 10


def toy_segmenter(delay: float = 0.0) -> Segmenter:
    """A Segmenter of ``Brightness`` (night, day, dusk), ``delay`` seconds per image."""
    seg = Segmenter(Brightness(), mean=(127.5,) * 3, std=(127.5,) * 3,
                    class_names=("night", "day", "dusk"))  # fmt: skip
    if delay:
        predict = seg.predict

        def slow(image, **kwargs):
            time.sleep(delay)
            return predict(image, **kwargs)

        seg.predict = slow
    return seg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_command(args: list[str], env: dict[str, str] | None = None,
                  timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:  # fmt: skip
    """`deeplab serve ARGS --port P` in its own process until /healthz answers; yields its
    URL (no trailing slash) and the process, stopped at the end."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "deeplab.cli", "serve", *args, "--port", str(port)]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"deeplab serve did not start: {proc.stdout.read()}")
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
