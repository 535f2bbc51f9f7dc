// Main thread: UI only. The wasm module and the model live in worker.js (see the
// protocol at the top of that file). Tests read window.__pseudoword and body[data-state].

import { initTraining, trainingModelLoaded, trainingDefaults } from "./train.js";
import { initLibrary, libraryModelLoaded } from "./library.js";
import { normalizeModelUrl, isSingleFileUrl } from "./models.js";
import { cspBlockMessage, pagePolicy } from "./csp.js";
import { initModelManager, refreshStorage, updateModelControls, presetFor } from "./models-ui.js";
import { noteFocus, restoreFocus } from "./focus.js";
import { applyDefaults, settingsDefaults } from "./settings.js";

const $ = (id) => document.getElementById(id);

const api = {
  gpu: null, // adapter report (see probeGpu); null until the check finishes
  // settings_defaults() of the wasm module ({generate, suppress, edit, train}, see settings.js),
  // null until the worker posted them; defaultsError: why they are missing (app not built...)
  defaults: null,
  defaultsError: null,
  info: null, // session.info() of the loaded model, or null
  last: null, // last encode result, `data` as a plain array
  error: null, // last error message, or null
  state: "idle", // "idle" | "loading" | "loaded" | "encoding" | "generating" | "error"
  seq: 0, // number of encode results so far (lets tests wait for a new one)
  // Image generation: state "idle" | "running" | "done" | "cancelled" | "error"; done/total steps;
  // result {width, height, image (plain array, NHWC [H*W*3] in [0,1]), parameters, png_size, seed,
  // scheduler, millis}; seq counts finished runs (done, cancelled or failed).
  // history: the `done` of every progress message of the current run.
  generation: { state: "idle", done: 0, total: 0, elapsed_ms: 0, eta_ms: null, result: null, error: null, seq: 0, history: [] },
  // Test hook: the next Generate passes these initial latents ([1,4,H/8,W/8] row-major, before
  // init_noise_sigma scaling, like diffusers' `latents=`) to the worker; null = seeded noise.
  // Test hooks: `limits` replaces the adapter's limits for the next loads' size check;
  // `deviceLostAtStep` makes the next training fail as a lost GPU device after that step.
  testHooks: { limits: null, deviceLostAtStep: null },
  setLatents(values) {
    nextLatents = values == null ? null : Float32Array.from(values);
    return nextLatents ? nextLatents.length : 0;
  },
};
window.__pseudoword = api;

let busy = false;
let nextLatents = null;

function setState(state) {
  api.state = state;
  busy = state === "loading" || state === "encoding" || state === "generating";
  document.body.dataset.state = state;
  // No aria-busy on <body>: screen readers hold back live regions inside a busy element, and the
  // progress texts (#load-status, #gen-status...) are what should be heard while the page works.
  updateControls();
}

function updateControls() {
  const gpuOk = !!(api.gpu && api.gpu.available);
  $("load-button").disabled = !gpuOk || busy;
  $("load-cancel").hidden = api.state !== "loading";
  $("load-cancel").disabled = api.state !== "loading" || loadCancelRequested;
  $("model-url").disabled = busy;
  $("weights").disabled = busy;
  $("prediction-type").disabled = busy;
  $("single-config-url").disabled = busy;
  updateModelControls(busy, gpuOk);
  $("encode-button").disabled = !api.info || busy;
  $("generate-button").disabled = !canGenerate() || busy;
  $("edit-button").disabled = !canGenerate() || busy;
  $("cancel-button").disabled = api.state !== "generating" || cancelRequested;
}

function canGenerate() {
  return !!(api.info && api.info.can_generate);
}

function showError(el, message) {
  el.textContent = message;
  el.hidden = !message;
}

function errorText(err) {
  if (err == null) return "unknown error";
  if (typeof err === "string") return err;
  return err.message || String(err);
}

function fillKv(dl, entries) {
  dl.replaceChildren();
  for (const [k, v] of entries) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    if (v instanceof Node) dd.append(v);
    else dd.textContent = v === undefined || v === null || v === "" ? "(not reported)" : String(v);
    dl.append(dt, dd);
  }
}

function fmtBytes(n) {
  if (n == null || !Number.isFinite(n)) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

// ---------------------------------------------------------------- WebGPU panel

const LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupsPerDimension",
  "maxBindGroups",
];
const BYTE_LIMITS = new Set(["maxBufferSize", "maxStorageBufferBindingSize", "maxComputeWorkgroupStorageSize"]);

async function probeGpu() {
  const report = {
    available: false,
    reason: null, // "insecure-context" | "no-webgpu" | "no-adapter" | "request-failed"
    message: null,
    secureContext: window.isSecureContext,
    adapter: null,
    limits: null,
    features: [],
    shaderF16: false,
  };
  try {
    if (!navigator.gpu) {
      report.reason = window.isSecureContext ? "no-webgpu" : "insecure-context";
      return report;
    }
    let adapter = null;
    try {
      adapter = await navigator.gpu.requestAdapter();
    } catch (err) {
      report.reason = "request-failed";
      report.message = errorText(err);
      return report;
    }
    if (!adapter) {
      report.reason = "no-adapter";
      return report;
    }
    let info = adapter.info;
    if (!info && typeof adapter.requestAdapterInfo === "function") {
      try {
        info = await adapter.requestAdapterInfo();
      } catch {
        info = null;
      }
    }
    info = info || {};
    report.adapter = {
      vendor: info.vendor ?? "",
      architecture: info.architecture ?? "",
      device: info.device ?? "",
      description: info.description ?? "",
      isFallbackAdapter: Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter ?? false),
    };
    if (info.subgroupMinSize !== undefined) {
      report.adapter.subgroupMinSize = info.subgroupMinSize;
      report.adapter.subgroupMaxSize = info.subgroupMaxSize;
    }
    report.limits = {};
    for (const name of LIMITS) {
      if (adapter.limits[name] !== undefined) report.limits[name] = adapter.limits[name];
    }
    report.features = [...adapter.features].sort();
    report.shaderF16 = adapter.features.has("shader-f16");
    report.available = true;
  } catch (err) {
    report.reason = "request-failed";
    report.message = errorText(err);
  }
  return report;
}

function li(...parts) {
  const el = document.createElement("li");
  for (const p of parts) {
    if (typeof p === "string") el.append(p);
    else el.append(p);
  }
  return el;
}

function code(text) {
  const c = document.createElement("code");
  c.textContent = text;
  return c;
}

function renderGpuMissing(report) {
  const box = $("gpu-missing");
  const lead = document.createElement("p");
  const strong = document.createElement("strong");
  if (report.reason === "insecure-context") {
    strong.textContent = "WebGPU is unavailable: this page is not a secure context. ";
    lead.append(
      strong,
      `It was opened from ${location.origin}; browsers only offer WebGPU on https:// pages or on http://localhost / http://127.0.0.1. ` +
        "Open the URL printed by scripts/serve.sh, or serve the page over https.",
    );
  } else if (report.reason === "no-webgpu") {
    strong.textContent = "This browser does not offer WebGPU ";
    lead.append(strong, "(navigator.gpu is missing), so the model cannot run here.");
  } else if (report.reason === "no-adapter") {
    strong.textContent = "WebGPU is present but no GPU adapter was found ";
    lead.append(
      strong,
      "(navigator.gpu.requestAdapter() returned null): hardware acceleration is off, the GPU or driver is blocklisted, or WebGPU is disabled by a flag or policy.",
    );
  } else {
    strong.textContent = "Requesting a WebGPU adapter failed: ";
    lead.append(strong, report.message || "unknown error");
  }
  const what = document.createElement("p");
  what.textContent = "What to do:";
  const ul = document.createElement("ul");
  ul.append(
    li("Use a current Chrome, Edge or Chromium (version 113 or newer on Windows, macOS and ChromeOS; 121 or newer on Android)."),
    li(
      "Turn hardware acceleration on: Settings → System → “Use graphics acceleration when available”, then relaunch. ",
      code("chrome://gpu"),
      " should list “WebGPU: Hardware accelerated”.",
    ),
    li(
      "Linux Chromium/Chrome: WebGPU is still behind a flag for many GPUs. Start the browser with ",
      code("--enable-unsafe-webgpu"),
      " (often together with ",
      code("--enable-features=Vulkan"),
      "), or enable ",
      code("chrome://flags/#enable-unsafe-webgpu"),
      " and relaunch.",
    ),
    li(
      "Firefox: WebGPU is on by default on Windows since Firefox 141; on other platforms use Firefox Nightly (or set ",
      code("dom.webgpu.enabled"),
      " in about:config).",
    ),
    li("Safari: WebGPU is on by default from Safari 26 (macOS/iOS/iPadOS 26); on older versions enable it under Develop → Feature Flags."),
    li("The page must be served over https:// or from http://localhost or http://127.0.0.1 (a secure context)."),
  );
  const tail = document.createElement("p");
  tail.textContent = "Loading a model is disabled until a WebGPU adapter is available.";
  box.replaceChildren(lead, what, ul, tail);
  box.hidden = false;
}

function renderGpu(report) {
  api.gpu = report;
  document.body.dataset.gpu = report.available ? "ok" : "unavailable";
  if (!report.available) {
    $("gpu-status").textContent = "WebGPU: not available.";
    renderGpuMissing(report);
    $("gpu-details").hidden = true;
    updateControls();
    return;
  }
  const a = report.adapter;
  $("gpu-status").textContent =
    `WebGPU: adapter found (${[a.vendor, a.architecture].filter(Boolean).join(" / ") || "unnamed"}` +
    `${a.isFallbackAdapter ? ", software fallback adapter: expect it to be slow" : ""}).`;
  const adapterRows = [
    ["vendor", a.vendor],
    ["architecture", a.architecture],
    ["device", a.device],
    ["description", a.description],
    ["isFallbackAdapter", a.isFallbackAdapter ? "yes (a software or CPU-backed adapter: slow)" : "no"],
  ];
  if (a.subgroupMinSize !== undefined) adapterRows.push(["subgroup size", `${a.subgroupMinSize}–${a.subgroupMaxSize}`]);
  fillKv($("gpu-adapter"), adapterRows);
  fillKv(
    $("gpu-limits"),
    Object.entries(report.limits).map(([k, v]) => [k, BYTE_LIMITS.has(k) ? `${v} (${fmtBytes(v)})` : String(v)]),
  );
  const f16 = $("gpu-f16");
  f16.textContent = report.shaderF16 ? "yes" : "no (f16 weights are computed in f32)";
  f16.className = report.shaderF16 ? "yes" : "no";
  const ul = $("gpu-features");
  ul.replaceChildren(...report.features.map((f) => li(f)));
  if (!report.features.length) ul.replaceChildren(li("(none)"));
  $("gpu-details").hidden = false;
  updateControls();
}

// ---------------------------------------------------------------- worker plumbing

let worker = null;
let nextId = 1;
const pending = new Map(); // id -> {resolve, reject, onProgress}

function failAll(message) {
  for (const [, p] of pending) p.reject(new Error(message));
  pending.clear();
}

function getWorker() {
  if (worker) return worker;
  worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: "pseudoword" });
  worker.onmessage = (event) => {
    const msg = event.data || {};
    if (msg.status === "ready") {
      onWorkerReady(msg);
      return;
    }
    const p = pending.get(msg.id);
    if (!p) return;
    if (msg.status === "progress") {
      p.onProgress?.(msg);
      return;
    }
    pending.delete(msg.id);
    if (msg.status === "error") p.reject(Object.assign(new Error(msg.message), { kind: msg.kind || null }));
    else p.resolve(msg);
  };
  worker.onerror = (event) => {
    event.preventDefault?.();
    const where = event.filename ? ` (${event.filename}:${event.lineno})` : "";
    failAll(`The worker crashed: ${event.message || "unknown error"}${where}. Reload the page to start over.`);
    worker?.terminate();
    worker = null;
  };
  worker.onmessageerror = () => failAll("The worker sent a message that could not be read.");
  return worker;
}

// The worker's first message (no id): the library's default settings fill the forms (once).
function onWorkerReady(msg) {
  if (!msg.defaults) {
    if (!api.defaults) api.defaultsError = msg.error || "no default settings";
    return;
  }
  if (!applyDefaults(msg.defaults)) return;
  trainingDefaults(msg.defaults.train);
  api.defaults = msg.defaults;
  api.defaultsError = null;
}

function request(command, payload, onProgress, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onProgress });
    try {
      getWorker().postMessage({ id, command, ...payload }, transfer);
    } catch (err) {
      pending.delete(id);
      reject(err);
    }
  });
}

// ---------------------------------------------------------------- model loading

function resetProgress() {
  for (const [bar, text] of [
    ["download-progress", "download-text"],
    ["weights-progress", "weights-text"],
  ]) {
    $(bar).max = 1;
    $(bar).value = 0;
    $(text).textContent = "";
  }
}

const fmtTime = (ms) => (ms < 60_000 ? `${Math.ceil(ms / 1000)} s` : `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`);

function onProgress(msg) {
  if (msg.stage === "download") {
    const bar = $("download-progress");
    const parts = [];
    if (msg.total) {
      bar.max = msg.total;
      bar.value = Math.min(msg.loaded, msg.total);
      parts.push(`${fmtBytes(msg.loaded)} / ${fmtBytes(msg.total)} (${((100 * msg.loaded) / msg.total).toFixed(0)}%)`);
    } else {
      bar.removeAttribute("value"); // indeterminate: sizes not known
      parts.push(fmtBytes(msg.loaded));
    }
    if (msg.speed) parts.push(`${fmtBytes(msg.speed)}/s`);
    if (msg.eta_ms != null && msg.speed && msg.loaded < msg.total) parts.push(`ETA ${fmtTime(msg.eta_ms)}`);
    if (msg.cached_bytes) parts.push(`${fmtBytes(msg.cached_bytes)} from browser storage`);
    if (msg.resumed_bytes) parts.push(`resumed after ${fmtBytes(msg.resumed_bytes)}`);
    $("download-text").textContent = parts.join(" · ");
    $("load-status").textContent = msg.file ? `Downloading ${msg.file}…` : "Reading the model from browser storage…";
  } else if (msg.stage === "weights") {
    const bar = $("weights-progress");
    bar.max = Math.max(1, msg.total || 1);
    bar.value = msg.loaded || 0;
    const component = COMPONENTS[msg.component] || msg.component || "";
    // ETA within the component from its tensors so far (sizes vary; good enough for a bar)
    const now = performance.now();
    if (!uploadClock || uploadClock.component !== msg.component) uploadClock = { component: msg.component, t0: now, first: msg.loaded || 0 };
    const done = (msg.loaded || 0) - uploadClock.first;
    const eta = done > 0 && msg.total > msg.loaded ? ((now - uploadClock.t0) / done) * (msg.total - msg.loaded) : null;
    $("weights-text").textContent = `${component ? component + ": " : ""}${msg.loaded} / ${msg.total} tensors` + (eta !== null ? `, about ${fmtTime(eta)} left` : "");
    $("load-status").textContent = `Uploading ${component || "weights"} weights to the GPU: ${msg.key || ""}`;
  }
}

const COMPONENTS = { text_encoder: "text encoder", unet: "UNet", vae: "VAE" };
let uploadClock = null; // {component, t0, first} for the upload ETA
const SOURCES = {
  cache: "from browser storage (no download)",
  network: "downloaded and stored in the browser",
  partial: "partly from browser storage, the rest downloaded",
  memory: "downloaded (kept in memory only)",
  local: "from local files",
};

async function onLoad(event) {
  event?.preventDefault();
  if (busy || !(api.gpu && api.gpu.available)) return;
  let baseUrl;
  try {
    baseUrl = normalizeModelUrl($("model-url").value.trim() || "/models/tiny-sd1/", location.href);
  } catch (err) {
    showError($("load-error"), "");
    api.error = `Invalid model URL ${JSON.stringify($("model-url").value)}: ${errorText(err)}`;
    showError($("load-error"), api.error);
    setState("error");
    return;
  }
  // A host the page's CSP does not list would fail as a bare "Failed to fetch": say why instead.
  const blocked = cspBlockMessage(pagePolicy(), baseUrl, location.origin);
  if (blocked) {
    api.error = blocked;
    showError($("load-error"), blocked);
    $("load-status").textContent = "Not loaded: the model host is not allowed by the page's Content-Security-Policy.";
    setState("error");
    return;
  }
  const variant = $("weights").value;
  const what = isSingleFileUrl(baseUrl) ? "single-file checkpoint" : variant;
  await loadWith({ baseUrl, variant, cache: $("model-cache").checked }, `${baseUrl} (${what})`);
}

// "Configs from" for single-file checkpoints: a diffusers folder URL, checked like the model URL;
// undefined when empty, null (after showing why) when unusable.
function singleFileConfigUrl() {
  const raw = $("single-config-url").value.trim();
  if (!raw) return undefined;
  let url;
  try {
    url = normalizeModelUrl(raw, location.href);
  } catch (err) {
    api.error = `Invalid "Configs from" URL ${JSON.stringify(raw)}: ${errorText(err)}`;
  }
  if (url && isSingleFileUrl(url)) api.error = `"Configs from" must be a diffusers folder URL, not a file: ${url}`;
  else if (url) api.error = cspBlockMessage(pagePolicy(), url, location.origin);
  if (!api.error) return url;
  showError($("load-error"), api.error);
  setState("error");
  return null;
}

let loadCancelRequested = false;

// Cancel while a model downloads or uploads: the worker stops the download at once and the
// upload before the next tensor; the load then resolves as "cancelled".
async function onLoadCancel() {
  if (api.state !== "loading" || loadCancelRequested) return;
  loadCancelRequested = true;
  updateControls();
  $("load-status").textContent = "Cancelling the load…";
  try {
    await request("cancel", {});
  } catch {
    /* the load's own reply says how it ended */
  }
}

// payload: {baseUrl, variant, cache} or {files, name, variant} (see worker.js "load")
let lastLoad = null; // {payload, label} of the last model load (reloaded after a lost GPU device)

async function loadWith(payload, label) {
  if (busy || !(api.gpu && api.gpu.available)) return;
  if (!("config_url" in payload)) {
    api.error = null;
    const config_url = singleFileConfigUrl();
    if (config_url === null) return;
    payload = { ...payload, config_url };
  }
  lastLoad = { payload, label };
  const focus = noteFocus(); // the Load button, the URL field or a stored model's Load: all disabled while loading
  showError($("load-error"), "");
  api.error = null;
  api.info = null;
  api.model = null;
  $("model-details").hidden = true;
  $("encode-result").hidden = true;
  resetGeneration();
  $("token-count").textContent = "";
  resetProgress();
  $("load-status").textContent = `Loading ${label}…`;
  loadCancelRequested = false;
  uploadClock = null;
  setState("loading");
  try {
    // f16 weight storage halves GPU memory where the adapter has shader-f16 (compute stays f32)
    const storage = $("storage").value === "auto" ? (api.gpu && api.gpu.shaderF16 ? "f16" : "f32") : $("storage").value;
    // v-prediction for single-file checkpoints (the weights cannot tell; folders have it in their scheduler config)
    const prediction_type = $("prediction-type").value || undefined;
    const config_url = payload.config_url;
    const msg = await request("load", { ...payload, storage, prediction_type, config_url, simulate_limits: api.testHooks.limits || undefined }, onProgress);
    if (msg.status === "cancelled") {
      $("load-status").textContent = `Loading ${label} was cancelled; no model is loaded.` +
        (payload.baseUrl && payload.cache !== false ? " What was downloaded stays in browser storage: Load resumes it." : "");
      await refreshStorage().catch(() => {});
      setState("idle");
      return;
    }
    api.info = msg.info;
    api.model = { source: msg.source, url: msg.url, variant: msg.variant, key: msg.cache_key, cached_files: msg.cached_files, resumed_files: msg.resumed_files, note: msg.note, configs_cached: msg.configs_cached || [] };
    const fileRows = Object.entries(msg.files).map(([p, n]) => [p, fmtBytes(n)]);
    fillKv($("model-info"), [
      ...Object.entries(msg.info).map(([k, v]) => [
        k,
        typeof v === "number" && k.endsWith("_ms") ? `${v.toFixed(0)} ms` : v && typeof v === "object" ? JSON.stringify(v) : v,
      ]),
      ["source", SOURCES[msg.source] || msg.source],
      ["download", `${(msg.download_ms / 1000).toFixed(2)} s`],
      ["total load", `${(msg.total_ms / 1000).toFixed(2)} s`],
      ...fileRows,
    ]);
    $("model-details").hidden = false;
    const resumed = msg.resumed_files?.length ? `; resumed ${msg.resumed_files.map((r) => r.path).join(", ")}` : "";
    $("load-status").textContent =
      `Loaded ${label}, ${SOURCES[msg.source] || msg.source}${resumed}` + (canGenerate() ? ": ready to generate." : ": text encoder only (no UNet/VAE found).") +
      (msg.note ? " " + msg.note : "");
    setupGeneration(msg.info);
    // presets with recommended settings (SD-Turbo: 1 step, guidance 0)
    const preset = msg.url ? presetFor(msg.url, msg.variant) : null;
    if (preset?.recommend && canGenerate()) {
      $("gen-steps").value = String(preset.recommend.steps);
      $("gen-guidance").value = String(preset.recommend.guidance);
    }
    trainingModelLoaded(msg.info);
    libraryModelLoaded(msg.info);
    await refreshStorage().catch(() => {}); // the stored-model list is current when the state flips
    setState("loaded");
    restoreFocus(focus, $("load-button"));
    scheduleTokenCount();
  } catch (err) {
    api.info = null;
    api.error = errorText(err);
    showError($("load-error"), api.error);
    $("load-status").textContent = "Loading failed.";
    await refreshStorage().catch(() => {});
    setState("error");
    restoreFocus(focus, $("load-button"));
  }
}

// After a lost GPU device (or a wasm crash) the worker's WebGPU runtime cannot be set up again:
// start a fresh worker and load the same model. Resolves once it is loaded, else throws.
async function restartGpu() {
  failAll("The worker was restarted after a GPU error.");
  worker?.terminate();
  worker = null;
  if (!lastLoad) throw new Error("No model was loaded before.");
  await loadWith(lastLoad.payload, lastLoad.label);
  if (!api.info) throw new Error(api.error || "Loading the model again failed.");
}

// ---------------------------------------------------------------- encoding

function fmtNum(x) {
  return typeof x === "number" ? x.toPrecision(6) : String(x);
}

async function onEncode(event) {
  event?.preventDefault();
  if (busy || !api.info) return;
  const prompt = $("prompt").value;
  showError($("encode-error"), "");
  api.error = null;
  $("encode-status").textContent = "Encoding…";
  const focus = noteFocus();
  setState("encoding");
  try {
    const { result } = await request("encode", { prompt });
    const data = Array.from(result.data);
    api.last = { ...result, prompt, data };
    api.seq += 1;
    fillKv($("encode-summary"), [
      ["prompt", JSON.stringify(prompt)],
      ["shape", `[${(result.shape || []).join(", ")}]`],
      ["min", fmtNum(result.min)],
      ["max", fmtNum(result.max)],
      ["mean", fmtNum(result.mean)],
      ["std", fmtNum(result.std)],
      ["time", `${Number(result.millis).toFixed(1)} ms`],
    ]);
    $("encode-first").textContent = data.slice(0, 8).map(fmtNum).join("  ");
    $("encode-tokens").replaceChildren(...(result.tokens || []).map((t) => li(t)));
    $("encode-ids").textContent = result.input_ids.join(", ");
    $("encode-result").hidden = false;
    $("encode-status").textContent = `Encoded in ${Number(result.millis).toFixed(1)} ms.`;
    setState("loaded");
    restoreFocus(focus, $("encode-button"));
    scheduleTokenCount();
  } catch (err) {
    api.error = errorText(err);
    showError($("encode-error"), api.error);
    $("encode-status").textContent = "Encoding failed.";
    setState("error");
    restoreFocus(focus, $("encode-button"));
  }
}

let tokenTimer = 0;
function scheduleTokenCount() {
  clearTimeout(tokenTimer);
  tokenTimer = setTimeout(async () => {
    if (!api.info || busy) return;
    try {
      const { result } = await request("tokenize", { prompt: $("prompt").value });
      const n = (result.ids || []).length;
      const cut = result.truncated ? " (longer than 75: the rest is cut off)" : "";
      $("token-count").textContent =
        `${n} token${n === 1 ? "" : "s"}${cut}; the text encoder sees 77 ids (BOS, up to 75 tokens, EOS/padding).`;
    } catch {
      $("token-count").textContent = "";
    }
  }, 200);
}

// ---------------------------------------------------------------- generation

const SAMPLER_LABELS = {
  ddim: "DDIM",
  pndm: "PNDM / PLMS",
  plms: "PNDM / PLMS",
  euler: "Euler",
  eulera: "Euler a",
  eulerancestral: "Euler a",
  eulerancestraldiscrete: "Euler a",
  eulerdiscrete: "Euler",
  dpm2m: "DPM++ 2M",
  dpmpp2m: "DPM++ 2M",
  dpmsolvermultistep: "DPM++ 2M",
  dpm2mkarras: "DPM++ 2M Karras",
  dpmpp2mkarras: "DPM++ 2M Karras",
  lms: "LMS",
  lmsdiscrete: "LMS",
};

function samplerLabel(name) {
  if (name === undefined || name === null || name === "") return "";
  const key = String(name).toLowerCase().replace(/scheduler$/, "").replace(/[^a-z0-9]/g, "");
  return SAMPLER_LABELS[key] || String(name);
}

// info.default_size: a number (square), [width, height] or {width, height}.
function defaultSize(info) {
  const d = info && info.default_size;
  if (Array.isArray(d) && d.length >= 2) return [Number(d[0]), Number(d[1])];
  if (d && typeof d === "object") return [Number(d.width), Number(d.height)];
  if (Number.isFinite(Number(d)) && Number(d) > 0) return [Number(d), Number(d)];
  return [512, 512];
}

let cancelRequested = false;
let pngUrl = null;
let shownSeed = null; // seed of the image on show

function setGeneration(patch) {
  Object.assign(api.generation, patch);
  document.body.dataset.generation = api.generation.state;
  // The image on show belongs to the last finished run: dim it while another runs or after one
  // was cancelled or failed.
  const stale = api.generation.state !== "done";
  $("gen-figure").classList.toggle("stale", stale);
  $("gen-previous").hidden = !stale;
}

function resetGeneration() {
  setGeneration({ state: "idle", done: 0, total: 0, elapsed_ms: 0, eta_ms: null, result: null, error: null, history: [] });
  $("generate-panel").hidden = true;
  $("gen-figure").hidden = true;
  $("gen-parameters-box").hidden = true;
  $("gen-progress").max = 1;
  $("gen-progress").value = 0;
  $("gen-status").textContent = "Not started.";
  showError($("gen-error"), "");
  if (pngUrl) URL.revokeObjectURL(pngUrl);
  pngUrl = null;
  shownSeed = null;
}

function setupGeneration(info) {
  resetGeneration();
  if (!info || !info.can_generate) return;
  const [w, h] = defaultSize(info);
  $("gen-width").value = String(w);
  $("gen-height").value = String(h);
  const label = samplerLabel(info.default_scheduler);
  $("gen-scheduler").options[0].textContent = label ? `Model default (${label})` : "Model default";
  $("generate-panel").hidden = false;
}

function fmtDuration(ms) {
  if (ms == null || !Number.isFinite(ms)) return "?";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${String(Math.round(s - 60 * m)).padStart(2, "0")} s`;
}

// Reads and checks the form; throws an Error naming the bad field.
function readGenerationForm() {
  const int = (id, name, lo, hi) => {
    const text = $(id).value.trim();
    const v = Number(text);
    if (text === "" || !Number.isInteger(v) || v < lo || v > hi) {
      $(id).setAttribute("aria-invalid", "true");
      throw new Error(`${name} must be a whole number from ${lo} to ${hi} (got ${JSON.stringify(text)}).`);
    }
    $(id).removeAttribute("aria-invalid");
    return v;
  };
  const steps = int("gen-steps", "Steps", 1, 500);
  const gText = $("gen-guidance").value.trim();
  const guidance = Number(gText);
  if (gText === "" || !Number.isFinite(guidance) || guidance < 0 || guidance > 50) {
    $("gen-guidance").setAttribute("aria-invalid", "true");
    throw new Error(`Guidance must be a number from 0 to 50 (got ${JSON.stringify(gText)}).`);
  }
  $("gen-guidance").removeAttribute("aria-invalid");
  const width = int("gen-width", "Width", 8, 4096);
  const height = int("gen-height", "Height", 8, 4096);
  for (const [id, name, v] of [["gen-width", "Width", width], ["gen-height", "Height", height]]) {
    if (v % 8 !== 0) {
      $(id).setAttribute("aria-invalid", "true");
      throw new Error(`${name} must be a multiple of 8 (got ${v}; try ${Math.max(8, Math.round(v / 8) * 8)}).`);
    }
  }
  const params = {
    prompt: $("gen-prompt").value,
    negative_prompt: $("gen-negative").value,
    scheduler: $("gen-scheduler").value,
    steps,
    guidance,
    width,
    height,
  };
  const suppress = $("gen-suppress").value.trim();
  if (suppress) {
    const alpha = Number($("gen-suppress-alpha").value);
    if (!Number.isFinite(alpha) || alpha < 0) throw new Error(`Suppression strength must be a number >= 0 (got ${JSON.stringify($("gen-suppress-alpha").value)}).`);
    const iters = Number($("gen-suppress-iters").value);
    if (!Number.isInteger(iters) || iters < 1 || iters > 50) throw new Error(`ITO iterations must be a whole number from 1 to 50 (got ${JSON.stringify($("gen-suppress-iters").value)}).`);
    Object.assign(params, { suppress, suppress_alpha: alpha, suppress_opt_off: !$("gen-suppress-opt").checked, suppress_opt_iters: iters });
  }
  if ($("gen-heatmaps").checked) params.heatmaps = true;
  const seedText = $("gen-seed").value.trim();
  if (seedText !== "") {
    const seed = Number(seedText);
    if (!/^\d+$/.test(seedText) || !Number.isSafeInteger(seed)) {
      $("gen-seed").setAttribute("aria-invalid", "true");
      throw new Error(`Seed must be empty (random) or a whole number from 0 to ${Number.MAX_SAFE_INTEGER} (got ${JSON.stringify(seedText)}).`);
    }
    params.seed = seed;
  }
  $("gen-seed").removeAttribute("aria-invalid");
  return params;
}

function onGenerateProgress(msg) {
  const g = api.generation;
  if (msg.stage === "generate") {
    g.history.push(msg.done);
    setGeneration({ done: msg.done, total: msg.total, elapsed_ms: msg.elapsed_ms, eta_ms: msg.eta_ms, seed: msg.seed });
    const bar = $("gen-progress");
    bar.max = Math.max(1, msg.total);
    bar.value = msg.done;
    const eta = msg.eta_ms == null ? "ETA: after the first step" : `ETA ${fmtDuration(msg.eta_ms)}`;
    const seed = msg.seed !== undefined && msg.seed !== null ? `, seed ${msg.seed}` : "";
    $("gen-status").textContent = cancelRequested
      ? `Step ${msg.done} / ${msg.total}: cancelling after the current step…`
      : `Step ${msg.done} / ${msg.total}, ${eta} (elapsed ${fmtDuration(msg.elapsed_ms)}${seed})`;
  } else if (msg.stage === "invert") {
    setGeneration({ inversion: { done: msg.done, total: msg.total } });
    const bar = $("gen-progress");
    bar.max = Math.max(1, msg.total);
    bar.value = msg.done;
    $("gen-status").textContent = cancelRequested
      ? `Inverting the photo: step ${msg.done} / ${msg.total}: cancelling…`
      : `Inverting the photo (null-text inversion): step ${msg.done} / ${msg.total}, elapsed ${fmtDuration(msg.elapsed_ms)}`;
  } else if (msg.stage === "decode") {
    setGeneration({ done: msg.done, total: msg.total, elapsed_ms: msg.elapsed_ms, eta_ms: 0 });
    $("gen-status").textContent = `Step ${g.done} / ${g.total} done; decoding the image (VAE)…`;
  }
}

function drawImage(canvas, image, width, height) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(width, height);
  const px = out.data;
  const n = width * height;
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      const v = image[3 * i + c];
      px[4 * i + c] = Math.round(Math.min(1, Math.max(0, Number.isNaN(v) ? 0 : v)) * 255);
    }
    px[4 * i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
}

let originalUrl = null;
let heatmapUrls = [];

const BRANCH_TITLES = { image: "Attention per token", original: "Before suppression", suppressed: "After suppression" };

// One strip of token tiles per branch (before / after suppression for suppressed runs).
function showHeatmaps(hm) {
  for (const u of heatmapUrls) URL.revokeObjectURL(u);
  heatmapUrls = [];
  const box = $("gen-heatmaps-tiles"); // #gen-heatmaps is the checkbox that asks for them
  box.replaceChildren();
  $("gen-heatmaps-box").hidden = !hm;
  if (!hm) return;
  for (const b of hm.branches) {
    const row = document.createElement("div");
    row.className = "heatmap-strip";
    row.dataset.branch = b.name;
    const h = document.createElement("h4");
    h.textContent = BRANCH_TITLES[b.name] || b.name;
    const list = document.createElement("ul");
    list.className = "heatmap-tiles";
    list.setAttribute("aria-label", `${h.textContent}: one heatmap per prompt token`);
    b.tiles.forEach((png, k) => {
      const url = URL.createObjectURL(new Blob([png], { type: "image/png" }));
      heatmapUrls.push(url);
      const token = hm.tokens[k] ?? "?";
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = url;
      a.target = "_blank";
      a.rel = "noopener";
      a.download = `heatmap-${b.name}-${String(hm.positions[k]).padStart(2, "0")}-${token.replace(/[^A-Za-z0-9_-]/g, "_") || "_"}.png`;
      const img = document.createElement("img");
      img.src = url;
      img.alt = `Attention of "${token}" (${h.textContent.toLowerCase()})`;
      img.width = 96;
      img.height = 96;
      a.append(img);
      const cap = document.createElement("span");
      cap.textContent = token;
      li.append(a, cap);
      list.append(li);
    });
    row.append(h, list);
    box.append(row);
  }
  $("gen-heatmaps-help").textContent = `Where each word of the prompt looked, averaged over ${hm.steps} steps at ${hm.size[0]}×${hm.size[1]} (red: most). Select a tile to open it full size.`;
}

function showResult(result) {
  const { width, height, seed } = result;
  drawImage($("gen-canvas"), result.image, width, height);
  $("gen-original-figure").hidden = !result.original_image;
  $("gen-original-label").textContent = result.edit ? "The photo as its inversion reconstructs it." : "Without suppression (same seed).";
  if (result.original_image) {
    drawImage($("gen-original-canvas"), result.original_image, width, height);
    if (originalUrl) URL.revokeObjectURL(originalUrl);
    originalUrl = URL.createObjectURL(new Blob([result.original_png], { type: "image/png" }));
    $("gen-original-download").href = originalUrl;
    $("gen-original-download").download = `pseudoword-${seed}-original.png`;
  }
  const firstLine = String(result.parameters || "").split("\n")[0];
  $("gen-canvas").setAttribute("aria-label", `Generated image, ${width}×${height}: ${firstLine || "(empty prompt)"}`);
  $("gen-seed-used").textContent = `Seed: ${seed}`;
  shownSeed = seed;
  if (pngUrl) URL.revokeObjectURL(pngUrl);
  pngUrl = URL.createObjectURL(new Blob([result.png], { type: "image/png" }));
  const a = $("gen-download");
  a.href = pngUrl;
  a.download = `pseudoword-${seed}.png`;
  a.textContent = `Download PNG (${fmtBytes(result.png.byteLength)})`;
  $("gen-parameters").textContent = result.parameters || "";
  showHeatmaps(result.heatmaps || null);
  $("gen-figure").hidden = false;
  $("gen-parameters-box").hidden = !result.parameters;
}

async function onGenerate(event) {
  event?.preventDefault();
  if (busy || !canGenerate()) return;
  showError($("gen-error"), "");
  api.error = null;
  let params;
  try {
    params = readGenerationForm();
  } catch (err) {
    showError($("gen-error"), errorText(err));
    return;
  }
  const latents = nextLatents;
  nextLatents = null; // one run only
  const payload = latents ? { params, latents } : { params };
  await runGeneration("generate", payload, latents ? [latents.buffer] : [], params.steps, `Starting (${params.steps} steps${latents ? ", given initial latents" : ""})…`);
}

// "Edit a photo": the generation form's prompt describes the photo and its suppression words
// name what to remove; the photo is inverted (DDIM + null-text), then edited like a generation.
async function onEdit(event) {
  event?.preventDefault();
  if (busy || !canGenerate()) return;
  showError($("gen-error"), "");
  api.error = null;
  const file = $("edit-photo").files[0];
  let params;
  try {
    if (!file) throw new Error("Choose a photo to edit first (JPEG, PNG or WebP).");
    params = readGenerationForm();
    if (!params.suppress) throw new Error('Name what to remove from the photo under "Words of the prompt to remove" (e.g. glasses); the prompt should describe the photo and contain those words.');
    const usual = settingsDefaults()?.edit?.guidance;
    if (!(params.guidance > 1)) throw new Error(`Photo edits need guidance above 1 (null-text inversion${usual > 1 ? `; ${usual} is usual` : ""}).`);
    const iters = Number($("edit-null-iters").value);
    if (!Number.isInteger(iters) || iters < 0 || iters > 50) throw new Error(`Null-text iterations must be a whole number from 0 to 50 (got ${JSON.stringify($("edit-null-iters").value)}).`);
    params.scheduler = "ddim";
    params.null_text_iters = iters;
  } catch (err) {
    showError($("gen-error"), errorText(err));
    return;
  }
  const photo = new Uint8Array(await file.arrayBuffer());
  await runGeneration("edit", { params, photo, file_name: file.name }, [photo.buffer], params.steps, `Inverting ${file.name} (${params.steps} DDIM steps, then null-text inversion)…`);
}

async function runGeneration(command, payload, transfer, total, startText) {
  cancelRequested = false;
  setGeneration({ state: "running", done: 0, total, elapsed_ms: 0, eta_ms: null, result: null, error: null, history: [], command, inversion: null });
  $("gen-progress").max = total;
  $("gen-progress").value = 0;
  $("gen-status").textContent = startText;
  const focus = noteFocus();
  setState("generating");
  // Started from the Generate / Edit photo button (now disabled): keyboard focus goes to Cancel.
  if (!focus || focus.el === $("generate-button") || focus.el === $("edit-button")) $("cancel-button").focus();
  try {
    const msg = await request(command, payload, onGenerateProgress, transfer);
    const g = api.generation;
    if (msg.status === "cancelled") {
      setGeneration({ state: "cancelled", done: msg.done, total: msg.total || g.total, eta_ms: null, seq: g.seq + 1 });
      $("gen-status").textContent = `Cancelled after step ${msg.done} / ${msg.total || g.total}.`;
    } else {
      const r = msg.result;
      showResult(r);
      setGeneration({
        state: "done",
        done: r.total_steps,
        total: r.total_steps,
        eta_ms: 0,
        elapsed_ms: r.elapsed_ms,
        result: {
          width: r.width,
          height: r.height,
          image: Array.from(r.image),
          parameters: r.parameters,
          png_size: r.png.byteLength,
          seed: r.seed,
          scheduler: r.scheduler,
          millis: r.millis,
          suppress: r.suppress || "",
          original_image: r.original_image ? Array.from(r.original_image) : null,
          edit: !!r.edit,
          heatmaps: r.heatmaps ? { tokens: r.heatmaps.tokens, steps: r.heatmaps.steps, size: r.heatmaps.size, branches: r.heatmaps.branches.map((b) => ({ name: b.name, tiles: b.tiles.length })) } : null,
        },
        seq: g.seq + 1,
      });
      $("gen-progress").max = Math.max(1, r.total_steps);
      $("gen-progress").value = r.total_steps;
      $("gen-status").textContent =
        `Done: ${r.total_steps} steps, ${r.width}×${r.height}, seed ${r.seed}${r.suppress ? `, "${r.suppress}" suppressed` : ""}, in ${fmtDuration(r.elapsed_ms)}.`;
    }
    setState("loaded");
  } catch (err) {
    api.error = errorText(err);
    setGeneration({ state: "error", error: api.error, eta_ms: null, seq: api.generation.seq + 1 });
    showError($("gen-error"), api.error);
    $("gen-status").textContent = "Generation failed.";
    setState("error");
  } finally {
    cancelRequested = false;
    updateControls();
    // focus on Cancel (disabled again) or lost: back to what started the run
    restoreFocus(focus, $("generate-button"));
  }
}

async function onCancel() {
  if (api.state !== "generating" || cancelRequested) return;
  cancelRequested = true;
  updateControls();
  $("gen-status").textContent = `Step ${api.generation.done} / ${api.generation.total}: cancelling after the current step…`;
  try {
    await request("cancel", {});
  } catch (err) {
    showError($("gen-error"), `Cancel failed: ${errorText(err)}`);
  }
}

// ---------------------------------------------------------------- wiring

initTraining({ request, api, restartGpu });
initLibrary({ request, api });
initModelManager({ api, request, load: loadWith, isBusy: () => busy, fmtBytes }).catch(() => {});
$("load-form").addEventListener("submit", onLoad);
$("load-cancel").addEventListener("click", onLoadCancel);
$("encode-form").addEventListener("submit", onEncode);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    onEncode();
  }
});
$("prompt").addEventListener("input", scheduleTokenCount);
$("generate-form").addEventListener("submit", onGenerate);
$("edit-button").addEventListener("click", onEdit);
$("cancel-button").addEventListener("click", onCancel);
for (const id of ["gen-prompt", "gen-negative"]) {
  $(id).addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      onGenerate();
    }
  });
}
$("gen-reuse-seed").addEventListener("click", () => {
  if (shownSeed !== undefined && shownSeed !== null) {
    $("gen-seed").value = String(shownSeed);
    $("gen-seed").focus();
  }
});

setState("idle");
resetGeneration();
getWorker(); // starts the wasm module: its default settings fill the forms ("ready")
probeGpu().then(renderGpu);
