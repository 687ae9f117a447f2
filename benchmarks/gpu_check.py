"""The CUDA paths, checked and timed on a machine with an NVIDIA GPU (CI has none).

    python benchmarks/gpu_check.py --camvid DATA/camvid --weights-dir WEIGHTS --out OUT

1. Training on CUDA: a few steps of the CamVid recipe in fp32, bf16 and fp16 (with the
   gradient scaler) and channels-last; the loss is finite and falls; ``--resume`` from
   ``last.pt`` continues on the GPU.
2. ``torchrun`` with one process: the NCCL process group, validation's confusion matrix
   summed through the GPU (``metrics.all_reduce_sum``).
3. Inference: forward milliseconds of the main models at 513x513 in fp32, bf16 and fp16;
   ``Segmenter`` labels at fp32 and fp16 agreeing; ``deeplab eval --device cuda`` equal to
   the CPU's on the same images.
4. The dense CRF's torch path on the GPU against the numba path on the CPU.

Prints one line per check (``ok`` or ``FAILED``) and the timing tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
failures: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok    ' if ok else 'FAILED'} {name} {detail}", flush=True)
    if not ok:
        failures.append(name)


def run(args: list[str], env: dict | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})})  # fmt: skip
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout if result.returncode == 0 else ""


def training(camvid: Path, out: Path) -> None:
    common = ["-c", "camvid_v3plus_mobilenetv2", f"data.root={camvid}",
              "model.backbone_weights=null", "model.init_from=deeplabv3_mnv2_pascal_quant",
              "train.device=cuda", "train.iters=12", "train.val_every=12", "train.log_every=1",
              "train.progress=false", "data.num_workers=2", "train.batch_size=8"]  # fmt: skip
    for amp in ("none", "bf16", "fp16"):
        run_dir = out / f"train_{amp}"
        text = run([sys.executable, "-m", "deeplab.cli", "train", *common,
                    f"train.out_dir={run_dir}", f"train.amp={amp}"])  # fmt: skip
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] \
            if (run_dir / "metrics.jsonl").is_file() else []  # fmt: skip
        losses = [r["loss"] for r in rows if "loss" in r]
        rates = [r["img_s"] for r in rows if "img_s" in r][2:]
        ok = bool(losses) and all(np.isfinite(losses)) and np.mean(losses[-3:]) < losses[0]
        check(f"train on CUDA, amp={amp}", ok and "done at step 12" in text,
              f"loss {losses[0]:.3f} -> {np.mean(losses[-3:]):.3f}, "
              f"{statistics.median(rates):.1f} img/s" if losses and rates else "")  # fmt: skip
    text = run([sys.executable, "-m", "deeplab.cli", "train", "--resume",
                str(out / "train_none" / "last.pt"), "train.iters=15"])  # fmt: skip
    check("resume on CUDA", "done at step 15" in text)
    ddp = out / "train_ddp"
    text = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=1", "-m", "deeplab.cli", "train", *common,
                f"train.out_dir={ddp}", "train.iters=4", "train.val_every=4"])  # fmt: skip
    check("torchrun (NCCL) training with validation", "done at step 4" in text
          and "val mIoU" in text)  # fmt: skip


def inference(camvid: Path) -> None:
    from deeplab.hub import create_model, load_pretrained
    from deeplab.inference import Segmenter

    print("\nforward ms at 513x513, batch 1, CUDA (median of 20 after 5 warm-ups)")
    print("| model | fp32 | bf16 | fp16 |")
    print("|---|---|---|---|")
    x = torch.randn(1, 3, 513, 513, device="cuda")
    for name in ("deeplabv3_mobilenetv2", "deeplabv3plus_mobilenetv2", "deeplabv3_resnet101",
                 "deeplabv3plus_xception65"):  # fmt: skip
        model = create_model(name, num_classes=21).cuda().eval()
        cells = []
        for dtype in (None, torch.bfloat16, torch.float16):
            times = []
            with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float32,
                                                 enabled=dtype is not None):  # fmt: skip
                for k in range(25):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    model(x)
                    torch.cuda.synchronize()
                    if k >= 5:
                        times.append(time.perf_counter() - start)
            cells.append(f"{1000 * statistics.median(times):.2f}")
        print(f"| {name} | {' | '.join(cells)} |")
    model, info = load_pretrained()
    photos = sorted((camvid / "val").glob("*.png"))[:8]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in photos])
    cpu = Segmenter.from_info(model, info).labels(images)
    gpu = Segmenter.from_info(load_pretrained()[0], info, device="cuda").labels(images)
    half = Segmenter.from_info(load_pretrained()[0], info, device="cuda",
                               precision="fp16").labels(images)  # fmt: skip
    check("Segmenter on CUDA equals the CPU", (cpu == gpu).mean() > 0.999,
          f"{100 * (cpu == gpu).mean():.3f}% of pixels")
    check("fp16 on CUDA agrees with fp32", (half == gpu).mean() > 0.99,
          f"{100 * (half == gpu).mean():.3f}% of pixels")


def crf() -> None:
    from deeplab.crf import clear_cache, dense_crf

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(21, 360, 480)).astype(np.float32)), 0)
    times = {}
    outs = {}
    for device in ("cuda", "cpu"):
        p = probs.to(device)
        im = torch.from_numpy(image).to(device)
        dense_crf(im, p)  # warm-up (the numba path compiles once)
        samples = []
        for _ in range(5):
            clear_cache()
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outs[device] = dense_crf(im, p).cpu()
            if device == "cuda":
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - start)
        times[device] = 1000 * statistics.median(samples)
    agree = (outs["cuda"].argmax(0) == outs["cpu"].argmax(0)).float().mean().item()
    check("dense CRF: torch path on CUDA agrees with the CPU path", agree > 0.99,
          f"{100 * agree:.2f}%; 480x360, 21 classes, 5 iterations, both lattices: "
          f"CUDA {times['cuda']:.0f} ms, CPU ({torch.get_num_threads()} threads) "
          f"{times['cpu']:.0f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camvid", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    args.out.mkdir(parents=True, exist_ok=True)
    training(args.camvid, args.out)
    inference(args.camvid)
    crf()
    print(f"\n{len(failures)} failed: {', '.join(failures) or 'none'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
