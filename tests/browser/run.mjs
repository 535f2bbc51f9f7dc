#!/usr/bin/env node
// End-to-end tests of the pseudoword web app in headless Chromium (WebGPU on SwiftShader).
//
//   node tests/browser/run.mjs [--cases i,ii,iii,iv,v,vi,vii,viii,ix,x,xi,xii,xiii,xiv,xv,xvi]
//
// Starts scripts/serve.mjs on a free port, drives www/ through its real UI with the system
// Chromium (/usr/bin/chromium, or $CHROMIUM) and compares against the goldens in
// tests/fixtures/tiny-sd1/goldens/{text_encoder,pipelines}.safetensors. Exit code 1 on any
// failure. Screenshots go to tests/browser/artifacts/. Env: PSEUDOWORD_CASES (like --cases),
// PSEUDOWORD_LOAD_TIMEOUT_MS (default 900000), PSEUDOWORD_ENCODE_TIMEOUT_MS (default 300000),
// PSEUDOWORD_GENERATE_TIMEOUT_MS (default 1800000: SwiftShader is a CPU rasterizer),
// PSEUDOWORD_PKG_DIR (serve this folder as /pkg/ instead of www/pkg, e.g. another build).

import { chromium } from "playwright-core";
import { CHROMIUM, WEBGPU_FLAGS, startServe } from "../../scripts/start-serve.mjs";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import { fileURLToPath, pathToFileURL } from "node:url";
import { caseFlow, caseCsp } from "./flow.mjs";
import { caseSingleFile, LDM_DIR } from "./single-file.mjs";
import { caseKeyboard } from "./a11y.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
const ARTIFACTS = path.join(HERE, "artifacts");
const GOLDENS = path.join(REPO, "tests/fixtures/tiny-sd1/goldens/text_encoder.safetensors");
const PIPELINES = path.join(REPO, "tests/fixtures/tiny-sd1/goldens/pipelines.safetensors");
const PKG_DIR = process.env.PSEUDOWORD_PKG_DIR ? path.resolve(process.env.PSEUDOWORD_PKG_DIR) : null;
const PKG = path.join(PKG_DIR || path.join(REPO, "www/pkg"), "pseudoword.js");
const LOAD_TIMEOUT = Number(process.env.PSEUDOWORD_LOAD_TIMEOUT_MS || 900_000);
const ENCODE_TIMEOUT = Number(process.env.PSEUDOWORD_ENCODE_TIMEOUT_MS || 300_000);
const GENERATE_TIMEOUT = Number(process.env.PSEUDOWORD_GENERATE_TIMEOUT_MS || 1_800_000);
const TOLERANCE = 1e-4;
const IMAGE_TOLERANCE = 1e-3;

const NO_WEBGPU_FLAGS = WEBGPU_FLAGS.filter((f) => f !== "--enable-unsafe-webgpu");

const ALL_CASES = ["i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii", "xiii", "xiv", "xv", "xvi"];
const NEEDS_WASM = new Set(["ii", "iii", "v", "vii", "viii", "ix", "x", "xi", "xii", "xiii", "xv", "xvi"]);
// Case xii: the same tiny model under a second URL whose first text-encoder download the server
// cuts after RESUME_CUT bytes (scripts/serve.mjs PSEUDOWORD_SERVE_ABORT_ONCE).
const RESUME_PREFIX = "/models/tiny-resume/";
const RESUME_FILE = "text_encoder/model.safetensors";
const RESUME_CUT = 2_000_000;
const NEEDS_GENERATION = new Set(["vii", "viii", "ix", "x", "xi", "xiii"]);
// The native CLI (built by `cargo test`), for comparing browser training with a native run.
const CLI = process.env.PSEUDOWORD_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, "target"), "debug/pseudoword");

function selectedCases() {
  let spec = process.env.PSEUDOWORD_CASES || "";
  const i = process.argv.indexOf("--cases");
  if (i >= 0) spec = process.argv[i + 1] || "";
  const eq = process.argv.find((a) => a.startsWith("--cases="));
  if (eq) spec = eq.slice("--cases=".length);
  if (!spec) return new Set(ALL_CASES);
  const set = new Set(spec.split(",").map((s) => s.trim()).filter(Boolean));
  for (const c of set) if (!ALL_CASES.includes(c)) throw new Error(`unknown case ${c}; known: ${ALL_CASES}`);
  return set;
}

// ------------------------------------------------------------------ safetensors (goldens)

function readSafetensors(file) {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const base = 8 + n;
  const tensors = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [start, end] = t.data_offsets;
    const bytes = buf.subarray(base + start, base + end);
    const own = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength); // aligned copy
    let data;
    if (t.dtype === "F32") data = new Float32Array(own);
    else if (t.dtype === "I64") data = Array.from(new BigInt64Array(own), Number);
    else if (t.dtype === "I32") data = Array.from(new Int32Array(own));
    else continue;
    const count = t.shape.reduce((a, b) => a * b, 1);
    assert.equal(data.length, count, `${name}: ${data.length} values for shape ${t.shape}`);
    tensors[name] = { dtype: t.dtype, shape: t.shape, data };
  }
  return { metadata: header.__metadata__ || {}, tensors };
}

function row(tensor, i) {
  const per = tensor.shape.slice(1).reduce((a, b) => a * b, 1);
  return Array.prototype.slice.call(tensor.data, i * per, (i + 1) * per);
}

function maxAbsDiff(a, b) {
  assert.equal(a.length, b.length, `length ${a.length} != golden ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

// ------------------------------------------------------------------ server

function startServer() {
  const extra = PKG_DIR ? ["--mount", `/pkg/=${PKG_DIR}`] : [];
  extra.push("--mount", `${RESUME_PREFIX}=${path.join(REPO, "tests/fixtures/tiny-sd1")}`);
  mkdirSync(LDM_DIR, { recursive: true }); // case xvi writes its single-file checkpoint here
  extra.push("--mount", `/models/ldm/=${LDM_DIR}`);
  return startServe(extra, { ...process.env, PSEUDOWORD_SERVE_ABORT_ONCE: `${RESUME_PREFIX}${RESUME_FILE}=${RESUME_CUT}` });
}

// ------------------------------------------------------------------ browser

const requests = []; // every URL any page or worker asked for
const bodies = []; // {url, method, body} of every request that carried a body (the app sends none)
const profiles = [];

async function launch(label, args) {
  const userDataDir = mkdtempSync(path.join(tmpdir(), `pseudoword-${label}-`));
  profiles.push(userDataDir);
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args,
    viewport: { width: 1100, height: 1400 },
  });
  context.on("request", (r) => {
    requests.push(r.url());
    const body = r.postDataBuffer();
    if (body && body.length) bodies.push({ url: r.url(), method: r.method(), body });
  });
  const page = context.pages()[0] || (await context.newPage());
  const tag = `[${label}]`;
  // Chromium reports the dedicated worker's console here too (no separate worker listener).
  page.on("console", (msg) => {
    if (msg.type() === "error") console.log(`${tag} console.error: ${msg.text()}`);
  });
  page.on("pageerror", (err) => console.log(`${tag} pageerror: ${err.message}`));
  return { context, page };
}

async function open(page, base) {
  await page.goto(base, { waitUntil: "load" });
  await page.waitForFunction(() => window.__pseudoword && window.__pseudoword.gpu !== null, null, { timeout: 60_000 });
  return page.evaluate(() => window.__pseudoword.gpu);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

let loaded = null; // {url, variant} of the model the main page holds, or null

async function loadModel(page, url, variant) {
  loaded = null;
  await page.fill("#model-url", url);
  await page.selectOption("#weights", variant);
  const t0 = Date.now();
  await page.click("#load-button");
  await page.waitForFunction(
    () => ["loaded", "error"].includes(document.body.dataset.state),
    null,
    { timeout: LOAD_TIMEOUT, polling: 250 },
  );
  const s = await page.evaluate(() => ({ state: window.__pseudoword.state, error: window.__pseudoword.error, info: window.__pseudoword.info }));
  assert.equal(s.state, "loaded", `loading ${url} (${variant}) failed: ${s.error}`);
  loaded = { url, variant };
  return { info: s.info, seconds: (Date.now() - t0) / 1000 };
}

// Loads the model unless the main page already holds it (loaded by an earlier case).
async function ensureModel(page, url, variant) {
  const info = await page.evaluate(() => window.__pseudoword.info);
  if (loaded && loaded.url === url && loaded.variant === variant && info) return { info, seconds: 0, reused: true };
  return { ...(await loadModel(page, url, variant)), reused: false };
}

async function encode(page, prompt) {
  await page.fill("#prompt", prompt);
  const before = await page.evaluate(() => window.__pseudoword.seq);
  await page.click("#encode-button");
  await page.waitForFunction(
    (b) => window.__pseudoword.seq > b || window.__pseudoword.state === "error",
    before,
    { timeout: ENCODE_TIMEOUT, polling: 100 },
  );
  const s = await page.evaluate(() => ({ state: window.__pseudoword.state, error: window.__pseudoword.error, last: window.__pseudoword.last }));
  assert.notEqual(s.state, "error", `encoding ${JSON.stringify(prompt)} failed: ${s.error}`);
  assert.equal(s.last.prompt, prompt);
  return s.last;
}

function checkAgainstGolden(last, goldenIds, goldenHidden, label) {
  assert.deepEqual(last.input_ids, goldenIds, `${label}: input_ids differ from the golden`);
  assert.deepEqual(last.shape, [1, 77, goldenHidden.length / 77], `${label}: shape`);
  const err = maxAbsDiff(last.data, goldenHidden);
  assert.ok(err <= TOLERANCE, `${label}: max |data - golden| = ${err.toExponential(3)} > ${TOLERANCE}`);
  return err;
}


// ------------------------------------------------------------------ generation

// Fills the Generate form, optionally injects initial latents (test hook), clicks Generate.
// Returns the `seq` to wait past.
async function startGeneration(page, opts) {
  const before = await page.evaluate(() => window.__pseudoword.generation.seq);
  await page.fill("#gen-prompt", opts.prompt);
  await page.fill("#gen-negative", opts.negative ?? "");
  await page.selectOption("#gen-scheduler", opts.scheduler ?? "");
  await page.fill("#gen-steps", String(opts.steps));
  await page.fill("#gen-guidance", String(opts.guidance ?? 7.5));
  await page.fill("#gen-width", String(opts.width));
  await page.fill("#gen-height", String(opts.height));
  await page.fill("#gen-seed", opts.seed === undefined ? "" : String(opts.seed));
  await page.fill("#gen-suppress", opts.suppress ?? "");
  await page.fill("#gen-suppress-iters", String(opts.suppressIters ?? 10));
  await page.setChecked("#gen-heatmaps", !!opts.heatmaps);
  const n = await page.evaluate((l) => window.__pseudoword.setLatents(l), opts.latents ? Array.from(opts.latents) : null);
  if (opts.latents) assert.equal(n, opts.latents.length, "setLatents took all values");
  await page.click("#generate-button");
  return before;
}

async function waitGeneration(page, before, timeout = GENERATE_TIMEOUT) {
  await page.waitForFunction((b) => window.__pseudoword.generation.seq > b, before, { timeout, polling: 250 });
  return page.evaluate(() => {
    const g = window.__pseudoword.generation;
    return { ...g, history: [...(g.history || [])], state: g.state, pageState: window.__pseudoword.state, error: g.error };
  });
}

// Minimal PNG reader: chunks (CRC-checked), text chunks, and for 8-bit RGB/RGBA non-interlaced
// images the unfiltered pixels.
function readPng(buf) {
  const SIG = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]);
  assert.ok(buf.subarray(0, 8).equals(SIG), "PNG signature");
  const text = {};
  const idat = [];
  let ihdr = null;
  for (let o = 8; o < buf.length; ) {
    const len = buf.readUInt32BE(o);
    const type = buf.toString("latin1", o + 4, o + 8);
    const data = buf.subarray(o + 8, o + 8 + len);
    const crc = buf.readUInt32BE(o + 8 + len);
    assert.equal(crc, zlib.crc32(buf.subarray(o + 4, o + 8 + len)) >>> 0, `CRC of ${type} chunk`);
    if (type === "IHDR") {
      ihdr = { width: data.readUInt32BE(0), height: data.readUInt32BE(4), depth: data[8], color: data[9], interlace: data[12] };
    } else if (type === "tEXt") {
      const z = data.indexOf(0);
      text[data.toString("latin1", 0, z)] = data.toString("latin1", z + 1);
    } else if (type === "zTXt") {
      const z = data.indexOf(0);
      text[data.toString("latin1", 0, z)] = zlib.inflateSync(data.subarray(z + 2)).toString("latin1");
    } else if (type === "iTXt") {
      const z = data.indexOf(0);
      const compressed = data[z + 1] === 1;
      let p = z + 3;
      p = data.indexOf(0, p) + 1; // language tag
      p = data.indexOf(0, p) + 1; // translated keyword
      const body = data.subarray(p);
      text[data.toString("latin1", 0, z)] = (compressed ? zlib.inflateSync(body) : body).toString("utf8");
    } else if (type === "IDAT") idat.push(data);
    if (type === "IEND") break;
    o += 12 + len;
  }
  assert.ok(ihdr, "IHDR chunk");
  let pixels = null;
  const channels = { 2: 3, 6: 4 }[ihdr.color];
  if (ihdr.depth === 8 && channels && ihdr.interlace === 0) {
    const raw = zlib.inflateSync(Buffer.concat(idat));
    const { width: w, height: h } = ihdr;
    const stride = w * channels;
    pixels = new Uint8Array(w * h * 3);
    let prev = new Uint8Array(stride);
    for (let y = 0; y < h; y++) {
      const f = raw[y * (stride + 1)];
      const line = Uint8Array.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
      for (let x = 0; x < stride; x++) {
        const a = x >= channels ? line[x - channels] : 0;
        const b = prev[x];
        const c = x >= channels ? prev[x - channels] : 0;
        let pred = 0;
        if (f === 1) pred = a;
        else if (f === 2) pred = b;
        else if (f === 3) pred = (a + b) >> 1;
        else if (f === 4) {
          const pp = a + b - c;
          const pa = Math.abs(pp - a), pb = Math.abs(pp - b), pc = Math.abs(pp - c);
          pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
        }
        line[x] = (line[x] + pred) & 255;
      }
      for (let x = 0; x < w; x++) for (let k = 0; k < 3; k++) pixels[3 * (y * w + x) + k] = line[x * channels + k];
      prev = line;
    }
  }
  return { ...ihdr, text, pixels };
}

// Max |canvas pixel - round(image * 255)| over the whole canvas.
async function canvasDiff(page, image) {
  const px = await page.evaluate(() => {
    const c = document.getElementById("gen-canvas");
    return { w: c.width, h: c.height, data: Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data) };
  });
  let m = 0;
  for (let i = 0; i < px.w * px.h; i++) {
    for (let k = 0; k < 3; k++) m = Math.max(m, Math.abs(px.data[4 * i + k] - Math.round(Math.min(1, Math.max(0, image[3 * i + k])) * 255)));
  }
  return { ...px, maxDiff: m };
}

// Clicks "Download PNG", checks the file name and returns the PNG bytes.
async function downloadPng(page, seed) {
  assert.ok(await page.isVisible("#gen-download"), "Download PNG link visible");
  const link = await page.evaluate(() => {
    const a = document.getElementById("gen-download");
    return { href: a.href, download: a.getAttribute("download"), text: a.textContent };
  });
  assert.match(link.href, /^blob:/, "download link is a Blob URL");
  assert.equal(link.download, `pseudoword-${seed}.png`, "download file name");
  const [dl] = await Promise.all([page.waitForEvent("download", { timeout: 30_000 }), page.click("#gen-download")]);
  assert.equal(dl.suggestedFilename(), `pseudoword-${seed}.png`);
  const file = await dl.path();
  return { bytes: readFileSync(file), link };
}

// ------------------------------------------------------------------ cases

const results = [];

// Case xii helpers: wait for a load started by a click; pure checks of www/models.js in node.
async function waitLoaded(page, mustLoad = true) {
  const t0 = Date.now();
  await page.waitForFunction(() => document.body.dataset.state === "loading", null, { timeout: 10_000 }).catch(() => {});
  await page.waitForFunction(() => ["loaded", "error"].includes(document.body.dataset.state), null, { timeout: LOAD_TIMEOUT, polling: 250 });
  const s = await page.evaluate(() => ({
    state: window.__pseudoword.state, error: window.__pseudoword.error, model: window.__pseudoword.model,
    status: document.getElementById("load-status").textContent,
  }));
  if (mustLoad) assert.equal(s.state, "loaded", `load failed: ${s.error}`);
  return { ...s, seconds: (Date.now() - t0) / 1000 };
}

async function modelsUnitChecks() {
  const m = await import(pathToFileURL(path.join(REPO, "www/models.js")).href);
  const base = "http://127.0.0.1:9/";
  const urls = Object.fromEntries(m.PRESETS.map((p) => [p.id, [m.presetUrl(p, base), p.variant]]));
  assert.deepEqual(urls, {
    sd15: ["https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/", "fp16"],
    "sd21-base": ["https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/", "fp16"],
    "sd-turbo": ["https://huggingface.co/stabilityai/sd-turbo/resolve/main/", "fp16"],
    "bk-sdm-small": ["https://huggingface.co/nota-ai/bk-sdm-small/resolve/main/", "fp32"],
    tiny: ["http://127.0.0.1:9/models/tiny-sd1/", "fp32"],
  });
  assert.deepEqual(m.PRESETS.find((p) => p.id === "sd-turbo").recommend, { steps: 1, guidance: 0 });
  const n = (u) => m.normalizeModelUrl(u, base);
  assert.equal(n("https://huggingface.co/ORG/NAME"), "https://huggingface.co/ORG/NAME/resolve/main/");
  assert.equal(n(" https://huggingface.co/ORG/NAME/ "), "https://huggingface.co/ORG/NAME/resolve/main/");
  assert.equal(n("https://huggingface.co/ORG/NAME/tree/fp16"), "https://huggingface.co/ORG/NAME/resolve/fp16/");
  assert.equal(n("https://huggingface.co/ORG/NAME/blob/main/unet/config.json"), "https://huggingface.co/ORG/NAME/resolve/main/");
  assert.equal(n("https://huggingface.co/ORG/NAME/resolve/main/sub"), "https://huggingface.co/ORG/NAME/resolve/main/sub/");
  assert.equal(n("https://example.com/m/sd?x=1#y"), "https://example.com/m/sd/");
  assert.equal(n("/models/tiny-sd1"), "http://127.0.0.1:9/models/tiny-sd1/");
  assert.throws(() => n("ftp://example.com/x/"), /http/);
  assert.equal(m.findPreset("https://huggingface.co/stabilityai/sd-turbo/resolve/main/", "fp16", base).id, "sd-turbo");
  assert.notEqual(m.cacheKey(urls.sd15[0], "fp16"), m.cacheKey(urls.sd15[0], "fp32"));
  // picked files: a folder (top folder stripped) and loose files (placed by name and content)
  const dir = path.join(REPO, "tests/fixtures/tiny-sd1");
  const rels = ["tokenizer/vocab.json", "tokenizer/merges.txt", "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "model_index.json"];
  const file = (rel, withDir) => {
    const f = new File([readFileSync(path.join(dir, rel))], path.basename(rel));
    Object.defineProperty(f, "webkitRelativePath", { value: withDir ? `tiny-sd1/${rel}` : "" });
    return f;
  };
  for (const withDir of [true, false]) {
    const mapped = await m.mapPickedFiles(rels.map((r) => file(r, withDir)));
    assert.deepEqual(Object.keys(mapped).sort(), [...rels].sort(), `mapped (${withDir ? "folder" : "loose files"})`);
    const sel = m.selectFiles(mapped, "fp16");
    assert.deepEqual(sel.missing, []);
    assert.ok("text_encoder/model.fp16.safetensors" in sel.files && !("text_encoder/model.safetensors" in sel.files), "fp16 text encoder chosen");
    assert.ok("unet/diffusion_pytorch_model.safetensors" in sel.files, "fp32 UNet as the fp16 fallback");
  }
  assert.deepEqual(m.selectFiles({}, "fp32").missing.length, 4);
  return "unit: 5 preset URLs, 8 URL normalisations, picked-file mapping ok";
}

async function runCase(id, title, fn) {
  const t0 = Date.now();
  try {
    const detail = await fn();
    const s = ((Date.now() - t0) / 1000).toFixed(1);
    results.push({ id, ok: true });
    console.log(`PASS (${id}) ${title} [${s} s]${detail ? ": " + detail : ""}`);
  } catch (err) {
    const s = ((Date.now() - t0) / 1000).toFixed(1);
    results.push({ id, ok: false });
    console.log(`FAIL (${id}) ${title} [${s} s]: ${err && err.message ? err.message : err}`);
  }
}

async function main() {
  const cases = selectedCases();
  mkdirSync(ARTIFACTS, { recursive: true });
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found: apt-get install -y chromium chromium-driver`);
  const built = existsSync(PKG);
  if (!built) console.log(`note: ${path.relative(REPO, PKG)} is missing (run scripts/build-web.sh); cases ${[...NEEDS_WASM]} will fail`);
  if (PKG_DIR) console.log(`note: serving /pkg/ from ${PKG_DIR} (PSEUDOWORD_PKG_DIR)`);
  const hasGeneration = built && readFileSync(PKG, "utf8").includes("step_generation");
  const needGeneration = () => {
    assert.ok(built, `${path.relative(REPO, PKG)} missing: run scripts/build-web.sh`);
    assert.ok(hasGeneration, `${path.relative(REPO, PKG)} predates the generation API (no step_generation): rebuild it`);
  };

  const golden = readSafetensors(GOLDENS);
  const prompts = JSON.parse(golden.metadata.prompts);
  const ids = golden.tensors.input_ids;
  const hidden = golden.tensors.last_hidden_state;
  const hidden16 = golden.tensors.last_hidden_state_from_fp16_weights;
  assert.equal(prompts.length, ids.shape[0]);

  const server = await startServer();
  const base = server.url;
  const origin = new URL(base).origin;
  console.log(`server ${base}; chromium ${CHROMIUM}; ${prompts.length} golden prompts`);

  let main = null;
  try {
    const needMain = [...cases].some((c) => c !== "iv");
    if (needMain) main = await launch("webgpu", WEBGPU_FLAGS);
    let gpu = null;
    if (main) gpu = await open(main.page, base);

    if (cases.has("i")) {
      await runCase("i", "WebGPU panel shows an adapter", async () => {
        await shot(main.page, "i-webgpu-panel");
        assert.ok(gpu.available, `no adapter: ${gpu.reason} ${gpu.message || ""}`);
        assert.equal(await main.page.isVisible("#gpu-details"), true);
        assert.equal(await main.page.isDisabled("#load-button"), false, "load button should be enabled");
        const a = gpu.adapter;
        return (
          `architecture=${a.architecture || "?"} vendor=${a.vendor || "?"} fallback=${a.isFallbackAdapter} ` +
          `shader-f16=${gpu.shaderF16 ? "yes" : "no"} maxBufferSize=${gpu.limits.maxBufferSize} ` +
          `maxStorageBufferBindingSize=${gpu.limits.maxStorageBufferBindingSize} features=${gpu.features.length}`
        );
      });
    }

    if (cases.has("vi")) {
      await runCase("vi", "missing wasm package: Load shows 'app not built'", async () => {
        // A separate page whose ./pkg/ requests 404, whether or not the app is built.
        const page = await main.context.newPage();
        page.on("console", (msg) => {
          if (msg.type() === "error") console.log(`[vi] console.error: ${msg.text()}`);
        });
        await page.route("**/pkg/**", (route) => route.fulfill({ status: 404, contentType: "text/plain", body: "not built" }));
        await open(page, base);
        await page.click("#load-button");
        await page.waitForFunction(() => document.body.dataset.state === "error", null, { timeout: 60_000 });
        const text = await page.textContent("#load-error");
        await shot(page, "vi-not-built");
        assert.match(text, /App not built/i);
        assert.match(text, /scripts\/serve\.sh/);
        assert.equal(await page.isDisabled("#load-button"), false, "load button must stay usable");
        await page.close();
        return JSON.stringify(text.slice(0, 90) + "…");
      });
    }

    if (cases.has("ii")) {
      await runCase("ii", "fp32 weights: load + encode the golden prompts", async () => {
        assert.ok(built, "www/pkg/pseudoword.js missing: run scripts/build-web.sh");
        const { info, seconds } = await loadModel(main.page, "/models/tiny-sd1/", "fp32");
        console.log(`      loaded in ${seconds.toFixed(1)} s: ${JSON.stringify(info)}`);
        const errs = [];
        for (let i = 0; i < prompts.length; i++) {
          const last = await encode(main.page, prompts[i]);
          const err = checkAgainstGolden(last, row(ids, i), row(hidden, i), `prompt ${i}`);
          errs.push(err);
          console.log(`      prompt ${i}: max|err|=${err.toExponential(3)} ${Number(last.millis).toFixed(0)} ms ${JSON.stringify(prompts[i].slice(0, 40))}`);
        }
        await shot(main.page, "ii-encode-fp32");
        return `backend=${info.backend} load=${seconds.toFixed(1)} s max|err| over ${errs.length} prompts = ${Math.max(...errs).toExponential(3)} (tol ${TOLERANCE})`;
      });
    }

    if (cases.has("iii")) {
      await runCase("iii", "fp16 weights: reload + encode prompt 1", async () => {
        assert.ok(built, "www/pkg/pseudoword.js missing: run scripts/build-web.sh");
        const { info, seconds } = await loadModel(main.page, "/models/tiny-sd1/", "fp16");
        assert.match(String(info.weights_file), /fp16/, `weights_file ${info.weights_file}`);
        const last = await encode(main.page, prompts[1]);
        const err = checkAgainstGolden(last, row(ids, 1), row(hidden16, 1), "fp16 prompt 1");
        await shot(main.page, "iii-encode-fp16");
        return `weights_dtype=${info.weights_dtype} load=${seconds.toFixed(1)} s max|err|=${err.toExponential(3)} (tol ${TOLERANCE})`;
      });
    }

    if (cases.has("v")) {
      await runCase("v", "bad model URL shows an error naming it; page stays usable", async () => {
        assert.ok(built, "www/pkg/pseudoword.js missing: run scripts/build-web.sh");
        const page = main.page;
        await page.fill("#model-url", "/models/nope/");
        await page.selectOption("#weights", "fp32");
        await page.click("#load-button");
        await page.waitForFunction(() => ["loaded", "error"].includes(document.body.dataset.state), null, { timeout: 120_000 });
        const s = await page.evaluate(() => ({ state: window.__pseudoword.state, error: window.__pseudoword.error }));
        const text = await page.textContent("#load-error");
        await shot(page, "v-bad-url");
        assert.equal(s.state, "error");
        assert.ok(await page.isVisible("#load-error"), "error box visible");
        assert.match(text, /\/models\/nope\//, "error names the URL");
        assert.match(text, /404/, "error names the HTTP status");
        assert.equal(await page.isDisabled("#load-button"), false, "load button usable");
        assert.equal(await page.isDisabled("#model-url"), false, "URL field usable");
        assert.equal(await page.isDisabled("#encode-button"), true, "no model: encode disabled");
        // Still usable: the good model loads again and encodes correctly.
        await loadModel(page, "/models/tiny-sd1/", "fp32");
        const last = await encode(page, prompts[1]);
        const err = checkAgainstGolden(last, row(ids, 1), row(hidden, 1), "after error, prompt 1");
        // Cancel a load: right after Load (the download stops), and during the upload to the GPU
        // (it stops before the next tensor); no model is left loaded, the next load works.
        const cancels = [];
        for (const when of ["at once", "during upload"]) {
          loaded = null;
          await page.fill("#model-url", "/models/tiny-sd1/");
          await page.check("#model-cache");
          await page.click("#load-button");
          await page.waitForSelector("#load-cancel:not([hidden])", { timeout: 10_000 });
          if (when === "during upload") {
            await page.waitForFunction(() => /tensors/.test(document.getElementById("weights-text").textContent), null, { timeout: LOAD_TIMEOUT, polling: 20 });
          }
          const at = await page.textContent("#weights-text");
          await page.click("#load-cancel");
          await page.waitForFunction(() => document.body.dataset.state !== "loading", null, { timeout: LOAD_TIMEOUT, polling: 100 });
          const st = await page.evaluate(() => ({ state: window.__pseudoword.state, info: window.__pseudoword.info, status: document.getElementById("load-status").textContent }));
          assert.equal(st.state, "idle", `cancel ${when}: state ${st.state} (${st.status})`);
          assert.equal(st.info, null, `cancel ${when}: no model loaded`);
          assert.match(st.status, /was cancelled; no model is loaded/, `cancel ${when}: ${st.status}`);
          assert.equal(await page.isHidden("#load-cancel"), true, "Cancel hidden again");
          assert.equal(await page.isDisabled("#encode-button"), true, `cancel ${when}: encode disabled`);
          cancels.push(`${when} (${at || "before any tensor"})`);
        }
        await shot(page, "v-load-cancelled");
        await loadModel(page, "/models/tiny-sd1/", "fp32");
        const again = await encode(page, prompts[1]);
        checkAgainstGolden(again, row(ids, 1), row(hidden, 1), "after cancelled loads, prompt 1");
        return `${JSON.stringify(text)}; reloaded fine, max|err|=${err.toExponential(3)}; cancelled ${cancels.join(", ")}, then loaded again`;
      });
    }

    if (cases.has("vii")) {
      await runCase("vii", "generate matches diffusers (DDIM, 4 steps, 256x256, golden latents)", async () => {
        needGeneration();
        const page = main.page;
        const pipe = readSafetensors(PIPELINES);
        const latentsIn = pipe.tensors.latents_in;
        const goldenImage = pipe.tensors.ddim_4_image;
        assert.deepEqual(latentsIn.shape, [1, 4, 32, 32]);
        assert.deepEqual(goldenImage.shape, [1, 256, 256, 3]);
        const { info, seconds, reused } = await ensureModel(page, "/models/tiny-sd1/", "fp32");
        console.log(`      model ${reused ? "already loaded" : `loaded in ${seconds.toFixed(1)} s`}: can_generate=${info.can_generate} default_size=${JSON.stringify(info.default_size)} default_scheduler=${info.default_scheduler}`);
        assert.equal(info.can_generate, true, "info.can_generate");
        assert.ok(await page.isVisible("#generate-panel"), "Generate section visible");
        const t0 = Date.now();
        const before = await startGeneration(page, {
          prompt: "a photo of a cat",
          negative: "",
          scheduler: "ddim",
          steps: 4,
          guidance: 7.5,
          width: 256,
          height: 256,
          seed: 1234,
          latents: latentsIn.data,
        });
        // Progress is visible while it runs.
        await page.waitForFunction(() => window.__pseudoword.generation.done >= 1 || window.__pseudoword.generation.state !== "running", null, { timeout: GENERATE_TIMEOUT, polling: 100 });
        const mid = await page.evaluate(() => ({ text: document.getElementById("gen-status").textContent, state: window.__pseudoword.generation.state }));
        if (mid.state === "running") {
          assert.match(mid.text, /Step \d+ \/ 4/, `progress text while running: ${JSON.stringify(mid.text)}`);
          await shot(page, "vii-generate-running");
        }
        const g = await waitGeneration(page, before);
        const seconds2 = (Date.now() - t0) / 1000;
        assert.equal(g.state, "done", `generation failed: ${g.error}`);
        assert.equal(g.pageState, "loaded", "page back to 'loaded'");
        assert.equal(g.done, 4, "progress reached 4");
        assert.equal(g.total, 4, "progress total 4");
        assert.deepEqual(g.history.filter((d) => d > 0), [1, 2, 3, 4], `one progress message per step (saw ${g.history})`);
        const bar = await page.evaluate(() => ({ v: document.getElementById("gen-progress").value, m: document.getElementById("gen-progress").max }));
        assert.deepEqual(bar, { v: 4, m: 4 }, "progress bar full");
        const r = g.result;
        assert.equal(r.width, 256);
        assert.equal(r.height, 256);
        assert.equal(r.seed, 1234, "seed echoed");
        const err = maxAbsDiff(r.image, goldenImage.data);
        console.log(`      image max|err| vs diffusers ddim_4_image = ${err.toExponential(3)} (tol ${IMAGE_TOLERANCE}); ${seconds2.toFixed(1)} s`);
        assert.ok(err <= IMAGE_TOLERANCE, `max |image - golden| = ${err.toExponential(3)} > ${IMAGE_TOLERANCE}`);
        const cv = await canvasDiff(page, r.image);
        assert.deepEqual([cv.w, cv.h], [256, 256], "canvas size");
        assert.ok(cv.maxDiff <= 1, `canvas differs from the image by ${cv.maxDiff}/255`);
        assert.match(r.parameters, /Steps: 4, Sampler: DDIM, CFG scale: 7\.5, Seed: \d+, Size: 256x256, Model: tiny-sd1/, `parameters: ${r.parameters}`);
        assert.equal(await page.textContent("#gen-parameters"), r.parameters, "parameters shown");
        assert.match(await page.textContent("#gen-seed-used"), /1234/, "seed shown");
        await shot(page, "vii-generate-done");
        const { bytes } = await downloadPng(page, r.seed);
        assert.equal(bytes.length, r.png_size, "downloaded PNG = result PNG");
        const png = readPng(bytes);
        assert.deepEqual([png.width, png.height], [256, 256], "PNG size");
        const params = png.text.parameters;
        assert.ok(params !== undefined, `PNG has a "parameters" text chunk (chunks: ${Object.keys(png.text)})`);
        assert.ok(params.includes("Steps: 4, Sampler: DDIM, CFG scale: 7.5"), `PNG parameters: ${JSON.stringify(params)}`);
        assert.ok(params.startsWith("a photo of a cat\nSteps: 4"), `no negative prompt line expected: ${JSON.stringify(params)}`);
        assert.ok(params.includes("Seed: 1234") && params.includes("Size: 256x256"), `PNG parameters: ${JSON.stringify(params)}`);
        assert.equal(params, r.parameters, "PNG parameters = result.parameters");
        let pngErr = "n/a";
        if (png.pixels) {
          let m = 0;
          for (let i = 0; i < png.pixels.length; i++) m = Math.max(m, Math.abs(png.pixels[i] - Math.round(Math.min(1, Math.max(0, r.image[i])) * 255)));
          assert.ok(m <= 1, `PNG pixels differ from round(image*255) by ${m}`);
          pngErr = `${m}/255`;
        }
        return `max|err|=${err.toExponential(3)} (tol ${IMAGE_TOLERANCE}), ${seconds2.toFixed(1)} s for 4 steps + decode, PNG ${bytes.length} bytes (pixels vs image ${pngErr}), parameters ${JSON.stringify(params)}`;
      });
    }

    if (cases.has("viii")) {
      await runCase("viii", "cancel a 50-step generation; the next one still works", async () => {
        needGeneration();
        const page = main.page;
        const { info } = await ensureModel(page, "/models/tiny-sd1/", "fp32");
        assert.equal(info.can_generate, true, "info.can_generate");
        const size = 128;
        const before = await startGeneration(page, { prompt: "a photo of a cat", scheduler: "euler-a", steps: 50, width: size, height: size });
        await page.waitForFunction(
          () => window.__pseudoword.generation.done >= 1 || window.__pseudoword.generation.state !== "running",
          null,
          { timeout: GENERATE_TIMEOUT, polling: 50 },
        );
        const first = await page.evaluate(() => ({ ...window.__pseudoword.generation, result: null }));
        assert.equal(first.state, "running", `generation ended before it could be cancelled: ${first.state} ${first.error || ""}`);
        const stepMs = first.elapsed_ms / Math.max(1, first.done);
        assert.equal(await page.isDisabled("#cancel-button"), false, "Cancel enabled while running");
        assert.equal(await page.isDisabled("#generate-button"), true, "Generate disabled while running");
        assert.equal(await page.isDisabled("#load-button"), true, "Load disabled while running");
        const t0 = Date.now();
        await page.click("#cancel-button");
        // One step may still be in flight when Cancel arrives: allow a few seconds plus two steps.
        const budget = 5_000 + 2 * stepMs;
        const g = await waitGeneration(page, before, budget + 60_000);
        const latency = Date.now() - t0;
        await shot(page, "viii-cancelled");
        assert.equal(g.state, "cancelled", `state after Cancel: ${g.state} ${g.error || ""}`);
        assert.ok(latency <= budget, `cancel took ${latency} ms (> ${budget.toFixed(0)} ms; a step takes ~${stepMs.toFixed(0)} ms)`);
        assert.ok(g.done < 50, `stopped early (done ${g.done})`);
        assert.equal(g.pageState, "loaded", "page back to 'loaded'");
        assert.match(await page.textContent("#gen-status"), /Cancelled after step \d+ \/ 50/);
        assert.equal(await page.isDisabled("#generate-button"), false, "Generate usable after cancel");

        // A short run with a random seed still works.
        // (with per-token heatmaps: one strip for the image)
        const before2 = await startGeneration(page, { prompt: "a photo of a cat", scheduler: "ddim", steps: 2, width: size, height: size, heatmaps: true });
        const g2 = await waitGeneration(page, before2);
        assert.equal(g2.state, "done", `generation after cancel failed: ${g2.error}`);
        assert.equal(g2.done, 2);
        const r = g2.result;
        assert.ok(Number.isInteger(r.seed) && r.seed >= 0, `random seed reported: ${r.seed}`);
        assert.equal(r.image.length, size * size * 3, "image size");
        assert.ok(r.image.every((v) => v >= 0 && v <= 1), "image values in [0, 1]");
        assert.match(await page.textContent("#gen-seed-used"), new RegExp(String(r.seed)), "seed used is shown");
        assert.match(r.parameters, new RegExp(`Steps: 2, Sampler: DDIM, CFG scale: 7\\.5, Seed: ${r.seed}`));
        const link = await page.getAttribute("#gen-download", "download");
        assert.equal(link, `pseudoword-${r.seed}.png`);
        assert.deepEqual(r.heatmaps && [r.heatmaps.tokens, r.heatmaps.steps, r.heatmaps.branches], [["a", "photo", "of", "a", "cat"], 2, [{ name: "image", tiles: 5 }]], "heatmaps of the image");
        const strip = await page.evaluate(() => [...document.querySelectorAll("#gen-heatmaps-tiles .heatmap-strip")].map((s) => [s.dataset.branch, s.querySelectorAll("img").length]));
        assert.deepEqual(strip, [["image", 5]], "one heatmap strip with a tile per token");
        await shot(page, "viii-after-cancel");
        return `cancelled at step ${g.done}/50 ${latency} ms after the click (step ~${stepMs.toFixed(0)} ms); then 2 steps with random seed ${r.seed} in ${(g2.elapsed_ms / 1000).toFixed(1)} s`;
      });
    }

    if (cases.has("ix")) {
      await runCase("ix", "train a pseudo-word from uploaded photos on WebGPU; cancel, reload, resume from the autosave; files match the CLI", async () => {
        needGeneration();
        assert.ok(existsSync(CLI), `${CLI} missing: build the CLI (cargo build) or set PSEUDOWORD_BIN`);
        const page = main.page;
        await ensureModel(page, "/models/tiny-sd1/", "fp32");
        const photoDir = path.join(REPO, "tests/fixtures/photos");
        const good = ["chelsea_1_center.jpg", "chelsea_5_right.png"].map((f) => path.join(photoDir, f));
        await page.setInputFiles("#photo-input", [...good, path.join(photoDir, "odd/not_an_image.jpg")]);
        await page.waitForFunction(() => window.__pseudoword.training.photos.length === 2, null, { timeout: 60_000 });
        assert.match(await page.textContent("#photo-error"), /not_an_image\.jpg.*JPEG, PNG or WebP/, "bad file refused with a message");
        assert.equal(await page.locator("#photo-list img").count(), 2, "two previews");
        const steps = 3;
        await page.fill("#train-token", "<cat-toy>");
        await page.fill("#train-init", "cat");
        await page.selectOption("#train-preset", "custom");
        await page.fill("#train-steps", String(steps));
        await page.fill("#train-resolution", "64");
        await page.fill("#train-seed", "11");
        await page.fill("#train-lr", "0.005");
        await page.fill("#train-preview-every", "3");
        const t0 = Date.now();
        await page.click("#train-start");
        await page.waitForFunction(
          () => window.__pseudoword.training.step >= 1 || ["done", "error", "cancelled"].includes(window.__pseudoword.training.state),
          null,
          { timeout: GENERATE_TIMEOUT, polling: 100 },
        );
        await page.click("#train-cancel");
        await page.waitForFunction(() => ["done", "error", "cancelled"].includes(window.__pseudoword.training.state), null, { timeout: GENERATE_TIMEOUT });
        let t = await page.evaluate(() => ({ ...window.__pseudoword.training }));
        assert.equal(t.state, "cancelled", `training state ${t.state}: ${t.error || ""}`);
        const cancelledAt = t.step;
        assert.ok(cancelledAt >= 1 && cancelledAt < steps, `cancelled at step ${cancelledAt}`);
        const firstLosses = t.losses.slice();
        await shot(page, "ix-cancelled");

        // reload: the model is gone, the autosave is not
        await page.reload({ waitUntil: "load" });
        await page.waitForFunction(() => window.__pseudoword && window.__pseudoword.gpu !== null, null, { timeout: 60_000 });
        loaded = null;
        await ensureModel(page, "/models/tiny-sd1/", "fp32");
        await page.waitForFunction(() => window.__pseudoword.training.autosave && window.__pseudoword.training.autosave.exists, null, { timeout: 30_000 });
        const auto = await page.evaluate(() => window.__pseudoword.training.autosave);
        assert.equal(auto.step, cancelledAt, "autosave holds the last finished step");
        assert.deepEqual(auto.photos, ["chelsea_1_center.jpg", "chelsea_5_right.png"]);
        assert.ok(await page.isVisible("#train-autosave"), "resume offered");
        await page.click("#train-resume-autosave");
        await page.waitForFunction(() => ["done", "error", "cancelled"].includes(window.__pseudoword.training.state), null, { timeout: GENERATE_TIMEOUT });
        t = await page.evaluate(() => ({ ...window.__pseudoword.training }));
        assert.equal(t.state, "done", `resumed training: ${t.state} ${t.error || ""}`);
        assert.equal(t.step, steps);
        assert.equal(await page.inputValue("#train-token"), "<cat-toy>", "the form shows the resumed run's settings");
        assert.equal(t.previews, 1, "one preview (at step 3)");
        assert.ok(await page.isVisible("#train-preview-img"), "preview image shown");
        const previewSize = await page.evaluate(() => [document.getElementById("train-preview-img").naturalWidth, document.getElementById("train-preview-img").naturalHeight]);
        assert.deepEqual(previewSize, [64, 64], "preview at the training resolution");
        const losses = [...firstLosses.slice(0, cancelledAt), ...t.losses];
        assert.equal(losses.length, steps);
        const seconds = (Date.now() - t0) / 1000;
        await shot(page, "ix-trained");

        // downloads: diffusers and A1111 .pt
        const grab = async (format) => {
          const [dl] = await Promise.all([page.waitForEvent("download", { timeout: 60_000 }), page.click(`#train-downloads button[data-format="${format}"]`)]);
          return { name: dl.suggestedFilename(), file: await dl.path() };
        };
        const diffusers = await grab("diffusers");
        assert.equal(diffusers.name, "learned_embeds.safetensors");
        const emb = readSafetensors(diffusers.file).tensors["<cat-toy>"];
        assert.ok(emb, "diffusers file holds <cat-toy>");
        assert.deepEqual(emb.shape, [1, 32]);
        const pt = await grab("a1111-pt");
        assert.equal(pt.name, "cat-toy.pt");
        assert.equal(readFileSync(pt.file).subarray(0, 2).toString("latin1"), "PK", "A1111 .pt is a torch zip");

        // the same run natively (uninterrupted): same losses and rows
        const out = path.join(mkdtempSync(path.join(tmpdir(), "pseudoword-ix-")), "e.safetensors");
        const lines = execFileSync(CLI, ["train", "--device", "cpu", "--model", path.join(REPO, "tests/fixtures/tiny-sd1"), "--images", ...good,
          "--token", "<cat-toy>", "--init-word", "cat", "--resolution", "64", "--seed", "11", "--steps", String(steps), "--lr", "0.005", "--out", out],
          { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim().split("\n").map((l) => JSON.parse(l));
        const cliLosses = lines.map((l) => l.loss);
        const dLoss = maxAbsDiff(losses, cliLosses);
        const cliRows = readSafetensors(out).tensors["<cat-toy>"].data;
        const dRows = maxAbsDiff(Array.from(emb.data), Array.from(cliRows));
        assert.ok(dLoss < 1e-4, `losses browser ${losses} vs CLI ${cliLosses}`);
        assert.ok(dRows < 1e-4, `rows differ from the CLI's by ${dRows}`);

        // the token works in prompts after "Use the token"
        await page.click("#train-use");
        await page.waitForFunction(() => /can now be used in prompts/.test(document.getElementById("train-status").textContent), null, { timeout: 30_000 });
        return `cancelled at step ${cancelledAt}, resumed to ${steps} in ${seconds.toFixed(0)} s; browser vs CLI: losses ${dLoss.toExponential(2)}, rows ${dRows.toExponential(2)}`;
      });
    }

    if (cases.has("x")) {
      await runCase("x", "suppressed generation (SuppressEOT with ITO) on WebGPU equals the CLI's", async () => {
        needGeneration();
        assert.ok(existsSync(CLI), `${CLI} missing: build the CLI (cargo build) or set PSEUDOWORD_BIN`);
        const page = main.page;
        await ensureModel(page, "/models/tiny-sd1/", "fp32");
        const opts = { prompt: "a man without glasses", suppress: "glasses", suppressIters: 3, scheduler: "ddim", steps: 5, width: 64, height: 64, seed: 5 };
        // a word that is not in the prompt: a clear message, the page stays usable
        const bad = await startGeneration(page, { ...opts, suppress: "hat" });
        const gBad = await waitGeneration(page, bad);
        assert.equal(gBad.state, "error");
        assert.match(gBad.error, /hat/, `message names the missing word: ${gBad.error}`);
        const before = await startGeneration(page, opts);
        const g = await waitGeneration(page, before);
        assert.equal(g.state, "done", `suppressed generation failed: ${g.error}`);
        const r = g.result;
        assert.equal(r.suppress, "glasses");
        assert.ok(r.original_image && r.original_image.length === 64 * 64 * 3, "original image returned");
        assert.ok(await page.isVisible("#gen-original-canvas"), "original shown beside the suppressed image");
        assert.match(r.parameters, /SuppressEOT: "glasses"/, "PNG parameters name the suppression");
        await shot(page, "x-suppressed");
        const dir = mkdtempSync(path.join(tmpdir(), "pseudoword-x-"));
        const tensors = path.join(dir, "s.safetensors");
        execFileSync(CLI, ["generate", "--device", "cpu", "--model", path.join(REPO, "tests/fixtures/tiny-sd1"), "--prompt", opts.prompt,
          "--suppress", opts.suppress, "--suppress-opt-iters", "3", "--scheduler", "ddim", "--steps", "5", "--width", "64", "--height", "64", "--seed", "5",
          "--out", path.join(dir, "s.png"), "--out-tensor", tensors], { stdio: ["ignore", "pipe", "pipe"] });
        const cli = readSafetensors(tensors).tensors.image.data;
        const d = maxAbsDiff(r.image, Array.from(cli));
        const effect = maxAbsDiff(r.image, r.original_image);
        assert.ok(d < IMAGE_TOLERANCE, `suppressed image differs from the CLI's by ${d}`);
        assert.ok(effect > 1e-3, `suppression changed the image (max diff to the original ${effect})`);
        return `5 DDIM steps (ITO at step 1, 3 iterations) in ${(g.elapsed_ms / 1000).toFixed(1)} s; vs CLI ${d.toExponential(2)}; suppressed vs original max diff ${effect.toFixed(3)}`;
      });
    }
    if (cases.has("xi")) {
      await runCase("xi", "photo edit (upload, name what to remove) with heatmap strips before/after equals the CLI's edit", async () => {
        needGeneration();
        assert.ok(existsSync(CLI), `${CLI} missing: build the CLI (cargo build) or set PSEUDOWORD_BIN`);
        const page = main.page;
        await ensureModel(page, "/models/tiny-sd1/", "fp32");
        const photo = path.join(REPO, "tests/fixtures/photos/chelsea_1_center.jpg");
        const opts = { prompt: "a photo of a cat", suppress: "cat", suppressIters: 2, scheduler: "ddim", steps: 3, width: 64, height: 64 };
        // no photo chosen yet: a message, nothing runs
        await page.setInputFiles("#edit-photo", []);
        await page.fill("#gen-prompt", opts.prompt);
        await page.fill("#gen-suppress", opts.suppress);
        await page.click("#edit-button");
        assert.match(await page.textContent("#gen-error"), /Choose a photo/, "message without a photo");
        // fill the form as for a generation, with heatmaps, then edit the uploaded photo
        const before = await page.evaluate(() => window.__pseudoword.generation.seq);
        await page.fill("#gen-steps", String(opts.steps));
        await page.fill("#gen-guidance", "7.5");
        await page.fill("#gen-width", String(opts.width));
        await page.fill("#gen-height", String(opts.height));
        await page.fill("#gen-suppress-iters", String(opts.suppressIters));
        await page.check("#gen-heatmaps");
        await page.fill("#edit-null-iters", "2");
        await page.setInputFiles("#edit-photo", photo);
        await page.click("#edit-button");
        const g = await waitGeneration(page, before);
        await page.uncheck("#gen-heatmaps");
        assert.equal(g.state, "done", `edit failed: ${g.error}`);
        assert.deepEqual(g.inversion, { done: opts.steps, total: opts.steps }, "inversion progress reported up to the last step");
        const r = g.result;
        assert.equal(r.edit, true, "result marked as an edit");
        assert.equal(r.suppress, "cat");
        assert.ok(r.original_image && r.original_image.length === 64 * 64 * 3, "reconstruction returned");
        assert.match(await page.textContent("#gen-original-label"), /reconstructs/, "the original is labelled as the reconstruction");
        // heatmap strips: before and after suppression, one tile per prompt token
        const hm = r.heatmaps;
        assert.ok(hm, "heatmaps returned");
        assert.deepEqual(hm.tokens, ["a", "photo", "of", "a", "cat"], "tokens");
        assert.deepEqual(hm.branches.map((b) => [b.name, b.tiles]), [["original", 5], ["suppressed", 5]], "one tile per token per branch");
        const strips = await page.evaluate(() =>
          [...document.querySelectorAll("#gen-heatmaps-tiles .heatmap-strip")].map((s) => ({
            branch: s.dataset.branch,
            title: s.querySelector("h4").textContent,
            tiles: [...s.querySelectorAll("img")].map((i) => ({ alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, ok: i.complete })),
          })),
        );
        assert.deepEqual(strips.map((s) => [s.branch, s.title, s.tiles.length]), [["original", "Before suppression", 5], ["suppressed", "After suppression", 5]]);
        for (const s of strips) for (const t of s.tiles) assert.ok(t.ok && t.w === 64 && t.h === 64, `tile decoded at 64x64: ${JSON.stringify(t)}`);
        assert.ok(await page.isVisible("#gen-heatmaps-box"), "heatmap section visible");
        await shot(page, "xi-edit-heatmaps");
        // the same edit through the CLI
        const dir = mkdtempSync(path.join(tmpdir(), "pseudoword-xi-"));
        const tensors = path.join(dir, "e.safetensors");
        execFileSync(CLI, ["edit", "--device", "cpu", "--model", path.join(REPO, "tests/fixtures/tiny-sd1"), "--image", photo, "--prompt", opts.prompt,
          "--suppress", opts.suppress, "--suppress-opt-iters", String(opts.suppressIters), "--steps", String(opts.steps), "--size", "64", "--null-text-iters", "2",
          "--out", path.join(dir, "e.png"), "--out-tensor", tensors], { stdio: ["ignore", "pipe", "pipe"] });
        const cli = readSafetensors(tensors).tensors;
        const d = maxAbsDiff(r.image, Array.from(cli.image.data));
        const dRec = maxAbsDiff(r.original_image, Array.from(cli.reconstruction.data));
        const effect = maxAbsDiff(r.image, r.original_image);
        rmSync(dir, { recursive: true, force: true });
        assert.ok(d < IMAGE_TOLERANCE, `edited image differs from the CLI's by ${d}`);
        assert.ok(dRec < IMAGE_TOLERANCE, `reconstruction differs from the CLI's by ${dRec}`);
        assert.ok(effect > 1e-3, `the edit changed the photo (max diff to the reconstruction ${effect})`);
        return `3 steps at 64x64 (null-text 2 iterations, ITO 2) in ${(g.elapsed_ms / 1000).toFixed(1)} s; vs CLI: edit ${d.toExponential(2)}, reconstruction ${dRec.toExponential(2)}; edit vs reconstruction ${effect.toFixed(3)}; strips 2x5 tiles`;
      });
    }

    const flowHelpers = () => ({ page: main.page, base, ensureModel, forgetModel: () => (loaded = null), startGeneration, waitGeneration, shot, readSafetensors, readPng, downloadPng, REPO, GENERATE_TIMEOUT });
    if (cases.has("xiii")) {
      await runCase("xiii", "whole flow: train, generate with the token and suppressed, library download/rename/delete, reload, re-import by drop, same image; 375 px", async () => {
        needGeneration();
        return caseFlow(flowHelpers());
      });
    }
    if (cases.has("xiv")) {
      await runCase("xiv", "Content-Security-Policy in force (meta = header; unlisted host refused; custom model host explained)", async () => caseCsp(flowHelpers()));
    }
    if (cases.has("xv")) {
      await runCase("xv", "keyboard only: load, encode, details, file choosers, generate, cancel, delete; Tab reaches every control, each named, with a visible focus ring", async () => {
        needGeneration();
        return caseKeyboard({ ...flowHelpers(), setLoaded: (url, variant) => (loaded = { url, variant }), LOAD_TIMEOUT, ARTIFACTS });
      });
    }
    if (cases.has("xvi")) {
      await runCase("xvi", "single-file (LDM) checkpoint: picked with configs = diffusers image; by URL + 'Configs from', cached; typed errors", async () => {
        needGeneration();
        return caseSingleFile({ ...flowHelpers(), encode, checkAgainstGolden, maxAbsDiff, IMAGE_TOLERANCE, LOAD_TIMEOUT });
      });
    }

    if (cases.has("xii")) {
      await runCase("xii", "model manager: presets, OPFS cache (reload: no download), resumed download (Range), delete", async () => {
        const unit = await modelsUnitChecks();
        assert.ok(built, "www/pkg/pseudoword.js missing: run scripts/build-web.sh");
        const b = await launch("models", WEBGPU_FLAGS); // own profile: empty OPFS
        const log = []; // {url, range} of this profile's requests
        b.context.on("request", (r) => log.push(r.allHeaders().then((h) => ({ url: r.url(), range: h.range || null }))));
        const page = b.page;
        const storage = () => page.evaluate(() => window.__pseudoword.storage);
        const waitStorage = async (seq) => {
          await page.waitForFunction((s) => (window.__pseudoword.storage?.seq || 0) > s, seq, { timeout: 30_000 });
          return storage();
        };
        try {
          await open(page, base);
          let st = await waitStorage(0);
          assert.ok(st.opfs, "OPFS available");
          assert.deepEqual(st.models, [], "fresh profile: nothing stored");
          const presets = await page.$$eval("#model-preset option", (o) => o.map((x) => [x.value, x.textContent]));
          assert.equal(await page.inputValue("#model-url"), "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/", "SD 1.5 is the default");
          assert.equal(await page.inputValue("#weights"), "fp16");
          // a 404 names the file and leaves no stored entry behind
          await page.fill("#model-url", "/models/nope/");
          await page.click("#load-button");
          const nope = await waitLoaded(page, false);
          assert.match(String(nope.error), /HTTP 404.*tokenizer\/vocab\.json not found/, nope.error);
          assert.deepEqual((await storage()).models, [], "nothing stored after a 404");
          // 1. tiny preset: downloaded and stored
          await page.selectOption("#model-preset", "tiny");
          assert.equal(await page.inputValue("#model-url"), "/models/tiny-sd1/");
          await page.click("#load-button");
          const first = await waitLoaded(page);
          assert.equal(first.model.source, "network", `first load: ${JSON.stringify(first.model)}`);
          st = await storage(); // refreshed before the state turned "loaded"
          assert.equal(st.models.length, 1);
          const stored = st.models[0];
          assert.ok(stored.complete && stored.bytes > 14e6 && stored.bytes < 15e6, `stored: ${JSON.stringify(stored)}`);
          assert.match(await page.textContent("#cached-models li"), /tiny-sd1 \(fp32\) 1\d\.\d MiB/, "list shows name and size");
          // 2. reload the page, load again: no request for model files
          await page.reload();
          await open(page, base);
          st = await waitStorage(0);
          const mark = log.length;
          await page.selectOption("#model-preset", "tiny");
          await page.click("#load-button");
          const second = await waitLoaded(page);
          const reqs2 = (await Promise.all(log.slice(mark))).filter((r) => r.url.includes("/models/"));
          assert.deepEqual(reqs2.map((r) => r.url), [], "second load fetched model files");
          assert.equal(second.model.source, "cache");
          assert.match(second.status, /from browser storage/, "status says it came from the cache");
          assert.match(await page.textContent("#download-text"), /from browser storage/);
          // 3. interrupted download, then resumed with Range
          await page.fill("#model-url", RESUME_PREFIX);
          await page.selectOption("#weights", "fp32");
          await page.click("#load-button");
          const cut = await waitLoaded(page, false);
          assert.equal(cut.state, "error", "the cut download fails");
          assert.match(cut.error, /text_encoder\/model\.safetensors.*interrupted.*resume/i, `message: ${cut.error}`);
          st = await storage();
          assert.ok(st.models.some((m) => m.url.endsWith(RESUME_PREFIX) && !m.complete), "incomplete entry listed");
          const mark3 = log.length;
          await page.click("#load-button");
          const third = await waitLoaded(page);
          const reqs3 = await Promise.all(log.slice(mark3));
          const ranged = reqs3.find((r) => r.url.endsWith(RESUME_PREFIX + RESUME_FILE));
          assert.ok(ranged && /^bytes=\d+-$/.test(ranged.range || ""), `Range sent: ${JSON.stringify(ranged)}`);
          const from = Number(/\d+/.exec(ranged.range)[0]);
          assert.ok(from > 0 && from <= RESUME_CUT, `resumed from ${from}`);
          assert.equal(third.model.source, "partial");
          assert.ok(third.model.resumed_files.some((r) => r.path === RESUME_FILE && r.from === from), JSON.stringify(third.model.resumed_files));
          const last = await encode(page, prompts[1]);
          const err = checkAgainstGolden(last, row(ids, 1), row(hidden, 1), "resumed model, prompt 1");
          // local folder pick (webkitdirectory): loads without any model request
          const mark4 = log.length;
          await page.setInputFiles("#model-folder", path.join(REPO, "tests/fixtures/tiny-sd1"));
          const local = await waitLoaded(page);
          assert.equal(local.model.source, "local");
          const reqs4 = (await Promise.all(log.slice(mark4))).filter((r) => r.url.includes("/models/"));
          assert.deepEqual(reqs4.map((r) => r.url), [], "local load fetched model files");
          await shot(page, "xii-models");
          // 4. delete everything: list empty, usage down
          st = await storage();
          assert.equal(st.models.length, 2);
          const usage = st.usage;
          // Delete asks first (the message names the model and its size); Cancel keeps it
          let asked = "";
          page.once("dialog", (d) => { asked = d.message(); return d.dismiss(); });
          await page.click("#cached-models li button[data-action=delete]");
          await page.waitForTimeout(300);
          assert.match(asked, /^Delete .+ \(.+, [\d.]+ [KMG]iB\) from browser storage\?/, `confirmation: ${asked}`);
          assert.equal((await storage()).models.length, 2, "Cancel in the confirmation keeps the model");
          for (let n = 2; n > 0; n--) {
            const seq = (await storage()).seq;
            page.once("dialog", (d) => d.accept());
            await page.click("#cached-models li button[data-action=delete]");
            st = await waitStorage(seq);
            assert.equal(st.models.length, n - 1);
          }
          assert.ok(await page.isVisible("#cached-empty"), "empty-list note shown");
          assert.ok(st.usage < usage, `usage ${usage} -> ${st.usage}`);
          return `${unit}; ${presets.length - 1} presets; stored ${stored.bytes} B; cache load ${second.seconds.toFixed(1)} s (0 model requests) vs first ${first.seconds.toFixed(1)} s; ` +
            `resumed ${RESUME_FILE} from byte ${from}, max|err|=${err.toExponential(2)}; local folder ${local.seconds.toFixed(1)} s; usage ${(usage / 1e6).toFixed(1)} MB -> ${(st.usage / 1e6).toFixed(1)} MB`;
        } finally {
          await b.context.close().catch(() => {});
        }
      });
    }
  } finally {
    if (main) await main.context.close().catch(() => {});
  }

  if (cases.has("iv")) {
    await runCase("iv", "without --enable-unsafe-webgpu: no-WebGPU message, Load disabled", async () => {
      const b = await launch("no-webgpu", NO_WEBGPU_FLAGS);
      try {
        const gpu = await open(b.page, base);
        await shot(b.page, "iv-no-webgpu");
        assert.equal(gpu.available, false, "an adapter was returned although WebGPU should be off");
        assert.ok(await b.page.isVisible("#gpu-missing"), "message visible");
        const text = await b.page.textContent("#gpu-missing");
        assert.match(text, /--enable-unsafe-webgpu/);
        assert.match(text, /hardware acceleration/i);
        assert.equal(await b.page.isDisabled("#load-button"), true, "load button must be disabled");
        return `reason=${gpu.reason}`;
      } finally {
        await b.context.close().catch(() => {});
      }
    });
  }

  await runCase("net", "every request went to 127.0.0.1", async () => {
    const bad = requests.filter((u) => {
      if (u.startsWith("data:") || u.startsWith("about:")) return false;
      const inner = u.startsWith("blob:") ? u.slice(5) : u;
      try {
        return new URL(inner).hostname !== "127.0.0.1";
      } catch {
        return true;
      }
    });
    assert.deepEqual(bad, [], `requests outside 127.0.0.1: ${bad.join(", ")}`);
    // no request carried a body: photos (and everything else) stay on the device
    const photos = readdirSync(path.join(REPO, "tests/fixtures/photos")).filter((f) => /\.(jpe?g|png)$/i.test(f))
      .map((f) => readFileSync(path.join(REPO, "tests/fixtures/photos", f)).subarray(200, 264));
    const withPhoto = bodies.filter((b) => photos.some((p) => b.body.includes(p)));
    assert.deepEqual(withPhoto.map((b) => b.url), [], "requests carrying photo bytes");
    assert.deepEqual(bodies.map((b) => `${b.method} ${b.url} (${b.body.length} B)`), [], "requests with a body");
    const model = requests.filter((u) => u.includes("/models/")).length;
    return `${requests.length} requests (${model} model-file requests, all ${origin}; none with a body)`;
  });

  server.child.kill("SIGTERM");
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true });
  rmSync(LDM_DIR, { recursive: true, force: true });
  const failed = results.filter((r) => !r.ok);
  console.log(`${results.length - failed.length}/${results.length} passed${failed.length ? "; failed: " + failed.map((r) => r.id).join(", ") : ""}`);
  process.exitCode = failed.length ? 1 : 0;
}

main().catch((err) => {
  console.log(`FAIL (setup) ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
