// Pictures of a label map over its photo, drawn in the browser: overlay, colour map, the
// photo alone, or portrait mode (the chosen class sharp, the rest blurred, a soft seam),
// the effect DeepLab was announced with on the Pixel. Shared by the server's page, the
// live view and the page `deeplab export --format web` writes.

/** Draw `labels` (Uint8Array, width x height) over `photo` (ImageData) into `ctx`. */
export function paint(ctx, photo, labels, palette, { view = "overlay", alpha = 0.5, keep = -1 } = {}) {
  const { width, height } = photo;
  if (ctx.canvas.width !== width || ctx.canvas.height !== height) {
    ctx.canvas.width = width;
    ctx.canvas.height = height;
  }
  if (view === "portrait") {
    portrait(ctx, photo, labels, keep);
    return;
  }
  const out = new ImageData(width, height);
  const src = photo.data;
  const dst = out.data;
  // Colours as a flat table: one lookup per pixel, no per-pixel array allocation.
  const table = new Uint8Array(256 * 3);
  palette.forEach((c, i) => table.set(c.slice(0, 3), 3 * i));
  const a = view === "color" ? 1 : view === "photo" ? 0 : alpha;
  for (let i = 0, n = labels.length; i < n; i++) {
    const c = 3 * labels[i];
    const p = 4 * i;
    dst[p] = src[p] + a * (table[c] - src[p]);
    dst[p + 1] = src[p + 1] + a * (table[c + 1] - src[p + 1]);
    dst[p + 2] = src[p + 2] + a * (table[c + 2] - src[p + 2]);
    dst[p + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
}

function portrait(ctx, photo, labels, keep) {
  const { width, height } = photo;
  const radius = Math.max(2, 0.02 * Math.max(width, height));
  const sharp = new OffscreenCanvas(width, height);
  sharp.getContext("2d").putImageData(photo, 0, 0);
  const mask = new ImageData(width, height);
  for (let i = 0; i < labels.length; i++) mask.data[4 * i + 3] = labels[i] === keep ? 255 : 0;
  const maskCanvas = new OffscreenCanvas(width, height);
  maskCanvas.getContext("2d").putImageData(mask, 0, 0);
  ctx.filter = `blur(${radius}px)`;
  ctx.drawImage(sharp, 0, 0);
  ctx.filter = "none";
  const subject = new OffscreenCanvas(width, height);
  const sctx = subject.getContext("2d");
  sctx.filter = `blur(${radius / 4}px)`;
  sctx.drawImage(maskCanvas, 0, 0);
  sctx.filter = "none";
  sctx.globalCompositeOperation = "source-in";
  sctx.drawImage(sharp, 0, 0);
  ctx.drawImage(subject, 0, 0);
}

/** Share of the pixels of each class present, largest first: [[index, share], ...]. */
export function shares(labels, classes) {
  const counts = new Float64Array(Math.max(256, classes));
  for (let i = 0; i < labels.length; i++) counts[labels[i]]++;
  const found = [];
  counts.forEach((n, i) => { if (n > 0) found.push([i, n / labels.length]); });
  return found.sort((x, y) => y[1] - x[1]);
}
