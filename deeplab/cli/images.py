"""``deeplab predict``, ``deeplab eval`` and ``deeplab tune-crf``: images through a model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deeplab.cli.common import (
    add_inference_options,
    assignments,
    ints,
    require_runtime,
    segmenter_options,
    shard,
)


def _outputs(text: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    wrong = [v for v in chosen if v not in ("labels", "color", "overlay")]
    if wrong or not chosen:
        raise argparse.ArgumentTypeError(f"--outputs {text!r}: choose from labels, color, "
                                         "overlay, e.g. labels,overlay")  # fmt: skip
    return chosen


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--out", default="out", help="output folder (default out)")
    p.add_argument("--model", help="zoo entry (default: the VOC model), or with --weights a "
                                   "registered architecture")
    p.add_argument("--dataset", help="class names/palette for --weights: voc, camvid, "
                                     "cityscapes, ade20k (default: guessed from the class count)")
    p.add_argument("--outputs", type=_outputs, default=("labels", "color", "overlay"),
                   help="files per image, comma-separated: labels (<stem>.png), color "
                   "(<stem>_color.png), overlay (<stem>_overlay.jpg); default all three")
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
    add_inference_options(p)


def _run_predict(args: argparse.Namespace) -> int:
    from deeplab.data.images import find_images, is_video

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
    require_runtime(args.weights, args.runtime)
    rank, world = shard(args)  # under torchrun each process takes every world-th file
    paths, videos = paths[rank::world], videos[rank::world]
    quick = _quick_pipeline(args) if not videos and world == 1 else None
    if quick is not None:  # the whole pipeline in onnxruntime: torch is never imported
        if not args.quiet:
            print(f"network run by onnxruntime (the cached pipeline {quick.path.name})",
                  file=sys.stderr)  # fmt: skip
        results = quick.predict_files(paths, Path(args.out), outputs=args.outputs,
                                      alpha=args.alpha, portrait=args.portrait)  # fmt: skip
    else:
        results = _predict_with_segmenter(args, paths, videos)
    failed = []
    say = print
    if not args.quiet and len(paths) > 1:  # a progress bar (tqdm: 30 ms to import)
        from tqdm import tqdm

        results, say = tqdm(results, total=len(paths), unit="image"), tqdm.write
    for path, result in results:
        if isinstance(result, Exception):
            say(f"error: {result}", file=sys.stderr)
            failed.append(path)
        elif not args.quiet:
            say(f"{path.name}: {result.summary()}")
    done = len(paths) - len(failed)
    if failed:
        print(f"{done} of {len(paths)} images written to {args.out}; unreadable: "
              f"{', '.join(str(p) for p in failed)}", file=sys.stderr)
        return 1
    if not args.quiet and paths:
        print(f"{done} image{'s' if done != 1 else ''} written to {args.out}")
    return 0


def _quick_pipeline(args: argparse.Namespace):
    """The quick path (``deeplab.quick``) when every option is at its default on a CPU and
    onnxruntime is installed: the model's cached pipeline, exported on the first run; else
    None (the Segmenter path)."""
    defaults = (args.runtime in ("auto", "onnxruntime") and args.device in (None, "cpu")
                and args.precision == "fp32" and tuple(args.scales) == (1.0,)
                and not (args.flip or args.crf or args.crf_option or args.crop or args.probs
                         or args.sliding_window or args.labelme)
                and args.output_stride is None)  # fmt: skip
    from deeplab.quick import Pipeline, cache_path, usable

    if not defaults or not usable():
        return None
    if args.weights and str(args.weights).lower().endswith(".onnx"):
        pipeline = Pipeline(Path(args.weights))
        return pipeline if pipeline.contract == "labels" else None
    if args.weights and not Path(args.weights).is_file():
        return None  # the Segmenter path says what is wrong with it
    if args.model and not args.weights:
        from deeplab.weights import list_entries

        if args.model not in {e.name for e in list_entries(kind="segmentation")}:
            return None
    # (parsing --model-option reads YAML through deeplab.config, which imports torch)
    options = dict(model=args.model, num_classes=args.num_classes, dataset=args.dataset,
                   model_options=assignments(args.model_option, "--model-option", "x=1")
                   if args.model_option else {})  # fmt: skip
    path = cache_path(model=args.model, weights=args.weights, options=options)
    if not path.is_file():
        from deeplab.export import export_onnx, model_to_export

        net, info = model_to_export(weights=args.weights, **options)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.{os.getpid()}.onnx")  # then renamed: atomic
        export_onnx(net, info, partial)
        os.replace(partial, path)
    return Pipeline(path)


def _predict_with_segmenter(args: argparse.Namespace, paths, videos):
    from deeplab.predict import predict_files, segmenter_for
    from deeplab.video import segment_video

    segmenter = segmenter_for(
        model=args.model, weights=args.weights, num_classes=args.num_classes,
        dataset=args.dataset,
        model_options=assignments(args.model_option, "--model-option", "width_mult=0.5"),
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
    return predict_files(segmenter, paths, args.out, alpha=args.alpha,
                         probabilities=args.probs, portrait=args.portrait,
                         labelme=args.labelme, outputs=args.outputs)  # fmt: skip


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="the training recipe (a name from `deeplab recipes`, "
                   "or a YAML file): model, dataset, normalisation")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--pretrained", metavar="NAME", help="zoo entry to evaluate")
    p.add_argument("--model", help="registered architecture of a bare state_dict in --weights")
    p.add_argument("--dataset", help="voc, cityscapes, ade20k, camvid or folder")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--split", help="split to evaluate (default: the config's val split, or val)")
    p.add_argument("--trimap", type=ints, default=(), metavar="WIDTHS",
                   help="also mean IoU within bands around boundaries, e.g. 1,2,4,8,16,32")
    p.add_argument("--out", metavar="JSON", help="write the metrics here")
    p.add_argument("--confusion", metavar="PNG", help="confusion-matrix picture (default with "
                   "--out: beside it, <name>_confusion.png)")
    p.add_argument("--workers", type=int, default=2, help="data loader processes")
    p.add_argument("--max-images", type=int, help="stop after this many images (quick checks)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_options(p)
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
    require_runtime(args.weights, args.runtime)
    cfg = load_config(args.config, args.overrides) if args.config else None
    place = shard(args)  # first: under torchrun it picks this process's GPU
    run = evaluate_dataset(
        config=cfg, dataset=args.dataset, data_root=args.data_root, split=args.split,
        weights=args.weights, pretrained=args.pretrained, model=args.model,
        num_classes=args.num_classes,
        model_options=assignments(args.model_option, "--model-option", "width_mult=0.5"),
        segmenter_options=segmenter_options(args), batch_size=args.batch_size,
        workers=args.workers, trimap=args.trimap, max_images=args.max_images,
        progress=not args.quiet, shard=place, runtime=args.runtime,
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
