"""``deeplab train``, ``recipes``, ``check-data`` and ``labelme2voc``: data and training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
