// Browser case xvi: single-file (original LDM) checkpoints. The tiny-sd1 model written as one
// LDM .safetensors (assembled here from tests/fixtures/ldm/tiny-sd1-ldm.json, the recipe whose
// conversion diffusers' own converters checked; tests/ldm_checkpoint.rs uses the same one) is
//   1. picked with its config.json files: generates diffusers' ddim_4 image from the golden latents;
//   2. loaded by URL with "Configs from" the diffusers folder: encodes like transformers, is cached
//      in browser storage and loads from there the second time, with the configs host
//      unreachable (the configs come from their Cache API copies);
//   3. loaded by URL without configs: the typed error saying the tiny CLIP's head count cannot be
//      inferred and what to do; a truncated checkpoint is refused by name; the page stays usable.
// Imported by run.mjs, which passes its helpers in `h` (see flowHelpers there) and serves
// LDM_DIR at /models/ldm/.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

export const LDM_DIR = path.join(tmpdir(), `pseudoword-ldm-${process.pid}`);
const LDM_NAME = "tiny-sd1-ldm.safetensors";

// Writes the LDM checkpoint of the recipe into LDM_DIR (fp32 tensors of tests/fixtures/tiny-sd1,
// zero-filled schedule buffers); returns its path.
export function assembleLdm(repo) {
  const recipe = JSON.parse(readFileSync(path.join(repo, "tests/fixtures/ldm/tiny-sd1-ldm.json"), "utf8"));
  const files = new Map();
  const source = (rel) => {
    if (!files.has(rel)) {
      const buf = readFileSync(path.join(repo, "tests/fixtures/tiny-sd1", rel));
      const n = Number(buf.readBigUInt64LE(0));
      files.set(rel, { buf, header: JSON.parse(buf.subarray(8, 8 + n).toString("utf8")), base: 8 + n });
    }
    return files.get(rel);
  };
  const header = {};
  const chunks = [];
  let offset = 0;
  for (const t of recipe.tensors) {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    let bytes;
    let dtype = t.dtype;
    if ("fill" in t) bytes = Buffer.alloc(numel * (dtype === "I64" ? 8 : 4));
    else {
      const s = source(t.from);
      const e = s.header[t.from_key];
      assert.ok(e, `${t.from} has no ${t.from_key}`);
      assert.equal(e.shape.reduce((a, b) => a * b, 1), numel, `${t.key}: element count`);
      dtype = e.dtype;
      bytes = s.buf.subarray(s.base + e.data_offsets[0], s.base + e.data_offsets[1]);
    }
    header[t.key] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  mkdirSync(LDM_DIR, { recursive: true });
  const out = path.join(LDM_DIR, LDM_NAME);
  writeFileSync(out, Buffer.concat([len, Buffer.from(json), ...chunks]));
  return out;
}

// The pure parts of models.js for single files (URLs, cache keys, picked-file mapping).
async function unitChecks(m, ldmPath) {
  const base = "http://127.0.0.1:9/";
  const n = (u) => m.normalizeModelUrl(u, base);
  const hf = "https://huggingface.co/ORG/NAME/resolve/main/v1-5-pruned-emaonly.safetensors";
  assert.equal(n("https://huggingface.co/ORG/NAME/blob/main/v1-5-pruned-emaonly.safetensors"), hf, "HF file page -> download URL");
  assert.equal(n(hf), hf);
  assert.equal(n("https://huggingface.co/ORG/NAME/blob/main/sub/x.safetensors"), "https://huggingface.co/ORG/NAME/resolve/main/sub/x.safetensors");
  assert.equal(n("https://huggingface.co/ORG/NAME/blob/main/unet/config.json"), "https://huggingface.co/ORG/NAME/resolve/main/", "other file pages: the repo");
  assert.equal(n("/models/ldm/my%20model.safetensors?download=1"), "http://127.0.0.1:9/models/ldm/my%20model.safetensors");
  assert.equal(m.isSingleFileUrl(hf), true);
  assert.equal(m.isSingleFileUrl("https://huggingface.co/ORG/NAME/resolve/main/"), false);
  assert.equal(m.modelName("http://127.0.0.1:9/models/ldm/my%20model.safetensors"), "my model.safetensors");
  assert.deepEqual(m.wantedFiles("single", "http://127.0.0.1:9/models/ldm/my%20model.safetensors"), [{ path: "my%20model.safetensors", optional: false }]);
  assert.notEqual(m.cacheKey(hf, "single"), m.cacheKey(hf, "fp16"));
  const f = (rel, name = path.basename(rel)) => new File([readFileSync(rel)], name);
  const mapped = await m.mapPickedFiles([f(ldmPath)]);
  assert.deepEqual(Object.keys(mapped), [path.basename(ldmPath)], "an LDM .safetensors is recognised as a single-file checkpoint, kept under its file name");
  assert.equal(m.singleFileKey(mapped), path.basename(ldmPath), "singleFileKey names it");
  assert.deepEqual(m.selectFiles(mapped, "fp32").missing, [], "nothing else is required");
  await assert.rejects(m.mapPickedFiles([f(ldmPath), f(ldmPath, "other.safetensors")]), /one single-file checkpoint at a time/);
}

async function waitLoad(page, timeout) {
  await page.waitForFunction(() => document.body.dataset.state === "loading", null, { timeout: 10_000 }).catch(() => {});
  await page.waitForFunction(() => ["loaded", "error"].includes(document.body.dataset.state), null, { timeout, polling: 250 });
  return page.evaluate(() => ({
    state: window.__pseudoword.state,
    error: window.__pseudoword.error,
    info: window.__pseudoword.info,
    model: window.__pseudoword.model,
    status: document.getElementById("load-status").textContent,
    errorBox: document.getElementById("load-error").textContent,
  }));
}

export async function caseSingleFile(h) {
  const { page, REPO } = h;
  const ldmPath = assembleLdm(REPO);
  const ldmBytes = readFileSync(ldmPath);
  const m = await import(new URL("../../www/models.js", import.meta.url).href);
  await unitChecks(m, ldmPath);
  const tiny = (rel) => readFileSync(path.join(REPO, "tests/fixtures/tiny-sd1", rel));
  const golden = h.readSafetensors(path.join(REPO, "tests/fixtures/tiny-sd1/goldens/text_encoder.safetensors"));
  const prompts = JSON.parse(golden.metadata.prompts);
  const goldenRow = (name, i) => {
    const t = golden.tensors[name];
    const per = t.shape.slice(1).reduce((a, b) => a * b, 1);
    return Array.prototype.slice.call(t.data, i * per, (i + 1) * per);
  };
  const lines = [];
  h.forgetModel();

  // 1. picked: the checkpoint + the folder's config.json files (placed by their class names)
  let t0 = Date.now();
  await page.fill("#single-config-url", "");
  await page.setInputFiles("#model-files", [
    { name: LDM_NAME, mimeType: "application/octet-stream", buffer: ldmBytes },
    { name: "config.json", mimeType: "application/json", buffer: tiny("text_encoder/config.json") },
    { name: "config.json", mimeType: "application/json", buffer: tiny("unet/config.json") },
    { name: "config.json", mimeType: "application/json", buffer: tiny("vae/config.json") },
  ]);
  let s = await waitLoad(page, h.LOAD_TIMEOUT);
  assert.equal(s.state, "loaded", `picked single file: ${s.error}`);
  assert.equal(s.info.weights_file, LDM_NAME, "weights_file");
  assert.equal(s.info.can_generate, true, "can_generate");
  assert.equal(s.info.default_size, 256, "sample_size from the picked unet config (32 latents -> 256 px)");
  assert.equal(s.model.source, "local");
  const loadPicked = (Date.now() - t0) / 1000;
  const enc = await h.encode(page, prompts[1]);
  const encErr = h.checkAgainstGolden(enc, goldenRow("input_ids", 1), goldenRow("last_hidden_state", 1), "single file, prompt 1");
  const pipe = h.readSafetensors(path.join(REPO, "tests/fixtures/tiny-sd1/goldens/pipelines.safetensors"));
  t0 = Date.now();
  const before = await h.startGeneration(page, {
    prompt: "a photo of a cat", negative: "", scheduler: "ddim", steps: 4, guidance: 7.5, width: 256, height: 256, seed: 1234,
    latents: pipe.tensors.latents_in.data,
  });
  const g = await h.waitGeneration(page, before);
  assert.equal(g.state, "done", `generation failed: ${g.error}`);
  const imgErr = h.maxAbsDiff(g.result.image, pipe.tensors.ddim_4_image.data);
  assert.ok(imgErr <= h.IMAGE_TOLERANCE, `single-file image vs diffusers ddim_4_image: ${imgErr} > ${h.IMAGE_TOLERANCE}`);
  assert.match(g.result.parameters, /Model: tiny-sd1-ldm\b/, `parameters: ${g.result.parameters}`);
  await h.shot(page, "xvi-single-file-picked");
  lines.push(`picked: load ${loadPicked.toFixed(1)} s, encode max|err| ${encErr.toExponential(2)}, ddim_4 image max|err| ${imgErr.toExponential(2)} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);

  // 2. by URL with "Configs from": downloaded, cached, then loaded from browser storage with the
  //    configs host unreachable (every /models/tiny-sd1/ request aborted): the configs kept in
  //    the Cache API serve, so a stored checkpoint loads offline
  const url = "/models/ldm/" + LDM_NAME;
  const configsHost = "**/models/tiny-sd1/**";
  const unreachable = (route) => route.abort("internetdisconnected");
  for (const expected of ["network", "cache"]) {
    t0 = Date.now();
    await page.fill("#model-url", url);
    await page.fill("#single-config-url", "/models/tiny-sd1/");
    await page.check("#model-cache");
    if (expected === "cache") await page.context().route(configsHost, unreachable);
    let aborted = 0;
    const count = (r) => { if (r.url().includes("/models/tiny-sd1/")) aborted += 1; };
    page.context().on("requestfailed", count);
    try {
      await page.click("#load-button");
      s = await waitLoad(page, h.LOAD_TIMEOUT);
    } finally {
      page.context().off("requestfailed", count);
      if (expected === "cache") await page.context().unroute(configsHost, unreachable);
    }
    assert.equal(s.state, "loaded", `by URL (${expected}): ${s.error}`);
    assert.equal(s.model.source, expected, `source of the ${expected === "network" ? "first" : "second"} URL load`);
    assert.equal(s.info.weights_file, LDM_NAME);
    if (expected === "network") {
      assert.deepEqual(s.model.configs_cached, [], "first load: configs from the network");
    } else {
      assert.ok(aborted > 0, "the configs host was reached for and refused");
      for (const f of ["unet/config.json", "text_encoder/config.json", "vae/config.json", "tokenizer/vocab.json"]) {
        assert.ok(s.model.configs_cached.includes(f), `${f} from the configs cache: ${JSON.stringify(s.model.configs_cached)}`);
      }
      assert.match(s.status, /used the configs kept in this browser/, `status says so: ${s.status}`);
      lines.push(`configs host unreachable: ${s.model.configs_cached.length} files from the Cache API (${aborted} requests refused)`);
    }
    const e = await h.encode(page, prompts[2]);
    const err = h.checkAgainstGolden(e, goldenRow("input_ids", 2), goldenRow("last_hidden_state", 2), `by URL (${expected}), prompt 2`);
    lines.push(`URL (${expected}): load ${((Date.now() - t0) / 1000).toFixed(1)} s, encode max|err| ${err.toExponential(2)}`);
  }
  const stored = await page.evaluate(() => window.__pseudoword.storage.models);
  const entry = stored.find((x) => x.variant === "single" && x.url.endsWith(url));
  assert.ok(entry, `stored models list the checkpoint: ${JSON.stringify(stored)}`);
  assert.equal(entry.bytes, ldmBytes.length, "stored size = file size");
  assert.equal(entry.complete, true);
  assert.match(await page.textContent(`#cached-models li[data-key="${entry.key}"]`), /single file/);
  await h.shot(page, "xvi-single-file-cached");

  // 3. errors: no configs for a model whose configs cannot be inferred; a truncated file
  await page.fill("#single-config-url", "");
  await page.click("#load-button");
  s = await waitLoad(page, h.LOAD_TIMEOUT);
  assert.equal(s.state, "error", "tiny checkpoint without configs must fail");
  assert.match(s.errorBox, /attention heads cannot be inferred/, s.errorBox);
  assert.match(s.errorBox, /Configs from/, `the error says what to do: ${s.errorBox}`);
  assert.equal(await page.isDisabled("#load-button"), false, "Load stays usable");
  await h.shot(page, "xvi-single-file-no-configs");
  await page.setInputFiles("#model-files", [{ name: "broken.safetensors", mimeType: "application/octet-stream", buffer: ldmBytes.subarray(0, ldmBytes.length - 1000) }]);
  s = await waitLoad(page, h.LOAD_TIMEOUT);
  assert.equal(s.state, "error", "a truncated checkpoint must fail");
  assert.match(s.errorBox, /broken\.safetensors/, `the error names the file: ${s.errorBox}`);
  const errLine = s.errorBox.slice(0, 160);

  // the page still works: delete the stored checkpoint, the tiny folder loads again
  page.once("dialog", (d) => d.accept()); // "Delete ... from browser storage?"
  await page.click(`#cached-models li[data-key="${entry.key}"] button[data-action="delete"]`);
  await page.waitForFunction((k) => !window.__pseudoword.storage.models.some((x) => x.key === k), entry.key, { timeout: 30_000 });
  await h.ensureModel(page, "/models/tiny-sd1/", "fp32");
  lines.push(`errors: ${JSON.stringify(errLine)}…`);
  return lines.join("; ");
}
