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
    from deeplab.weights import entry_path, get_entry
    from deeplab.weights.zoo import zoo_table

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
    print(zoo_table())
    return 0


# --- new commands go above this line ----------------------------------------

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]

COMMANDS: list[Command] = [
    ("models", "list models with parameters and multiply-adds", _add_models, _run_models),
    ("zoo", "list pretrained weights; fetch or convert one", _add_zoo, _run_zoo),
]


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
