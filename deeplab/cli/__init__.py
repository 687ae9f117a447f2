"""`deeplab <command>`: parse the arguments, make one library call, print the result.

Every command is two functions, ``_add_<name>(parser)`` and ``_run_<name>(args) -> int``,
in the module of its group (``images``: predict, eval, tune-crf; ``training``: train,
recipes, check-data, labelme2voc; ``deploy``: export, serve; ``info``: models, zoo,
examples, env), listed in ``COMMANDS``. Commands import the library when they run, so
``deeplab --help`` does not load torch. A user's mistake (a missing file, a bad option,
broken data) ends as one line on stderr that names the file and the fix, with exit
status 2; set
``DEEPLAB_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from deeplab.cli import deploy, images, info, training

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]

COMMANDS: list[Command] = [
    ("models", "list models with parameters and multiply-adds",
     info._add_models, info._run_models),
    ("predict", "segment images: label PNGs, colour maps, overlays",
     images._add_predict, images._run_predict),
    ("eval", "mean IoU on a dataset split (multi-scale, flip, CRF, trimap)",
     images._add_eval, images._run_eval),
    ("labelme2voc", "convert labelme JSON files to VOC-style index masks",
     training._add_labelme2voc, training._run_labelme2voc),
    ("check-data", "check a dataset's files and print class frequencies and weights",
     training._add_check_data, training._run_check_data),
    ("zoo", "list pretrained weights; fetch or convert one", info._add_zoo, info._run_zoo),
    ("train", "train a model from a YAML recipe with key=value overrides",
     training._add_train, training._run_train),
    ("export", "export a model to ONNX or TFLite and check it against PyTorch",
     deploy._add_export, deploy._run_export),
    ("serve", "a web page and REST API for segmenting photos",
     deploy._add_serve, deploy._run_serve),
    ("tune-crf", "choose the dense CRF's parameters for a checkpoint on training images",
     images._add_tune_crf, images._run_tune_crf),
    ("recipes", "list the training recipes; print one or write it out to edit",
     training._add_recipes, training._run_recipes),
    ("examples", "the example photos shipped with deeplab; copy them out",
     info._add_examples, info._run_examples),
    ("env", "versions, extras, CPU features and GPUs: paste it into a bug report",
     info._add_env, info._run_env),
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

