"""Videos: a real clip (CamVid val frames, a 15 Hz drive) in, overlay/portrait/mask videos
and per-frame labels out, at the clip's size and frame rate with its audio, and the
flicker measure with and without smoothing."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.cli import main
from deeplab.hub import create_model
from deeplab.inference import Segmenter
from deeplab.video import segment_video

av = pytest.importorskip("av")

FRAMES = 12


@pytest.fixture(scope="module")
def clip(camvid_dir, tmp_path_factory) -> Path:
    """The first CamVid val frames as an H.264 clip at 15 Hz with a sine-wave audio track."""
    frames = sorted((camvid_dir / "val").glob("0016E5_*.png"))[:FRAMES]
    if len(frames) < FRAMES:
        pytest.skip(f"{camvid_dir} lacks the CamVid val frames")
    path = tmp_path_factory.mktemp("clip") / "drive.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=15)
        video.width, video.height, video.pix_fmt = 480, 360, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i, frame_path in enumerate(frames):
            rgb = np.asarray(Image.open(frame_path).convert("RGB"))
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
            tone = np.sin(np.arange(1067) * 2 * np.pi * 440 / 16000 + i).astype(np.float32)
            chunk = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, i * 1067
            for packet in audio.encode(chunk):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)
    return path


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenetv2", num_classes=11, width_mult=0.5).eval()
    from deeplab.data.labels import CAMVID_CLASSES, CAMVID_PALETTE

    return Segmenter(model, mean=(127.5,) * 3, std=(127.5,) * 3, class_names=CAMVID_CLASSES,
                     palette=CAMVID_PALETTE)  # fmt: skip


def _frames(path: Path) -> tuple[list[np.ndarray], Fraction, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        audio = len(container.streams.audio)
        return frames, stream.average_rate, audio


def test_every_output_has_the_clip_size_rate_frames_and_audio(clip, segmenter, tmp_path,
                                                              one_thread):  # fmt: skip
    out = tmp_path / "out"
    result = segment_video(segmenter, clip, out, portrait="car", mask_video=True, labels=True,
                           progress=False)  # fmt: skip
    assert result.frames == FRAMES and result.fps == 15
    for name in ("overlay", "portrait", "mask"):
        frames, rate, audio = _frames(out / f"drive_{name}.mp4")
        assert len(frames) == FRAMES and rate == 15 and audio == 1, name
        assert frames[0].shape == (360, 480, 3)
    pngs = sorted((out / "drive_labels").glob("*.png"))
    assert len(pngs) == FRAMES
    # The per-frame labels are what the segmenter says about the decoded frame.
    decoded, _, _ = _frames(clip)
    first = np.asarray(Image.open(pngs[0]))
    np.testing.assert_array_equal(first, segmenter.labels(decoded[0][None])[0])
    # The mask video shows the colour map of those labels (up to H.264's losses).
    mask_frames, _, _ = _frames(out / "drive_mask.mp4")
    from deeplab.viz import colorize

    expected = colorize(first, segmenter.palette).astype(int)
    assert np.abs(mask_frames[0].astype(int) - expected).mean() < 6


def test_smoothing_reduces_flicker(clip, tmp_path, one_thread, weights_dir, monkeypatch):
    # A real model (Google's small VOC one: cars, people, background on the road clip);
    # a fresh one predicts one class everywhere and never flickers.
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    voc = Segmenter.from_pretrained("deeplabv3_257_mv_gpu")
    plain = segment_video(voc, clip, tmp_path / "a", overlay=False, progress=False)
    smooth = segment_video(voc, clip, tmp_path / "b", overlay=False, smooth=0.7,
                           progress=False)  # fmt: skip
    assert plain.frames == smooth.frames == FRAMES
    assert 0 < smooth.flicker < plain.flicker
    with pytest.raises(ValueError, match="--smooth"):
        segment_video(voc, clip, tmp_path / "c", smooth=1.5)


def test_cli_predict_on_a_video(clip, tmp_path, capsys, monkeypatch, segmenter):
    monkeypatch.setattr(Segmenter, "from_pretrained", classmethod(lambda cls, name=None,
                        **o: segmenter))  # fmt: skip
    out = tmp_path / "out"
    assert main(["predict", str(clip), "--out", str(out), "--smooth", "0.5"]) == 0
    line = capsys.readouterr().out
    assert f"drive.mp4: {FRAMES} frames at" in line and "drive_overlay.mp4" in line
    assert (out / "drive_overlay.mp4").is_file()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    assert main(["predict", str(broken), "--out", str(out)]) == 2
    assert "broken.mp4: not a readable video" in capsys.readouterr().err
