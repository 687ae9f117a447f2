// The deeplab page. Photos go to POST /v1/segment (the documented API), and the colour map,
// overlay and portrait are drawn here from the returned labels, so switching views costs
// no new request. Live segments the camera: in this browser (onnxruntime-web on the model
// the server exports for it: frames never leave the device) or, where that cannot run, on
// the server over a WebSocket. The page says which runs.

import { paint } from "./draw.js";
import { Live } from "./live.js";
import { browserSegmenter, serverSegmenter } from "./segment.js";

const state = { models: [], cards: [], live: null, segmenters: {} };
const $ = (id) => document.getElementById(id);

// A server started with --token answers the API only with "Authorization: Bearer TOKEN".
// The page asks for it once and keeps it for this tab (sessionStorage), never in a URL.
function authHeaders() {
  const token = sessionStorage.getItem("deeplab-token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
  for (;;) {
    const had = sessionStorage.getItem("deeplab-token");
    const response = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
    if (response.status !== 401) return response;
    sessionStorage.removeItem("deeplab-token");
    await askToken(had ? "That token was refused; try again." : "");
  }
}

function askToken(note) {
  const form = $("token-form");
  form.hidden = false;
  $("message").textContent = note;
  $("token").focus();
  return new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      sessionStorage.setItem("deeplab-token", $("token").value.trim());
      form.hidden = true;
      $("message").textContent = "";
      resolve();
    };
  });
}

async function loadModels() {
  const response = await api("/v1/models");
  state.models = await response.json();
  const select = $("model");
  for (const m of state.models) {
    const option = new Option(`${m.name} (${m.classes.length} classes)`, m.name);
    option.selected = m.default;
    select.add(option);
  }
  fillPortraitClasses();
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value) || state.models[0];
}

function fillPortraitClasses() {
  const select = $("portrait-class");
  const model = currentModel();
  select.innerHTML = "";
  for (const name of model.classes) select.add(new Option(name, name));
  select.value = model.classes.includes("person") ? "person" : model.classes[model.classes.length > 1 ? 1 : 0];
}

function viewOptions(model = currentModel()) {
  return {
    view: document.querySelector('input[name="mode"]:checked').value,
    alpha: Number($("opacity").value),
    keep: model.classes.indexOf($("portrait-class").value),
    palette: model.palette,
  };
}

// --- photos ---------------------------------------------------------------------------

async function segment(file) {
  const card = document.createElement("article");
  card.className = "card";
  card.innerHTML = `<canvas></canvas><div><h2></h2><ul class="legend"></ul>
    <button class="download" disabled>Download the label PNG</button></div>`;
  card.querySelector("h2").textContent = file.name;
  $("results").prepend(card);
  const model = currentModel();
  const form = new FormData();
  form.append("image", file);
  form.append("model", model.name);
  form.append("raw_labels", "true");
  const response = await api("/v1/segment", { method: "POST", body: form });
  if (!response.ok) {
    const detail = (await response.json().catch(() => ({}))).detail || response.statusText;
    card.querySelector("ul").innerHTML = `<li class="error">${escapeHtml(String(detail))}</li>`;
    $("message").textContent = String(detail);
    return;
  }
  const result = await response.json();
  const photo = await loadPhoto(file, result.width, result.height);
  const labels = Uint8Array.from(atob(result.labels), (c) => c.charCodeAt(0));
  const entry = { card, file, model, result, photo, labels };
  state.cards.push(entry);
  legend(entry);
  card.querySelector(".download").disabled = false;
  card.querySelector(".download").addEventListener("click", () => download(entry));
  draw(entry);
  card.dataset.ready = "true";
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = text;
  return div.innerHTML;
}

async function loadPhoto(file, width, height) {
  // The server applies EXIF orientation; the browser does too (image-orientation: from-image).
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height);
}

function legend(entry) {
  const list = entry.card.querySelector(".legend");
  list.innerHTML = "";
  for (const c of entry.result.classes) {
    const index = entry.model.classes.indexOf(c.name);
    const [r, g, b] = entry.model.palette[index];
    const item = document.createElement("li");
    item.innerHTML = `<span class="swatch" style="background: rgb(${r},${g},${b})"></span>
      <span class="name"></span> <span class="share">${(100 * c.share).toFixed(1)}%</span>`;
    item.querySelector(".name").textContent = c.name;
    list.append(item);
  }
}

function draw(entry) {
  const canvas = entry.card.querySelector("canvas");
  const options = viewOptions(entry.model);
  paint(canvas.getContext("2d"), entry.photo, entry.labels, entry.model.palette, options);
  canvas.dataset.view = options.view;
}

async function download(entry) {
  const form = new FormData();
  form.append("image", entry.file);
  form.append("model", entry.model.name);
  form.append("output", "labels");
  const response = await api("/v1/segment", { method: "POST", body: form });
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = entry.file.name.replace(/\.[^.]*$/, "") + ".png";
  link.click();
}

function redrawAll() {
  for (const entry of state.cards) draw(entry);
}

async function handle(files) {
  $("message").textContent = "";
  for (const file of files) await segment(file);
}

// --- live -----------------------------------------------------------------------------

async function liveSegmenter(model, where) {
  const key = `${model.name}/${where}`;
  if (state.segmenters[key]) return state.segmenters[key];
  let seg;
  if (where === "browser") {
    try {
      seg = await browserSegmenter(`/v1/models/${encodeURIComponent(model.name)}/model.onnx`,
                                   { headers: authHeaders(), base: "/static/ort/" });
    } catch (error) {
      $("message").textContent = `In-browser inference is not available here (${error.message}); ` +
        "segmenting on the server instead.";
      return liveSegmenter(model, "server");
    }
  } else {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const token = sessionStorage.getItem("deeplab-token");
    const query = new URLSearchParams({ model: model.name, ...(token ? { token } : {}) });
    seg = await serverSegmenter(`${scheme}://${location.host}/v1/live?${query}`);
  }
  state.segmenters[key] = seg;
  return seg;
}

async function startLive() {
  $("message").textContent = "";
  const model = currentModel();
  $("live-start").disabled = true;
  $("live-status").textContent = "Loading the model...";
  try {
    await api("/v1/models");  // ask for the token first, if the server wants one
    const seg = await liveSegmenter(model, $("where").value);
    state.live.options = () => viewOptions(model);
    // A model made for one canvas (Google's 257 or 513) sees no more than it: frames are
    // segmented at that size and drawn scaled up; others at 480 pixels across.
    state.live.maxSide = model.input_size ? Math.max(...model.input_size) : 480;
    await state.live.start(seg, $("facing").value);
    $("live-stop").disabled = false;
    document.body.dataset.live = seg.backend;
  } catch (error) {
    $("live-status").textContent = `The camera could not start: ${error.message}`;
    $("live-start").disabled = false;
  }
}

function stopLive() {
  state.live.stop();
  $("live-start").disabled = false;
  $("live-stop").disabled = true;
}

function showStats(s) {
  const seg = state.live.segmenter;
  if (s.error) {
    $("live-status").textContent = `Stopped: ${s.error}`;
    return;
  }
  const fps = s.frames > 1 ? `${s.fps.toFixed(1)} frames/s` : "starting";
  $("live-status").textContent = `${fps} · ${s.ms.toFixed(0)} ms a frame · ` +
    `${s.dropped} camera frames skipped · runs ${seg.runtime}`;
}

function selectTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.setAttribute("aria-pressed", String(button.dataset.tab === name));
  }
  $("photos").hidden = name !== "photos";
  $("live").hidden = name !== "live";
  if (name !== "live" && state.live) stopLive();
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => handle([...e.target.files]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    handle([...e.dataTransfer.files]);
  });
  for (const input of document.querySelectorAll('input[name="mode"]')) {
    input.addEventListener("change", redrawAll);
  }
  $("opacity").addEventListener("input", redrawAll);
  $("portrait-class").addEventListener("change", redrawAll);
  $("model").addEventListener("change", fillPortraitClasses);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  state.live = new Live({ video: $("live-video"), canvas: $("live-canvas"),
                          options: () => viewOptions(), onStats: showStats });
  $("live-start").addEventListener("click", startLive);
  $("live-stop").addEventListener("click", stopLive);
  window.deeplabPage = state;  // for tests and the benchmark: stats, the last frame
  loadModels().then(() => { document.body.dataset.ready = "true"; });
}

setup();
