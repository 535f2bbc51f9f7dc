#!/usr/bin/env node
// End-to-end tests of the pseudoword web app in headless Chromium (WebGPU on SwiftShader).
//
//   node tests/browser/run.mjs [--cases i,ii,iii,iv,v,vi]
//
// Starts scripts/serve.mjs on a free port, drives www/ through its real UI with the system
// Chromium (/usr/bin/chromium, or $CHROMIUM) and compares against the goldens in
// tests/fixtures/tiny-sd1/goldens/text_encoder.safetensors. Exit code 1 on any failure.
// Screenshots go to tests/browser/artifacts/. Env: PSEUDOWORD_CASES (like --cases),
// PSEUDOWORD_LOAD_TIMEOUT_MS (default 900000), PSEUDOWORD_ENCODE_TIMEOUT_MS (default 300000).

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
const ARTIFACTS = path.join(HERE, "artifacts");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const GOLDENS = path.join(REPO, "tests/fixtures/tiny-sd1/goldens/text_encoder.safetensors");
const PKG = path.join(REPO, "www/pkg/pseudoword.js");
const LOAD_TIMEOUT = Number(process.env.PSEUDOWORD_LOAD_TIMEOUT_MS || 900_000);
const ENCODE_TIMEOUT = Number(process.env.PSEUDOWORD_ENCODE_TIMEOUT_MS || 300_000);
const TOLERANCE = 1e-4;

// Exactly the flags of docs/BROWSER.md ("Real browser"). The fresh temp --user-data-dir is
// passed as launchPersistentContext's first argument: Playwright refuses it inside `args`
// (plain chromium.launch() would make its own temp profile; this keeps it explicit).
const WEBGPU_FLAGS = [
  "--headless=new",
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const NO_WEBGPU_FLAGS = WEBGPU_FLAGS.filter((f) => f !== "--enable-unsafe-webgpu");

const ALL_CASES = ["i", "ii", "iii", "iv", "v", "vi"];
const NEEDS_WASM = new Set(["ii", "iii", "v"]);

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
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO, "scripts/serve.mjs"), "--port", "0"], {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    const timer = setTimeout(() => reject(new Error(`serve.mjs did not start: ${out}`)), 15_000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = /serving (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1] });
      }
    });
    child.stderr.on("data", (d) => process.stderr.write(`[serve] ${d}`));
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`serve.mjs exited with ${code}: ${out}`));
    });
  });
}

// ------------------------------------------------------------------ browser

const requests = []; // every URL any page or worker asked for
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
  context.on("request", (r) => requests.push(r.url()));
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

async function loadModel(page, url, variant) {
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
  return { info: s.info, seconds: (Date.now() - t0) / 1000 };
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

// ------------------------------------------------------------------ cases

const results = [];

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
        return `${JSON.stringify(text)}; reloaded fine, max|err|=${err.toExponential(3)}`;
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
    const model = requests.filter((u) => u.includes("/models/")).length;
    return `${requests.length} requests (${model} model-file requests, all ${origin})`;
  });

  server.child.kill("SIGTERM");
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true });
  const failed = results.filter((r) => !r.ok);
  console.log(`${results.length - failed.length}/${results.length} passed${failed.length ? "; failed: " + failed.map((r) => r.id).join(", ") : ""}`);
  process.exitCode = failed.length ? 1 : 0;
}

main().catch((err) => {
  console.log(`FAIL (setup) ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
