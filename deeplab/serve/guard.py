"""What happens to a request before the app sees it: ``Guard``, one ASGI middleware.

In order: the Host header against the names the server answers to (a page elsewhere
cannot reach a loopback server through DNS rebinding); the bearer token on the API
(``/v1/*``, ``/metrics``; the page, its files and the health probes are open); for an
upload, admission (no more than ``concurrency + queue`` uploads are read or wait, the
rest get 503 at once, before their bodies are read) and the byte limit, enforced as the
body arrives, chunked or not (413 at the limit; nothing is read past it); a body that
stalls gets 408. Every request ends with one access-log line and its metrics.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from deeplab.serve.observe import Metrics

access_log = logging.getLogger("deeplab.serve.access")

UPLOAD_PATHS = frozenset({"/v1/segment"})
ISOLATION = ((b"cross-origin-opener-policy", b"same-origin"),
             (b"cross-origin-embedder-policy", b"require-corp"),
             (b"cross-origin-resource-policy", b"same-origin"))  # fmt: skip
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/favicon.ico"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class Limits:
    """How much the server takes on, per request and at once."""

    concurrency: int = 2  # images segmented at the same time
    queue: int = 8  # uploads that may be read or wait for a slot; more get 503
    max_upload_mb: float = 20.0  # request body, chunked or not
    # Decoded image; above: 400. A 24-megapixel photo took at most 545 MB in flight (portrait
    # output, default VOC model; benchmarks/bench_serve_memory.py).
    max_pixels: int = 24_000_000
    max_side: int | None = 2049  # the longest side a network without a canvas sees
    deadline_s: float = 60.0  # queue + segmenting + encoding; then 504
    body_timeout_s: float = 30.0  # a body that stalls this long between chunks: 408

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.queue < 0:
            raise ValueError(f"concurrency {self.concurrency} must be >= 1 and queue "
                             f"{self.queue} >= 0 (--concurrency 1 segments one image at a "
                             "time)")  # fmt: skip
        if self.max_upload_mb <= 0 or self.max_pixels < 1 or self.deadline_s <= 0:
            raise ValueError("--max-upload-mb, --max-pixels and --deadline must be positive")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass
class Access:
    """Who may use the API: a bearer ``token`` (None: anyone) and the ``hosts`` the server
    answers to (None: any Host header)."""

    token: str | None = None
    hosts: frozenset[str] | None = None

    @staticmethod
    def for_bind(host: str, token: str | None, extra_hosts: Iterable[str] = ()) -> Access:
        """Loopback binds answer to loopback names only (and ``extra_hosts``); others to
        ``extra_hosts`` if given, else any name (the token is then the lock)."""
        extra = {h.strip().lower() for h in extra_hosts if h.strip()}
        if is_loopback(host):
            return Access(token, frozenset({*LOOPBACK_NAMES, *extra}))
        return Access(token, frozenset(extra) if extra else None)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


@dataclass
class Traffic:
    """The requests in the house: uploads admitted (read, waiting or segmenting)."""

    admitted: int = 0
    live: int = 0  # WebSocket connections of the live view's server path
    ready: bool = False  # models loaded and warmed up


class BodyTooLarge(Exception):
    pass


class BodyStalled(Exception):
    pass


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Guard:
    """The ASGI middleware described above; ``limits``, ``access``, ``traffic`` and
    ``metrics`` are shared with the app."""

    def __init__(self, app, *, limits: Limits, access: Access, traffic: Traffic,
                 metrics: Metrics) -> None:  # fmt: skip
        self.app, self.limits, self.access = app, limits, access
        self.traffic, self.metrics = traffic, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        sent = {"status": 0, "bytes": 0}

        async def tracked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                # Cross-origin isolation: onnxruntime-web's threads need SharedArrayBuffer.
                message = {**message, "headers": [*message.get("headers", []), *ISOLATION]}
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            elif message["type"] == "websocket.accept":
                sent["status"] = 101
            elif message["type"] == "websocket.close" and not sent["status"]:
                sent["status"] = 403
            await send(message)

        path = scope.get("path", "")
        upload = scope["type"] == "http" and path in UPLOAD_PATHS and scope["method"] == "POST"
        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                return await _refuse(scope, tracked, *refusal)
            if not upload:
                return await self.app(scope, receive, tracked)
            declared = _header(scope, b"content-length")
            if declared and declared.isdigit() and int(declared) > self.limits.max_bytes:
                return await _refuse(scope, tracked, 413, self._too_large(int(declared)))
            if self.traffic.admitted >= self.limits.concurrency + self.limits.queue:
                return await _refuse(scope, tracked, 503, "busy: too many images in the queue; "
                                     "try again shortly", {"retry-after": "1"})  # fmt: skip
            self.traffic.admitted += 1
            self.metrics.queue_depth.inc()
            try:
                await self.app(scope, self._limited(receive), tracked)
            finally:
                self.traffic.admitted -= 1
                self.metrics.queue_depth.dec()
        except BodyTooLarge:
            if not sent["status"]:
                await _refuse(scope, tracked, 413, self._too_large(None))
        except BodyStalled:
            if not sent["status"]:
                await _refuse(scope, tracked, 408, f"the upload stalled for "
                              f"{self.limits.body_timeout_s:g} s; send it again")  # fmt: skip
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe(path, sent["status"], seconds)
            client = (scope.get("client") or ("-", 0))[0]
            shown = repr(path)[1:-1]  # a decoded %0A must not start a forged log line
            access_log.info('%s "%s %s" %d %.1f ms %d B', client, scope.get("method", "WS"),
                            shown, sent["status"], 1000 * seconds, sent["bytes"])  # fmt: skip

    def _refusal(self, scope: Scope, path: str) -> tuple[int, str] | None:
        if self.access.hosts is not None:
            host = _host_name(_header(scope, b"host") or "")
            if host not in self.access.hosts:
                return 421, (f"this server does not answer to the host {host!r}; start it with "
                             f"--allowed-host {host} to allow that name")  # fmt: skip
        if self.access.token is None or path in OPEN_PATHS or path.startswith("/static/"):
            return None
        given = _bearer(scope)
        if given is None or not hmac.compare_digest(given.encode(), self.access.token.encode()):
            return 401, ("a token is needed: send the header 'Authorization: Bearer TOKEN' "
                         "(the server's --token or DEEPLAB_SERVE_TOKEN)")  # fmt: skip
        return None

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that counts the body as it arrives and stops at the limit."""
        total = 0

        async def limited() -> dict[str, Any]:
            nonlocal total
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
            except asyncio.TimeoutError:
                raise BodyStalled from None
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.limits.max_bytes:
                    raise BodyTooLarge
            return message

        return limited

    def _too_large(self, declared: int | None) -> str:
        size = f"an upload of {declared / 2**20:.1f} MB" if declared else "the upload"
        return (f"{size} is over the {self.limits.max_upload_mb:g} MB limit; send a smaller "
                "file (or start the server with a higher --max-upload-mb)")  # fmt: skip


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _bearer(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if scope["type"] == "websocket":  # browsers cannot set headers on a WebSocket
        # The page sends it form-encoded (URLSearchParams): '+' is a space, %2B a plus.
        query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
        return query.get("token", [None])[0]
    return None


async def _refuse(scope: Scope, send: Send, status: int, detail: str,
                  headers: dict[str, str] | None = None) -> None:  # fmt: skip
    if scope["type"] == "websocket":  # closing before accepting answers 403
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
        return
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    if status == 401:
        extra.append((b"www-authenticate", b'Bearer realm="deeplab"'))
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *extra]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
