"""What the server does, for operators: Prometheus metrics (the official client library).

``/metrics`` exposes requests by path and status, request latency, the upload queue's
depth, images segmented per model and each model's load time. Under ``--workers N``
every worker process writes its own figures to ``PROMETHEUS_MULTIPROC_DIR`` (set by
``deeplab serve``) and a scrape of any worker sums them, as the client library's
multiprocess mode prescribes.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Label values come from this fixed set, so that a scan of random URLs cannot grow the
# metrics without bound.
KNOWN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v1/models", "/v1/segment",
                         "/v1/live", "/openapi.json"})  # fmt: skip
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The server's metrics, in a registry of their own (several apps in one process, as in
    the tests, do not collide); in multiprocess mode in the shared directory."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # Multiprocess mode keeps values in files, not in a registry.
        registry = None if self.multiprocess else CollectorRegistry()
        self.registry = registry
        self.requests = Counter("deeplab_requests", "HTTP requests by path and status",
                                ["path", "status"], registry=registry)  # fmt: skip
        self.latency = Histogram("deeplab_request_seconds", "time from request to response",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.queue_depth = Gauge("deeplab_queue_depth", "uploads being read, waiting or "
                                 "segmented", registry=registry,
                                 multiprocess_mode="livesum")  # fmt: skip
        self.images = Counter("deeplab_images_segmented", "images segmented, by model",
                              ["model"], registry=registry)  # fmt: skip
        self.load_seconds = Gauge("deeplab_model_load_seconds", "time to load and warm up "
                                  "a model", ["model"], registry=registry,
                                  multiprocess_mode="max")  # fmt: skip

    def observe(self, path: str, status: int, seconds: float) -> None:
        path = path if path in KNOWN_PATHS or path.startswith("/static/") else "other"
        path = "/static" if path.startswith("/static/") else path
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
