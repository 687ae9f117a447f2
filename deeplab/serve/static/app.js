// The deeplab page: every photo goes to POST /v1/segment (the documented API), and the
// colour map, overlay and portrait are drawn here from the returned labels, so switching
// views costs no new request.
"use strict";

const state = { models: [], cards: [] };
const $ = (id) => document.getElementById(id);

// A server started with --token answers the API only with "Authorization: Bearer TOKEN".
// The page asks for it once and keeps it for this tab (sessionStorage), never in a URL.
async function api(path, options = {}) {
  for (;;) {
    const token = sessionStorage.getItem("deeplab-token");
    const headers = { ...(options.headers || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    sessionStorage.removeItem("deeplab-token");
    await askToken(token ? "That token was refused; try again." : "");
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

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

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
  const { photo, labels, model } = entry;
  const { width, height } = photo;
  const canvas = entry.card.querySelector("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const view = mode();
  const out = new ImageData(width, height);
  const alpha = Number($("opacity").value);
  const palette = model.palette;
  if (view === "portrait") {
    drawPortrait(ctx, entry);
    canvas.dataset.view = view;
    return;
  }
  for (let i = 0; i < labels.length; i++) {
    const colour = palette[labels[i]] || [0, 0, 0];
    for (let k = 0; k < 3; k++) {
      const p = photo.data[4 * i + k];
      out.data[4 * i + k] = view === "color" ? colour[k]
        : view === "photo" ? p : Math.round((1 - alpha) * p + alpha * colour[k]);
    }
    out.data[4 * i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  canvas.dataset.view = view;
}

function drawPortrait(ctx, entry) {
  // The Pixel's portrait mode: the chosen class sharp, the rest blurred, a soft seam.
  const { photo, labels, model } = entry;
  const { width, height } = photo;
  const keep = model.classes.indexOf($("portrait-class").value);
  const radius = Math.max(2, 0.02 * Math.max(width, height));
  const sharp = new OffscreenCanvas(width, height);
  sharp.getContext("2d").putImageData(photo, 0, 0);
  const mask = new OffscreenCanvas(width, height);
  const maskData = new ImageData(width, height);
  for (let i = 0; i < labels.length; i++) maskData.data[4 * i + 3] = labels[i] === keep ? 255 : 0;
  mask.getContext("2d").putImageData(maskData, 0, 0);
  ctx.filter = `blur(${radius}px)`;
  ctx.drawImage(sharp, 0, 0);
  ctx.filter = "none";
  const subject = new OffscreenCanvas(width, height);
  const sctx = subject.getContext("2d");
  sctx.filter = `blur(${radius / 4}px)`;
  sctx.drawImage(mask, 0, 0);
  sctx.filter = "none";
  sctx.globalCompositeOperation = "source-in";
  sctx.drawImage(sharp, 0, 0);
  ctx.drawImage(subject, 0, 0);
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
  loadModels().then(() => document.body.dataset.ready = "true");
}

setup();
