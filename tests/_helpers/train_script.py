"""``python tests/_helpers/train_script.py OUT_DIR key=value ... [--val]``: train TinyNet
on Synthetic, for the tests that need a real process (signals, torchrun)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for _helpers

from _helpers.toys import Synthetic, TinyNet, tiny_config  # noqa: E402
from deeplab.train import train  # noqa: E402


def main(argv: list[str]) -> int:
    """``python tests/test_train.py OUT_DIR key=value ...``: train TinyNet on Synthetic."""
    out_dir, *overrides = argv
    torch.set_num_threads(1)
    cfg = tiny_config(out_dir, *overrides)
    val_set = Synthetic(8, seed=None) if "--val" in sys.argv else None
    torch.manual_seed(0)
    progress = train(cfg, model=TinyNet(bn=True, dropout=0.0), train_set=Synthetic(16),
                     val_set=val_set)  # fmt: skip
    print(f"finished: {progress.status} at step {progress.step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main([a for a in sys.argv[1:] if a != "--val"]))
