"""Segment videos: frames decoded, segmented and encoded in a stream.

DeepLab was announced with real-time video segmentation on phones; this is its desktop
form. PyAV (FFmpeg inside; the extra ``video``) reads any container and codec
FFmpeg reads and writes H.264. Memory does not grow with the clip: one frame at a time
goes through the segmenter and out to every writer. Outputs, each at the input's size
and frame times, with its audio streams copied:

- ``<stem>_overlay.mp4``: the colour map over the frames;
- ``<stem>_portrait.mp4`` (``portrait=CLASS``): the class sharp, the rest blurred, the
  synthetic depth of field of the Pixel's portrait mode;
- ``<stem>_mask.mp4``: the colour map alone;
- ``<stem>_labels/000000.png``...: each frame's class ids as an index PNG (lossless).

Per-frame masks flicker. ``smooth=alpha`` keeps an exponential moving average of the
class probabilities (``p = alpha * p_previous + (1 - alpha) * p_frame``, at the network's
resolution, so it costs little) and labels each frame from it. ``VideoResult.flicker`` is
the share of pixels whose label changes between consecutive frames.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deeplab import viz
from deeplab.extras import require
from deeplab.inference import Segmenter


def _av():
    require("video", "reading and writing videos")
    import av

    return av


@dataclass
class VideoResult:
    """What ``segment_video`` wrote and measured."""

    frames: int = 0
    seconds: float = 0.0  # wall time of the whole pass
    fps: float = 0.0  # the input's frame rate
    changed: int = 0  # pixels whose label differs from the previous frame's, summed
    pixels: int = 0  # pixels of every frame after the first, summed
    outputs: list[Path] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def flicker(self) -> float:
        """Share of pixels whose label changes between consecutive frames."""
        return self.changed / self.pixels if self.pixels else 0.0


class _Writer:
    """One output video: H.264 at the input's size and frame times, audio copied."""

    def __init__(self, av, path: Path, video, audio: list, width: int, height: int) -> None:
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264", rate=video.average_rate or 30,
                                                options={"crf": "18", "preset": "veryfast"})
        self.stream.width, self.stream.height = width, height
        # 4:2:0 needs even sizes; odd ones keep full chroma instead of losing a pixel.
        self.stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self.stream.time_base = video.time_base
        self.audio = {id(a): self.container.add_stream_from_template(a) for a in audio}
        self.av = av

    def frame(self, rgb: np.ndarray, pts: int | None, time_base) -> None:
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def packet(self, packet, source: int) -> None:
        """Copy an audio packet of the input stream whose id is ``source``."""
        stream = self.audio.get(source)
        if stream is not None and packet.dts is not None:
            packet.stream = stream  # the same packet goes to every writer in turn
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def segment_video(
    segmenter: Segmenter,
    path: str | Path,
    out_dir: str | Path,
    *,
    overlay: bool = True,
    portrait: str | None = None,
    mask_video: bool = False,
    labels: bool = False,
    smooth: float | None = None,
    alpha: float = 0.5,
    progress: bool = True,
) -> VideoResult:
    """Segment every frame of the video at ``path`` and write the asked-for outputs."""
    av = _av()
    path, out = Path(path), Path(out_dir)
    if portrait is not None and portrait not in segmenter.class_names:
        raise ValueError(f"--portrait {portrait!r} is not a class of this model; choose one "
                         f"of: {', '.join(segmenter.class_names)}")  # fmt: skip
    if smooth is not None and not 0.0 <= smooth < 1.0:
        raise ValueError(f"--smooth {smooth}: the weight of the past, in [0, 1)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        container = av.open(str(path))
        video = container.streams.video[0]
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"{path}: not a readable video ({e}); FFmpeg cannot decode it") from None
    out.mkdir(parents=True, exist_ok=True)
    audio = list(container.streams.audio)
    width, height = video.codec_context.width, video.codec_context.height
    wanted = {"overlay": overlay, "portrait": portrait is not None, "mask": mask_video}
    writers = {name: _Writer(av, out / f"{path.stem}_{name}.mp4", video, audio, width, height)
               for name, on in wanted.items() if on}  # fmt: skip
    label_dir = out / f"{path.stem}_labels"
    if labels:
        label_dir.mkdir(exist_ok=True)
    result = VideoResult(fps=float(video.average_rate or 0))
    result.outputs = [w.container.name for w in writers.values()] + ([label_dir] if labels else [])
    result.outputs = [Path(p) for p in result.outputs]
    start, previous = time.perf_counter(), None
    bar = tqdm(total=video.frames or None, unit="frame", desc=path.name, disable=not progress)
    try:
        for frame, rgb, frame_labels in _labelled_frames(segmenter, container, video, smooth):
            for name, writer in writers.items():
                if name == "overlay":
                    shown = viz.overlay(rgb, frame_labels, segmenter.palette, alpha=alpha)
                elif name == "portrait":
                    keep = frame_labels == segmenter.class_names.index(portrait)
                    shown = viz.portrait(rgb, keep)
                else:
                    shown = viz.colorize(frame_labels, segmenter.palette)
                writer.frame(shown, frame.pts, frame.time_base)
            if labels:
                viz.save_index_png(frame_labels, label_dir / f"{result.frames:06d}.png",
                                   segmenter.palette)  # fmt: skip
            if previous is not None:
                result.changed += int((frame_labels != previous).sum())
                result.pixels += frame_labels.size
            previous = frame_labels
            result.frames += 1
            bar.update(1)
        if audio and writers:  # the audio, copied as it is: a second pass over the file
            container.seek(0)
            for packet in container.demux(*audio):
                source = id(packet.stream)
                for writer in writers.values():
                    writer.packet(packet, source)
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
        container.close()
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def _labelled_frames(
    segmenter: Segmenter, container, video, smooth: float | None
) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
    """(frame, HxWx3 uint8, HxW labels) for each decoded frame; with ``smooth`` the labels
    come from the running average of the class probabilities."""
    average = None
    for frame in container.decode(video):
        rgb = frame.to_ndarray(format="rgb24")
        if smooth is None:
            labels = segmenter.labels(rgb[None])[0]
        else:
            scores, upsample = segmenter.scores_for_labels(rgb[None])
            probs = torch.softmax(scores.float(), dim=1)
            average = probs if average is None else smooth * average + (1 - smooth) * probs
            labels = upsample(average)[0]
        yield frame, rgb, labels
