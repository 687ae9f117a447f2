"""``deeplab serve``: load the models, decide who may use them, and run uvicorn.

Binding beyond loopback without a token refuses to start: anyone who reached the port
would use the machine's CPU or GPU (``--no-auth`` says a proxy in front authenticates).
Models are warmed up before the first request (the first call of a PyTorch network times
its memory layouts; under load that would race). ``workers > 1`` runs that many uvicorn
worker processes, each with its own models, queue and threads, and the Prometheus
figures summed across them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplab.inference import Segmenter
from deeplab.predict import segmenter_for
from deeplab.serve.app import create_app
from deeplab.serve.guard import Access, Limits, is_loopback

log = logging.getLogger(__name__)
SETTINGS_ENV = "DEEPLAB_SERVE_SETTINGS"  # how the parent hands its settings to workers


def model_names(models: list[str], weights: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """name -> (zoo entry, weight file): ``--model NAME`` is named after the entry,
    ``--weights [NAME=]PATH`` after NAME or the file's stem; two of one name are an error."""
    named: dict[str, tuple[str | None, str | None]] = {}
    choices = [(m, (m, None)) for m in models]
    for w in weights:
        name, sep, path = w.partition("=")
        if not sep or not path or Path(w).exists():  # runs/lr=0.01/best.pt is a path
            name, path = Path(w).stem, w
        choices.append((name, (None, path)))
    if not choices:
        choices = [("default", (None, None))]
    for name, source in choices:
        if name in named:
            raise ValueError(f"two models are named {name!r} ({named[name][0] or named[name][1]}"
                             f" and {source[0] or source[1]}); name one with --weights "
                             "NAME=PATH")  # fmt: skip
        named[name] = source
    return named


def check_access(host: str, token: str | None, no_auth: bool, allowed_hosts: list[str]) -> Access:
    """The ``Access`` for a bind address, or a ``ValueError`` saying how to open it safely."""
    if token is not None and len(token) < 16:
        raise ValueError("--token is too short to guess-proof; use 16 characters or more, "
                         "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    if not is_loopback(host) and token is None and not no_auth:
        raise ValueError(f"--host {host} opens the server beyond this machine without a token: "
                         "anyone who reaches the port could use it. Set --token (or "
                         "DEEPLAB_SERVE_TOKEN), or pass --no-auth if a proxy in front "
                         "authenticates")  # fmt: skip
    return Access.for_bind(host, token, allowed_hosts)


def load(named: dict[str, tuple[str | None, str | None]], *, device: str | None, runtime: str,
         max_side: int | None) -> tuple[dict[str, Segmenter], dict[str, float]]:  # fmt: skip
    """The segmenters, each warmed up on a photo-sized image, and their load times."""
    segmenters, seconds = {}, {}
    for name, (entry, path) in named.items():
        start = time.perf_counter()
        seg = segmenter_for(model=entry, weights=path, device=device, runtime=runtime)
        seg.max_side = max_side
        seg.predict(np.full((360, 480, 3), 127, np.uint8))  # layout choice, kernels, caches
        segmenters[name], seconds[name] = seg, time.perf_counter() - start
    return segmenters, seconds


def serve(*, models: list[str], weights: list[str], host: str, port: int, access: Access,
          limits: Limits, workers: int = 1, threads: int | None = None, device: str | None,
          runtime: str) -> None:  # fmt: skip
    """Run the server until stopped (Ctrl-C, SIGTERM: requests in flight get 10 s)."""
    import uvicorn

    named = model_names(models, weights)
    if workers < 1:
        raise ValueError(f"--workers {workers}: give 1 or more")
    settings = {"named": named, "device": device, "runtime": runtime, "threads": threads,
                "limits": asdict(limits), "token": access.token,
                "hosts": sorted(access.hosts) if access.hosts is not None else None}  # fmt: skip
    common = dict(host=host, port=port, log_level="warning", access_log=False,
                  timeout_keep_alive=5, timeout_graceful_shutdown=10,
                  ws_max_size=limits.max_bytes + 1024)  # fmt: skip
    lock = "token required" if access.token else "no token"
    if workers == 1:
        app = build_app(settings)
        print(f"serving on http://{host}:{port}/ ({lock})", flush=True)
        uvicorn.run(app, **common)
        return
    # Each worker process builds its own app from the settings; metrics are summed.
    metrics_dir = tempfile.mkdtemp(prefix="deeplab-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    print(f"serving on http://{host}:{port}/ with {workers} worker processes ({lock})",
          flush=True)  # fmt: skip
    uvicorn.run("deeplab.serve.run:app_from_env", factory=True, workers=workers, **common)


def build_app(settings: dict[str, Any]):
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    named = {k: tuple(v) for k, v in settings["named"].items()}
    limits = Limits(**settings["limits"])
    segmenters, seconds = load(named, device=settings["device"], runtime=settings["runtime"],
                               max_side=limits.max_side)  # fmt: skip
    for name, seg in segmenters.items():
        log.info("model %s: %s classes, run by %s, ready in %.1f s", name, seg.num_classes,
                 seg.runtime, seconds[name])  # fmt: skip
    hosts = settings["hosts"]
    access = Access(settings["token"], frozenset(hosts) if hosts is not None else None)
    return create_app(segmenters, limits=limits, access=access, load_seconds=seconds,
                      sources=named)


def app_from_env():
    """The app of one worker process (uvicorn's factory under ``--workers N``)."""
    logger = logging.getLogger("deeplab")
    if not logger.handlers:  # a fresh process: print the library's lines as the CLI does
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"[worker {os.getpid()}] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return build_app(json.loads(os.environ[SETTINGS_ENV]))
