"""Deployment speed in one run: every runtime on the same inputs, in interleaved rounds.

    pip install -e ".[test]"
    DEEPLAB_WEIGHTS_DIR=../shared/weights python benchmarks/bench_deploy.py \
        --photos ../shared/data/camvid/val --ours-tflite /tmp/ours_257.tflite

For Google's VOC models (513 canvas, and the 257 one made for phones), batch 1, a fixed
normalised input at the model's canvas: median milliseconds of one forward pass in
PyTorch fp32 (NCHW and channels-last), PyTorch bf16 autocast, onnxruntime fp32 (the file
``deeplab export --raw`` writes) and Google's TFLite interpreter (XNNPACK) on Google's own
file and on ours (``deeplab export --format tflite``, made where litert-torch installs);
label agreement of each with PyTorch fp32 on real photos. Then ``deeplab predict`` end to
end (decode, segment, write the three output files) on a folder of photos in images/s,
against the bare forward pass of its backend; the int8 file ``deeplab export --int8``
makes of each VOC model (no VOC labels here: speed, size and label agreement with the
float file on photos it was not calibrated on; ``bench_int8.py`` scores int8 by mIoU on
CamVid); and the dense CRF against pydensecrf. The runtimes take turns within each round,
so load from elsewhere hits them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deeplab.data.images import example_photos, find_images, read_image
from deeplab.export import (
    export,
    export_onnx,
    model_to_export,
    network_input,
    onnx_session,
    tflite_interpreter,
)
from deeplab.hub import load_pretrained
from deeplab.predict import predict_files, segmenter_for
from deeplab.quantize import label_agreement, ms_per_image, quantize_onnx
from deeplab.system import cpu_name
from deeplab.weights import entry_path, get_entry

CL = torch.channels_last
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crf import load_inputs, run_ours, run_pydensecrf  # noqa: E402


def rounds(fns: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds of each function, the functions taking turns."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up: allocators, kernel choice, graph optimisation
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def forward_table(entry: str, repeats: int, ours_tflite: Path | None, tmp: Path) -> None:
    nchw, info = load_pretrained(entry)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    photos = [network_input(read_image(p), info) for p in example_photos()]
    session = onnx_session(export_onnx(nchw, info, tmp / f"{entry}_raw.onnx", raw=True),
                           threads=torch.get_num_threads())  # fmt: skip
    runners = {
        "PyTorch fp32, NCHW": nchw,
        "PyTorch fp32, channels-last": lambda t: nhwc(t.contiguous(memory_format=CL)),
        "PyTorch bf16 autocast, channels-last": lambda t: _bf16(nhwc, t),
        "onnxruntime fp32": lambda t: torch.from_numpy(
            session.run(["logits"], {"input": t.numpy()})[0]),
    }  # fmt: skip
    files = {"TFLite, Google's file": entry_path(get_entry(entry), progress=False)}
    if ours_tflite is not None and ours_tflite.is_file():
        files["TFLite, ours (deeplab export)"] = ours_tflite
    for label, path in files.items():
        runners[label] = _tflite_runner(path, info)
    with torch.no_grad():
        ms = rounds({k: (lambda f=f: f(photos[0])) for k, f in runners.items()}, repeats)
        reference = [nchw(x).argmax(1) for x in photos]
        pixels = sum(r.numel() for r in reference)
        agree = {name: sum(int((fn(x).argmax(1) == r).sum())
                           for x, r in zip(photos, reference, strict=True)) / pixels
                 for name, fn in runners.items()}  # fmt: skip
    base = ms["PyTorch fp32, NCHW"]
    h, w = info.input_size
    print(f"\n{entry} ({h}x{w}, batch 1, {torch.get_num_threads()} threads)")
    print("| runtime | ms | vs PyTorch NCHW | labels agree with PyTorch fp32 |")
    print("|---|---|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} | {base / value:.2f}x | {100 * agree[name]:.2f}% |")


def _bf16(model, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x.contiguous(memory_format=torch.channels_last)).float()


def _tflite_runner(path: Path, info):
    interpreter = tflite_interpreter(path, threads=torch.get_num_threads())
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x: torch.Tensor) -> torch.Tensor:
        data = x.permute(0, 2, 3, 1).numpy()
        if inp["dtype"] == np.uint8:  # Google's 8-bit files take the uint8 image
            data = np.clip(np.rint(data * info.std[0] + info.mean[0]), 0, 255).astype(np.uint8)
        interpreter.set_tensor(inp["index"], np.ascontiguousarray(data))
        interpreter.invoke()
        result = interpreter.get_tensor(out["index"])
        if result.ndim == 3:  # the 8-bit files give labels, not scores
            return torch.nn.functional.one_hot(torch.from_numpy(result.astype(np.int64)),
                                               21).permute(0, 3, 1, 2)  # fmt: skip
        return torch.from_numpy(result).permute(0, 3, 1, 2)

    return run


def predict_table(entry: str, photos: list[Path], repeats: int) -> None:
    """``deeplab predict`` on a folder (decode, segment, write three files per image) with
    each runtime, against the bare forward pass of that runtime at the model's canvas."""
    first = read_image(photos[0])
    print(f"\ndeeplab predict, {entry}, {len(photos)} photos of {first.shape[1]}x"
          f"{first.shape[0]}, {torch.get_num_threads()} threads")
    print("| runtime | predict img/s | bare forward img/s | predict / forward |")
    print("|---|---|---|---|")
    for runtime in ("torch", "onnxruntime"):
        segmenter = segmenter_for(model=entry, runtime=runtime)
        segmenter.labels(first[None])  # the layout choice and warm-up
        canvas = torch.zeros(1, 3, *segmenter.input_size)
        with torch.no_grad():
            bare = 1000 / rounds({"f": lambda s=segmenter, c=canvas: s._run(s.model, c)},
                                 3 * repeats)["f"]  # fmt: skip
        times = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                for _ in predict_files(segmenter, photos, out):
                    pass
                times.append(time.perf_counter() - start)
        rate = len(photos) / statistics.median(times)
        label = f"{runtime} ({segmenter.memory_format})" if runtime == "torch" else runtime
        print(f"| {label} | {rate:.2f} | {bare:.2f} | {100 * rate / bare:.0f}% |")


def int8_table(entry: str, camvid: Path, tmp: Path, threads: int) -> None:
    """Float against int8 (the default recipe of ``deeplab export --int8``), both in the
    labels contract, calibrated on 60 CamVid training frames plus the package's photos and
    compared on every 10th CamVid val frame and the labelme photos (none calibrated on)."""
    lines = (camvid / "train.txt").read_text().split()[0::2]
    calibration = [read_image(camvid / x) for x in lines[:: len(lines) // 60][:60]]
    calibration += [read_image(p) for p in example_photos()]
    val = (camvid / "val.txt").read_text().split()[0::2]
    others = [read_image(camvid / x) for x in val[::10]]
    others += [read_image(p) for p in find_images([camvid.parent / "labelme_voc_example"])]
    model, info = model_to_export(model=entry)
    float_path, _ = export(model, info, tmp / f"{entry}_float.onnx", check=False)
    int8_path = quantize_onnx(float_path, tmp / f"{entry}_int8.onnx", calibration)
    ms = dict(zip(("float", "int8"), ms_per_image([float_path, int8_path], others,
                                                  threads=threads), strict=True))  # fmt: skip
    agree = label_agreement(float_path, int8_path, others)
    print(f"\n{entry}: int8 against float (labels contract, onnxruntime, {threads} threads, "
          f"{len(others)} photos not calibrated on)")
    print("| file | ms/image | speed-up | MB | labels = float |")
    print("|---|---|---|---|---|")
    for name, path in (("float", float_path), ("int8", int8_path)):
        print(f"| {name} | {ms[name]:.1f} | {ms['float'] / ms[name]:.2f}x | "
              f"{path.stat().st_size / 1e6:.1f} | "
              f"{100 * (agree if name == 'int8' else 1):.2f}% |")


def crf_table(camvid: Path, repeats: int) -> None:
    print(f"\ndense CRF, 480x360 CamVid val photo, 21 classes, 5 iterations, both lattices "
          f"built (a new size), {torch.get_num_threads()} threads")
    print("| implementation | ms | vs pydensecrf | labels agree |")
    print("|---|---|---|---|")
    image, probs = load_inputs(camvid, 1, None, 21)[0]
    fns = {
        "pydensecrf": lambda: run_pydensecrf(image, probs, 5),
        "deeplab.crf (numba)": lambda: run_ours(torch.from_numpy(image),
                                                torch.from_numpy(probs), 5, cold=True),
    }  # fmt: skip
    ms = rounds(fns, repeats)
    ref = run_pydensecrf(image, probs, 5).argmax(0)
    ours = fns["deeplab.crf (numba)"]().argmax(0)
    ratio = ms["pydensecrf"] / ms["deeplab.crf (numba)"]
    print(f"| pydensecrf | {ms['pydensecrf']:.0f} | 1.00x | 100% |")
    print(f"| deeplab.crf (numba) | {ms['deeplab.crf (numba)']:.0f} | {ratio:.2f}x | "
          f"{100 * (ref == ours).mean():.2f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, default=Path("../shared/data/camvid/val"))
    p.add_argument("--count", type=int, default=24, help="photos for deeplab predict")
    p.add_argument("--camvid", type=Path, default=Path("../shared/data/camvid"))
    p.add_argument("--ours-tflite", type=Path, help="our .tflite of the 257 model")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], choices=("forward", "predict", "int8", "crf"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        if "forward" not in args.skip:
            forward_table("deeplabv3_mnv2_pascal_quant", args.repeats, None, Path(tmp))
            forward_table("deeplabv3_257_mv_gpu", args.repeats, args.ours_tflite, Path(tmp))
        if "predict" not in args.skip:
            photos = find_images([args.photos])[: args.count]
            for entry in ("deeplabv3_mnv2_pascal_quant", "deeplabv3_257_mv_gpu"):
                predict_table(entry, photos, max(1, args.repeats // 3))
        if "int8" not in args.skip:
            for entry in ("deeplabv3_mnv2_pascal_quant", "deeplabv3_257_mv_gpu"):
                int8_table(entry, args.camvid, Path(tmp), args.threads)
    if "crf" not in args.skip:
        crf_table(args.camvid, args.repeats)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
