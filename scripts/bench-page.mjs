#!/usr/bin/env node
// A full-size model in the real page, measured: memory and time (issue 17).
//
//   node scripts/bench-page.mjs --arch sd15|sd21|sd21-base|sd-turbo|bk-sdm-small|bk-sdm-tiny
//        [--variant fp16] [--size 128] [--steps 1] [--storage f32|f16|auto] [--guidance 7.5]
//        [--prompt P] [--keep-profile] [--model DIR]
//
// 1. The model folder: <models root>/<arch>[-<variant>] (models root: $PSEUDOWORD_MODELS, else
//    ~/.cache/pseudoword/models, the cache `pseudoword bench` uses), made once with
//    `pseudoword make-model` (the CLI: $PSEUDOWORD_BIN, else $CARGO_TARGET_DIR/debug/pseudoword,
//    else ~/.cache/pseudoword/target/debug/pseudoword, else target/debug/pseudoword) when absent
//    or incomplete (a missing file, or a .safetensors whose length is not what its header says);
//    written beside it and renamed, like the CLI's cache. `--model DIR`: that diffusers folder
//    instead (any model; e.g. tests/fixtures/tiny-sd1 for a quick check of this script).
// 2. scripts/serve.mjs serves the page with the folder mounted at /models/<arch>/.
// 3. Headless Chromium (/usr/bin/chromium or $CHROMIUM; WebGPU, flags as tests/browser/run.mjs,
//    a fresh temp profile, deleted afterwards unless --keep-profile) opens the page and loads the
//    model by URL through the model form (URL, Weights, Weights in GPU memory, Load): download
//    into browser storage (OPFS) and upload to the GPU. Every ~2 s the bench asks the page's
//    worker for `debug_memory` (www/worker.js: the wasm heap and the GPU memory pool; the worker
//    is reached through a `window.Worker` wrapper the bench installs before the page's scripts
//    run; replies carry string ids the page ignores) and sums VmRSS of the Chromium processes.
// 4. One prompt encode (the Encode button), then one generation of --steps steps at --size px
//    (the Generate form; guidance 7.5 = the CFG batch of 2; seed 1; the model's scheduler).
// 5. stdout gets ONE JSON line: arch, variant, storage, download_s, upload_s (info.load_ms: the
//    wasm-side load, i.e. reading the stored files and uploading to the GPU), load_total_s,
//    wasm_heap_peak_bytes (during the load), wasm_heap_after_bytes, pool_in_use_after_load,
//    pool_reserved_after_load, chromium_rss_peak_bytes (sum over the browser's processes, shared
//    pages counted once per process), encode_s, generate_size, generate_steps, generate_s,
//    pool_reserved_peak_generate, adapter, plus details (step_ms, decode_s, peaks per phase,
//    make_model_s when the folder was made now). Exit 0. On failure: the same line with
//    `error` and `phase` (what was measured so far stays in it), exit 1; also on SIGINT/SIGTERM.
// Progress goes to stderr. Env: PSEUDOWORD_LOAD_TIMEOUT_MS (default 5400000),
// PSEUDOWORD_ENCODE_TIMEOUT_MS (1800000), PSEUDOWORD_GENERATE_TIMEOUT_MS (5400000).
// SwiftShader (software WebGPU, no shader-f16) is a CPU rasteriser: keep --size small (at 512
// one UNet step takes tens of minutes); the weights are full size either way.

import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CHROMIUM, WEBGPU_FLAGS, startServe } from "./start-serve.mjs";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const LOAD_TIMEOUT = Number(process.env.PSEUDOWORD_LOAD_TIMEOUT_MS || 5_400_000);
const ENCODE_TIMEOUT = Number(process.env.PSEUDOWORD_ENCODE_TIMEOUT_MS || 1_800_000);
const GENERATE_TIMEOUT = Number(process.env.PSEUDOWORD_GENERATE_TIMEOUT_MS || 5_400_000);
const POLL_MS = 2000;
const ARCHS = ["sd15", "sd21", "sd21-base", "sd-turbo", "bk-sdm-small", "bk-sdm-tiny"];

const log = (...a) => process.stderr.write(`[bench-page ${new Date().toISOString().slice(11, 19)}] ${a.join(" ")}\n`);

function parseArgs(argv) {
  const o = { arch: null, variant: null, size: 128, steps: 1, storage: "f32", guidance: 7.5, prompt: "a photograph of an astronaut riding a horse", keepProfile: false, model: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [k, inline] = a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
    const val = () => {
      if (inline !== undefined) return inline;
      if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
      return argv[++i];
    };
    if (k === "--arch") o.arch = val();
    else if (k === "--variant") o.variant = val();
    else if (k === "--size") o.size = Number(val());
    else if (k === "--steps") o.steps = Number(val());
    else if (k === "--storage") o.storage = val();
    else if (k === "--guidance") o.guidance = Number(val());
    else if (k === "--prompt") o.prompt = val();
    else if (k === "--keep-profile") o.keepProfile = true;
    else if (k === "--model") o.model = path.resolve(val());
    else if (k === "-h" || k === "--help") {
      process.stdout.write(readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n").slice(1, 37).map((l) => l.replace(/^\/\/ ?/, "")).join("\n") + "\n");
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (o.model && !o.arch) o.arch = path.basename(o.model);
  else if (!o.model && !ARCHS.includes(o.arch)) throw new Error(`--arch must be one of ${ARCHS.join(", ")}`);
  if (o.variant === "fp32" || o.variant === "") o.variant = null;
  if (o.variant !== null && o.variant !== "fp16") throw new Error("--variant must be fp16 (or omitted: fp32)");
  if (!(Number.isInteger(o.size) && o.size >= 64 && o.size % 8 === 0)) throw new Error("--size must be a multiple of 8, >= 64");
  if (!(Number.isInteger(o.steps) && o.steps >= 1)) throw new Error("--steps must be a positive integer");
  if (!["f32", "f16", "auto"].includes(o.storage)) throw new Error("--storage must be f32, f16 or auto");
  return o;
}

// ------------------------------------------------------------------ the model folder

function modelsRoot() {
  const p = process.env.PSEUDOWORD_MODELS;
  return p ? path.resolve(p) : path.join(homedir(), ".cache/pseudoword/models");
}

function cli() {
  const candidates = [
    process.env.PSEUDOWORD_BIN,
    process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, "debug/pseudoword"),
    path.join(homedir(), ".cache/pseudoword/target/debug/pseudoword"),
    path.join(REPO, "target/debug/pseudoword"),
  ].filter(Boolean);
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error(`the pseudoword CLI was not found (tried ${candidates.join(", ")}); build it with cargo build or set PSEUDOWORD_BIN`);
  return found;
}

// The length a .safetensors file must have, from its header; null when unreadable.
function safetensorsLength(file) {
  let fd;
  try {
    fd = openSync(file, "r");
    const head = Buffer.alloc(8);
    if (readSync(fd, head, 0, 8, 0) !== 8) return null;
    const n = Number(head.readBigUInt64LE(0));
    if (!(n > 0 && n < 100_000_000)) return null;
    const buf = Buffer.alloc(n);
    if (readSync(fd, buf, 0, n, 8) !== n) return null;
    const header = JSON.parse(buf.toString("utf8"));
    let end = 0;
    for (const [k, t] of Object.entries(header)) if (k !== "__metadata__") end = Math.max(end, t.data_offsets[1]);
    return 8 + n + end;
  } catch {
    return null;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

// Complete: every file a diffusers folder of this variant needs, each weights file as long as
// its header says (the CLI's rule also compares configs and tensor counts with what it would
// write; its cache folders appear whole, by rename, so this catches truncation and stray
// partial folders).
function incomplete(dir, variant) {
  const v = variant ? `.${variant}` : "";
  const texts = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "unet/config.json", "vae/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt"];
  const weights = [`text_encoder/model${v}.safetensors`, `unet/diffusion_pytorch_model${v}.safetensors`, `vae/diffusion_pytorch_model${v}.safetensors`];
  for (const f of texts) if (!existsSync(path.join(dir, f))) return `${f} missing`;
  for (const f of weights) {
    const p = path.join(dir, f);
    if (!existsSync(p)) return `${f} missing`;
    const want = safetensorsLength(p);
    const have = statSync(p).size;
    if (want === null || want !== have) return `${f}: ${have} bytes, header says ${want}`;
  }
  return null;
}

function dirBytes(dir) {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    n += e.isDirectory() ? dirBytes(p) : statSync(p).size;
  }
  return n;
}

function ensureModel(arch, variant) {
  const root = modelsRoot();
  const name = variant ? `${arch}-${variant}` : arch;
  const dir = path.join(root, name);
  const why = existsSync(dir) ? incomplete(dir, variant) : "absent";
  if (!why) return { dir, made: null };
  log(`model folder ${dir}: ${why}; making it with make-model`);
  mkdirSync(root, { recursive: true });
  const partial = path.join(root, `.${name}.partial-${process.pid}`);
  rmSync(partial, { recursive: true, force: true });
  const t0 = Date.now();
  const args = ["make-model", "--arch", arch, "--out", partial, ...(variant ? ["--variant", variant] : [])];
  let out;
  try {
    out = execFileSync(cli(), args, { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 << 20 });
  } catch (err) {
    rmSync(partial, { recursive: true, force: true });
    throw new Error(`make-model failed: ${err.message}`);
  }
  const bad = incomplete(partial, variant);
  if (bad) throw new Error(`make-model wrote an incomplete folder ${partial}: ${bad}`);
  rmSync(dir, { recursive: true, force: true });
  renameSync(partial, dir);
  let report = null;
  try {
    report = JSON.parse(out.trim().split("\n").pop());
  } catch {
    /* the timing below is what matters */
  }
  return { dir, made: { seconds: (Date.now() - t0) / 1000, report } };
}

// ------------------------------------------------------------------ server

function startServer(prefix, dir) {
  return startServe(["--mount", `${prefix}=${dir}`]);
}

// ------------------------------------------------------------------ Chromium's memory

// Sum of VmRSS over the browser process (the one started with this profile) and its descendants.
function chromiumRss(profile) {
  const procs = new Map(); // pid -> {ppid, rss, mine}
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const status = readFileSync(`/proc/${e}/status`, "utf8");
      const ppid = Number(/^PPid:\s+(\d+)/m.exec(status)?.[1]);
      const rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] || 0) * 1024;
      const cmd = readFileSync(`/proc/${e}/cmdline`, "utf8");
      procs.set(Number(e), { ppid, rss, mine: cmd.includes(`--user-data-dir=${profile}`) });
    } catch {
      /* gone meanwhile */
    }
  }
  const inTree = (pid, seen = 0) => {
    const p = procs.get(pid);
    if (!p || seen > 64) return false;
    return p.mine || inTree(p.ppid, seen + 1);
  };
  let sum = 0;
  let n = 0;
  for (const [pid, p] of procs) {
    if (inTree(pid)) {
      sum += p.rss;
      n++;
    }
  }
  return n ? sum : null;
}

// ------------------------------------------------------------------ page hooks

// Runs before the page's scripts: wraps window.Worker to reach the app's worker ("pseudoword"),
// watches its messages (load / generate progress) and sends it debug_memory requests.
function pageHook() {
  const bench = {
    worker: null,
    nextId: 0,
    waiting: new Map(),
    load: { firstDownload: null, lastDownload: null, firstWeights: null, loaded: null, weightsSeen: false, lastWeights: null, downloadTotal: null },
    gen: { start: null, steps: [], decodeAt: null, resultAt: null },
    memory(pool) {
      const w = bench.worker;
      if (!w) return Promise.resolve(null);
      const id = `bench-${++bench.nextId}`;
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          bench.waiting.delete(id);
          resolve({ timeout: true });
        }, 15_000);
        bench.waiting.set(id, (r) => {
          clearTimeout(timer);
          resolve(r);
        });
        w.postMessage({ id, command: "debug_memory", pool });
      });
    },
  };
  const onMessage = (msg) => {
    if (!msg) return;
    const now = performance.now();
    if (typeof msg.id === "string" && bench.waiting.has(msg.id)) {
      const done = bench.waiting.get(msg.id);
      bench.waiting.delete(msg.id);
      done(msg.status === "result" ? msg.result : { error: msg.message });
      return;
    }
    if (msg.status === "progress" && msg.stage === "download") {
      bench.load.firstDownload ??= now;
      bench.load.lastDownload = now;
      if (msg.total) bench.load.downloadTotal = msg.total;
    } else if (msg.status === "progress" && msg.stage === "weights") {
      bench.load.firstWeights ??= now;
      bench.load.weightsSeen = true;
      bench.load.lastWeights = { component: msg.component, loaded: msg.loaded, total: msg.total, key: msg.key };
    } else if (msg.status === "loaded") {
      bench.load.loaded = { at: now, download_ms: msg.download_ms, total_ms: msg.total_ms, info: msg.info, source: msg.source, files: msg.files };
    } else if (msg.status === "progress" && msg.stage === "generate") {
      if (msg.done === 0) bench.gen = { start: now, steps: [], decodeAt: null, resultAt: null };
      else bench.gen.steps.push(msg.step_ms);
    } else if (msg.status === "progress" && msg.stage === "decode") {
      bench.gen.decodeAt = now;
    } else if (msg.status === "result" && msg.command === "generate") {
      bench.gen.resultAt = now;
    }
  };
  const Orig = window.Worker;
  window.Worker = class extends Orig {
    constructor(url, options) {
      super(url, options);
      if (options && options.name === "pseudoword") {
        bench.worker = this;
        this.addEventListener("message", (e) => onMessage(e.data));
      }
    }
  };
  window.__bench = bench;
}

// ------------------------------------------------------------------ main

// What a signal handler needs to report and clean up (SIGINT / SIGTERM: the JSON line so far).
const running = { out: null, phase: "args", server: null, profile: null, keepProfile: false, peaks: null };
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    const out = { ...(running.out || {}), error: `interrupted by ${sig}`, phase: running.phase, peaks: running.peaks };
    process.stdout.write(JSON.stringify(out) + "\n");
    running.server?.child.kill();
    if (running.profile && !running.keepProfile) rmSync(running.profile, { recursive: true, force: true });
    process.exit(1); // Playwright closes the browser it started on exit
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const secs = (ms) => (ms == null ? null : Math.round(ms) / 1000);

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const out = {
    arch: opts.arch,
    variant: opts.variant || "fp32",
    storage: opts.storage,
    download_s: null,
    upload_s: null,
    load_total_s: null,
    wasm_heap_peak_bytes: null,
    wasm_heap_after_bytes: null,
    pool_in_use_after_load: null,
    pool_reserved_after_load: null,
    chromium_rss_peak_bytes: null,
    encode_s: null,
    generate_size: opts.size,
    generate_steps: opts.steps,
    generate_s: null,
    pool_reserved_peak_generate: null,
    adapter: null,
  };
  running.out = out;
  running.keepProfile = opts.keepProfile;
  let phase = (running.phase = "model");
  let server = null;
  let context = null;
  let profile = null;
  let sampler = null;
  let stop = false; // ends the memory sampler
  const consoleErrors = [];
  const peaks = {}; // phase -> {wasm_heap, pool_in_use, pool_reserved, rss}
  running.peaks = peaks;
  try {
    let dir = opts.model;
    let made = null;
    if (dir) {
      const bad = incomplete(dir, opts.variant);
      if (bad) throw new Error(`--model ${dir}: ${bad}`);
    } else ({ dir, made } = ensureModel(opts.arch, opts.variant));
    out.model_dir = dir;
    out.model_bytes = dirBytes(dir);
    if (made) out.make_model_s = made.seconds;

    phase = running.phase = "serve";
    const prefix = `/models/${encodeURIComponent(opts.arch)}/`;
    server = running.server = await startServer(prefix, dir);
    const modelUrl = new URL(prefix, server.url).href;
    log(`serving ${server.url}, model at ${modelUrl} (${(out.model_bytes / 1e9).toFixed(2)} GB)`);

    phase = running.phase = "browser";
    const require = createRequire(path.join(REPO, "tests/browser/package.json"));
    const { chromium } = require("playwright-core");
    profile = running.profile = mkdtempSync(path.join(tmpdir(), "pseudoword-bench-"));
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: WEBGPU_FLAGS, viewport: { width: 1100, height: 1400 } });
    await context.addInitScript(pageHook);
    const page = context.pages()[0] || (await context.newPage());
    // console errors (the worker's too), without stacks, each distinct one once, at most 10
    const noteError = (text) => {
      const head = text.split("\n\nStack:")[0].slice(0, 600);
      if (consoleErrors.length < 10 && !consoleErrors.includes(head)) consoleErrors.push(head);
    };
    page.on("console", (msg) => msg.type() === "error" && noteError(msg.text()));
    page.on("pageerror", (err) => noteError(`pageerror: ${err.message}`));
    page.on("crash", () => noteError("the page crashed"));
    await page.goto(server.url, { waitUntil: "load" });
    await page.waitForFunction(() => window.__pseudoword && window.__pseudoword.gpu !== null, null, { timeout: 120_000 });
    const gpu = await page.evaluate(() => window.__pseudoword.gpu);
    out.adapter = {
      ...(gpu.adapter || {}),
      shader_f16: !!gpu.shaderF16,
      maxBufferSize: gpu.limits?.maxBufferSize ?? null,
      maxStorageBufferBindingSize: gpu.limits?.maxStorageBufferBindingSize ?? null,
    };
    if (!gpu.available) throw new Error(`no WebGPU in the page: ${gpu.reason} ${gpu.message || ""}`);
    await page.waitForFunction(() => window.__bench.worker !== null, null, { timeout: 60_000 });

    // Memory sampler: every POLL_MS, the worker's wasm heap and GPU pool, and Chromium's RSS.
    let samplePhase = "load";
    const sample = async () => {
      const rss = chromiumRss(profile);
      const m = await page.evaluate(() => {
        const b = window.__bench;
        return b.memory(b.load.weightsSeen || window.__pseudoword.state !== "loading");
      });
      const p = (peaks[samplePhase] ??= { wasm_heap: null, pool_in_use: null, pool_reserved: null, rss: null, samples: 0 });
      const max = (a, b) => (b == null ? a : a == null ? b : Math.max(a, b));
      p.samples++;
      p.rss = max(p.rss, rss);
      if (m && !m.timeout) {
        p.wasm_heap = max(p.wasm_heap, m.wasm_heap_bytes);
        p.pool_in_use = max(p.pool_in_use, m.pool?.in_use);
        p.pool_reserved = max(p.pool_reserved, m.pool?.reserved);
        if (m.pool_error) p.pool_error = m.pool_error;
      } else if (m?.timeout) p.timeouts = (p.timeouts || 0) + 1;
      return { rss, m };
    };
    let lastLog = 0;
    sampler = (async () => {
      while (!stop) {
        try {
          const { rss, m } = await sample();
          if (Date.now() - lastLog > 30_000) {
            lastLog = Date.now();
            const st = await page.evaluate(() => ({ status: document.getElementById("load-status").textContent, gen: window.__pseudoword.generation.state, done: window.__pseudoword.generation.done }));
            log(`${samplePhase}: wasm heap ${m?.wasm_heap_bytes ?? "?"} B, pool ${JSON.stringify(m?.pool ?? null)}, chromium rss ${rss} B; ${samplePhase === "generate" ? `generation ${st.gen} ${st.done}` : st.status.slice(0, 120)}`);
          }
        } catch (err) {
          if (!stop) log(`sample failed: ${err.message}`);
        }
        await sleep(POLL_MS);
      }
    })();

    // ---- load
    phase = running.phase = "load";
    await page.fill("#model-url", modelUrl);
    await page.selectOption("#weights", opts.variant || "fp32");
    await page.selectOption("#storage", opts.storage);
    const tLoad = Date.now();
    await page.click("#load-button");
    log(`load started: ${modelUrl} (${opts.variant || "fp32"}, storage ${opts.storage})`);
    await page.waitForFunction(() => ["loaded", "error"].includes(document.body.dataset.state), null, { timeout: LOAD_TIMEOUT, polling: 500 });
    out.load_wall_s = (Date.now() - tLoad) / 1000;
    const afterLoad = await page.evaluate(() => ({ state: window.__pseudoword.state, error: window.__pseudoword.error, load: window.__bench.load }));
    if (afterLoad.state !== "loaded") {
      out.last_weights = afterLoad.load.lastWeights;
      throw new Error(`loading failed: ${afterLoad.error}`);
    }
    const L = afterLoad.load.loaded;
    out.download_s = secs(L.download_ms);
    out.upload_s = secs(L.info?.load_ms ?? L.total_ms - L.download_ms);
    out.load_total_s = secs(L.total_ms);
    out.load_source = L.source;
    out.weights_storage = L.info?.weights_storage ?? null;
    out.weights_dtype = L.info?.weights_dtype ?? null;
    samplePhase = "after_load";
    const { m: mAfter } = await sample();
    out.wasm_heap_after_bytes = mAfter?.wasm_heap_bytes ?? null;
    out.pool_in_use_after_load = mAfter?.pool?.in_use ?? null;
    out.pool_reserved_after_load = mAfter?.pool?.reserved ?? null;
    out.wasm_heap_peak_bytes = Math.max(peaks.load?.wasm_heap ?? 0, out.wasm_heap_after_bytes ?? 0) || null;
    log(`loaded in ${out.load_wall_s} s: download ${out.download_s} s, upload ${out.upload_s} s; wasm heap ${out.wasm_heap_after_bytes}, pool ${JSON.stringify(mAfter?.pool)}`);

    // ---- encode
    phase = running.phase = "encode";
    samplePhase = "encode";
    await page.fill("#prompt", opts.prompt);
    const seq = await page.evaluate(() => window.__pseudoword.seq);
    const tEnc = Date.now();
    await page.click("#encode-button");
    await page.waitForFunction((b) => window.__pseudoword.seq > b || window.__pseudoword.state === "error", seq, { timeout: ENCODE_TIMEOUT, polling: 250 });
    const enc = await page.evaluate(() => ({ state: window.__pseudoword.state, error: window.__pseudoword.error, millis: window.__pseudoword.last?.millis, shape: window.__pseudoword.last?.shape }));
    if (enc.state === "error") throw new Error(`encoding failed: ${enc.error}`);
    out.encode_s = (Date.now() - tEnc) / 1000;
    out.encode_wasm_s = secs(enc.millis);
    log(`encoded in ${out.encode_s} s (shape ${JSON.stringify(enc.shape)})`);

    // ---- generate
    phase = running.phase = "generate";
    samplePhase = "generate";
    const before = await page.evaluate(() => window.__pseudoword.generation.seq);
    await page.fill("#gen-prompt", opts.prompt);
    await page.fill("#gen-negative", "");
    await page.selectOption("#gen-scheduler", "");
    await page.fill("#gen-steps", String(opts.steps));
    await page.fill("#gen-guidance", String(opts.guidance));
    await page.fill("#gen-width", String(opts.size));
    await page.fill("#gen-height", String(opts.size));
    await page.fill("#gen-seed", "1");
    await page.fill("#gen-suppress", "");
    await page.setChecked("#gen-heatmaps", false);
    await page.evaluate(() => window.__pseudoword.setLatents(null));
    const tGen = Date.now();
    await page.click("#generate-button");
    log(`generation started: ${opts.size}x${opts.size}, ${opts.steps} step(s), guidance ${opts.guidance}`);
    await page.waitForFunction((b) => window.__pseudoword.generation.seq > b, before, { timeout: GENERATE_TIMEOUT, polling: 500 });
    const g = await page.evaluate(() => {
      const g = window.__pseudoword.generation;
      return { state: g.state, error: g.error, millis: g.result?.millis ?? null, width: g.result?.width, gen: window.__bench.gen };
    });
    out.step_ms = g.gen.steps.map((x) => Math.round(x));
    if (g.state !== "done") throw new Error(`generation ${g.state}: ${g.error}`);
    out.generate_s = (Date.now() - tGen) / 1000;
    if (g.gen.decodeAt != null && g.gen.resultAt != null) out.decode_s = secs(g.gen.resultAt - g.gen.decodeAt);
    samplePhase = "after_generate";
    await sample();
    out.pool_reserved_peak_generate = Math.max(peaks.generate?.pool_reserved ?? 0, peaks.after_generate?.pool_reserved ?? 0) || null;
    log(`generated in ${out.generate_s} s (steps ${JSON.stringify(out.step_ms)} ms, decode ${out.decode_s} s)`);
    phase = running.phase = "done";
  } catch (err) {
    out.error = err.message || String(err);
    out.phase = phase;
  } finally {
    stop = true;
    if (sampler) await Promise.race([sampler, sleep(20_000)]); // its current sample finishes first
    out.chromium_rss_peak_bytes = Object.values(peaks).reduce((a, p) => Math.max(a, p.rss ?? 0), 0) || null;
    if (out.wasm_heap_peak_bytes == null) out.wasm_heap_peak_bytes = Object.values(peaks).reduce((a, p) => Math.max(a, p.wasm_heap ?? 0), 0) || null;
    out.peaks = peaks;
    if (consoleErrors.length) out.console_errors = consoleErrors;
    if (context) await context.close().catch(() => {});
    if (server) server.child.kill();
    if (profile && !opts.keepProfile) rmSync(profile, { recursive: true, force: true });
    else if (profile) out.profile = profile;
  }
  return out;
}

main().then(
  (out) => {
    process.stdout.write(JSON.stringify(out) + "\n");
    process.exit(out.error ? 1 : 0);
  },
  (err) => {
    process.stdout.write(JSON.stringify({ error: err.message || String(err), phase: "args" }) + "\n");
    process.exit(1);
  },
);
