// Live segmentation of a camera: each frame the model is free for is grabbed, segmented
// and drawn; frames that arrive while it is busy are dropped, never queued, so the picture
// stays current however slow the model is. Frames per second count drawn frames, camera
// frame to drawn overlay.

import { paint } from "./draw.js";

export class Live {
  /** `video`: a <video> element, `canvas`: where the result is drawn, `options()`: the
   * current {view, alpha, keep, palette} chosen on the page, `maxSide`: the longest side of
   * the frames segmented (the camera's frames are scaled down to it). */
  constructor({ video, canvas, options, maxSide = 480, onStats = () => {} }) {
    Object.assign(this, { video, canvas, options, maxSide, onStats });
    this.ctx = canvas.getContext("2d");
    this.grab = new OffscreenCanvas(1, 1);
    this.grabCtx = this.grab.getContext("2d", { willReadFrequently: true });
    this.stats = { frames: 0, dropped: 0, fps: 0, ms: 0 };
    this.busy = false;
    this.running = false;
    this.last = null;  // the last frame segmented and its labels, for tests and downloads
  }

  async start(segmenter, facingMode = "environment") {
    this.stop();
    this.segmenter = segmenter;
    this.stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode, width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
    });
    this.video.srcObject = this.stream;
    await this.video.play();
    this.running = true;
    this.stats = { frames: 0, dropped: 0, fps: 0, ms: 0 };
    this.began = performance.now();
    this.schedule();
  }

  stop() {
    this.running = false;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
  }

  schedule() {
    if (!this.running) return;
    const next = () => this.tick();
    if ("requestVideoFrameCallback" in this.video) this.video.requestVideoFrameCallback(next);
    else requestAnimationFrame(next);
  }

  async tick() {
    if (!this.running) return;
    if (this.busy) {  // the model is still on an earlier frame: drop this one
      this.stats.dropped++;
      this.schedule();
      return;
    }
    this.busy = true;
    this.schedule();
    const started = performance.now();
    try {
      const frame = this.frame();
      const { labels } = await this.segmenter.segment(frame);
      const o = this.options();
      paint(this.ctx, frame, labels, o.palette, o);
      this.last = { frame, labels };
      const ms = performance.now() - started;
      const s = this.stats;
      s.frames++;
      s.ms = s.frames === 1 ? ms : 0.9 * s.ms + 0.1 * ms;
      const now = performance.now();
      if (s.frames === 1) {  // the first frame pays for warm-up: count from its end
        s.firstFrameMs = now - this.began;
        this.firstDone = now;
      } else {
        s.fps = (s.frames - 1) / ((now - this.firstDone) / 1000);
      }
      this.onStats(s);
    } catch (error) {
      this.running = false;
      this.onStats({ ...this.stats, error: String(error.message || error) });
    } finally {
      this.busy = false;
    }
  }

  frame() {
    const { videoWidth: w, videoHeight: h } = this.video;
    const scale = Math.min(1, this.maxSide / Math.max(w, h));
    const width = Math.max(1, Math.round(w * scale));
    const height = Math.max(1, Math.round(h * scale));
    if (this.grab.width !== width || this.grab.height !== height) {
      this.grab.width = width;
      this.grab.height = height;
    }
    this.grabCtx.drawImage(this.video, 0, 0, width, height);
    return this.grabCtx.getImageData(0, 0, width, height);
  }
}
