"""`deeplab predict` as a whole process, against a 30-line script over Google's TFLite runtime.

    DEEPLAB_WEIGHTS_DIR=../shared/weights python benchmarks/bench_startup.py \
        --camvid ../shared/data/camvid [--frames 1 40] [--repeats 3]

What a user waits for: a new process, from its start to its last file written, for 1 and
40 CamVid val frames (480x360) with the mobile 257 model (``deeplabv3_257_mv_gpu``):

- the baseline: a script (below, written to a temp file) that imports Google's TFLite
  interpreter (ai-edge-litert), runs Google's own file on each frame (resized into 257x257,
  x/127.5 - 1, the argmax resized back) and writes the three pictures `deeplab predict`
  writes (index PNG, colour PNG, overlay JPEG), with Pillow and numpy;
- `deeplab predict --model deeplabv3_257_mv_gpu`, cold (an empty cache: the first run
  exports the model's pipeline) and warm (the cache filled: onnxruntime, no torch).

Rows interleave, median of ``--repeats`` runs; the ratio is the script's time over ours
(>= 0.8, i.e. within 1.25x, is the goal).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deeplab.system import cpu_name
from deeplab.weights import entry_path, get_entry

REPO = Path(__file__).resolve().parents[1]
TFLITE_SCRIPT = '''
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter

model, out, *frames = sys.argv[1:]
interpreter = Interpreter(model_path=model, num_threads=2)
interpreter.allocate_tensors()
inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
size = tuple(inp["shape"][1:3])
palette = np.random.default_rng(0).integers(0, 255, (256, 3), dtype=np.uint8)
Path(out).mkdir(exist_ok=True)
for frame in map(Path, frames):
    photo = Image.open(frame).convert("RGB")
    x = np.asarray(photo.resize(size[::-1], Image.BILINEAR), np.float32) / 127.5 - 1
    interpreter.set_tensor(inp["index"], x[None])
    interpreter.invoke()
    labels = interpreter.get_tensor(outp["index"])[0].argmax(-1).astype(np.uint8)
    labels = np.asarray(Image.fromarray(labels).resize(photo.size, Image.NEAREST))
    index = Image.fromarray(labels)
    index.putpalette(palette.tobytes())
    index.save(Path(out) / f"{frame.stem}.png", compress_level=1)
    color = palette[labels]
    Image.fromarray(color).save(Path(out) / f"{frame.stem}_color.png", compress_level=1)
    blend = (0.5 * np.asarray(photo) + 0.5 * color).astype(np.uint8)
    Image.fromarray(blend).save(Path(out) / f"{frame.stem}_overlay.jpg", quality=92)
'''


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camvid", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    p.add_argument("--frames", type=int, nargs="+", default=[1, 40])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="startup-"))
    script = tmp / "tflite_predict.py"
    script.write_text(TFLITE_SCRIPT)
    model = entry_path(get_entry("deeplabv3_257_mv_gpu"))
    frames = sorted((args.camvid / "val").glob("*.png"))
    env = {**os.environ, "DEEPLAB_CACHE": str(tmp / "cache")}
    print(f"{cpu_name()}, {os.cpu_count()} cores; whole processes, median of {args.repeats}")
    print("| frames | TFLite script s | deeplab predict cold s | ratio | warm s | ratio |")
    print("|---|---|---|---|---|---|")
    for n in args.frames:
        chosen = [str(f) for f in frames[:n]]
        times: dict[str, list[float]] = {"script": [], "cold": [], "warm": []}
        for _ in range(args.repeats):
            times["script"].append(timed([sys.executable, str(script), str(model),
                                          str(tmp / "a"), *chosen], env))  # fmt: skip
            shutil.rmtree(tmp / "cache", ignore_errors=True)  # empty: the first run exports
            cmd = [sys.executable, "-m", "deeplab.cli", "predict", *chosen, "--model",
                   "deeplabv3_257_mv_gpu", "--out", str(tmp / "b"), "--quiet"]  # fmt: skip
            times["cold"].append(timed(cmd, env))
            times["warm"].append(timed(cmd, env))
        s, c, w = (statistics.median(times[k]) for k in ("script", "cold", "warm"))
        print(f"| {n} | {s:.2f} | {c:.2f} | {s / c:.2f} | {w:.2f} | {s / w:.2f} |", flush=True)


if __name__ == "__main__":
    main()
