// Module Web Worker: owns the wasm module and the Session; the page (app.js) is UI only.
//
// Protocol (every request carries an `id`; every reply to it echoes that `id`):
//   main -> worker
//     {id, command: "load", baseUrl, variant: "fp32" | "fp16", storage: "f32" | "f16", cache?: bool,
//          simulate_limits?: {maxStorageBufferBindingSize, maxBufferSize} /* test hook: replaces the adapter's */}
//          or {id, command: "load", files: {path: File}, name, variant, storage}  (picked local files:
//          models.js mapPickedFiles; a single-file checkpoint under its own file name)
//          both with config_url?, prediction_type? (single-file checkpoints)
//          (models.js: presets; models-store.js: OPFS cache with resumable downloads; cache defaults to true)
//     {id, command: "models_delete", key}   // removes a cached model (folder models/<key> in OPFS)
//     {id, command: "encode", prompt}
//     {id, command: "tokenize", prompt}
//     {id, command: "generate", params: {prompt, negative_prompt, scheduler, steps, guidance, seed?,
//                                       width, height, suppress?, suppress_alpha?, suppress_start?,
//                                       suppress_opt_end?, suppress_opt_iters?, suppress_opt_scale?,
//                                       suppress_opt_off?}, latents?: Float32Array [1,4,H/8,W/8]}
//     {id, command: "edit", photo: Uint8Array (JPEG/PNG/WebP bytes), file_name, params: {as generate,
//          suppress required, null_text_iters?}}  // SuppressEOT on a photo: progress stage "invert"
//          per inversion step, then as generate (original_* = the photo's reconstruction, edit: true)
//     {id, command: "cancel"}          // handled at once, never queued (see below); also stops a load
//     {id, command: "debug_memory", pool?: bool}  // handled at once, never queued (a bench polls it
//          during a load or a generation, scripts/bench-page.mjs); the GPU pool is read when a model
//          is loaded, or with pool: true (only once a load uploads weights: earlier it would start a
//          second GPU device beside the load's)
//   worker -> main
//     {status: "ready", defaults: {generate, suppress, edit, train}}  // no id: posted once, as soon
//          as the wasm module is up (at start): settings_defaults(), the library's default settings
//          of each job (null = the model's own / random); the page fills its inputs from them.
//          {status: "ready", defaults: null, error} when the module cannot be loaded (Load says why).
//     {id, status: "progress", stage: "download", loaded, total /* bytes; null if unknown */, file,
//          cached_bytes, resumed_bytes /* already on disk */, fetched_bytes, speed /* B/s */, eta_ms}
//     {id, status: "progress", stage: "weights", component: "text_encoder" | "unet" | "vae",
//          loaded, total /* tensors of that component */, key}
//     {id, status: "loaded", info, files: {path: bytes}, download_ms, total_ms, url, variant,
//          source: "cache" | "network" | "partial" | "memory" | "local", cache_key, cached_files,
//          resumed_files: [{path, from}], note /* e.g. OPFS unavailable */,
//          configs_cached: ["unet/config.json", ...] /* "Configs from" files taken from the Cache API
//          because the host was unreachable */}
//     {id, status: "result", command: "encode", result: {input_ids, tokens, shape, data: Float32Array,
//                                                        millis, min, max, mean, std}}
//     {id, status: "result", command: "tokenize", result: {input_ids, ids, tokens}}
//     {id, status: "progress", stage: "generate", done, total, elapsed_ms, step_ms, eta_ms /* null
//          until a step finished */, seed, width, height, scheduler}   // once with done 0, then per step
//     {id, status: "progress", stage: "invert", done, total, elapsed_ms}  // edit: null-text inversion
//     {id, status: "progress", stage: "decode", done, total, elapsed_ms}  // VAE decode + PNG encode
//     {id, status: "result", command: "generate", result: {image: Float32Array [H*W*3] NHWC in [0,1],
//          png: Uint8Array, width, height, parameters, seed, scheduler, total_steps, millis,
//          elapsed_ms, suppress, original_image?, original_png?}}  // buffers are transferred;
//                                      // with suppress: image = suppressed, original_* = same seed without
//     {id, status: "cancelled", command: "generate", done, total}
//     {id, status: "cancelled", command: "load"}   // the load was cancelled; no model is loaded
//     {id, status: "result", command: "cancel", result: {running: bool, queued: n, loading: bool}}
//     {id, status: "result", command: "debug_memory", result: {wasm_heap_bytes /* WebAssembly.Memory
//          byteLength; null before the module is up */, pool: {in_use, reserved} /* bytes */ | null,
//          pool_error? /* why the pool could not be read */}}
//     {id, status: "error", command, message, kind: "oom" | "device_lost" | "crash" | null /* with advice in message */}
// Commands run one at a time, in order of arrival, except "cancel": it is answered at once and
// makes the running generation stop before its next step (and queued ones never start); and
// "debug_memory", answered at once too.
// Training commands: see worker-train.js ("train_control" is answered at once too); embedding
// library: worker-library.js.

import { makeTrainHandlers } from "./worker-train.js";
import { makeLibraryHandlers } from "./worker-library.js";
import { checkLimits, withAdvice } from "./gpu-advice.js";

import { selectFiles, normalizeModelUrl, modelName, isSingleFileUrl, singleFileKey, SINGLE_FILE_CONFIGS, BUNDLED_TOKENIZER, TOKENIZER_FILES } from "./models.js";
import { fetchModel, deleteCached } from "./models-store.js";

let wasmReady = null; // promise of the imported ./pkg/pseudoword.js module, initialised
let wasmExports = null; // what the wasm-bindgen init resolved to (its `memory`: the wasm heap)
let session = null;

// One import + init per worker, shared by every caller (the start-up "ready" and the first
// command may ask at once); a failure is not kept, so the next command tries again.
function ensureWasm() {
  wasmReady ??= initWasm().catch((err) => {
    wasmReady = null;
    throw err;
  });
  return wasmReady;
}

let announced = false;

async function initWasm() {
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
    wasmExports = await mod.default();
  } catch (err) {
    throw new Error("Could not start the WebAssembly module ./pkg/pseudoword_bg.wasm: " + errorMessage(err));
  }
  if (!announced) {
    announced = true;
    // the library's default settings, once: the page's inputs start from them
    let defaults = null;
    let error;
    try {
      defaults = plain(mod.settings_defaults());
    } catch (err) {
      error = "settings_defaults() failed: " + errorMessage(err);
    }
    postMessage({ status: "ready", defaults, error });
  }
  return mod;
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

// Model files as {relative path: Blob}: picked local files (msg.files), else the cache / a
// (resumable) download. A single-file checkpoint (picked, or a URL ending in .safetensors) is
// the Blob under its own file name, r.single_file (see singleFileKey), with the app's bundled
// tokenizer when none was picked with it.
async function modelFiles(msg, variant, signal) {
  const id = msg.id;
  let r;
  if (msg.files) {
    const { files, missing } = selectFiles(msg.files, variant);
    if (missing.length) {
      throw new Error(`The picked files lack ${missing.join(", ")}: pick the model's folder (diffusers layout), all of its files, or one single-file checkpoint (.safetensors).`);
    }
    const bytes = Object.fromEntries(Object.entries(files).map(([p, f]) => [p, f.size]));
    const single = singleFileKey(files);
    r = { files, bytes, source: "local", key: null, cached_files: 0, resumed_files: [], ms: 0, note: "", name: single ?? (msg.name || "local"), single_file: single };
  } else {
    const url = normalizeModelUrl(msg.baseUrl, self.location.href);
    const single = isSingleFileUrl(url);
    const got = await fetchModel({
      url,
      variant: single ? "single" : variant,
      cache: msg.cache !== false,
      signal,
      onProgress: (p) => postMessage({ id, status: "progress", stage: "download", ...p }),
    });
    r = { ...got, url, name: modelName(url).split("/").pop() || "model", single_file: null };
    if (single) {
      // cached under its URL-encoded name; handed over under the file name
      const [[path, blob]] = Object.entries(got.files);
      const name = decodeURIComponent(path);
      r.files = { [name]: blob };
      r.bytes = { [name]: blob.size };
      r.name = name;
      r.single_file = name;
    }
  }
  if (r.single_file) {
    // diffusers' from_single_file(config=...): configs (and tokenizer) of a matching diffusers folder
    if (msg.config_url) {
      const c = await folderConfigs(msg.config_url, r.files);
      Object.assign(r.files, c.files);
      r.configs_cached = c.fromCache;
      if (c.fromCache.length) r.note = [r.note, `"Configs from" host unreachable: used the configs kept in this browser (${c.fromCache.length} files).`].filter(Boolean).join(" ");
    }
    if (!r.files["tokenizer/vocab.json"] || !r.files["tokenizer/merges.txt"]) Object.assign(r.files, await bundledTokenizer());
  }
  return r;
}

// Cache API store of "Configs from" files (a few KiB each): a cached single-file checkpoint
// then also loads offline. Network first (a folder's configs may change), this copy when the
// host cannot be reached. 404s are cached too, as "the folder has no such file".
const CONFIGS_CACHE = "pseudoword-configs-v1";

async function configsCache() {
  try {
    return self.caches ? await self.caches.open(CONFIGS_CACHE) : null;
  } catch {
    return null; // no Cache API (e.g. an insecure origin): configs then need the network
  }
}

// fetch(url) for a config file: the response, or the cached one when the network fails.
async function fetchConfig(url, cache) {
  let res;
  try {
    res = await fetch(url);
  } catch (err) {
    const hit = cache && (await cache.match(url));
    if (hit) return { res: hit, cached: true };
    throw new Error(`Could not fetch ${url} (configs for the single-file checkpoint): ${errorMessage(err)}. Check the "Configs from" URL (same origin or CORS-enabled, and allowed by the page's Content-Security-Policy); once fetched, configs are kept for offline use.`);
  }
  if (cache && (res.ok || res.status === 404)) {
    try {
      await cache.put(url, res.clone());
    } catch {
      /* storage full: the configs still work this time */
    }
  }
  return { res, cached: false };
}

// The configs and tokenizer files of the diffusers folder at `raw` that `have` lacks, as
// {path: Blob}; files the folder does not have (404) are left to inference / the bundled tokenizer.
async function folderConfigs(raw, have) {
  const base = normalizeModelUrl(raw, self.location.href);
  const paths = [...SINGLE_FILE_CONFIGS, ...TOKENIZER_FILES.map((n) => "tokenizer/" + n)];
  const cache = await configsCache();
  const out = {};
  const fromCache = [];
  for (const p of paths) {
    if (have[p]) continue; // picked with the checkpoint: those win
    const url = new URL(p, base).href;
    const { res, cached } = await fetchConfig(url, cache);
    if (cached) fromCache.push(p);
    if (res.ok) out[p] = await res.blob();
    else if (res.status !== 404) throw new Error(`${url} answered HTTP ${res.status} (configs for the single-file checkpoint): check the "Configs from" URL.`);
  }
  if (!Object.keys(out).some((p) => p.endsWith("config.json"))) {
    throw new Error(`"Configs from" ${base} has none of ${SINGLE_FILE_CONFIGS.join(", ")}: give the URL of a diffusers model folder (or leave it empty to infer the configs).`);
  }
  return { files: out, fromCache };
}

// The CLIP BPE files shipped with the app (BUNDLED_TOKENIZER), as {"tokenizer/NAME": Blob}.
async function bundledTokenizer() {
  const out = {};
  for (const name of TOKENIZER_FILES) {
    const url = new URL(BUNDLED_TOKENIZER + name, self.location.href).href;
    let res;
    try {
      res = await fetch(url);
    } catch (err) {
      throw new Error(`A single-file checkpoint has no tokenizer, and the app's own (${url}) could not be fetched: ${errorMessage(err)}. Pick vocab.json and merges.txt together with the checkpoint.`);
    }
    if (res.ok) out["tokenizer/" + name] = await res.blob();
    else if (name === "vocab.json" || name === "merges.txt") {
      throw new Error(`A single-file checkpoint has no tokenizer, and the app's own ${url} answered HTTP ${res.status}. Host the demo model's tokenizer/ folder with the app (README, "Hosting"), or pick vocab.json and merges.txt together with the checkpoint.`);
    }
  }
  return out;
}

let loading = null; // {id, ctl: AbortController, cancelled} of the load in progress

// What to do in this page for a load error's `remedy` (set by the wasm side, see lib_err).
const LOAD_REMEDY = {
  configs: 'Give them with "Configs from" (a diffusers folder URL) or pick the config.json files together with the checkpoint.',
  tokenizer: "Pick the tokenizer files (vocab.json, merges.txt) together with the checkpoint.",
  embedding: "Add it in the Embedding library instead.",
};

async function load(msg) {
  const job = { id: msg.id, ctl: new AbortController(), cancelled: false };
  loading = job;
  try {
    await loadModel(msg, job);
  } catch (err) {
    if (!job.cancelled) throw err;
    if (session && loading === job) {
      session.free();
      session = null;
    }
    postMessage({ id: msg.id, status: "cancelled", command: "load" });
  } finally {
    if (loading === job) loading = null;
  }
}

async function loadModel(msg, job) {
  const { id } = msg;
  const variant = msg.variant === "fp16" ? "fp16" : "fp32";
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
  // The wasm module first: "app not built" must not cost a multi-GB download (and the
  // model request never starts). It is small next to any real model.
  const mod = await ensureWasm();
  const m = await modelFiles(msg, variant, job.ctl.signal);
  const { files, bytes } = m;

  const report = throttle((p) => {
    postMessage({
      id,
      status: "progress",
      stage: "weights",
      component: p.stage || "text_encoder",
      loaded: p.loaded,
      total: p.total,
      key: p.key,
    });
  }, 50);
  const options = {
    // the model's name for image metadata (A1111 "Model:")
    name: m.single_file ? m.name.replace(/\.safetensors$/i, "") : m.name,
    // weights in GPU memory: f16 halves it (needs the adapter's shader-f16); compute is f32
    storage: msg.storage === "f16" ? "f16" : "f32",
    variant: m.single_file || variant !== "fp16" ? null : "fp16", // fp32: the plain files (else the fp16 ones when only those were picked)
    single_file: m.single_file, // the key in `files` of the checkpoint, or null (a diffusers folder)
    // single files: v-prediction cannot be seen in the weights (SD 2.x 768-v models need it)
    prediction_type: m.single_file && msg.prediction_type ? String(msg.prediction_type) : null,
  };
  // a tensor larger than the adapter allows would fail deep inside wgpu: say which limit instead
  await checkLimits(files, options.storage, msg.simulate_limits || null, options.single_file);
  let component = null;
  let s;
  try {
    // returning false stops the upload before the next tensor (Cancel); load then rejects
    s = await mod.Session.load(files, options, (p) => {
      p = plain(p) || {};
      const first = p.stage !== component; // always show a component's first and last tensor
      component = p.stage;
      report(first || p.loaded === p.total, p);
      return !job.cancelled;
    });
  } catch (err) {
    // the library says what is wrong; the page names its own control for the remedy
    throw new Error("Loading the model failed: " + errorMessage(err) + (LOAD_REMEDY[err?.remedy] ? " " + LOAD_REMEDY[err.remedy] : ""));
  }
  session = s;
  if (job.cancelled) throw new Error("cancelled");
  postMessage({
    id,
    status: "loaded",
    info: plain(session.info()),
    files: bytes,
    download_ms: m.ms,
    total_ms: performance.now() - t0,
    source: m.source,
    cache_key: m.key,
    cached_files: m.cached_files,
    resumed_files: m.resumed_files,
    note: m.note,
    configs_cached: m.configs_cached ?? [],
    url: m.url ?? null,
    variant,
  });
}

async function modelsDelete({ id, key }) {
  await deleteCached(String(key));
  postMessage({ id, status: "result", command: "models_delete", result: { key } });
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

// ---------------------------------------------------------------- generation

const SCHEDULERS = new Set(["", "ddim", "pndm", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "lms"]);

let running = null; // {id, cancel: bool} of the generation in progress
const queuedGenerates = new Set(); // ids of generate commands waiting in the queue
const cancelledIds = new Set(); // queued generate ids cancelled before they started

// Lets the event loop run (so a "cancel" message is seen) between two steps.
const yieldToEventLoop = () => new Promise((resolve) => setTimeout(resolve, 0));

async function maybeAwait(v) {
  return v && typeof v.then === "function" ? await v : v;
}

function generationParams(p) {
  p = p || {};
  const params = {
    prompt: String(p.prompt ?? ""),
    negative_prompt: String(p.negative_prompt ?? ""),
    scheduler: String(p.scheduler ?? ""),
    steps: Number(p.steps),
    guidance: Number(p.guidance),
    width: Number(p.width),
    height: Number(p.height),
  };
  if (!SCHEDULERS.has(params.scheduler)) throw new Error(`Unknown scheduler ${JSON.stringify(params.scheduler)}`);
  if (p.seed !== undefined && p.seed !== null && p.seed !== "") params.seed = Number(p.seed);
  // SuppressEOT (empty words: plain generation)
  params.suppress = String(p.suppress ?? "").trim();
  if (params.suppress) {
    for (const k of ["suppress_alpha", "suppress_start", "suppress_opt_end", "suppress_opt_iters", "suppress_opt_scale"]) {
      if (p[k] !== undefined && p[k] !== null && p[k] !== "") params[k] = Number(p[k]);
    }
    params.suppress_opt_off = !!p.suppress_opt_off;
  }
  if (p.heatmaps) params.heatmaps = true;
  if (p.null_text_iters !== undefined && p.null_text_iters !== null && p.null_text_iters !== "") params.null_text_iters = Number(p.null_text_iters);
  return params;
}

async function generate(msg) {
  const { id } = msg;
  queuedGenerates.delete(id);
  if (cancelledIds.delete(id)) {
    postMessage({ id, status: "cancelled", command: msg.command, done: 0, total: 0 });
    return;
  }
  const s = requireSession();
  const info = plain(s.info()) || {};
  if (!info.can_generate) {
    throw new Error("This model cannot generate images: its folder has no UNet/VAE (unet/, vae/, scheduler/) next to the text encoder.");
  }
  const params = generationParams(msg.params);
  let latents;
  if (msg.latents != null) latents = msg.latents instanceof Float32Array ? msg.latents : Float32Array.from(msg.latents);
  const edit = msg.command === "edit";
  const t0 = performance.now();
  const job = { id, cancel: false };
  running = job;
  let started;
  try {
    if (edit) {
      if (!(msg.photo instanceof Uint8Array) || msg.photo.length === 0) throw new Error("edit: no photo was given");
      // null-text inversion: one progress message per step; returning false cancels it
      const onInvert = (done, total) => {
        postMessage({ id, status: "progress", stage: "invert", done, total, elapsed_ms: performance.now() - t0 });
        return !job.cancel;
      };
      started = plain(await s.start_edit(msg.photo, String(msg.file_name ?? "photo"), params, onInvert)) || {};
    } else {
      started = plain(await s.start_generation(params, latents)) || {};
    }
  } catch (err) {
    if (running === job) running = null;
    if (job.cancel) {
      postMessage({ id, status: "cancelled", command: msg.command, done: 0, total: 0 });
      return;
    }
    throw err;
  }
  const total = Number(started.total_steps ?? params.steps);
  const meta = { seed: started.seed, width: started.width, height: started.height, scheduler: started.scheduler };
  try {
    postMessage({ id, status: "progress", stage: "generate", done: 0, total, elapsed_ms: 0, step_ms: null, eta_ms: null, ...meta });
    let done = 0;
    let firstDoneAt = null; // the first step also compiles the shaders: estimate from the later ones
    let last = t0;
    while (done < total) {
      await yieldToEventLoop();
      if (job.cancel) {
        try {
          await maybeAwait(s.cancel_generation());
        } catch {
          /* nothing to cancel */
        }
        postMessage({ id, status: "cancelled", command: msg.command, done, total });
        return;
      }
      const r = plain(await s.step_generation()) || {};
      const now = performance.now();
      const prev = done;
      done = Number(r.done);
      if (!(done > prev)) throw new Error(`step_generation made no progress (done ${r.done} of ${r.total} after ${prev})`);
      const stepMs = now - last;
      last = now;
      if (firstDoneAt === null) firstDoneAt = { t: now, done };
      const elapsed = now - t0;
      const perStep = done > firstDoneAt.done ? (now - firstDoneAt.t) / (done - firstDoneAt.done) : elapsed / Math.max(1, done);
      const eta = Math.max(0, total - done) * perStep;
      postMessage({ id, status: "progress", stage: "generate", done, total, elapsed_ms: elapsed, step_ms: stepMs, eta_ms: eta, ...meta });
    }
    postMessage({ id, status: "progress", stage: "decode", done, total, elapsed_ms: performance.now() - t0 });
    const f = plain(await s.finish_generation()) || {};
    // Own copies (the originals may view wasm memory), then transfer them.
    const image = Float32Array.from(f.image ?? []);
    const png = Uint8Array.from(f.png ?? []);
    const originalImage = f.original_image ? Float32Array.from(f.original_image) : null;
    const originalPng = f.original_png ? Uint8Array.from(f.original_png) : null;
    const result = {
      image,
      png,
      width: Number(f.width ?? meta.width),
      height: Number(f.height ?? meta.height),
      parameters: String(f.parameters ?? ""),
      seed: meta.seed,
      scheduler: meta.scheduler,
      total_steps: total,
      millis: f.millis,
      elapsed_ms: performance.now() - t0,
      suppress: started.suppress || "",
      original_image: originalImage,
      original_png: originalPng,
      edit,
    };
    const transfer = [image.buffer, png.buffer];
    if (originalImage) transfer.push(originalImage.buffer, originalPng.buffer);
    if (f.heatmaps) {
      // {tokens, positions, size, steps, branches: [{name, tiles: [PNG bytes]}]}
      const hm = f.heatmaps;
      result.heatmaps = {
        tokens: Array.from(hm.tokens ?? [], String),
        positions: Array.from(hm.positions ?? [], Number),
        size: Array.from(hm.size ?? [], Number),
        steps: Number(hm.steps ?? 0),
        branches: Array.from(hm.branches ?? [], (b) => ({ name: String(b.name), tiles: Array.from(b.tiles ?? [], (t) => Uint8Array.from(t)) })),
      };
      for (const b of result.heatmaps.branches) for (const t of b.tiles) transfer.push(t.buffer);
    }
    postMessage({ id, status: "result", command: msg.command, result }, transfer);
  } catch (err) {
    try {
      await maybeAwait(s.cancel_generation()); // leave the session ready for the next one
    } catch {
      /* already reset */
    }
    throw err;
  } finally {
    if (running === job) running = null;
  }
}

function cancel({ id }) {
  const wasRunning = !!running;
  if (running) running.cancel = true;
  // a model load: the download stops at once (its .part files stay for a resume), the upload
  // to the GPU before the next tensor
  const wasLoading = !!loading;
  if (loading) {
    loading.cancelled = true;
    loading.ctl.abort(new DOMException("Loading was cancelled", "AbortError"));
  }
  const queued = queuedGenerates.size;
  for (const q of queuedGenerates) cancelledIds.add(q);
  queuedGenerates.clear();
  postMessage({ id, status: "result", command: "cancel", result: { running: wasRunning, queued, loading: wasLoading } });
}

// The wasm heap and the GPU memory pool, for benches (see the protocol above).
async function debugMemory({ id, pool }) {
  const result = { wasm_heap_bytes: wasmExports?.memory?.buffer.byteLength ?? null, pool: null };
  try {
    if (wasmExports && (session || pool === true)) result.pool = plain(await (await wasmReady).memory_usage());
  } catch (err) {
    result.pool_error = errorMessage(err);
  }
  postMessage({ id, status: "result", command: "debug_memory", result });
}

const LIBRARY = makeLibraryHandlers({ getSession: () => session, ensureWasm, plain });
const TRAIN = makeTrainHandlers({ requireSession, plain, maybeAwait, yieldToEventLoop, library: LIBRARY });
const HANDLERS = { load, models_delete: modelsDelete, encode, tokenize, generate, edit: generate, ...TRAIN.queued, ...LIBRARY.queued };

// At start: the wasm module, so the page gets its default settings ("ready") before any reply.
let queue = ensureWasm().catch((err) => postMessage({ status: "ready", defaults: null, error: errorMessage(err) }));
self.onmessage = (event) => {
  const msg = event.data || {};
  if (msg.command === "cancel") {
    // Not queued: the generation it targets is what occupies the queue.
    cancel(msg);
    return;
  }
  if (msg.command === "debug_memory") {
    debugMemory(msg);
    return;
  }
  if (TRAIN.immediate[msg.command]) {
    TRAIN.immediate[msg.command](msg);
    return;
  }
  if (msg.command === "generate" || msg.command === "edit") queuedGenerates.add(msg.id);
  queue = queue.then(async () => {
    const handler = HANDLERS[msg.command];
    try {
      if (!handler) throw new Error(`Unknown command ${JSON.stringify(msg.command)}`);
      await handler(msg);
    } catch (err) {
      queuedGenerates.delete(msg.id);
      const { kind, message } = withAdvice(errorMessage(err)); // out of memory, device lost: what to do
      postMessage({ id: msg.id, status: "error", command: msg.command, message, kind });
    }
  });
};
