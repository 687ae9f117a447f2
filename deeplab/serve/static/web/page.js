// The page `deeplab export --format web` writes: the model (model.onnx, described by
// model.json) runs in this browser with onnxruntime-web (ort/); a photo or the camera goes
// through it. Works from any static host; with the COOP/COEP headers (see README.txt) it
// uses several threads, else one.

import { paint, shares } from "./draw.js";
import { Live } from "./live.js";
import { browserSegmenter } from "./segment.js";

const $ = (id) => document.getElementById(id);
const state = { model: null, seg: null, shown: null };

function options() {
  const m = state.model;
  return {
    view: document.querySelector('input[name="mode"]:checked').value,
    alpha: Number($("opacity").value),
    keep: m.classes.indexOf($("portrait-class").value),
    palette: m.palette,
  };
}

function show(frame, labels) {
  state.shown = { frame, labels };
  paint($("view").getContext("2d"), frame, labels, state.model.palette, options());
  const list = $("legend");
  list.innerHTML = "";
  for (const [index, share] of shares(labels, state.model.classes.length)) {
    if (share < 0.001) continue;
    const [r, g, b] = state.model.palette[index] || [0, 0, 0];
    const item = document.createElement("li");
    item.innerHTML = `<span class="swatch" style="background: rgb(${r},${g},${b})"></span>
      <span class="name"></span> <span class="share">${(100 * share).toFixed(1)}%</span>`;
    item.querySelector(".name").textContent = state.model.classes[index] || `class ${index}`;
    list.append(item);
  }
}

async function imageDataOf(source) {
  const bitmap = await createImageBitmap(source, { imageOrientation: "from-image" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}

async function segmentFile(file) {
  $("message").textContent = "";
  const frame = await imageDataOf(file);
  const started = performance.now();
  const { labels } = await state.seg.segment(frame);
  $("status").textContent = `${file.name}: ${(performance.now() - started).toFixed(0)} ms, ` +
    `${state.seg.runtime}`;
  show(frame, labels);
}

async function setup() {
  state.model = await (await fetch("model.json")).json();
  $("title").textContent = `deeplab: ${state.model.name}`;
  const select = $("portrait-class");
  for (const name of state.model.classes) select.add(new Option(name, name));
  select.value = state.model.classes.includes("person") ? "person" : state.model.classes[1] || state.model.classes[0];
  // ?backend=wasm|webgpu&threads=N choose the runtime (default: WebGPU where the browser
  // has it, else WebAssembly with as many threads as the page may use).
  const params = new URLSearchParams(location.search);
  state.seg = await browserSegmenter("model.onnx", {
    base: "ort/", backend: params.get("backend") || "auto",
    threads: Number(params.get("threads")) || undefined,
  });
  $("status").textContent = `Model loaded in ${state.seg.loadMs.toFixed(0)} ms; runs ${state.seg.runtime}.`;
  $("file").addEventListener("change", (e) => e.target.files[0] && segmentFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => e.preventDefault());
  drop.addEventListener("drop", (e) => { e.preventDefault(); segmentFile(e.dataTransfer.files[0]); });
  const redraw = () => state.shown && show(state.shown.frame, state.shown.labels);
  for (const input of document.querySelectorAll('input[name="mode"]')) input.addEventListener("change", redraw);
  $("opacity").addEventListener("input", redraw);
  $("portrait-class").addEventListener("change", redraw);
  const canvas = state.model.input_size;  // a fixed canvas: frames at its size, drawn larger
  const live = new Live({
    video: $("live-video"), canvas: $("view"), options,
    maxSide: Number(params.get("side")) || (canvas ? Math.max(...canvas) : 480),
    onStats: (s) => {
      $("status").textContent = s.error ? `Stopped: ${s.error}` :
        `${s.frames > 1 ? s.fps.toFixed(1) + " frames/s" : "starting"} · ${s.ms.toFixed(0)} ms a frame · ${state.seg.runtime}`;
    },
  });
  $("live-start").addEventListener("click", async () => {
    try {
      await live.start(state.seg, $("facing").value);
      $("live-start").disabled = true;
      $("live-stop").disabled = false;
    } catch (error) {
      $("message").textContent = `The camera could not start: ${error.message}`;
    }
  });
  $("live-stop").addEventListener("click", () => {
    live.stop();
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
  });
  // For checks and benchmarks: segment a photo given as a data URL, read the live stats.
  window.deeplabWeb = {
    ready: true, runtime: state.seg.runtime, backend: state.seg.backend, live,
    async segmentDataUrl(url) {
      const blob = await (await fetch(url)).blob();
      const frame = await imageDataOf(blob);
      const { labels, width, height } = await state.seg.segment(frame);
      let text = "";
      for (let i = 0; i < labels.length; i += 8192) text += String.fromCharCode(...labels.subarray(i, i + 8192));
      return { labels: btoa(text), width, height };
    },
  };
  document.body.dataset.ready = "true";
}

setup().catch((error) => {
  $("status").textContent = "";
  $("message").textContent = `This page could not start: ${error.message}`;
  document.body.dataset.error = String(error.message || error);
});
