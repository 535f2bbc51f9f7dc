// Module Web Worker: owns the wasm module and the Session; the page (app.js) is UI only.
//
// Protocol (every request carries an `id`; every reply to it echoes that `id`):
//   main -> worker
//     {id, command: "load", baseUrl, variant: "fp32" | "fp16"}
//     {id, command: "encode", prompt}
//     {id, command: "tokenize", prompt}
//   worker -> main
//     {id, status: "progress", stage: "download", loaded, total /* bytes; null if unknown */, file}
//     {id, status: "progress", stage: "weights", loaded, total /* tensors */, key}
//     {id, status: "loaded", info, files: {path: bytes}, download_ms, total_ms}
//     {id, status: "result", command: "encode", result: {input_ids, tokens, shape, data: Float32Array,
//                                                        millis, min, max, mean, std}}
//     {id, status: "result", command: "tokenize", result: {input_ids, ids, tokens}}
//     {id, status: "error", command, message}
// Commands run one at a time, in order of arrival.

const WEIGHTS = {
  fp32: "text_encoder/model.safetensors",
  fp16: "text_encoder/model.fp16.safetensors",
};
const REQUIRED = ["tokenizer/vocab.json", "tokenizer/merges.txt", "text_encoder/config.json"];
const OPTIONAL = ["tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"];

let wasm = null; // the imported ./pkg/pseudoword.js module, initialised
let session = null;

async function ensureWasm() {
  if (wasm) return wasm;
  let mod;
  try {
    mod = await import("./pkg/pseudoword.js");
  } catch (err) {
    throw new Error(
      "App not built: ./pkg/pseudoword.js could not be loaded (" + errorMessage(err) + "). " +
        "Run scripts/serve.sh: it builds the WebAssembly module (scripts/build-web.sh) and serves this page.",
    );
  }
  try {
    await mod.default();
  } catch (err) {
    throw new Error("Could not start the WebAssembly module ./pkg/pseudoword_bg.wasm: " + errorMessage(err));
  }
  wasm = mod;
  return wasm;
}

function errorMessage(err) {
  if (err == null) return "unknown error";
  if (typeof err === "string") return err;
  if (err instanceof Error) return err.message || String(err);
  if (typeof err.message === "string") return err.message;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

// serde-wasm-bindgen may hand back ES Maps for some structs; make everything plain.
function plain(v) {
  if (v instanceof Map) {
    const o = {};
    for (const [k, val] of v) o[k] = plain(val);
    return o;
  }
  if (ArrayBuffer.isView(v)) return v;
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === "bigint") return Number(v);
  if (v && typeof v === "object") {
    const o = {};
    for (const k of Object.keys(v)) o[k] = plain(v[k]);
    return o;
  }
  return v;
}

function throttle(fn, ms) {
  let last = 0;
  return (force, ...args) => {
    const now = performance.now();
    if (force || now - last >= ms) {
      last = now;
      fn(...args);
    }
  };
}

// Fetch one file as a Blob built from the streamed chunks (no single giant ArrayBuffer).
async function fetchBlob(url, { optional, signal, onHeaders, onChunk }) {
  let response;
  try {
    response = await fetch(url, { signal, cache: "no-cache" });
  } catch (err) {
    if (signal.aborted) throw signal.reason ?? err;
    throw new Error(`Network error fetching ${url}: ${errorMessage(err)} (server down, wrong host, or blocked by CORS).`);
  }
  if (!response.ok) {
    if (optional && response.status === 404) {
      onHeaders(0);
      return null;
    }
    throw new Error(`HTTP ${response.status}${response.statusText ? " " + response.statusText : ""} for ${url}`);
  }
  const encoding = response.headers.get("Content-Encoding");
  const lengthHeader = response.headers.get("Content-Length");
  // A compressed body's Content-Length counts compressed bytes, the reader yields decoded ones.
  const length = lengthHeader !== null && (!encoding || encoding === "identity") ? Number(lengthHeader) : null;
  onHeaders(Number.isFinite(length) ? length : null);
  const type = response.headers.get("Content-Type") || "application/octet-stream";
  if (!response.body) {
    const blob = await response.blob();
    onChunk(blob.size);
    return blob;
  }
  const reader = response.body.getReader();
  const chunks = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    onChunk(value.byteLength);
  }
  return new Blob(chunks, { type });
}

async function download(id, baseUrl, weightsPath, controller) {
  const base = new URL(baseUrl, self.location.href);
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  const wanted = [
    ...REQUIRED.map((p) => ({ path: p, optional: false })),
    { path: weightsPath, optional: false },
    ...OPTIONAL.map((p) => ({ path: p, optional: true })),
  ];
  const sizes = new Map(); // path -> bytes (null = unknown), known once headers arrive
  let loaded = 0;
  let current = "";
  const report = throttle(() => {
    const known = sizes.size === wanted.length && [...sizes.values()].every((s) => s !== null);
    const total = known ? [...sizes.values()].reduce((a, b) => a + b, 0) : null;
    postMessage({ id, status: "progress", stage: "download", loaded, total, file: current });
  }, 100);

  const t0 = performance.now();
  const results = await Promise.all(
    wanted.map(async ({ path, optional }) => {
      const url = new URL(path, base).href;
      try {
        const blob = await fetchBlob(url, {
          optional,
          signal: controller.signal,
          onHeaders: (len) => {
            sizes.set(path, len);
            report(false);
          },
          onChunk: (n) => {
            loaded += n;
            current = path;
            report(false);
          },
        });
        return [path, blob];
      } catch (err) {
        controller.abort(err);
        throw err;
      }
    }),
  ).catch((err) => {
    controller.abort(err);
    throw err;
  });
  report(true);
  const files = {};
  const bytes = {};
  for (const [path, blob] of results) {
    if (blob) {
      files[path] = blob;
      bytes[path] = blob.size;
    }
  }
  return { files, bytes, ms: performance.now() - t0 };
}

async function load(msg) {
  const { id } = msg;
  const variant = msg.variant in WEIGHTS ? msg.variant : "fp32";
  const t0 = performance.now();
  // A new load replaces the model: release the old one's GPU memory first.
  if (session) {
    try {
      session.free();
    } catch {
      /* already freed */
    }
    session = null;
  }
  // Start the wasm download/compile while the model files stream in, but report
  // "app not built" first: nothing works without it.
  const controller = new AbortController();
  const wasmReady = ensureWasm();
  wasmReady.catch((err) => controller.abort(err));
  const downloaded = download(id, msg.baseUrl, WEIGHTS[variant], controller);
  downloaded.catch(() => {});
  const mod = await wasmReady;
  const { files, bytes, ms } = await downloaded;

  const report = throttle((p) => {
    postMessage({ id, status: "progress", stage: "weights", loaded: p.loaded, total: p.total, key: p.key });
  }, 50);
  let s;
  try {
    s = await mod.Session.load(files, (p) => {
      p = plain(p) || {};
      report(p.loaded === p.total, p);
    });
  } catch (err) {
    throw new Error("Loading the model failed: " + errorMessage(err));
  }
  session = s;
  postMessage({
    id,
    status: "loaded",
    info: plain(session.info()),
    files: bytes,
    download_ms: ms,
    total_ms: performance.now() - t0,
  });
}

function requireSession() {
  if (!session) throw new Error("No model loaded: load one first.");
  return session;
}

async function encode({ id, prompt }) {
  const s = requireSession();
  const r = plain(await s.encode(String(prompt ?? "")));
  // Copy into a buffer we own (the original may view wasm memory) and transfer it.
  const data = Float32Array.from(r.data ?? []);
  const result = {
    ...r,
    input_ids: Array.from(r.input_ids ?? [], Number),
    shape: Array.from(r.shape ?? [], Number),
    tokens: Array.from(r.tokens ?? [], String),
    data,
  };
  postMessage({ id, status: "result", command: "encode", result }, [data.buffer]);
}

function tokenize({ id, prompt }) {
  const s = requireSession();
  const r = plain(s.tokenize(String(prompt ?? "")));
  postMessage({ id, status: "result", command: "tokenize", result: r });
}

const HANDLERS = { load, encode, tokenize };

let queue = Promise.resolve();
self.onmessage = (event) => {
  const msg = event.data || {};
  queue = queue.then(async () => {
    const handler = HANDLERS[msg.command];
    try {
      if (!handler) throw new Error(`Unknown command ${JSON.stringify(msg.command)}`);
      await handler(msg);
    } catch (err) {
      postMessage({ id: msg.id, status: "error", command: msg.command, message: errorMessage(err) });
    }
  });
};
