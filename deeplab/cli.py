"""`deeplab <command>`: parse arguments, build objects, call the library.

Every command is two functions, ``_add_<name>(parser)`` and ``_run_<name>(args) -> int``,
listed in ``COMMANDS``. Nothing below this module parses arguments; commands
import the library lazily so ``deeplab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# --- deeplab models ---------------------------------------------------------


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="513", help="input size, H or HxW (default 513)")
    p.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    p.add_argument("--num-classes", type=int, default=21)


def _run_models(args: argparse.Namespace) -> int:
    from deeplab.models.flops import model_table

    h, _, w = args.size.partition("x")
    size = (int(h), int(w or h))
    print(model_table(size=size, output_stride=args.output_stride, num_classes=args.num_classes))
    return 0


# --- deeplab labelme2voc ----------------------------------------------------


def _add_labelme2voc(p: argparse.ArgumentParser) -> None:
    p.add_argument("in_dir", help="folder of labelme *.json files (images beside or embedded)")
    p.add_argument("out_dir", help="output: JPEGImages/, SegmentationClass/, class_names.txt")
    p.add_argument(
        "--labels",
        required=True,
        help="class names, one per line: __ignore__ (-> 255), _background_ (-> 0), ...",
    )


def _run_labelme2voc(args: argparse.Namespace) -> int:
    from deeplab.data.datasets import DataError
    from deeplab.data.labelme import labelme2voc

    try:
        stems = labelme2voc(args.in_dir, args.out_dir, args.labels)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted {len(stems)} labelme file(s) into {args.out_dir}")
    return 0


# --- deeplab check-data -----------------------------------------------------


def _add_check_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset",
        nargs="?",
        choices=("voc", "cityscapes", "ade20k", "camvid", "folder"),
        help="dataset kind (with --root and --split); omit to check --images/--masks",
    )
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
    from pathlib import Path

    from deeplab.data.check import check_pairs, write_weights_json
    from deeplab.data.datasets import (
        DataError,
        build_dataset,
        dataset_info,
        folder_pairs,
        read_class_names,
    )

    names = read_class_names(args.class_names) if args.class_names else None
    try:
        if args.dataset is None:
            if not (args.images and args.masks):
                print("error: give a dataset and --root, or --images and --masks", file=sys.stderr)
                return 2
            info = dataset_info(
                "folder",
                class_names=names,
                num_classes=args.num_classes,
                root=Path(args.images).parent,  # where labelme2voc puts class_names.txt
            )
            pairs = folder_pairs(args.images, args.masks)
        else:
            if not args.root:
                print(f"error: {args.dataset} needs --root", file=sys.stderr)
                return 2
            dataset = build_dataset(
                args.dataset,
                root=args.root,
                split=args.split,
                images=args.images,
                masks=args.masks,
                class_names=names,
                num_classes=args.num_classes,
            )
            info, pairs = dataset.info, dataset.pairs
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = check_pairs(
        pairs, info, verify_images=not args.fast, convert_dir=args.convert_rgb, progress=True
    )
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


def _parse_scales(text: str) -> tuple[float, ...]:
    """``"0.5:0.25:1.75"`` (start:step:stop, inclusive) or ``"0.5,1,1.5"`` -> scales."""
    try:
        if ":" in text:
            start, step, stop = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return tuple(round(start + i * step, 6) for i in range(count))
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"scales {text!r}: give start:step:stop (0.5:0.25:1.75) or a list (0.5,1,1.5)"
        ) from None


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scales", type=_parse_scales, default=(1.0,),
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
    p.add_argument("--batch-size", type=int, default=4,
                   help="images, flips or windows per forward pass")
    p.add_argument("--weights", help="training checkpoint, state_dict or .tflite file")
    p.add_argument("--num-classes", type=int,
                   help="classes of a bare state_dict (default: read from its classifier)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option for a bare state_dict, e.g. width_mult=0.5 (repeatable)")


def _model_options(items: list[str], flag: str = "--model-option") -> dict:
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r} is not KEY=VALUE (e.g. width_mult=0.5)")
        options[key.strip()] = yaml.safe_load(value)
    return options


def _crf_options(items: list[str]) -> dict:
    if not items:
        return {}
    import inspect

    from deeplab.crf import dense_crf

    options = _model_options(items, "--crf-option")
    known = [k for k, v in inspect.signature(dense_crf).parameters.items()
             if v.kind is inspect.Parameter.KEYWORD_ONLY]
    for key in options:
        if key not in known:
            raise ValueError(f"--crf-option {key!r} is not a CRF parameter; use one of: "
                             + ", ".join(known))
    return options


def _segmenter_options(args: argparse.Namespace) -> dict:
    crop = args.crop or (513 if args.sliding_window else None)
    return dict(scales=args.scales, flip=args.flip, crop=crop, overlap=args.overlap,
                crf=args.crf or bool(args.crf_option), crf_options=_crf_options(args.crf_option),
                output_stride=args.output_stride, device=args.device,
                batch_size=args.batch_size)


def _build_segmenter(args: argparse.Namespace, model: str | None, dataset: str | None = None):
    """The Segmenter that ``--weights`` / ``--model`` / nothing (the default zoo model) ask for."""
    from deeplab.inference import Segmenter
    from deeplab.weights import list_entries

    options = _segmenter_options(args)
    if args.weights:
        return Segmenter.from_weights(args.weights, model=model, num_classes=args.num_classes,
                                      dataset=dataset,
                                      model_options=_model_options(args.model_option), **options)
    if model is not None and model not in {e.name for e in list_entries(kind="segmentation")}:
        zoo = ", ".join(e.name for e in list_entries(kind="segmentation"))
        raise ValueError(f"{model!r} is not a pretrained zoo entry ({zoo}); for an "
                         "architecture of your own training pass its file with --weights")
    return Segmenter.from_pretrained(model, **options)


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
    p.add_argument("--quiet", action="store_true", help="no progress bar or class shares")
    _add_inference_options(p)


def _run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from deeplab.inference import find_images, load_image, save_prediction

    paths = find_images(args.images)
    if not paths:
        print(f"error: no images found in {' '.join(args.images)}", file=sys.stderr)
        return 2
    try:
        segmenter = _build_segmenter(args, args.model, args.dataset)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.portrait and args.portrait not in segmenter.class_names:
        print(f"error: --portrait {args.portrait!r} is not a class of this model; choose one "
              f"of: {', '.join(segmenter.class_names)}", file=sys.stderr)
        return 2
    failed, stems = [], set()
    bar = tqdm(paths, unit="image", disable=args.quiet or len(paths) < 2)
    for path in bar:
        try:
            image = load_image(path)
        except (OSError, ValueError) as err:
            tqdm.write(f"error: {err}", file=sys.stderr)
            failed.append(path)
            continue
        pred = segmenter.predict(image, probabilities=args.probs)
        stem, n = path.stem, 1
        while stem in stems:  # same name in two folders: keep both
            n += 1
            stem = f"{path.stem}-{n}"
        stems.add(stem)
        save_prediction(pred, args.out, stem, alpha=args.alpha, probabilities=args.probs,
                        portrait=args.portrait)
        if not args.quiet:
            tqdm.write(f"{path.name}: {pred.summary()}")
    done = len(paths) - len(failed)
    if failed:
        print(f"{done} of {len(paths)} images written to {args.out}; unreadable: "
              f"{', '.join(str(p) for p in failed)}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{done} image{'s' if done != 1 else ''} written to {args.out}")
    return 0


# --- deeplab zoo -------------------------------------------------------------


def _add_zoo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fetch", metavar="NAME", help="download (or find) and verify an entry's file")
    p.add_argument(
        "--save",
        nargs=2,
        metavar=("NAME", "OUT"),
        help="convert an entry and save the model as a PyTorch state_dict (.pt)",
    )


def _run_zoo(args: argparse.Namespace) -> int:
    from deeplab.weights import WeightsError, entry_path, get_entry
    from deeplab.weights.zoo import zoo_table

    try:
        if args.fetch:
            print(entry_path(get_entry(args.fetch)))
            return 0
        if args.save:
            import torch

            from deeplab.models import create_model

            name, out = args.save
            entry = get_entry(name)
            model = create_model(entry.arch, pretrained=entry.name)
            torch.save(model.state_dict(), out)
            print(f"saved {name} ({entry.arch}, {dict(entry.options)}) to {out}")
            return 0
    except (KeyError, WeightsError) as e:
        # The messages name the file or entry and the fix; a traceback adds nothing.
        print(f"deeplab zoo: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    print(zoo_table())
    return 0


# --- deeplab eval -------------------------------------------------------------


def _parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give pixel widths such as 1,2,4,8") from None


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="training config YAML: model, dataset, normalisation")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--pretrained", metavar="NAME", help="zoo entry to evaluate")
    p.add_argument("--model", help="registered architecture of a bare state_dict in --weights")
    p.add_argument("--dataset", help="voc, cityscapes, ade20k, camvid or folder")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--split", help="split to evaluate (default: the config's val split, or val)")
    p.add_argument("--trimap", type=_parse_ints, default=(), metavar="WIDTHS",
                   help="also mean IoU within bands around boundaries, e.g. 1,2,4,8,16,32")
    p.add_argument("--out", metavar="JSON", help="write the metrics here")
    p.add_argument("--workers", type=int, default=2, help="data loader processes")
    p.add_argument("--max-images", type=int, help="stop after this many images (quick checks)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_inference_options(p)
    p.set_defaults(batch_size=1)


def _run_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from deeplab.config import load_config, to_dict
    from deeplab.data.datasets import build_dataset
    from deeplab.data.transforms import eval_transform, pad_collate
    from deeplab.evaluate import evaluate, format_report, save_results

    try:
        cfg = load_config(args.config, args.overrides) if args.config else None
        if args.overrides and cfg is None:
            raise ValueError(f"overrides {args.overrides} need a config file: -c config.yaml")
        name = args.dataset or (cfg.data.dataset if cfg else None)
        root = args.data_root or (cfg.data.root if cfg else None)
        split = args.split or (cfg.data.val_split if cfg else "val")
        if not name or not root:
            raise ValueError("say which data: --dataset NAME --data-root DIR, or -c config.yaml")
        options = dict(cfg.data.options) if cfg else {}
        num_classes = args.num_classes or (cfg.model.num_classes if cfg else None)
        if name == "folder" and num_classes:  # else class_names.txt says the count
            options.setdefault("num_classes", num_classes)
        dataset = build_dataset(name, root=root, split=split, **options)
        segmenter = _eval_segmenter(args, cfg, dataset_name=name, num_classes=dataset.num_classes)
        if segmenter.num_classes != dataset.num_classes:
            raise ValueError(
                f"the model predicts {segmenter.num_classes} classes but {name} has "
                f"{dataset.num_classes}; evaluate a model trained on {name}"
            )
        mean = segmenter.mean.flatten().tolist()
        std = segmenter.std.flatten().tolist()
        # k * output_stride + 1 padding keeps corners aligned; fixed-size models resize instead.
        stride = None if segmenter.input_size else getattr(segmenter.model, "output_stride", None)
        dataset.transform = eval_transform(mean=mean, std=std, output_stride=stride)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=pad_collate)
    max_batches = None if args.max_images is None else -(-args.max_images // args.batch_size)
    results = evaluate(segmenter, loader, num_classes=dataset.num_classes, trimap=args.trimap,
                       progress=not args.quiet, max_batches=max_batches)
    print(format_report(results, dataset.class_names))
    setup = dict(scales=list(segmenter.scales), flip=segmenter.flip, crf=segmenter.crf,
                 crop=segmenter.crop, output_stride=stride)
    print(f"{name} {split}: mean IoU {100 * results['miou']:.2f}% on {results['images']} "
          f"images ({', '.join(f'{k}={v}' for k, v in setup.items())})")
    if args.out:
        model = args.weights or args.pretrained or (cfg.model.pretrained if cfg else None)
        save_results(results, args.out, model=model, dataset=name, split=split,
                     class_names=list(dataset.class_names), **setup,
                     config=to_dict(cfg) if cfg else None)
        print(f"metrics written to {args.out}")
    return 0


def _eval_segmenter(args: argparse.Namespace, cfg, *, dataset_name: str, num_classes: int):
    """What to evaluate: --weights, --pretrained, the config's pretrained entry or its
    best checkpoint."""
    from pathlib import Path

    from deeplab.inference import Segmenter

    options = _segmenter_options(args)
    if cfg is not None:
        from deeplab.train import normalisation

        mean, std = normalisation(cfg)
    if args.weights:
        if cfg is not None and args.model is None and not args.num_classes:
            # A bare state_dict of the config's network; checkpoints bring their own config.
            options = dict(mean=mean, std=std, **options)
            return Segmenter.from_weights(args.weights, model=cfg.model.name,
                                          num_classes=num_classes, dataset=dataset_name,
                                          model_options=dict(cfg.model.options), **options)
        return Segmenter.from_weights(args.weights, model=args.model,
                                      num_classes=args.num_classes or num_classes,
                                      dataset=dataset_name,
                                      model_options=_model_options(args.model_option), **options)
    pretrained = args.pretrained or (cfg.model.pretrained if cfg else None)
    if pretrained:
        return Segmenter.from_pretrained(pretrained, **options)
    if cfg is not None:
        best = Path(cfg.train.out_dir) / "best.pt"
        if best.is_file():
            return Segmenter.from_checkpoint(best, **options)
        raise ValueError(f"no weights to evaluate: {best} does not exist; pass --weights FILE")
    raise ValueError("say what to evaluate: --weights FILE, --pretrained NAME or -c config.yaml")


# --- deeplab train ------------------------------------------------------------


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML recipe (configs/*.yaml); defaults if omitted")
    p.add_argument(
        "--resume", nargs="?", const="", metavar="PATH",
        help="continue exactly from a checkpoint (default: OUT_DIR/last.pt); without -c the "
        "checkpoint's own config is used, overrides still apply",
    )  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. optim.lr=0.01 data.root=/data/camvid")  # fmt: skip


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from deeplab.config import ConfigError, apply_overrides, from_dict, load_config, to_dict
    from deeplab.train import CheckpointError, load_checkpoint, train
    from deeplab.weights import WeightsError

    try:
        resume = Path(args.resume) if args.resume else None
        if resume is not None and args.config is None:
            cfg = apply_overrides(from_dict(load_checkpoint(resume)["config"]), args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        if args.resume == "":
            resume = Path(cfg.train.out_dir) / "last.pt"
        if args.print_config:
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        progress = train(cfg, resume=resume)
    except (ConfigError, CheckpointError, WeightsError) as e:
        print(f"deeplab train: {e}", file=sys.stderr)
        return 2
    print(f"{progress.status} at step {progress.step}; checkpoint {cfg.train.out_dir}/last.pt"
          + (f"; best val mIoU {100 * progress.best_miou:.2f}%" if progress.best_miou >= 0 else ""))
    if progress.status == "interrupted":
        print("continue with: deeplab train --resume " + f"{cfg.train.out_dir}/last.pt")
        return 130
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
