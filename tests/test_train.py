"""Training loop: schedule, sampler, BN modes, checkpoints and exact resume."""

from __future__ import annotations

import json
import os
import signal
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
from _helpers.toys import NUM_CLASSES, Synthetic, TinyNet, tiny_config

from deeplab.checkpoint import CheckpointError
from deeplab.checkpoint import read as load_checkpoint
from deeplab.checkpoint import save as save_checkpoint
from deeplab.train import (
    BatchStream,
    ShardedBatchSampler,
    build_optimizer,
    configure_batchnorm,
    poly_schedule,
    set_train_mode,
    train,
)


def test_time_driven_schedule_ends_at_the_end_of_its_decay():
    """A 20 s budget at 0.5 s per step (and 2 s per validation, every 10 steps): the run
    stops by time, long before its 1000 steps, with its last steps at the end of the poly
    decay, and its final model validated."""
    from deeplab.train.loop import Plan, Progress, fit
    from deeplab.train.optim import Clock
    from deeplab.train.runtime import Process

    now = [0.0]
    clock = Clock(20.0, now=lambda: now[0])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = poly_schedule(opt, max_iters=1000, power=0.9, clock=clock)
    lrs, validated = [], []

    def step(i):
        lrs.append(opt.param_groups[0]["lr"])
        now[0] += 0.5
        opt.step()
        sched.step()
        return {"loss": 1.0}

    def validate(progress, elapsed_s):
        validated.append(progress.step)
        now[0] += 2.0
        return 0.5

    plan = Plan(iters=1000, images_per_step=1, val_every=10, ckpt_every=1000,
                max_minutes=20 / 60, progress_bar=False, clock=clock)  # fmt: skip
    done = fit(step, plan=plan, progress=Progress(), proc=Process(0, 1, torch.device("cpu")),
               log=lambda r: None, save=lambda p: None, validate=validate)  # fmt: skip
    # 20 steps and 2 validations take 14 s; 2 s stay reserved for the last validation
    assert done.status == "done" and done.step == 28, done
    assert validated[-1] == done.step  # the final model is scored
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] < 0.1 * 0.1 and lrs[0] == pytest.approx(0.1)
    assert clock.fraction() == 1.0 and done.elapsed_s == pytest.approx(now[0])


def test_a_shortened_budget_still_decays_to_the_end(tmp_path):
    """Through `train`: 1.5 s of training for a schedule of 100000 steps."""
    cfg = tiny_config(tmp_path, "train.iters=100000", "train.schedule=time", "train.log_every=1",
                      "train.max_minutes=0.025", "train.val_every=0")  # fmt: skip
    progress = train(cfg, model=TinyNet(), train_set=Synthetic(16), val_set=Synthetic(4))
    assert progress.status == "done" and 3 <= progress.step < 100000
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[-1] < 0.3 * cfg.optim.lr and "val_miou" in rows[-1]
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["step"] == progress.step and saved["elapsed_s"] >= 1.0


def test_poly_schedule_with_warmup():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = poly_schedule(opt, max_iters=100, power=0.9, warmup_iters=10, warmup_factor=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[5] == pytest.approx(0.01 * (1 - 5 / 100) ** 0.9 * (0.1 + 0.9 * 0.5))
    assert lrs[50] == pytest.approx(0.01 * 0.5**0.9)
    assert lrs[99] == pytest.approx(0.01 * 0.01**0.9)
    assert max(lrs) < 0.01


def test_sampler_shards_make_up_the_global_batch_and_resume_mid_epoch():
    single = list(ShardedBatchSampler(12, batch_size=4, seed=3))
    ranks = [list(ShardedBatchSampler(12, batch_size=2, seed=3, rank=r, world_size=2))
             for r in range(2)]  # fmt: skip
    assert len(single) == len(ranks[0]) == 3
    for step in range(3):
        assert sorted(single[step]) == sorted(ranks[0][step] + ranks[1][step])
    assert sorted(i for b in single for i in b) == list(range(12))  # a permutation
    resumed = ShardedBatchSampler(12, batch_size=4, seed=3)
    resumed.set_position(0, 1)
    assert list(resumed) == single[1:]
    resumed.set_position(1, 0)
    assert list(resumed) != single  # a new order each epoch


def test_batch_stream_continues_from_its_state():
    def stream():
        return BatchStream(Synthetic(10), ShardedBatchSampler(10, batch_size=3, seed=1))

    a = stream()
    first = [next(a) for _ in range(7)]  # 3 batches per epoch: crosses two epochs
    assert a.state() == {"epoch": 2, "batch": 1}
    b = stream()
    for _ in range(4):
        next(b)
    c = stream()
    c.load_state(b.state())
    for want in first[4:]:
        got = next(c)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])


def test_too_small_dataset_is_explained():
    with pytest.raises(ValueError, match="fewer than one batch"):
        BatchStream(Synthetic(3), ShardedBatchSampler(3, batch_size=4))


def test_weight_decay_skips_bn_and_bias():
    model = TinyNet()
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {4}
    assert len(no_decay["params"]) == 3  # BN gamma, beta and the classifier bias


def test_frozen_bn_keeps_running_stats_and_gets_no_gradient():
    model = TinyNet()
    frozen = configure_batchnorm(model, "auto", images_per_bn=4)  # < 12 -> freeze
    bn = model.backbone[1]
    assert frozen == [bn] and not bn.weight.requires_grad
    set_train_mode(model, frozen)
    assert model.training and not bn.training
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    torch.testing.assert_close(bn.running_mean, before)
    assert bn.weight.grad is None
    assert configure_batchnorm(TinyNet(), "auto", images_per_bn=12) == []
    assert len(configure_batchnorm(TinyNet(), "freeze_backbone", images_per_bn=16)) == 1


def test_freeze_backbone_also_freezes_the_image_pooling_bn():
    # Real model on the meta device: only the structure matters here.
    from deeplab.hub import create_model
    from deeplab.models.layers import SingleValueBatchNorm2d

    with torch.device("meta"):
        model = create_model("deeplabv3plus_mobilenetv2", num_classes=NUM_CLASSES)
    frozen = configure_batchnorm(model, "freeze_backbone", images_per_bn=8)
    backbone_bn = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    pooling_bn = [m for m in model.modules() if isinstance(m, SingleValueBatchNorm2d)]
    head_bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    head_bn = [m for m in head_bn if m not in backbone_bn and m not in pooling_bn]
    assert len(pooling_bn) == 1 and head_bn
    assert frozen == backbone_bn + pooling_bn
    assert all(m.weight.requires_grad for m in head_bn)


def test_precise_bn_replaces_running_stats_by_the_batch_average():
    from deeplab.train import Process, recompute_bn_statistics

    torch.manual_seed(0)
    model = TinyNet()
    bn = model.backbone[1]
    bn.running_mean.fill_(5.0)  # stale statistics, far from the data's
    batches = [(torch.randn(2, 3, 8, 8) + 1.0, None) for _ in range(3)]
    model.train()
    recompute_bn_statistics(model, batches, num_batches=3, proc=Process(0, 1, torch.device("cpu")))
    conv_out = torch.cat([model.backbone[0](x) for x, _ in batches])
    torch.testing.assert_close(bn.running_mean, conv_out.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.1 and model.dropout.training  # settings restored
    # Frozen (eval-mode) BN keeps its statistics.
    bn.running_mean.fill_(5.0)
    bn.eval()
    recompute_bn_statistics(model, batches, num_batches=3, proc=Process(0, 1, torch.device("cpu")))
    assert torch.all(bn.running_mean == 5.0)


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("precise_bn", [False, True], ids=["plain", "precise_bn_validation"])
def test_resume_continues_exactly(tmp_path, precise_bn):
    common = ("train.iters=8", "train.batch_size=8", "train.accum_steps=2")  # 4 epochs
    if precise_bn:  # validation every 2 steps, each after re-estimating BN statistics
        common += ("train.val_every=2", "eval.precise_bn_batches=2")
    val = {"val_set": Synthetic(4)} if precise_bn else {}
    torch.manual_seed(0)
    one_go = train(tiny_config(tmp_path / "a", *common), model=TinyNet(),
                   train_set=Synthetic(16), **val)  # fmt: skip
    assert one_go.status == "done" and one_go.step == 8

    torch.manual_seed(0)
    half = train(tiny_config(tmp_path / "b", *common, "train.stop_at=3"), model=TinyNet(),
                 train_set=Synthetic(16), **val)  # fmt: skip
    assert half.status == "stopped" and half.step == 3
    mid = load_checkpoint(tmp_path / "b" / "last.pt")
    assert mid["step"] == 3 and mid["data"] == {"epoch": 1, "batch": 2}  # 4 micro-batches/epoch
    # A fresh model with other initial weights: everything must come from the checkpoint.
    torch.manual_seed(123)
    rest = train(tiny_config(tmp_path / "b", *common), model=TinyNet(), train_set=Synthetic(16),
                 resume=tmp_path / "b" / "last.pt", **val)  # fmt: skip
    assert rest.status == "done" and rest.step == 8

    a, b = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)
    # The run really trained: weights moved away from their start.
    torch.manual_seed(0)
    assert not torch.allclose(a["classifier.weight"], TinyNet().state_dict()["classifier.weight"])


def test_frozen_modules_keep_their_weights_and_channels_last_trains_the_same(tmp_path):
    common = ("model.frozen_modules=[backbone]", "train.iters=3")
    torch.manual_seed(0)
    start = TinyNet().state_dict()
    runs = {}
    for fmt in ("false", "true"):
        torch.manual_seed(0)
        train(tiny_config(tmp_path / fmt, *common, f"train.channels_last={fmt}"), model=TinyNet(),
              train_set=Synthetic(16))  # fmt: skip
        runs[fmt] = _weights(tmp_path / fmt / "last.pt")
    for key, value in runs["false"].items():
        if key.startswith("backbone."):  # conv and BN, running statistics included
            torch.testing.assert_close(value, start[key], rtol=0, atol=0, msg=key)
        # NHWC changes the summation order only.
        torch.testing.assert_close(runs["true"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(runs["false"]["classifier.weight"], start["classifier.weight"])


def test_unknown_frozen_module_is_named(tmp_path):
    from deeplab.config import ConfigError

    with pytest.raises(ConfigError, match=r"'backbone\.nope'.*top level: backbone"):
        train(tiny_config(tmp_path, "model.frozen_modules=[backbone.nope]"), model=TinyNet(),
              train_set=Synthetic(16))  # fmt: skip


def test_metrics_log_and_loss_goes_down(tmp_path):
    import json

    train(tiny_config(tmp_path, "train.iters=30", "optim.lr=0.2"), model=TinyNet(dropout=0.0),
          train_set=Synthetic(16))  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert {"loss", "lr", "img_s", "epoch"} <= rows[0].keys()
    assert np.mean([r["loss"] for r in rows[-5:]]) < 0.7 * np.mean([r["loss"] for r in rows[:5]])
    assert rows[-1]["lr"] < rows[0]["lr"]


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(tmp_path):
    # The signal arrives from a timer thread while the main thread trains.
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        progress = train(tiny_config(tmp_path, "train.iters=1000000"), model=TinyNet(),
                         train_set=Synthetic(16))  # fmt: skip
    finally:
        timer.cancel()
    assert progress.status == "interrupted" and 0 < progress.step < 1000000
    assert load_checkpoint(tmp_path / "last.pt")["step"] == progress.step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last\.pt is unreadable"):
        load_checkpoint(bad)
    good = save_checkpoint(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}})
    assert load_checkpoint(good)["model"]["w"].sum() == 2
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(truncated)


def test_tensorboard_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    import sys

    from deeplab.extras import MissingExtra

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # hidden, installed or not
    with pytest.raises(MissingExtra, match=r"pip install 'deeplab-pytorch\[tensorboard\]'"):
        train(tiny_config(tmp_path, "train.tensorboard=true"), model=TinyNet(),
              train_set=Synthetic(16))  # fmt: skip


def test_resume_from_best_restarts_from_its_weights_and_step(tmp_path, caplog):
    val = Synthetic(4)
    cfg = tiny_config(tmp_path, "train.iters=6", "train.val_every=2")
    torch.manual_seed(0)
    train(cfg, model=TinyNet(), train_set=Synthetic(16), val_set=val)
    best = load_checkpoint(tmp_path / "best.pt")
    assert "optimizer" not in best  # weights only: the size of the model
    torch.manual_seed(1)
    with caplog.at_level("WARNING", logger="deeplab"):
        progress = train(tiny_config(tmp_path / "again", "train.iters=9"), model=TinyNet(),
                         train_set=Synthetic(16), resume=tmp_path / "best.pt")  # fmt: skip
    assert "holds weights only" in caplog.text and "last.pt" in caplog.text
    assert progress.status == "done" and progress.step == 9
    rows = (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()
    assert int(json.loads(rows[0])["step"]) == best["step"] + 1  # continues after its step


def test_resume_of_a_checkpoint_without_model_info(tmp_path):
    """Checkpoints written before they described their model still resume."""
    torch.manual_seed(0)
    train(tiny_config(tmp_path, "train.stop_at=3"), model=TinyNet(), train_set=Synthetic(16))
    state = load_checkpoint(tmp_path / "last.pt")
    state.pop("info", None)
    save_checkpoint(tmp_path / "old.pt", state)
    progress = train(tiny_config(tmp_path), model=TinyNet(), train_set=Synthetic(16),
                     resume=tmp_path / "old.pt")  # fmt: skip
    assert (progress.status, progress.step) == ("done", 6)


def test_metrics_log_holds_each_step_once_after_a_resume(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, "train.ckpt_every=2")
    train(tiny_config(tmp_path, "train.ckpt_every=2", "train.stop_at=5"), model=TinyNet(),
          train_set=Synthetic(16))  # fmt: skip
    # As after kill -9 at step 5: the last checkpoint is step 4's, the log went further.
    state = load_checkpoint(tmp_path / "last.pt")
    state["step"], state["data"] = 4, {"epoch": 1, "batch": 0}
    save_checkpoint(tmp_path / "last.pt", state)
    train(cfg, model=TinyNet(), train_set=Synthetic(16), resume=tmp_path / "last.pt")
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("flags, expected", [("fpu sse avx512f avx512_bf16", "bf16"),
                                             ("fpu sse amx_tile amx_bf16", "bf16"),
                                             ("fpu sse avx2 avx512f", "none")])  # fmt: skip
def test_amp_auto_is_bf16_only_where_the_cpu_computes_it(tmp_path, monkeypatch, flags, expected):
    from deeplab import system
    from deeplab.train.runtime import resolve_amp

    monkeypatch.setattr(system, "_cpuinfo", lambda: f"processor : 0\nflags : {flags}\n")
    amp, why = resolve_amp(torch.device("cpu"))
    assert amp == expected and ("bf16" in why)
    # A run with train.amp=auto saves the resolved precision with its config.
    train(tiny_config(tmp_path, "train.iters=1", "train.amp=auto"), model=TinyNet(),
          train_set=Synthetic(4))  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text())["train"]["amp"] == expected
