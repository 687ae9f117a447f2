"""Data pipeline throughput on CamVid: decode only vs. the training and evaluation transforms.

    python benchmarks/bench_data.py --root ../shared/data/camvid [--items 60] [--workers 0 2]

Prints one row per stage: milliseconds per item and the ratio against decoding alone
(measured in the same run), then DataLoader throughput with the training transform for
each worker count. Times on a shared machine move with its load; the ratios move less.
"""

from __future__ import annotations

import argparse
import time

import torch

from deeplab.data.check import check_pairs
from deeplab.data.datasets import camvid_dataset
from deeplab.data.transforms import eval_transform, train_transform


def per_item_ms(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return 1000 * (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="CamVid root (train.txt, val.txt)")
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)

    train_tf = train_transform(crop_size=(360, 480))
    ds = camvid_dataset(root=args.root, split="train", transform=train_tf, seed=0)
    n = min(args.items, len(ds))
    ds.read(0)  # warm the file cache
    rows = [("decode image + mask", per_item_ms(ds.read, n))]
    rows.append(("+ train transform (scale, flip, crop 360x480)", per_item_ms(ds.__getitem__, n)))
    ds.transform = eval_transform(output_stride=16)
    rows.append(("+ eval transform (pad to 369x481)", per_item_ms(ds.__getitem__, n)))
    base = rows[0][1]
    print(f"CamVid train, {n} items, 1 intra-op thread")
    print(f"{'stage':<48} {'ms/item':>8} {'x decode':>9}")
    for name, ms in rows:
        print(f"{name:<48} {ms:8.1f} {ms / base:9.2f}")

    ds.transform = train_tf
    print(f"\n{'DataLoader workers (batch 8, train transform)':<48} {'items/s':>8}")
    subset = torch.utils.data.Subset(ds, range(n))
    for workers in args.workers:
        loader = torch.utils.data.DataLoader(subset, batch_size=8, num_workers=workers)
        start = time.perf_counter()
        for _ in loader:
            pass
        print(f"{workers:<48} {n / (time.perf_counter() - start):8.1f}")

    start = time.perf_counter()
    report = check_pairs(ds.pairs, ds.info, verify_images=False)
    seconds = time.perf_counter() - start
    print(f"\ncheck-data --fast on {report.num_images} masks: {seconds:.1f} s")


if __name__ == "__main__":
    main()
