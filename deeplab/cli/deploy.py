"""``deeplab export`` and ``deeplab serve``: models out of Python, and onto a network."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deeplab.cli.common import assignments, require_runtime, size


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo entry (default: the VOC model), a registered "
                   "architecture (fresh weights), or with --weights the file's architecture")
    p.add_argument("--weights", help="training checkpoint, state_dict or .tflite file")
    p.add_argument("--num-classes", type=int, help="classes of a bare state_dict")
    p.add_argument("--dataset", help="class names for a bare state_dict (voc, camvid, ...)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option for a bare state_dict, e.g. width_mult=0.5")
    p.add_argument("--format", default="onnx", choices=("onnx", "tflite", "web"),
                   help="onnx, tflite, or web: a folder with a page that runs the model in "
                   "the browser (photos and camera), for any static host")
    p.add_argument("--out", required=True, help="the file to write (model.onnx, model.tflite), "
                   "or the folder (web)")
    p.add_argument("--probabilities", action="store_true",
                   help="ONNX: also output the softmax probabilities [N, C, H, W]")
    p.add_argument("--raw", action="store_true",
                   help="ONNX: the bare network (normalised float NCHW in, logits out)")
    p.add_argument("--input-size", type=size, help="TFLite: the fixed input size (default: "
                   "the model's canvas, or 513)")
    p.add_argument("--check-images", metavar="DIR",
                   help="photos for the parity check (default: the photos shipped with deeplab, "
                   "`deeplab examples`)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    q = p.add_argument_group("8-bit (ONNX): judged by the mIoU it costs on labelled data")
    q.add_argument("--int8", action="store_true",
                   help="quantize to int8 (static, per-channel), calibrated on --calibrate")
    q.add_argument("--calibrate", metavar="DIR", help="photos from your domain to calibrate on")
    q.add_argument("--calibrate-count", type=int, default=100,
                   help="calibration photos, spread over DIR (default 100)")
    q.add_argument("--eval-data", metavar="ROOT", help="a labelled dataset on which float and "
                   "int8 mIoU are compared (with --eval-dataset, --split)")
    q.add_argument("--eval-dataset", default="folder", metavar="NAME",
                   help="its layout: folder (default), camvid, voc, cityscapes, ade20k")
    q.add_argument("--split", default="val", help="the labelled split (default val)")
    q.add_argument("-c", "--config", help="or: a recipe whose data (data.root=...) and "
                   "validation split score the files")
    q.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    q.add_argument("--max-drop", type=float, default=1.0,
                   help="mIoU points int8 may lose (default 1.0, Google's own cost); more: "
                   "exit 1, the file kept")


def _run_export(args: argparse.Namespace) -> int:
    from deeplab.export import ExportError, export, model_to_export
    from deeplab.extras import require

    if args.format == "tflite":
        require("tflite", "TFLite export")
        if args.int8:
            require("export", "int8 export's check", ("onnxruntime",))
    else:
        # onnxruntime runs the check and the int8 calibration; onnx alone writes a file
        require("export", "ONNX export", ("onnx",) if args.no_check and not args.int8 else None)
    if args.int8 and not args.calibrate:
        raise ValueError("--int8 calibrates on photos from your domain: add --calibrate DIR")
    if args.overrides and not args.config:
        raise ValueError(f"overrides {args.overrides} need a recipe: -c NAME data.root=...")

    model, info = model_to_export(
        model=args.model, weights=args.weights, num_classes=args.num_classes,
        dataset=args.dataset,
        model_options=assignments(args.model_option, "--model-option", "width_mult=0.5"),
    )  # fmt: skip
    if args.int8:
        return _export_int8(args, model, info)
    if args.format == "web":
        return _export_web(args, model, info)
    try:
        path, parity = export(model, info, args.out, format=args.format,
                              probabilities=args.probabilities, raw=args.raw,
                              check=not args.no_check, check_folder=args.check_images,
                              input_size=args.input_size)  # fmt: skip
    except ExportError as e:  # a failed check keeps the file for inspection: status 1
        print(f"deeplab export: {e}", file=sys.stderr)
        return 1 if Path(args.out).exists() else 2
    print(f"{info.arch} ({info.num_classes} classes) exported to {path}")
    if parity is not None:
        print(f"parity with PyTorch: {parity}")
    return 0


def _export_web(args: argparse.Namespace, model, info) -> int:
    from deeplab.export import ExportError
    from deeplab.web import export_web

    try:
        folder, parity, how = export_web(model, info, args.out, check=not args.no_check,
                                         check_folder=args.check_images)  # fmt: skip
    except ExportError as e:
        print(f"deeplab export: {e}", file=sys.stderr)
        return 1 if Path(args.out, "model.onnx").exists() else 2
    print(f"{info.arch} ({info.num_classes} classes) exported as a web page to {folder}/; "
          f"serve it with: python -m http.server --directory {folder}")
    print(f"parity of the page with PyTorch: {parity} ({how})" if parity else f"the page was "
          f"{how}")  # fmt: skip
    return 0


def _export_int8(args: argparse.Namespace, model, info) -> int:
    import torch

    from deeplab.config import load_config
    from deeplab.data.images import find_images, read_image
    from deeplab.quantize import LabelledSplit, export_int8

    if args.raw or args.probabilities or args.format == "web":
        raise ValueError("--int8 writes the ONNX labels contract or a TFLite file: drop --raw, "
                         "--probabilities and --format web")  # fmt: skip
    found = find_images([args.calibrate])
    if not found:
        raise ValueError(f"--calibrate {args.calibrate}: no photos there")
    chosen = found[:: max(1, len(found) // args.calibrate_count)][: args.calibrate_count]
    calibration = [read_image(p) for p in chosen]
    cfg = load_config(args.config, args.overrides) if args.config else None
    labelled = None
    if args.eval_data:
        labelled = LabelledSplit(args.eval_dataset, args.eval_data, args.split)
    elif cfg is not None and cfg.data.root and cfg.data.val_split:
        labelled = LabelledSplit(cfg.data.dataset, cfg.data.root, cfg.data.val_split,
                                 **dict(cfg.data.options))  # fmt: skip
    timing = [read_image(image) for image, _ in labelled.data.pairs[:8]] if labelled \
        else calibration[:8]  # fmt: skip
    report = export_int8(model, info, args.out, calibration=calibration, timing=timing,
                         labelled=labelled, scored_on=labelled.name if labelled else "",
                         max_drop=args.max_drop, threads=torch.get_num_threads(),
                         format=args.format, input_size=args.input_size)  # fmt: skip
    print(f"{info.arch} ({info.num_classes} classes) exported to {report.path} as int8, "
          f"calibrated on {report.photos} photos of {args.calibrate}")
    print(report.table())
    speed = f"{report.float_ms / report.int8_ms:.2f}x the speed of the float file"
    if report.drop is None:
        print(f"{speed}; accuracy unchecked: labels agree with the float model on "
              f"{100 * report.agreement:.2f}% of pixels, which says little about an 8-bit "
              "model; pass --eval-data DIR --eval-dataset NAME (or -c RECIPE data.root=...) to "
              "measure the mIoU it costs")  # fmt: skip
        return 0
    verdict = "within" if report.ok else "OVER"
    print(f"{speed}; int8 costs {report.drop:.2f} mIoU points on {report.scored_on}, {verdict} "
          f"the {args.max_drop:g}-point limit" + ("" if report.ok else f"; the file is kept "
                                                 f"for inspection: {report.path}"))  # fmt: skip
    return 0 if report.ok else 1


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=[],
                   help="zoo entry to serve (repeatable; default: the VOC model)")
    p.add_argument("--weights", action="append", default=[], metavar="[NAME=]PATH",
                   help="checkpoint or exported .onnx file to serve, named NAME or after the "
                   "file (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1; another "
                   "needs --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=os.environ.get("DEEPLAB_SERVE_TOKEN"),
                   help="bearer token the API requires (default: $DEEPLAB_SERVE_TOKEN)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve beyond loopback without a token (a proxy in front authenticates)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name the server answers to besides loopback (repeatable)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its models and queue (see the README)")
    p.add_argument("--threads", type=int,
                   help="threads per worker for the network (default: cores / workers)")
    p.add_argument("--concurrency", type=int, default=2, help="images segmented at once")
    p.add_argument("--queue", type=int, default=8, help="uploads waiting; more get 503")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit")
    p.add_argument("--max-megapixels", type=float, default=24.0,
                   help="decoded image limit (default 24: at most ~550 MB a request in "
                   "flight, measured; see the README)")
    p.add_argument("--max-side", type=int, default=2049,
                   help="longest side a network without a fixed canvas sees (default 2049)")
    p.add_argument("--deadline", type=float, default=60.0,
                   help="seconds a request may take, queue included; then 504")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:1 (default cpu)")
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="what runs the network (auto: onnxruntime on a CPU when installed)")


def _run_serve(args: argparse.Namespace) -> int:
    from deeplab.extras import require

    require("serve", "deeplab serve")
    weights = [w.partition("=")[2] if "=" in w and not Path(w).exists() else w
               for w in args.weights]  # fmt: skip
    require_runtime(weights, args.runtime)
    from deeplab.serve.guard import Limits
    from deeplab.serve.run import check_access, model_names, serve
    from deeplab.system import cpu_count

    limits = Limits(concurrency=args.concurrency, queue=args.queue,
                    max_upload_mb=args.max_upload_mb,
                    max_pixels=int(args.max_megapixels * 1e6), max_side=args.max_side,
                    deadline_s=args.deadline)  # fmt: skip
    access = check_access(args.host, args.token, args.no_auth, args.allowed_host)
    model_names(args.model, args.weights)  # two models of one name: say so before loading
    threads = args.threads or max(1, cpu_count() // max(1, args.workers))
    serve(models=args.model, weights=args.weights, host=args.host, port=args.port,
          access=access, limits=limits, workers=args.workers, threads=threads,
          device=args.device, runtime=args.runtime)  # fmt: skip
    return 0
