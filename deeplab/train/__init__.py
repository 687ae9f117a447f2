"""Training: ``train(cfg)`` builds everything from a config (run.py) and runs the loop
(loop.py); batch-norm modes, data order, optimizer and process runtime have a file each."""

from deeplab.train.batchnorm import (
    configure_batchnorm,
    freeze_modules,
    recompute_bn_statistics,
    resolve_bn_mode,
    set_train_mode,
)
from deeplab.train.loop import Plan, Progress, fit, train_step
from deeplab.train.optim import build_optimizer, poly_schedule
from deeplab.train.run import train
from deeplab.train.runtime import Process, init_process
from deeplab.train.sampling import BatchStream, ShardedBatchSampler

__all__ = [
    "BatchStream",
    "Plan",
    "Process",
    "Progress",
    "ShardedBatchSampler",
    "build_optimizer",
    "configure_batchnorm",
    "fit",
    "freeze_modules",
    "init_process",
    "poly_schedule",
    "recompute_bn_statistics",
    "resolve_bn_mode",
    "set_train_mode",
    "train",
    "train_step",
]
