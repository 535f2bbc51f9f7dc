// Main thread: UI only. The wasm module and the model live in worker.js (see the
// protocol at the top of that file). Tests read window.__pseudoword and body[data-state].

const $ = (id) => document.getElementById(id);

const api = {
  gpu: null, // adapter report (see probeGpu); null until the check finishes
  info: null, // session.info() of the loaded model, or null
  last: null, // last encode result, `data` as a plain array
  error: null, // last error message, or null
  state: "idle", // "idle" | "loading" | "loaded" | "encoding" | "error"
  seq: 0, // number of encode results so far (lets tests wait for a new one)
};
window.__pseudoword = api;

let busy = false;

function setState(state) {
  api.state = state;
  busy = state === "loading" || state === "encoding";
  document.body.dataset.state = state;
  document.body.setAttribute("aria-busy", busy ? "true" : "false");
  updateControls();
}

function updateControls() {
  const gpuOk = !!(api.gpu && api.gpu.available);
  $("load-button").disabled = !gpuOk || busy;
  $("model-url").disabled = busy;
  $("weights").disabled = busy;
  $("encode-button").disabled = !api.info || busy;
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
    const p = pending.get(msg.id);
    if (!p) return;
    if (msg.status === "progress") {
      p.onProgress?.(msg);
      return;
    }
    pending.delete(msg.id);
    if (msg.status === "error") p.reject(new Error(msg.message));
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

function request(command, payload, onProgress) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onProgress });
    try {
      getWorker().postMessage({ id, command, ...payload });
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

function onProgress(msg) {
  if (msg.stage === "download") {
    const bar = $("download-progress");
    if (msg.total) {
      bar.max = msg.total;
      bar.value = Math.min(msg.loaded, msg.total);
      const pct = ((100 * msg.loaded) / msg.total).toFixed(0);
      $("download-text").textContent = `${fmtBytes(msg.loaded)} / ${fmtBytes(msg.total)} (${pct}%)`;
    } else {
      bar.removeAttribute("value"); // indeterminate: sizes not known
      $("download-text").textContent = `${fmtBytes(msg.loaded)}`;
    }
    $("load-status").textContent = `Downloading ${msg.file || "model files"}…`;
  } else if (msg.stage === "weights") {
    const bar = $("weights-progress");
    bar.max = Math.max(1, msg.total || 1);
    bar.value = msg.loaded || 0;
    $("weights-text").textContent = `${msg.loaded} / ${msg.total} tensors`;
    $("load-status").textContent = `Uploading weights to the GPU: ${msg.key || ""}`;
  }
}

function normalizeBaseUrl(raw) {
  const text = raw.trim() || "/models/tiny-sd1/";
  const url = new URL(text, location.href);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`Model URL must be http(s), got ${url.protocol}`);
  }
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  url.search = "";
  url.hash = "";
  return url.href;
}

async function onLoad(event) {
  event.preventDefault();
  if (busy || !(api.gpu && api.gpu.available)) return;
  showError($("load-error"), "");
  api.error = null;
  let baseUrl;
  try {
    baseUrl = normalizeBaseUrl($("model-url").value);
  } catch (err) {
    api.error = `Invalid model URL ${JSON.stringify($("model-url").value)}: ${errorText(err)}`;
    showError($("load-error"), api.error);
    setState("error");
    return;
  }
  const variant = $("weights").value;
  api.info = null;
  $("model-info").hidden = true;
  $("encode-result").hidden = true;
  $("token-count").textContent = "";
  resetProgress();
  $("load-status").textContent = `Loading ${baseUrl} (${variant})…`;
  setState("loading");
  try {
    const msg = await request("load", { baseUrl, variant }, onProgress);
    api.info = msg.info;
    const fileRows = Object.entries(msg.files).map(([p, n]) => [p, fmtBytes(n)]);
    fillKv($("model-info"), [
      ...Object.entries(msg.info).map(([k, v]) => [k, typeof v === "number" && k.endsWith("_ms") ? `${v.toFixed(0)} ms` : v]),
      ["download", `${(msg.download_ms / 1000).toFixed(2)} s`],
      ["total load", `${(msg.total_ms / 1000).toFixed(2)} s`],
      ...fileRows,
    ]);
    $("model-info").hidden = false;
    $("load-status").textContent = `Loaded ${baseUrl} (${variant}).`;
    setState("loaded");
    scheduleTokenCount();
  } catch (err) {
    api.info = null;
    api.error = errorText(err);
    showError($("load-error"), api.error);
    $("load-status").textContent = "Loading failed.";
    setState("error");
  }
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
    scheduleTokenCount();
  } catch (err) {
    api.error = errorText(err);
    showError($("encode-error"), api.error);
    $("encode-status").textContent = "Encoding failed.";
    setState("error");
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

// ---------------------------------------------------------------- wiring

$("load-form").addEventListener("submit", onLoad);
$("encode-form").addEventListener("submit", onEncode);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    onEncode();
  }
});
$("prompt").addEventListener("input", scheduleTokenCount);

setState("idle");
probeGpu().then(renderGpu);
