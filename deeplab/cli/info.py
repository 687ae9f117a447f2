"""``deeplab models``, ``zoo``, ``examples`` and ``env``: what there is, and where."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeplab.cli.common import size


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=size, default=(513, 513), help="input size, H or HxW")
    p.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    p.add_argument("--num-classes", type=int, default=21)


def _run_models(args: argparse.Namespace) -> int:
    from deeplab.models.flops import model_table

    print(model_table(size=args.size, output_stride=args.output_stride,
                      num_classes=args.num_classes))  # fmt: skip
    return 0


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
