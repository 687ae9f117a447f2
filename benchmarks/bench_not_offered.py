"""Runtimes measured and not offered: int8 onnxruntime and OpenVINO, against fp32 onnxruntime.

``deeplab`` offers a faster path only where it measured both faster and faithful (>= 99%
of pixels labelled as fp32). This script holds the measurements behind leaving these out:

- onnxruntime static int8 (QDQ, ``quantize_static``): the raw network (``deeplab export
  --raw``) quantised with activations calibrated on CamVid *train* frames and the labelme
  example photos, in three variants (per-channel weights; MinMax, percentile or entropy
  calibration; first and last convolutions kept in float or not);
- OpenVINO (``pip install openvino``, skipped without it) on the same ONNX file, fp32
  and its default precision (bf16 on CPUs with AMX).

Agreement is measured on other photos: the shipped photos (``deeplab/photos``) and every
20th CamVid val frame.

    pip install -e ".[export]" openvino
    DEEPLAB_WEIGHTS_DIR=../shared/weights python benchmarks/bench_not_offered.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from deeplab.data.images import example_photos, find_images, read_image
from deeplab.export import export_onnx, network_input, onnx_session
from deeplab.hub import load_pretrained

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


class Calibration(CalibrationDataReader):
    def __init__(self, inputs: list[np.ndarray]) -> None:
        self.inputs = iter(inputs)

    def get_next(self) -> dict | None:
        x = next(self.inputs, None)
        return None if x is None else {"input": x}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--models", nargs="*", default=["deeplabv3_mnv2_pascal_quant",
                                                   "deeplabv3_257_mv_gpu"])  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    print(f"CPU: {cpu}; {args.threads} threads; torch {torch.__version__}\n")
    camvid = args.shared / "data" / "camvid"
    calibration = (find_images([camvid / "train"])[::40]
                   + find_images([args.shared / "data" / "labelme_voc_example"]))  # fmt: skip
    photos = example_photos() + find_images([camvid / "val"])[::20]
    try:
        import openvino
    except ImportError:
        openvino = None
        print("OpenVINO is not installed: its rows are skipped (pip install openvino)")

    print(f"{'model':30s} {'runtime':48s} {'ms':>7s} {'vs fp32':>8s} {'labels agree':>13s}")
    for entry in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            measure(entry, Path(tmp), photos=photos, calibration=calibration,
                    threads=args.threads, repeats=args.repeats, openvino=openvino)  # fmt: skip


def measure(entry: str, tmp: Path, *, photos: list[Path], calibration: list[Path],
            threads: int, repeats: int, openvino) -> None:  # fmt: skip
    model, info = load_pretrained(entry)
    raw = export_onnx(model, info, tmp / "raw.onnx", raw=True)
    xs = [network_input(read_image(path), info).numpy() for path in photos]
    fp32 = onnx_session(raw, threads=threads)
    ref = [fp32.run(["logits"], {"input": x})[0].argmax(1) for x in xs]
    base = []  # the fp32 row's time: every ratio is against the same measurement

    def row(name: str, run) -> None:
        ms = median_ms(lambda: run(xs[0]), repeats)
        base.append(base[0] if base else ms)
        agree = np.mean([(run(x).argmax(1) == r).mean() for x, r in zip(xs, ref, strict=True)])
        print(f"{entry:30s} {name:48s} {ms:7.1f} {base[0] / ms:7.2f}x {100 * agree:12.2f}%",
              flush=True)  # fmt: skip

    row("onnxruntime fp32", lambda x: fp32.run(["logits"], {"input": x})[0])
    convs = [n.name for n in onnx.load(str(raw)).graph.node if n.op_type == "Conv"]
    variants = {
        "ort int8 per-channel, MinMax, all convs":
            dict(calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=[]),
        "ort int8 per-channel, percentile, ends float":
            dict(calibrate_method=CalibrationMethod.Percentile,
                 nodes_to_exclude=[convs[0], convs[-1]]),
        "ort int8 per-channel, entropy, ends float":
            dict(calibrate_method=CalibrationMethod.Entropy,
                 nodes_to_exclude=[convs[0], convs[-1]]),
    }  # fmt: skip
    inputs = [network_input(read_image(path), info).numpy() for path in calibration]
    for name, options in variants.items():
        out = tmp / "int8.onnx"
        quantize_static(raw, out, Calibration(inputs), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, **options)  # fmt: skip
        session = onnx_session(out, threads=threads)
        row(name, lambda x, s=session: s.run(["logits"], {"input": x})[0])
    if openvino is not None:
        core = openvino.Core()
        for hint in ("f32", None):
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            if hint:
                config["INFERENCE_PRECISION_HINT"] = hint
            request = core.compile_model(core.read_model(raw), "CPU",
                                         config).create_infer_request()  # fmt: skip
            row(f"openvino {hint or 'default precision'}", lambda x, r=request: r.infer({0: x})[0])


if __name__ == "__main__":
    main()
