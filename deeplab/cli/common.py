"""Option types and options shared by several commands; nothing here loads torch."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def scales(text: str) -> tuple[float, ...]:
    from deeplab.data.transforms import parse_scales

    try:
        return parse_scales(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    try:
        hw = (int(h), int(w or h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: give H or HxW, e.g. 513") from None
    if min(hw) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return hw


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give pixel widths such as 1,2,4,8") from None


def shard(args: argparse.Namespace) -> tuple[int, int]:
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


def require_runtime(weights: str | list[str] | None, runtime: str = "auto") -> None:
    """Exported files and ``--runtime onnxruntime`` need onnxruntime: checked before anything
    loads."""
    from deeplab.extras import require

    if runtime == "onnxruntime":
        require("export", "--runtime onnxruntime", ("onnxruntime",))
    for w in [weights] if isinstance(weights, str) else weights or []:
        if str(w).lower().endswith(".onnx"):
            require("export", f"running {Path(w).name}", ("onnxruntime",))


def assignments(items: list[str], flag: str, example: str) -> dict:
    from deeplab.config import parse_assignments

    return dict(parse_assignments(items, what=flag, example=example))


def add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scales", type=scales, default=(1.0,),
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

    crf_options = check_options(assignments(args.crf_option, "--crf-option", "iterations=10"))
    crop = args.crop or (513 if args.sliding_window else None)
    return dict(scales=args.scales, flip=args.flip, crop=crop, overlap=args.overlap,
                crf=args.crf or bool(crf_options), crf_options=crf_options,
                output_stride=args.output_stride, device=args.device, precision=args.precision,
                batch_size=args.batch_size)  # fmt: skip
