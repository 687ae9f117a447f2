"""Confusion-matrix metrics and trimap IoU against cases computed by hand."""

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deeplab.metrics import ConfusionMatrix, TrimapIoU, boundary_map, trimap_bands


def test_hand_computed_case_with_ignore_and_absent_class():
    # 4 classes; class 3 appears nowhere; the 255 pixel must be skipped even though
    # the prediction there (0) would otherwise count against class 0.
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    r = cm.compute()
    # class 0: TP 1, GT 2, pred 1 -> 1/2; class 1: TP 2, GT 2, pred 4 -> 2/4;
    # class 2: TP 0, GT 1, pred 0 -> 0/1; class 3: 0/0 -> NaN.
    assert r["iou"][:3] == pytest.approx([0.5, 0.5, 0.0])
    assert math.isnan(r["iou"][3])
    assert r["miou"] == pytest.approx(1 / 3)
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    assert r["class_acc"][:3] == pytest.approx([0.5, 1.0, 0.0])
    assert r["mean_class_acc"] == pytest.approx(0.5)
    assert r["fw_iou"] == pytest.approx((2 * 0.5 + 2 * 0.5 + 1 * 0.0) / 5)
    assert r["pixels"] == 5
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_predicted_but_absent_class_counts_as_zero():
    target = np.zeros((2, 4), dtype=np.uint8)
    pred = np.array([[0, 0, 0, 1], [0, 0, 0, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    r = cm.compute()
    assert r["iou"][0] == pytest.approx(7 / 8)
    assert r["iou"][1] == 0.0  # predicted, never true: counts in the mean
    assert math.isnan(r["iou"][2])
    assert r["miou"] == pytest.approx((7 / 8 + 0.0) / 2)


def test_matches_brute_force_on_random_batches_and_accumulates():
    gen = torch.Generator().manual_seed(0)
    k = 5
    cm = ConfusionMatrix(k, ignore_index=255)
    preds, targets = [], []
    for _ in range(3):
        t = torch.randint(0, k, (2, 7, 9), generator=gen)
        t[torch.rand(t.shape, generator=gen) < 0.1] = 255
        p = torch.randint(0, k, (2, 7, 9), generator=gen)
        cm.update(p, t)
        preds.append(p.numpy().ravel())
        targets.append(t.numpy().ravel())
    p, t = np.concatenate(preds), np.concatenate(targets)
    keep = t != 255
    p, t = p[keep], t[keep]
    ious = []
    for c in range(k):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        ious.append(inter / union)
    r = cm.compute()
    assert r["iou"] == pytest.approx(ious)
    assert r["miou"] == pytest.approx(np.mean(ious))
    assert r["pixel_acc"] == pytest.approx(np.mean(p == t))
    cm.reset()
    assert cm.matrix.sum() == 0


def test_errors_name_the_problem():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target label 7"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7))
    with pytest.raises(ValueError, match="differs from target shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))


def test_format_table_lists_every_class_and_summary():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))
    text = cm.format_table(["sky", "road", "car"])
    lines = text.splitlines()
    assert lines[1].startswith("sky") and "100.00" in lines[1]
    assert lines[3].startswith("car") and "0.00" in lines[3]
    assert any(line.startswith("mean IoU") and "50.00" in line for line in lines)


def test_boundary_and_bands_by_hand():
    # Left half class 0, right half class 1: boundary = columns 2 and 3.
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[:, :, 3:] = 1
    edge = boundary_map(target)[0]
    assert edge.any(0).nonzero().ravel().tolist() == [2, 3]
    b0, b1, b5 = trimap_bands(target, [0, 1, 5])
    assert b0[0].any(0).nonzero().ravel().tolist() == [2, 3]
    assert b1[0].any(0).nonzero().ravel().tolist() == [1, 2, 3, 4]
    assert bool(b5.all())


def test_trimap_iou_by_hand():
    target = torch.zeros(6, 6, dtype=torch.long)
    target[:, 3:] = 1
    pred = torch.zeros(6, 6, dtype=torch.long)
    pred[:, 4:] = 1  # column 3 wrongly predicted as class 0
    tri = TrimapIoU(2, widths=(0, 1, 3))
    tri.update(pred, target)
    r = tri.compute()
    # width 0 (cols 2,3): class 0 6/12, class 1 0/6 -> 1/4
    # width 1 (cols 1-4): class 0 12/18, class 1 6/12 -> 7/12
    # width 3 (all):      class 0 18/24, class 1 12/18 -> 17/24
    assert r[0] == pytest.approx(1 / 4)
    assert r[1] == pytest.approx(7 / 12)
    assert r[3] == pytest.approx(17 / 24)


def test_trimap_void_band_is_a_boundary_but_never_scored():
    # VOC style: a void (255) band between two objects.
    target = torch.tensor([[0, 0, 255, 255, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1, 1, 0]])
    tri = TrimapIoU(2, widths=(0,))
    tri.update(pred, target)
    m = tri.matrices[0].matrix
    # Only pixels 1 (class 0, predicted 1) and 4 (class 1, predicted 1) are scored.
    assert m.tolist() == [[0, 1], [0, 1]]


def _ddp_worker(rank: int, world: int, port: int, out: "mp.Queue") -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        cm = ConfusionMatrix(3)
        # Rank r sees r+1 pixels of class r, all predicted correctly.
        cm.update(torch.full((rank + 1,), rank), torch.full((rank + 1,), rank))
        tri = TrimapIoU(3, widths=(1,))
        tri.update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 1]]))
        cm.all_reduce()
        tri.all_reduce()
        out.put((rank, cm.matrix.diagonal().tolist(), tri.matrices[1].matrix.sum().item()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_over_gloo_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for _, diag, tri_pixels in results:
        assert diag == [1, 2, 0]
        assert tri_pixels == 4  # two pixels per process, both in the band
