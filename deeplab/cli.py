"""`deeplab <command>`: parse the arguments, make one library call, print the result.

Every command is two functions, ``_add_<name>(parser)`` and ``_run_<name>(args) -> int``,
listed in ``COMMANDS``. Commands import the library when they run, so ``deeplab --help``
does not load torch. A user's mistake (a missing file, a bad option, broken data) ends as
one line on stderr that names the file and the fix, with exit status 2; set
``DEEPLAB_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

# --- shared option parsers -----------------------------------------------------------------


def _scales(text: str) -> tuple[float, ...]:
    from deeplab.data.transforms import parse_scales

    try:
        return parse_scales(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    try:
        size = (int(h), int(w or h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: give H or HxW, e.g. 513") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return size


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give pixel widths such as 1,2,4,8") from None


def _shard(args: argparse.Namespace) -> tuple[int, int]:
    """(rank, world size): under ``torchrun`` predict and eval share the work out, each
    process on its own GPU when ``--device cuda`` (gloo on CPUs, nccl on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    from deeplab.train import init_process

    cuda = bool(args.device and args.device.startswith("cuda"))
    proc = init_process("cuda" if cuda else "cpu")
    if cuda:
        args.device = str(proc.device)
    return proc.rank, proc.world_size


def _require_runtime(weights: str | list[str] | None, runtime: str = "auto") -> None:
    """Exported files and ``--runtime onnxruntime`` need onnxruntime: checked before anything
    loads."""
    from deeplab.extras import require

    if runtime == "onnxruntime":
        require("export", "--runtime onnxruntime", ("onnxruntime",))
    for w in [weights] if isinstance(weights, str) else weights or []:
        if str(w).lower().endswith(".onnx"):
            require("export", f"running {Path(w).name}", ("onnxruntime",))


def _assignments(items: list[str], flag: str, example: str) -> dict:
    from deeplab.config import parse_assignments

    return dict(parse_assignments(items, what=flag, example=example))


# --- deeplab models ---------------------------------------------------------


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=_size, default=(513, 513), help="input size, H or HxW")
    p.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    p.add_argument("--num-classes", type=int, default=21)


def _run_models(args: argparse.Namespace) -> int:
    from deeplab.models.flops import model_table

    print(model_table(size=args.size, output_stride=args.output_stride,
                      num_classes=args.num_classes))  # fmt: skip
    return 0


# --- deeplab labelme2voc ----------------------------------------------------


def _add_labelme2voc(p: argparse.ArgumentParser) -> None:
    p.add_argument("in_dir", help="folder of labelme *.json files (images beside or embedded)")
    p.add_argument("out_dir", help="output: JPEGImages/, SegmentationClass/, class_names.txt")
    p.add_argument("--labels", required=True,
                   help="class names, one per line: __ignore__ (-> 255), _background_ (-> 0), ...")


def _run_labelme2voc(args: argparse.Namespace) -> int:
    from deeplab.data.labelme import labelme2voc

    result = labelme2voc(args.in_dir, args.out_dir, args.labels)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for _, reason in result.failed:
        print(f"error: {reason}", file=sys.stderr)
    print(f"converted {len(result.converted)} labelme file(s) into {args.out_dir}"
          + (f"; {len(result.failed)} could not be converted (above)" if result.failed else ""))
    return 1 if result.failed else 0


# --- deeplab check-data -----------------------------------------------------


def _add_check_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", nargs="?",
                   choices=("voc", "cityscapes", "ade20k", "camvid", "folder"),
                   help="dataset kind (with --root and --split); omit to check --images/--masks")
    p.add_argument("--root", help="dataset root folder")
    p.add_argument("--split", default="train", help="split name (default train)")
    p.add_argument("--images", help="image folder (masks matched by file stem)")
    p.add_argument("--masks", help="mask folder")
    p.add_argument("--num-classes", type=int, help="number of classes of folder data")
    p.add_argument("--class-names", help="file with one class name per line (folder data)")
    p.add_argument("--convert-rgb", metavar="OUT_DIR", help="write RGB palette masks as index PNGs")
    p.add_argument("--weights-json", metavar="PATH", help="save class frequencies and weights")
    p.add_argument("--fast", action="store_true", help="read image headers only, do not decode")


def _run_check_data(args: argparse.Namespace) -> int:
    from deeplab.data.check import check_dataset, write_weights_json

    if args.dataset is None and not (args.images and args.masks):
        raise ValueError("give a dataset and --root, or --images and --masks")
    if args.dataset is not None and not args.root:
        raise ValueError(f"{args.dataset} needs --root")
    try:
        report = check_dataset(
            args.dataset, root=args.root, split=args.split, images=args.images,
            masks=args.masks, class_names_file=args.class_names, num_classes=args.num_classes,
            verify_images=not args.fast, convert_dir=args.convert_rgb, progress=True,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as e:  # the data, not the command, is wrong: 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.format())
    if report.rgb_masks:
        print(f"{len(report.rgb_masks)} RGB colour mask(s) found", end="")
        print(f"; {len(report.converted)} converted into {args.convert_rgb}" if report.converted
              else "; convert them with --convert-rgb OUT_DIR")  # fmt: skip
    if args.weights_json:
        write_weights_json(report, args.weights_json)
        print(f"class weights written to {args.weights_json}")
    return 0 if report.ok else 1


# --- shared by predict and eval ---------------------------------------------


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scales", type=_scales, default=(1.0,),
                   help="test scales: 0.5:0.25:1.75 or 0.5,1,1.5 (default 1)")
    p.add_argument("--flip", action="store_true", help="also average left-right flipped inputs")
    p.add_argument("--output-stride", type=int, choices=(8, 16, 32),
                   help="run the model at this output stride (e.g. 8 after training at 16)")
    p.add_argument("--sliding-window", action="store_true",
                   help="tile inputs larger than --crop with overlapping windows")
    p.add_argument("--crop", type=int, help="sliding-window size (default 513; implies tiling)")
    p.add_argument("--overlap", type=float, default=1 / 3, help="window overlap fraction")
    p.add_argument("--crf", action="store_true", help="refine with the dense CRF")
    p.add_argument("--crf-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dense CRF parameter, e.g. bilateral_srgb=5 (repeatable; implies --crf)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:1 (default cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="bf16/fp16 autocast (bf16 helps on CPUs with AMX or AVX512-BF16)")
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="what runs the network: auto = onnxruntime on a CPU at fp32 when "
                   "installed (exported once to the cache; 2-3x faster there), else torch")
    p.add_argument("--batch-size", type=int, default=4,
                   help="images, flips or windows per forward pass")
    p.add_argument("--weights", help="training checkpoint, state_dict or .tflite file")
    p.add_argument("--num-classes", type=int,
                   help="classes of a bare state_dict (default: read from its classifier)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option for a bare state_dict, e.g. width_mult=0.5 (repeatable)")


def segmenter_options(args: argparse.Namespace) -> dict:
    """The Segmenter's test-time options from predict/eval arguments (CRF options checked)."""
    from deeplab.crf import check_options

    crf_options = check_options(_assignments(args.crf_option, "--crf-option", "iterations=10"))
    crop = args.crop or (513 if args.sliding_window else None)
    return dict(scales=args.scales, flip=args.flip, crop=crop, overlap=args.overlap,
                crf=args.crf or bool(crf_options), crf_options=crf_options,
                output_stride=args.output_stride, device=args.device, precision=args.precision,
                batch_size=args.batch_size)  # fmt: skip


# --- deeplab predict ----------------------------------------------------------


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--out", default="out", help="output folder (default out)")
    p.add_argument("--model", help="zoo entry (default: the VOC model), or with --weights a "
                                   "registered architecture")
    p.add_argument("--dataset", help="class names/palette for --weights: voc, camvid, "
                                     "cityscapes, ade20k (default: guessed from the class count)")
    p.add_argument("--probs", action="store_true", help="also write <stem>_probs.npy (CxHxW)")
    p.add_argument("--portrait", metavar="CLASS",
                   help="keep CLASS sharp and blur the rest: <stem>_portrait.jpg")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--labelme", action="store_true",
                   help="also write <stem>.json, the prediction as labelme polygons to correct")
    p.add_argument("--mask-video", action="store_true",
                   help="videos: also write <stem>_mask.mp4 (the colour map)")
    p.add_argument("--labels", action="store_true",
                   help="videos: also write each frame's class ids as <stem>_labels/NNNNNN.png")
    p.add_argument("--smooth", type=float, metavar="ALPHA",
                   help="videos: average the class probabilities over frames (0.5: the past "
                   "weighs half) against flicker")
    p.add_argument("--quiet", action="store_true", help="no progress bar or class shares")
    _add_inference_options(p)


def _run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from deeplab.data.images import find_images
    from deeplab.inference import predict_files, segmenter_for
    from deeplab.video import is_video, segment_video

    named = [Path(p) for p in args.images]
    videos = [p for p in named if p.is_file() and is_video(p)]
    paths = find_images([p for p in named if p not in videos])
    if not paths and not videos:
        raise ValueError(f"no images found in {' '.join(args.images)}")
    if Path(args.out).exists() and not Path(args.out).is_dir():  # before a model loads
        raise ValueError(f"--out {args.out} is a file; give a folder for the outputs")
    from deeplab.extras import require

    if videos:
        require("video", f"reading {videos[0].name}")
    if args.labelme:
        require("labelme", "--labelme")
    _require_runtime(args.weights, args.runtime)
    rank, world = _shard(args)  # under torchrun each process takes every world-th file
    paths, videos = paths[rank::world], videos[rank::world]
    segmenter = segmenter_for(
        model=args.model, weights=args.weights, num_classes=args.num_classes,
        dataset=args.dataset,
        model_options=_assignments(args.model_option, "--model-option", "width_mult=0.5"),
        runtime=args.runtime, **segmenter_options(args),
    )  # fmt: skip
    if not args.quiet:
        print(f"network run by {segmenter.runtime}", file=sys.stderr)
    for video in videos:
        result = segment_video(segmenter, video, args.out, portrait=args.portrait,
                               mask_video=args.mask_video, labels=args.labels,
                               smooth=args.smooth, alpha=args.alpha,
                               progress=not args.quiet)  # fmt: skip
        if not args.quiet:
            print(f"{video.name}: {result.frames} frames at {result.frames_per_second:.1f} "
                  f"frames/s (the clip runs at {result.fps:.3g}); labels change on "
                  f"{100 * result.flicker:.2f}% of pixels per frame; written: "
                  f"{', '.join(str(p) for p in result.outputs)}")  # fmt: skip
    results = predict_files(segmenter, paths, args.out, alpha=args.alpha,
                            probabilities=args.probs, portrait=args.portrait,
                            labelme=args.labelme)  # fmt: skip
    failed = []
    for path, result in tqdm(results, total=len(paths), unit="image",
                             disable=args.quiet or len(paths) < 2):  # fmt: skip
        if isinstance(result, Exception):
            tqdm.write(f"error: {result}", file=sys.stderr)
            failed.append(path)
        elif not args.quiet:
            tqdm.write(f"{path.name}: {result.summary()}")
    done = len(paths) - len(failed)
    if failed:
        print(f"{done} of {len(paths)} images written to {args.out}; unreadable: "
              f"{', '.join(str(p) for p in failed)}", file=sys.stderr)
        return 1
    if not args.quiet and paths:
        print(f"{done} image{'s' if done != 1 else ''} written to {args.out}")
    return 0


# --- deeplab zoo -------------------------------------------------------------


def _add_zoo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fetch", metavar="NAME", help="download (or find) and verify an entry's file")
    p.add_argument("--save", nargs=2, metavar=("NAME", "OUT"),
                   help="convert an entry and save the model as a PyTorch state_dict (.pt)")


def _run_zoo(args: argparse.Namespace) -> int:
    from deeplab.weights import WeightsError, entry_path, get_entry
    from deeplab.weights.zoo import zoo_table

    try:
        if args.fetch:
            print(entry_path(get_entry(args.fetch)))
            return 0
        if args.save:
            from deeplab.hub import save_entry

            name, out = args.save
            entry = save_entry(name, out)
            print(f"saved {name} ({entry.arch}, {dict(entry.options)}) to {out}")
            return 0
    except (KeyError, WeightsError) as e:
        # The messages name the file or entry and the fix; a traceback adds nothing.
        print(f"deeplab zoo: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    print(zoo_table())
    return 0


# --- deeplab eval -------------------------------------------------------------


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="the training recipe (a name from `deeplab recipes`, "
                   "or a YAML file): model, dataset, normalisation")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--pretrained", metavar="NAME", help="zoo entry to evaluate")
    p.add_argument("--model", help="registered architecture of a bare state_dict in --weights")
    p.add_argument("--dataset", help="voc, cityscapes, ade20k, camvid or folder")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--split", help="split to evaluate (default: the config's val split, or val)")
    p.add_argument("--trimap", type=_ints, default=(), metavar="WIDTHS",
                   help="also mean IoU within bands around boundaries, e.g. 1,2,4,8,16,32")
    p.add_argument("--out", metavar="JSON", help="write the metrics here")
    p.add_argument("--confusion", metavar="PNG", help="confusion-matrix picture (default with "
                   "--out: beside it, <name>_confusion.png)")
    p.add_argument("--workers", type=int, default=2, help="data loader processes")
    p.add_argument("--max-images", type=int, help="stop after this many images (quick checks)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_inference_options(p)
    p.set_defaults(batch_size=1)


def _run_eval(args: argparse.Namespace) -> int:
    from deeplab.config import load_config, to_dict
    from deeplab.evaluate import evaluate_dataset, format_report, save_results
    from deeplab.extras import require
    from deeplab.viz import save_confusion_matrix

    if args.overrides and not args.config:
        raise ValueError(f"overrides {args.overrides} need a recipe: -c NAME or -c FILE.yaml")
    if args.confusion:
        require("plots", "--confusion")
    _require_runtime(args.weights, args.runtime)
    cfg = load_config(args.config, args.overrides) if args.config else None
    shard = _shard(args)  # first: under torchrun it picks this process's GPU
    run = evaluate_dataset(
        config=cfg, dataset=args.dataset, data_root=args.data_root, split=args.split,
        weights=args.weights, pretrained=args.pretrained, model=args.model,
        num_classes=args.num_classes,
        model_options=_assignments(args.model_option, "--model-option", "width_mult=0.5"),
        segmenter_options=segmenter_options(args), batch_size=args.batch_size,
        workers=args.workers, trimap=args.trimap, max_images=args.max_images,
        progress=not args.quiet, shard=shard, runtime=args.runtime,
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # the results are the same on every process: rank 0 reports them
    print(format_report(run.results, run.class_names))
    print(f"{run.dataset} {run.split}: mean IoU {100 * run.results['miou']:.2f}% on "
          f"{run.results['images']} images "
          f"({', '.join(f'{k}={v}' for k, v in run.setup.items())})")  # fmt: skip
    if args.out:
        save_results(run.results, args.out, model=run.model, dataset=run.dataset,
                     split=run.split, class_names=list(run.class_names), **run.setup,
                     config=to_dict(cfg) if cfg else None)  # fmt: skip
        print(f"metrics written to {args.out}")
    picture = args.confusion or (str(Path(args.out).with_suffix("")) + "_confusion.png"
                                 if args.out else None)  # fmt: skip
    if picture:
        try:
            save_confusion_matrix(run.results["confusion_matrix"], run.class_names, picture,
                                  title=f"{run.dataset} {run.split}")  # fmt: skip
            print(f"confusion matrix drawn in {picture}")
        except ImportError as e:
            print(f"note: no confusion picture: {e}", file=sys.stderr)
    return 0


# --- deeplab train ------------------------------------------------------------


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="a recipe: a name from `deeplab recipes` "
                   "(camvid_v3plus_mobilenetv2) or a YAML file; defaults if omitted")
    p.add_argument(
        "--resume", nargs="?", const="", metavar="PATH",
        help="continue from a checkpoint (default: OUT_DIR/last.pt; best.pt restarts from its "
        "weights); without -c the checkpoint's own config is used, overrides still apply",
    )  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. optim.lr=0.01 data.root=/data/camvid")  # fmt: skip


def _run_train(args: argparse.Namespace) -> int:
    import yaml

    from deeplab import checkpoint
    from deeplab.config import apply_overrides, from_dict, load_config, to_dict
    from deeplab.train import train

    resume = Path(args.resume) if args.resume else None
    if resume is not None and args.config is None:
        cfg = apply_overrides(from_dict(checkpoint.read(resume)["config"]), args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.resume == "":
        resume = Path(cfg.train.out_dir) / "last.pt"
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if cfg.train.tensorboard:
        from deeplab.extras import require

        require("tensorboard", "train.tensorboard=true")
    progress = train(cfg, resume=resume)
    print(f"{progress.status} at step {progress.step}; checkpoint {cfg.train.out_dir}/last.pt"
          + (f"; best val mIoU {100 * progress.best_miou:.2f}%" if progress.best_miou >= 0 else ""))
    if progress.status == "interrupted":
        print("continue with: deeplab train --resume " + f"{cfg.train.out_dir}/last.pt")
        return 130
    return 0


# --- deeplab export -----------------------------------------------------------


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo entry (default: the VOC model), a registered "
                   "architecture (fresh weights), or with --weights the file's architecture")
    p.add_argument("--weights", help="training checkpoint, state_dict or .tflite file")
    p.add_argument("--num-classes", type=int, help="classes of a bare state_dict")
    p.add_argument("--dataset", help="class names for a bare state_dict (voc, camvid, ...)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option for a bare state_dict, e.g. width_mult=0.5")
    p.add_argument("--format", default="onnx", choices=("onnx", "tflite"))
    p.add_argument("--out", required=True, help="the file to write (model.onnx, model.tflite)")
    p.add_argument("--probabilities", action="store_true",
                   help="ONNX: also output the softmax probabilities [N, C, H, W]")
    p.add_argument("--raw", action="store_true",
                   help="ONNX: the bare network (normalised float NCHW in, logits out)")
    p.add_argument("--input-size", type=_size, help="TFLite: the fixed input size (default: "
                   "the model's canvas, or 513)")
    p.add_argument("--check-images", metavar="DIR",
                   help="photos for the parity check (default: the photos shipped with deeplab, "
                   "`deeplab examples`)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")


def _run_export(args: argparse.Namespace) -> int:
    from deeplab.export import ExportError, export, model_to_export
    from deeplab.extras import require

    if args.format == "tflite":
        require("tflite", "TFLite export")
    else:
        require("export", "ONNX export", None if not args.no_check else ("onnx",))

    model, info = model_to_export(
        model=args.model, weights=args.weights, num_classes=args.num_classes,
        dataset=args.dataset,
        model_options=_assignments(args.model_option, "--model-option", "width_mult=0.5"),
    )  # fmt: skip
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


# --- deeplab serve ------------------------------------------------------------


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
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="decoded image limit (default 40; see the README for the memory)")
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
    _require_runtime(weights, args.runtime)
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


# --- deeplab tune-crf -------------------------------------------------------------


def _add_tune_crf(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="the checkpoint to tune for (best.pt)")
    p.add_argument("--dataset", help="default: the checkpoint's training dataset")
    p.add_argument("--data-root", help="default: the checkpoint's data.root")
    p.add_argument("--split", help="training split to tune on (default: the checkpoint's "
                   "train split; validation images are refused)")
    p.add_argument("--images", type=int, default=24, help="images, spread over the split")
    p.add_argument("--iterations", type=int, default=5, help="mean-field iterations")
    p.add_argument("--dry-run", action="store_true", help="print the choice, write nothing")


def _run_tune_crf(args: argparse.Namespace) -> int:
    from deeplab.tune import tune_checkpoint

    tuning = tune_checkpoint(args.weights, dataset=args.dataset, data_root=args.data_root,
                             split=args.split, images=args.images, iterations=args.iterations,
                             write=not args.dry_run)  # fmt: skip
    for setting, miou in sorted(tuning.tried, key=lambda t: -t[1])[:5]:
        shown = {k: v for k, v in setting.items() if k.startswith("bilateral")}
        print(f"  {100 * miou:6.2f}  {shown}")
    print(f"on {tuning.source}: mIoU {100 * tuning.miou_without:.2f} without the CRF, "
          f"{100 * tuning.miou_with:.2f} with {tuning.options} ({tuning.seconds:.0f} s)")
    if not tuning.helps:
        print("note: no setting helped on these images; --crf will likely not help this model")
    if not args.dry_run:
        print(f"stored in {args.weights}: --crf now uses them (an explicit --crf-option wins)")
    return 0


# --- deeplab recipes / examples / env ------------------------------------------


def _add_recipes(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a recipe to print (or write with --out)")
    p.add_argument("--out", metavar="PATH", help="write the recipe here to edit (a file, or a "
                   "folder for NAME.yaml), then train with -c PATH")


def _run_recipes(args: argparse.Namespace) -> int:
    from deeplab.config import list_recipes, recipe_path, write_recipe

    if args.name is None:
        if args.out:
            raise ValueError("--out writes one recipe: name it, e.g. deeplab recipes own_data "
                             "--out my_data.yaml")  # fmt: skip
        recipes = list_recipes()
        width = max(map(len, recipes))
        for name, description in recipes.items():
            print(f"{name:<{width}}  {description}")
        print("\ntrain with: deeplab train -c NAME data.root=...; copy one to edit: "
              "deeplab recipes NAME --out my_recipe.yaml")  # fmt: skip
        return 0
    if args.out:
        target = write_recipe(args.name, args.out)
        print(f"{args.name} written to {target}; edit it, then: deeplab train -c {target} "
              "data.root=...")  # fmt: skip
        return 0
    print(recipe_path(args.name).read_text(), end="")
    return 0


def _add_examples(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="copy the photos into this folder")


def _run_examples(args: argparse.Namespace) -> int:
    import shutil

    from deeplab.data.images import example_photos

    photos = example_photos()
    if not args.out:
        for photo in photos:
            print(photo)
        print(f"licences: {photos[0].parent / 'README.md'}; copy them: deeplab examples --out DIR")
        return 0
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        shutil.copyfile(photo, out / photo.name)
    print(f"{len(photos)} photos copied into {out}: {', '.join(p.name for p in photos)}")
    return 0


def _add_env(p: argparse.ArgumentParser) -> None:
    pass


def _run_env(args: argparse.Namespace) -> int:
    from deeplab.env import report

    print(report())
    return 0


# --- new commands go above this line ----------------------------------------

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]

COMMANDS: list[Command] = [
    ("models", "list models with parameters and multiply-adds", _add_models, _run_models),
    ("predict", "segment images: label PNGs, colour maps, overlays", _add_predict, _run_predict),
    ("eval", "mean IoU on a dataset split (multi-scale, flip, CRF, trimap)", _add_eval, _run_eval),
    ("labelme2voc", "convert labelme JSON files to VOC-style index masks",
     _add_labelme2voc, _run_labelme2voc),
    ("check-data", "check a dataset's files and print class frequencies and weights",
     _add_check_data, _run_check_data),
    ("zoo", "list pretrained weights; fetch or convert one", _add_zoo, _run_zoo),
    ("train", "train a model from a YAML recipe with key=value overrides",
     _add_train, _run_train),
    ("export", "export a model to ONNX or TFLite and check it against PyTorch",
     _add_export, _run_export),
    ("serve", "a web page and REST API for segmenting photos", _add_serve, _run_serve),
    ("tune-crf", "choose the dense CRF's parameters for a checkpoint on training images",
     _add_tune_crf, _run_tune_crf),
    ("recipes", "list the training recipes; print one or write it out to edit",
     _add_recipes, _run_recipes),
    ("examples", "the example photos shipped with deeplab; copy them out", _add_examples,
     _run_examples),
    ("env", "versions, extras, CPU features and GPUs: paste it into a bug report",
     _add_env, _run_env),
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from deeplab import __version__

    parser = argparse.ArgumentParser(prog="deeplab", description="DeepLab semantic segmentation")
    parser.add_argument("--version", action="version", version=f"deeplab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    return parser


class _Print(logging.Handler):
    """The library's log lines (``deeplab.*``, INFO and up) printed as plain lines on the
    stdout of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the input is wrong": their messages name the fix."""
    from deeplab.checkpoint import CheckpointError
    from deeplab.extras import MissingExtra
    from deeplab.weights import WeightsError

    return (ValueError, KeyError, OSError, CheckpointError, WeightsError, MissingExtra)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (argparse printed it) or --help: its status
        return int(e.code or 0)
    logger = logging.getLogger("deeplab")
    if not any(isinstance(h, _Print) for h in logger.handlers):
        logger.addHandler(_Print())
        logger.setLevel(logging.INFO)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("DEEPLAB_DEBUG") or not isinstance(e, _user_errors()):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"deeplab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
