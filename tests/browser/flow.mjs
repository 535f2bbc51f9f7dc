// Browser cases xiii (the whole flow on the tiny model, with the embedding library) and xiv
// (Content-Security-Policy in force). Imported by run.mjs, which passes its helpers in `h`:
// {page, base, ensureModel, forgetModel, startGeneration, waitGeneration, shot, readSafetensors,
//  readPng, downloadPng, REPO, GENERATE_TIMEOUT}.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";

const TOKEN = "<xiii-tok>";

// Runs `fn` (a click, a drop...) and waits until the library panel reported its outcome.
async function libraryAct(page, fn) {
  const before = await page.evaluate(() => window.__pseudoword.library.seq);
  await fn();
  await page.waitForFunction((b) => window.__pseudoword.library.seq > b, before, { timeout: 120_000, polling: 100 });
  return page.evaluate(() => JSON.parse(JSON.stringify(window.__pseudoword.library)));
}

// Drops files on the page (not on the photo zone), as a user dragging them from the desktop.
async function dropFiles(page, files) {
  await page.evaluate((fs) => {
    const dt = new DataTransfer();
    for (const f of fs) dt.items.add(new File([new Uint8Array(f.data)], f.name));
    document.getElementById("library-panel").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, files.map((f) => ({ name: f.name, data: Array.from(f.bytes) })));
}

const entryLi = (token) => `#library-list li[data-token="${token}"]`;

// A diffusers embedding file with `dim`-wide vectors (for the wrong-width check).
function diffusersFile(token, dim) {
  const header = Buffer.from(JSON.stringify({ [token]: { dtype: "F32", shape: [1, dim], data_offsets: [0, dim * 4] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([len, header, Buffer.from(new Float32Array(dim).fill(0.5).buffer)]);
}

async function acceptNextDialog(page, value) {
  page.once("dialog", (d) => (value === false ? d.dismiss() : d.accept(value === true ? undefined : value)));
}

export async function caseFlow(h) {
  const { page } = h;
  const t0 = Date.now();
  const timings = {};
  const lap = (k, since) => (timings[k] = ((Date.now() - since) / 1000).toFixed(1));
  await h.ensureModel(page, "/models/tiny-sd1/", "fp32");

  // keyboard: the photo zone opens the file chooser with Enter
  await page.evaluate(() => {
    window.__chooserOpened = 0;
    document.getElementById("photo-input").addEventListener("click", () => window.__chooserOpened++);
  });
  await page.focus("#photo-drop");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => window.__chooserOpened), 1, "Enter on the photo zone opens the file chooser");
  const photoDir = path.join(h.REPO, "tests/fixtures/photos");
  await page.setInputFiles("#photo-input", ["chelsea_1_center.jpg", "chelsea_5_right.png"].map((f) => path.join(photoDir, f)));
  await page.waitForFunction(() => window.__pseudoword.training.photos.length >= 2, null, { timeout: 60_000 });

  // train 2 steps at 64 px
  let t = Date.now();
  await page.fill("#train-token", TOKEN);
  await page.fill("#train-init", "cat");
  await page.selectOption("#train-preset", "custom");
  await page.fill("#train-steps", "2");
  await page.fill("#train-resolution", "64");
  await page.fill("#train-seed", "3");
  await page.fill("#train-preview-every", "0");
  // the GPU device is "lost" after step 1: new worker, model loaded again, resumed from the autosave
  await page.evaluate(() => (window.__pseudoword.testHooks.deviceLostAtStep = 1));
  await page.click("#train-start");
  await page.waitForFunction(() => ["done", "error", "cancelled"].includes(window.__pseudoword.training.state) && !window.__pseudoword.training.recovering, null, { timeout: h.GENERATE_TIMEOUT, polling: 100 });
  const tr = await page.evaluate(() => ({ ...window.__pseudoword.training }));
  assert.equal(tr.state, "done", `training: ${tr.state} ${tr.error || ""}`);
  lap("train", t);
  await page.evaluate(() => (window.__pseudoword.testHooks.deviceLostAtStep = null));
  assert.equal(tr.recovered, 1, "recovered once from the lost device");
  assert.equal(tr.step, 2);
  assert.match(await page.textContent("#train-status"), /resumed from the autosave after a lost GPU device/);
  assert.ok(tr.library && tr.library.token === TOKEN, `the trained embedding is in the library: ${JSON.stringify(tr.library)}`);
  await page.waitForSelector(entryLi(TOKEN), { timeout: 30_000 });
  let lib = await page.evaluate(() => window.__pseudoword.library.entries);
  const trained = lib.find((e) => e.token === TOKEN);
  assert.deepEqual([trained.source, trained.vectors, trained.dim, trained.active], ["trained", 1, 32, false]);
  assert.match(await page.textContent("#train-status"), /kept in the embedding library/);

  // use it, generate with it, and with it suppressed
  lib = await libraryAct(page, () => page.click(`${entryLi(TOKEN)} .library-use`));
  assert.equal(lib.error, null, lib.error);
  assert.match(lib.status, /can now be used in prompts/);
  assert.ok(lib.entries.find((e) => e.token === TOKEN).active, "marked in use");
  const gen = { prompt: `a photo of ${TOKEN}`, scheduler: "ddim", steps: 2, width: 64, height: 64, seed: 42 };
  t = Date.now();
  let g = await h.waitGeneration(page, await h.startGeneration(page, gen));
  assert.equal(g.state, "done", `generation with the learned token: ${g.error}`);
  lap("generate", t);
  const imageA = Array.from(g.result.image);
  const pngA = h.readPng((await h.downloadPng(page, gen.seed)).bytes).pixels;
  t = Date.now();
  g = await h.waitGeneration(page, await h.startGeneration(page, { ...gen, suppress: TOKEN, suppressIters: 2 }));
  assert.equal(g.state, "done", `suppressing the learned token: ${g.error}`);
  lap("suppress", t);
  assert.equal(g.result.suppress, TOKEN);
  const effect = Math.max(...g.result.image.map((v, i) => Math.abs(v - g.result.original_image[i])));
  assert.ok(effect > 1e-3, `suppression changed the image (${effect})`);
  assert.deepEqual(Array.from(g.result.original_image), imageA, "the unsuppressed branch is the image of the same seed");
  await h.shot(page, "xiii-suppressed-learned-token");

  // download from the library: diffusers and A1111 safetensors
  const grab = async (token, format) => {
    await page.selectOption(`${entryLi(token)} .library-format`, format);
    const [dl] = await Promise.all([page.waitForEvent("download", { timeout: 60_000 }), page.click(`${entryLi(token)} .library-download`)]);
    return { name: dl.suggestedFilename(), bytes: readFileSync(await dl.path()), file: await dl.path() };
  };
  const diffusers = await grab(TOKEN, "diffusers");
  assert.equal(diffusers.name, "learned_embeds.safetensors");
  assert.deepEqual(h.readSafetensors(diffusers.file).tensors[TOKEN].shape, [1, 32], "diffusers file holds the token");
  const a1111 = await grab(TOKEN, "a1111");
  assert.equal(a1111.name, "xiii-tok.safetensors");

  // refused files: corrupt, wrong width; library and session unchanged
  const count = lib.entries.length;
  lib = await libraryAct(page, () => dropFiles(page, [{ name: "broken.safetensors", bytes: Buffer.from("not an embedding at all, just text") }]));
  assert.match(lib.error || "", /broken\.safetensors is not a usable embedding file/, `corrupt file message: ${lib.error}`);
  assert.equal(lib.entries.length, count, "corrupt file not stored");
  lib = await libraryAct(page, () => dropFiles(page, [{ name: "wide.safetensors", bytes: diffusersFile("<wide>", 16) }]));
  assert.match(lib.error || "", /16 wide but the loaded model's text encoder is 32 wide/, `wrong-width message: ${lib.error}`);
  assert.equal(lib.entries.length, count, "wrong-width file not stored");

  // a second entry (the A1111 file: token = file stem); rename checks; delete with confirmation
  lib = await libraryAct(page, () => dropFiles(page, [{ name: a1111.name, bytes: a1111.bytes }]));
  assert.equal(lib.error, null, lib.error);
  assert.ok(lib.entries.find((e) => e.token === "xiii-tok" && e.source === "imported" && e.active), "dropped A1111 file stored and in use");
  for (const [value, re] of [["   ", /must not be empty/], ["a b", /contains spaces/], [TOKEN, /already has an embedding with the token/], ["cat", /tokenizer already knows "cat" \(id 1481\)/]]) {
    await acceptNextDialog(page, value);
    lib = await libraryAct(page, () => page.click(`${entryLi("xiii-tok")} .library-rename`));
    assert.match(lib.error || "", re, `rename to ${JSON.stringify(value)}: ${lib.error}`);
  }
  await acceptNextDialog(page, "<xiii-renamed>");
  lib = await libraryAct(page, () => page.click(`${entryLi("xiii-tok")} .library-rename`));
  assert.equal(lib.error, null, lib.error);
  assert.ok(lib.entries.find((e) => e.token === "<xiii-renamed>")?.active, "renamed, and (it was in use) the new token is in use at once");
  assert.match(await page.textContent("#library-status"), /<xiii-renamed> works in prompts now; xiii-tok also keeps working/);
  const renamedA1111 = await grab("<xiii-renamed>", "a1111-pt");
  assert.equal(renamedA1111.name, "xiii-renamed.pt", "downloads use the new token");
  await acceptNextDialog(page, false);
  await page.click(`${entryLi("<xiii-renamed>")} .library-delete`);
  assert.equal(await page.locator(entryLi("<xiii-renamed>")).count(), 1, "dismissed: still there");
  await acceptNextDialog(page, true);
  lib = await libraryAct(page, () => page.click(`${entryLi("<xiii-renamed>")} .library-delete`));
  assert.ok(!lib.entries.find((e) => e.token === "<xiii-renamed>"), "deleted");

  // reload: the library is re-offered after the model loads
  t = Date.now();
  await page.reload({ waitUntil: "load" });
  await page.waitForFunction(() => window.__pseudoword && window.__pseudoword.gpu !== null, null, { timeout: 60_000 });
  h.forgetModel();
  await h.ensureModel(page, "/models/tiny-sd1/", "fp32");
  await page.waitForFunction(() => /in your library: press Use/.test(document.getElementById("library-status").textContent), null, { timeout: 30_000 });
  assert.equal(await page.isDisabled(`${entryLi(TOKEN)} .library-use`), false, "Use offered after the reload");
  lap("reload", t);

  // delete the trained one, re-import the downloaded file by drag-and-drop, same image again
  await acceptNextDialog(page, true);
  lib = await libraryAct(page, () => page.click(`${entryLi(TOKEN)} .library-delete`));
  assert.ok(!lib.entries.find((e) => e.token === TOKEN), "trained entry deleted");
  lib = await libraryAct(page, () => dropFiles(page, [{ name: diffusers.name, bytes: diffusers.bytes }]));
  assert.equal(lib.error, null, lib.error);
  const back = lib.entries.find((e) => e.token === TOKEN);
  assert.ok(back && back.source === "imported" && back.active, `re-imported and in use: ${JSON.stringify(back)}`);
  g = await h.waitGeneration(page, await h.startGeneration(page, gen));
  assert.equal(g.state, "done", `generation after the re-import: ${g.error}`);
  assert.deepEqual(Array.from(g.result.image), imageA, "same image for the same seed after download + re-import");
  assert.deepEqual(h.readPng((await h.downloadPng(page, gen.seed)).bytes).pixels, pngA, "same PNG pixels");
  await h.shot(page, "xiii-library");

  // a phone: single column, no horizontal scroll
  await page.setViewportSize({ width: 375, height: 800 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  await h.shot(page, "xiii-phone-375");
  await page.setViewportSize({ width: 1100, height: 1400 });
  assert.ok(width <= 375, `page is ${width} px wide at a 375 px viewport`);
  return `train 2 steps ${timings.train} s, generate ${timings.generate} s, suppress ${timings.suppress} s, reload+load ${timings.reload} s; ` +
    `re-imported embedding gives the same ${imageA.length / 3} pixels; total ${((Date.now() - t0) / 1000).toFixed(0)} s; 375 px: scrollWidth ${width}`;
}

export async function caseCsp(h) {
  const { page, base } = h;
  const res = await fetch(base);
  const header = res.headers.get("content-security-policy");
  const meta = await page.getAttribute('meta[http-equiv="Content-Security-Policy"]', "content");
  assert.ok(meta && meta.includes("connect-src 'self'"), `meta CSP: ${meta}`);
  assert.equal(header, meta, "serve.mjs sends the page's meta policy as a header");
  assert.match(meta, /script-src 'self' 'wasm-unsafe-eval'/);
  // a fetch to an unlisted host is refused by the CSP (page and worker), without a request
  const refused = await page.evaluate(async () => {
    const seen = [];
    const onV = (e) => seen.push(`${e.violatedDirective || e.effectiveDirective} ${e.blockedURI}`);
    document.addEventListener("securitypolicyviolation", onV);
    let error = null;
    try {
      await fetch("https://unlisted.example.org/x");
    } catch (err) {
      error = String(err);
    }
    await new Promise((r) => setTimeout(r, 200));
    document.removeEventListener("securitypolicyviolation", onV);
    return { error, seen };
  });
  assert.ok(refused.error, "fetch to an unlisted host fails");
  assert.ok(refused.seen.some((s) => /connect-src/.test(s) && /unlisted\.example\.org/.test(s)), `CSP violation reported: ${JSON.stringify(refused.seen)}`);
  // a custom model URL on another host: a message that explains the CSP
  await page.fill("#model-url", "https://models.example.com/sd15/");
  await page.click("#load-button");
  await page.waitForFunction(() => document.body.dataset.state === "error", null, { timeout: 30_000 });
  const text = await page.textContent("#load-error");
  assert.match(text, /models\.example\.com is not allowed by this page's Content-Security-Policy/);
  assert.match(text, /add https:\/\/models\.example\.com to connect-src/);
  await h.shot(page, "xiv-csp-message");
  // an adapter whose limits are below the model's largest tensor: which limit, its value, what to do
  await page.fill("#model-url", "/models/tiny-sd1/");
  h.forgetModel();
  await page.evaluate(() => (window.__pseudoword.testHooks.limits = { maxStorageBufferBindingSize: 1000, maxBufferSize: 1 << 30, shaderF16: true }));
  await page.click("#load-button");
  await page.waitForFunction(() => ["loaded", "error"].includes(document.body.dataset.state), null, { timeout: 300_000 });
  await page.evaluate(() => (window.__pseudoword.testHooks.limits = null));
  const limits = await page.textContent("#load-error");
  assert.match(limits, /This GPU's maxStorageBufferBindingSize is 0\.0 MiB \(1000 bytes\), but the model's largest tensor \(.+\) needs .+ in f32/, limits);
  assert.match(limits, /Choose "f16"/);
  // f16 storage where the adapter has no shader-f16 (SwiftShader): refused before any upload,
  // instead of a worker that dies on its first f16 shader
  await page.selectOption("#storage", "f16");
  h.forgetModel();
  await page.click("#load-button");
  await page.waitForFunction(() => ["loaded", "error"].includes(document.body.dataset.state), null, { timeout: 300_000 });
  const f16 = await page.textContent("#load-error");
  assert.match(f16, /no "shader-f16" feature/, f16);
  assert.match(f16, /Choose "f32" or "auto"/, f16);
  await page.selectOption("#storage", "auto");
  return `header = meta; fetch refused (${refused.seen[0]}); custom host message shown; low-limit message: ${JSON.stringify(limits.slice(0, 80))}…; f16 without shader-f16 refused`;
}
