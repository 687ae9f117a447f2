"""The web app and REST API of ``deeplab serve`` (FastAPI; the extra ``serve``).

- ``GET /``: a page to drop photos on and look at what the models see (every asset is
  served from this package: it works offline);
- ``POST /v1/segment``: multipart field ``image``; form fields ``model`` (a loaded model's
  name), ``output`` = ``json`` (default: the classes found by name with their pixel shares,
  ``polygons=true`` adds labelme polygons, ``raw_labels=true`` the labels as base64 bytes)
  | ``labels`` (index PNG) | ``color`` (PNG) | ``overlay`` (JPEG, ``alpha``) |
  ``portrait`` (JPEG, the class ``portrait`` sharp);
- ``GET /v1/models``: the loaded models with their classes and colours;
- ``GET /healthz``; the OpenAPI schema at ``/openapi.json`` and ``/docs``.

At most ``concurrency`` images are segmented at once (in worker threads, so the server
keeps answering); up to ``queue`` more wait, and a request beyond that gets 503 at once.
An upload over ``max_upload_mb`` gets 413; a file that is not an image, or a
decompression bomb, 400 with the reason. A model is chosen by name among those loaded:
no request can make the server read a file.
"""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import numpy as np
from PIL import Image

from deeplab import viz
from deeplab.data.images import DataError, read_image
from deeplab.data.labelme import mask_to_labelme
from deeplab.extras import require
from deeplab.inference import Prediction, Segmenter

require("serve", "deeplab serve")
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, Response  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402

OUTPUTS = ("json", "labels", "color", "overlay", "portrait")


@dataclass
class Limits:
    """How much the server takes on at once."""

    concurrency: int = 2  # images segmented at the same time
    queue: int = 8  # requests that may wait for a free slot; more get 503
    max_upload_mb: float = 20.0
    max_pixels: int = 50_000_000  # above: 400, whatever the file's size (decompression bomb)


def create_app(segmenters: dict[str, Segmenter], *, limits: Limits | None = None) -> FastAPI:
    """The FastAPI app serving ``segmenters`` (name -> Segmenter; the first is the default)."""
    if not segmenters:
        raise ValueError("deeplab serve needs at least one model")
    limits = limits or Limits()
    app = FastAPI(title="deeplab", version="1", description=__doc__.split("\n\n")[0])
    slots = asyncio.Semaphore(limits.concurrency)
    waiting = {"count": 0}
    default = next(iter(segmenters))
    static = resources.files("deeplab.serve") / "static"

    @app.middleware("http")
    async def refuse_big_uploads(request: Request, call_next):
        # Before the form is parsed (and spooled to disk): a declared size over the limit.
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.max_upload_mb * 2**20 + 2**16:
            return JSONResponse({"detail": f"upload of {declared / 2**20:.1f} MB; the limit is "
                                 f"{limits.max_upload_mb:g} MB"}, status_code=413)  # fmt: skip
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (static / "index.html").read_text()

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": list(segmenters)}

    @app.get("/v1/models")
    def models() -> list[dict[str, Any]]:
        return [
            {"name": name, "default": name == default, "classes": list(seg.class_names),
             "palette": viz.palette_array(seg.palette)[: seg.num_classes].tolist(),
             "input_size": list(seg.input_size) if seg.input_size else None}
            for name, seg in segmenters.items()
        ]  # fmt: skip

    @app.post("/v1/segment")
    async def segment(
        image: Annotated[UploadFile, File(description="the photo (any format Pillow reads)")],
        model: Annotated[str, Form(description="a loaded model (GET /v1/models)")] = "",
        output: Annotated[str, Form(description=" | ".join(OUTPUTS))] = "json",
        polygons: Annotated[bool, Form(description="json: add labelme polygons")] = False,
        raw_labels: Annotated[bool, Form(description="json: labels, base64 uint8")] = False,
        alpha: Annotated[float, Form(ge=0.0, le=1.0, description="overlay opacity")] = 0.5,
        portrait: Annotated[str, Form(description="portrait: the class kept sharp")] = "",
    ) -> Response:
        name = model or default
        if name not in segmenters:
            raise HTTPException(404, f"no model {name!r}; loaded: {', '.join(segmenters)}")
        if output not in OUTPUTS:
            raise HTTPException(422, f"output {output!r}; choose one of: {', '.join(OUTPUTS)}")
        seg = segmenters[name]
        if output == "portrait" and portrait not in seg.class_names:
            raise HTTPException(422, f"portrait needs a class of {name}: "
                                     f"{', '.join(seg.class_names)}")  # fmt: skip
        limit = int(limits.max_upload_mb * 2**20)
        data = await image.read(limit + 1)  # chunked uploads declare no size: count it
        if len(data) > limit:
            raise HTTPException(413, f"upload over the {limits.max_upload_mb:g} MB limit")
        if waiting["count"] >= limits.queue + limits.concurrency:
            raise HTTPException(503, "busy: too many images in the queue; try again shortly",
                                headers={"Retry-After": "1"})  # fmt: skip
        waiting["count"] += 1
        try:
            async with slots:
                pred = await run_in_threadpool(_predict, seg, data, image.filename or "upload",
                                               limits.max_pixels)  # fmt: skip
        finally:
            waiting["count"] -= 1
        return await run_in_threadpool(_respond, pred, output, polygons, raw_labels, alpha,
                                       portrait)  # fmt: skip

    return app


def _predict(seg: Segmenter, data: bytes, filename: str, max_pixels: int) -> Prediction:
    try:
        with Image.open(io.BytesIO(data)) as pil:  # reads the header only
            if pil.width * pil.height > max_pixels:
                raise HTTPException(400, f"{filename}: {pil.width}x{pil.height} pixels, over the "
                                         f"{max_pixels / 1e6:g} megapixel limit")  # fmt: skip
            pil.load()
            rgb = read_image(pil)
    except (OSError, SyntaxError, ValueError, DataError, Image.DecompressionBombError) as e:
        raise HTTPException(400, f"{filename}: not a readable image ({e})") from None
    return seg.predict(rgb)


def _respond(pred: Prediction, output: str, polygons: bool, raw: bool, alpha: float,
             portrait: str) -> Response:  # fmt: skip
    labels = pred.labels
    if output == "json":
        h, w = labels.shape
        body: dict[str, Any] = {
            "width": w, "height": h,
            "classes": [{"name": n, "share": s} for n, s in pred.shares().items()],
        }  # fmt: skip
        if polygons:
            body["shapes"] = mask_to_labelme(labels, pred.class_names, image_path="")["shapes"]
        if raw:
            body["labels"] = base64.b64encode(labels.astype(np.uint8).tobytes()).decode()
        return JSONResponse(body)
    buffer = io.BytesIO()
    if output == "labels":
        viz.index_image(labels, pred.palette).save(buffer, format="PNG")
        media = "image/png"
    elif output == "color":
        Image.fromarray(viz.colorize(labels, pred.palette)).save(buffer, format="PNG")
        media = "image/png"
    else:
        if output == "overlay":
            shown = viz.overlay(pred.image, labels, pred.palette, alpha=alpha)
        else:
            shown = viz.portrait(pred.image, pred.mask(portrait))
        Image.fromarray(shown).save(buffer, format="JPEG", quality=90)
        media = "image/jpeg"
    return Response(buffer.getvalue(), media_type=media)
