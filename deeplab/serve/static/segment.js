// Two ways to turn a frame into labels, with one interface:
//   const seg = await browserSegmenter(modelUrl, options)   // onnxruntime-web, on this device
//   const seg = await serverSegmenter(wsUrl)               // deeplab serve, over a WebSocket
//   const { labels, width, height } = await seg.segment(imageData); seg.runtime (a phrase)
// The model is deeplab's exported ONNX contract (uint8 RGB image in, labels out; the web
// variant's labels are uint8), so the page needs no pre- or post-processing of its own.

/** Threads onnxruntime-web may use: several only when the page is cross-origin isolated
 * (COOP/COEP headers); otherwise it would silently fall back to one. */
export function wasmThreads(asked) {
  if (!self.crossOriginIsolated) return 1;
  return asked || Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

async function gpuAvailable() {
  if (!("gpu" in navigator)) return false;
  try {
    return Boolean(await navigator.gpu.requestAdapter());
  } catch {
    return false;
  }
}

/** A segmenter running `modelUrl` in this browser. `backend`: "auto" (WebGPU where the
 * browser has it, else WebAssembly), "webgpu" or "wasm"; `base`: where the runtime files
 * are (a folder URL ending in /). */
export async function browserSegmenter(modelUrl, { headers = {}, base = "/static/ort/",
                                                   backend = "auto", threads } = {}) {
  const gpu = backend === "webgpu" || (backend === "auto" && (await gpuAvailable()));
  const baseUrl = new URL(base, location.href).href;
  const ort = await import(baseUrl + (gpu ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs"));
  ort.env.wasm.wasmPaths = baseUrl;
  ort.env.wasm.numThreads = wasmThreads(threads);
  const started = performance.now();
  const response = await fetch(modelUrl, { headers });
  if (!response.ok) throw new Error(`the model could not be fetched (${response.status})`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: gpu ? ["webgpu", "wasm"] : ["wasm"],
    graphOptimizationLevel: "all",
  });
  const runtime = gpu ? "WebGPU in this browser"
    : `WebAssembly in this browser, ${ort.env.wasm.numThreads} thread${ort.env.wasm.numThreads > 1 ? "s" : ""}`;
  let rgb = new Uint8Array(0);
  return {
    runtime,
    backend: gpu ? "webgpu" : "wasm",
    threads: ort.env.wasm.numThreads,
    loadMs: performance.now() - started,
    async segment(image) {
      const { width, height, data } = image;
      if (rgb.length !== width * height * 3) rgb = new Uint8Array(width * height * 3);
      for (let i = 0, j = 0; i < data.length; i += 4, j += 3) {  // RGBA -> RGB
        rgb[j] = data[i];
        rgb[j + 1] = data[i + 1];
        rgb[j + 2] = data[i + 2];
      }
      const input = new ort.Tensor("uint8", rgb, [1, height, width, 3]);
      const { labels } = await session.run({ image: input });
      const values = labels.data instanceof BigInt64Array ? Uint8Array.from(labels.data, Number)
        : new Uint8Array(labels.data.buffer, labels.data.byteOffset, labels.data.length);
      return { labels: values, width, height };
    },
    close() { session.release(); },
  };
}

/** A segmenter whose frames go to `deeplab serve` over a WebSocket (`wsUrl`, token in the
 * query): the frame's raw RGB out (width, height as uint32 LE, then the pixels: exact, and
 * no encoding on the phone), the labels back; one frame in flight at a time. */
export async function serverSegmenter(wsUrl) {
  const socket = new WebSocket(wsUrl);
  socket.binaryType = "arraybuffer";
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(new Error("the server refused the live connection"));
  });
  let pending = null;
  socket.onmessage = (event) => {
    const done = pending;
    pending = null;
    if (!done) return;
    if (typeof event.data === "string") {
      done.reject(new Error(JSON.parse(event.data).detail || "the server could not segment"));
      return;
    }
    const head = new DataView(event.data, 0, 8);
    const width = head.getUint32(0, true);
    const height = head.getUint32(4, true);
    done.resolve({ labels: new Uint8Array(event.data, 8), width, height });
  };
  socket.onclose = () => pending && pending.reject(new Error("the live connection closed"));
  return {
    runtime: "on the server",
    backend: "server",
    async segment(image) {
      const { width, height, data } = image;
      const message = new Uint8Array(8 + width * height * 3);
      new DataView(message.buffer).setUint32(0, width, true);
      new DataView(message.buffer).setUint32(4, height, true);
      for (let i = 0, j = 8; i < data.length; i += 4, j += 3) {  // RGBA -> RGB
        message[j] = data[i];
        message[j + 1] = data[i + 1];
        message[j + 2] = data[i + 2];
      }
      const result = new Promise((resolve, reject) => { pending = { resolve, reject }; });
      socket.send(message);
      return result;
    },
    close() { socket.close(); },
  };
}
