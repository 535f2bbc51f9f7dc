// Browser case xv: keyboard accessibility. Imported by run.mjs, which passes its helpers in `h`:
// {page, setLoaded, shot, GENERATE_TIMEOUT, LOAD_TIMEOUT, ARTIFACTS, REPO, ...} (see flow.mjs).
//
// Everything the user does here is done with the keyboard only (Tab, Shift+Tab, Enter, Space,
// arrow keys, typing): load the tiny model, encode, open a <details>, pick photos and embedding
// files through the file choosers, generate (with a select changed by arrows and a checkbox
// toggled by Space), cancel a run, delete library entries (confirm dialogs) and photos. Then:
// - a full Tab cycle from the top reaches every visible, enabled, interactive element
//   (button, input, select, textarea, summary, a[href], [tabindex] >= 0 outside closed
//   <details> and hidden ancestors), in document order, and Shift+Tab walks it back;
// - every control reached has a meaningful accessible name (computed here from aria-labelledby,
//   aria-label, <label>, content / alt, title, and cross-checked with Chromium's accessibility
//   tree over CDP) and a visible focus indicator (outline or box-shadow that differs from the
//   unfocused state, at least 2px, at least 3:1 against the background behind it);
// - focus goes somewhere sensible when the focused control is disabled or removed;
// - static checks: lang, no positive tabindex, IDREFs resolve, help texts are tied with
//   aria-describedby, errors are role="alert", status texts live regions, progress bars named.
// Screenshots of focus rings: artifacts/xv-*.png.

import assert from "node:assert/strict";
import path from "node:path";

const INTERACTIVE = 'button, input, select, textarea, summary, a[href], [tabindex]:not([tabindex="-1"])';

// Page-side helpers (installed once after the reload; the case never reloads again).
function installHelpers(INTERACTIVE) {
  const text = (n) => (n ? n.textContent.replace(/\s+/g, " ").trim() : "");
  const visible = (el) => {
    if (el.closest("[hidden], [inert]")) return false;
    for (let d = el.closest("details"); d; d = d.parentElement && d.parentElement.closest("details")) {
      if (!d.open && !(el.tagName === "SUMMARY" && el.parentElement === d)) return false;
    }
    const s = getComputedStyle(el);
    if (s.display === "none" || s.visibility !== "visible") return false;
    if (el.tagName === "INPUT" && el.type === "hidden") return false;
    return el.getClientRects().length > 0;
  };
  // Accessible name, the way accname computes it for these elements (simplified).
  const accName = (el) => {
    const ids = el.getAttribute("aria-labelledby");
    if (ids) {
      const t = ids.split(/\s+/).map((id) => text(document.getElementById(id))).filter(Boolean).join(" ");
      if (t) return { name: t, from: "aria-labelledby" };
    }
    const al = (el.getAttribute("aria-label") || "").trim();
    if (al) return { name: al, from: "aria-label" };
    if (el.labels && el.labels.length) {
      const t = [...el.labels].map((l) => {
        const c = l.cloneNode(true);
        c.querySelectorAll("input, select, textarea, button").forEach((x) => x.remove());
        return text(c);
      }).filter(Boolean).join(" ");
      if (t) return { name: t, from: "label" };
    }
    if (["BUTTON", "A", "SUMMARY"].includes(el.tagName) || el.getAttribute("role") === "button") {
      const t = [text(el), ...[...el.querySelectorAll("img[alt]")].map((i) => i.alt.trim())].filter(Boolean).join(" ");
      if (t) return { name: t, from: "content" };
    }
    const title = (el.getAttribute("title") || "").trim();
    if (title) return { name: title, from: "title" };
    return { name: "", from: null };
  };
  const describe = (el) => {
    if (!el || el === document.body) return "BODY";
    let d = el.tagName.toLowerCase();
    if (el.id) d += `#${el.id}`;
    else {
      const li = el.closest("li[data-key]");
      if (li) d += `(${li.parentElement.id} ${li.dataset.token || li.dataset.key.slice(-8)})`;
      if (el.className) d += `.${String(el.className).split(" ").join(".")}`;
      if (el.type) d += `[${el.type}]`;
      if (!el.className && !li) d += `"${text(el).slice(0, 24)}"`;
    }
    return d;
  };
  const ring = (el) => {
    const s = getComputedStyle(el);
    return { outlineStyle: s.outlineStyle, outlineWidth: parseFloat(s.outlineWidth) || 0, outlineColor: s.outlineColor, outlineOffset: parseFloat(s.outlineOffset) || 0, boxShadow: s.boxShadow };
  };
  const rgb = (c) => {
    const m = /rgba?\(([^)]+)\)/.exec(c || "");
    if (!m) return null;
    const [r, g, b, a = 1] = m[1].split(/[,\s/]+/).filter(Boolean).map(Number);
    return { r, g, b, a };
  };
  const lum = ({ r, g, b }) => {
    const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  // Background the focus ring is drawn on: the first opaque background from the parent up
  // (the ring sits outside the element, outline-offset > 0).
  const backdrop = (el) => {
    for (let n = el.parentElement; n; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c && c.a > 0.5) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const contrast = (a, b) => {
    const [l1, l2] = [lum(a), lum(b)].sort((x, y) => y - x);
    return (l1 + 0.05) / (l2 + 0.05);
  };
  window.__kbd = {
    visible,
    accName,
    describe,
    candidates() {
      this.cand = [...document.querySelectorAll(INTERACTIVE)].filter((el) => visible(el) && !el.matches(":disabled"));
      return this.cand.map((el, i) => ({ i, desc: describe(el) }));
    },
    // The focused element: its index among the candidates, its ring, whether it shows on screen;
    // and the ring of candidate `prev` (the one Tab just left: now unfocused).
    step(prev = -1) {
      const el = document.activeElement;
      const prevRing = prev >= 0 ? ring(this.cand[prev]) : null;
      if (!el || el === document.body) return { i: -2, desc: "BODY", prevRing };
      const r = el.getBoundingClientRect();
      const bg = backdrop(el);
      const f = ring(el);
      const oc = rgb(f.outlineColor);
      return {
        i: this.cand ? this.cand.indexOf(el) : -1,
        desc: describe(el),
        focusVisible: el.matches(":focus-visible"),
        ring: f,
        contrast: oc ? contrast(oc, bg) : 0,
        inViewport: r.bottom > 0 && r.top < innerHeight && r.right > 0 && r.left < innerWidth,
        visible: visible(el),
        prevRing,
      };
    },
    ring: (i) => ring(window.__kbd.cand[i]),
    name: (i) => accName(window.__kbd.cand[i]),
    is: (sel) => !!document.activeElement && document.activeElement !== document.body && document.activeElement.matches(sel),
    active: () => describe(document.activeElement),
  };
}

// Static structure: lang, tabindex, IDREFs, help texts, live regions, progress bars.
function staticChecks() {
  const out = { problems: [] };
  const bad = (m) => out.problems.push(m);
  if (!document.documentElement.lang) bad("<html> has no lang");
  for (const el of document.querySelectorAll("[tabindex]")) if (Number(el.getAttribute("tabindex")) > 0) bad(`positive tabindex on ${el.outerHTML.slice(0, 60)}`);
  for (const attr of ["aria-labelledby", "aria-describedby", "aria-controls"]) {
    for (const el of document.querySelectorAll(`[${attr}]`)) {
      for (const id of el.getAttribute(attr).split(/\s+/)) if (!document.getElementById(id)) bad(`${attr}="${id}" on #${el.id || el.tagName} names no element`);
    }
  }
  // ids are unique
  const seen = new Map();
  for (const el of document.querySelectorAll("[id]")) seen.set(el.id, (seen.get(el.id) || 0) + 1);
  for (const [id, n] of seen) if (n > 1) bad(`id "${id}" is used ${n} times`);
  for (const l of document.querySelectorAll("label[for]")) if (!document.getElementById(l.htmlFor)) bad(`label for="${l.htmlFor}" names no element`);
  const described = new Set([...document.querySelectorAll("[aria-describedby]")].flatMap((el) => el.getAttribute("aria-describedby").split(/\s+/)));
  const helps = [...document.querySelectorAll('[id$="-help"]')].map((el) => el.id);
  for (const id of helps) if (!described.has(id)) bad(`help text #${id} is not tied to a control with aria-describedby`);
  out.helps = helps.length;
  for (const el of document.querySelectorAll(".notice.error")) if (el.getAttribute("role") !== "alert") bad(`error box #${el.id} is not role="alert"`);
  for (const id of ["gpu-status", "load-status", "gen-status", "train-status", "encode-status", "library-status", "photo-status"]) {
    const el = document.getElementById(id);
    if (!el || !(el.getAttribute("role") === "status" || el.getAttribute("aria-live") === "polite")) bad(`#${id} is not a live region`);
  }
  for (const p of document.querySelectorAll('progress, [role="progressbar"]')) {
    if (!window.__kbd.accName(p).name) bad(`progress bar #${p.id} has no accessible name`);
    if (p.getAttribute("role") === "progressbar" && !["aria-valuemin", "aria-valuemax"].every((a) => p.hasAttribute(a))) bad(`#${p.id}: aria-valuemin/max missing`);
  }
  out.progress = document.querySelectorAll("progress").length;
  // headings in order: no level skipped going down
  let last = 0;
  for (const h of document.querySelectorAll("h1, h2, h3, h4, h5, h6")) {
    const level = Number(h.tagName[1]);
    if (level > last + 1) bad(`heading level skipped: ${h.tagName} "${h.textContent.trim().slice(0, 30)}" after h${last}`);
    last = level;
  }
  // nothing clickable made of a bare div/span
  for (const el of document.querySelectorAll("div[onclick], span[onclick], div[role=button], span[role=button]")) {
    if (!el.hasAttribute("tabindex") || !el.getAttribute("aria-label") && !el.textContent.trim()) bad(`#${el.id}: role=button without tabindex / name`);
  }
  return out;
}

// A diffusers textual-inversion file (one 32-wide vector: the tiny model's text encoder width).
function embeddingFile(token, value) {
  const dim = 32;
  const header = Buffer.from(JSON.stringify({ [token]: { dtype: "F32", shape: [1, dim], data_offsets: [0, dim * 4] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([len, header, Buffer.from(new Float32Array(dim).fill(value).buffer)]);
}

export async function caseKeyboard(h) {
  const { page } = h;
  // File choosers are intercepted only once a listener is on; waitForEvent() alone races the
  // key press that opens them, so one listener stays on for the whole case.
  const keepChoosers = () => {};
  page.on("filechooser", keepChoosers);
  try {
    return await keyboardCase(h);
  } finally {
    page.off("filechooser", keepChoosers);
  }
}

async function keyboardCase(h) {
  const { page } = h;
  const t0 = Date.now();
  const kbd = {
    press: (key) => page.keyboard.press(key),
    is: (sel) => page.evaluate((s) => window.__kbd.is(s), sel),
    active: () => page.evaluate(() => window.__kbd.active()),
  };
  // Presses Tab (or Shift+Tab) until focus is on `sel`; fails, listing the path, after `max`.
  const tabTo = async (sel, { max = 120, back = false } = {}) => {
    const seen = [];
    for (let n = 1; n <= max; n++) {
      await kbd.press(back ? "Shift+Tab" : "Tab");
      if (await kbd.is(sel)) return n;
      seen.push(await kbd.active());
    }
    throw new Error(`${sel} not reached with ${max} ${back ? "Shift+Tab" : "Tab"} presses: ${seen.slice(-12).join(" > ")}`);
  };
  // Select all and type (the number / text fields).
  const typeInto = async (sel, value, back = false) => {
    await tabTo(sel, { back });
    await kbd.press("Control+A");
    await page.keyboard.type(String(value));
  };
  const focusShot = async (name, pad = 40) => {
    const box = await page.evaluate((p) => {
      const r = document.activeElement.getBoundingClientRect();
      return { x: Math.max(0, r.left - p), y: Math.max(0, r.top - p), width: Math.min(innerWidth, r.width + 2 * p), height: Math.min(innerHeight, r.height + 2 * p) };
    }, pad);
    await page.screenshot({ path: path.join(h.ARTIFACTS, `${name}.png`), clip: box });
  };
  const timings = {};
  const lap = (k, since) => (timings[k] = ((Date.now() - since) / 1000).toFixed(1));

  // A fresh page: focus starts at the top of the document.
  await page.reload({ waitUntil: "load" });
  await page.waitForFunction(() => window.__pseudoword && window.__pseudoword.gpu !== null && window.__pseudoword.storage, null, { timeout: 60_000 });
  await page.evaluate(installHelpers, INTERACTIVE);
  const stat = await page.evaluate(staticChecks);
  assert.deepEqual(stat.problems, [], "static accessibility checks");

  // ---- 1. the skip link, then load the tiny model with the keyboard only
  let t = Date.now();
  await kbd.press("Tab");
  assert.ok(await kbd.is("a.skip-link"), `first Tab stop is the skip link, not ${await kbd.active()}`);
  const skip = await page.evaluate(() => {
    const r = document.activeElement.getBoundingClientRect();
    return { top: r.top, height: r.height, text: document.activeElement.textContent };
  });
  assert.ok(skip.top >= 0 && skip.height > 0, `the focused skip link is on screen: ${JSON.stringify(skip)}`);
  await focusShot("xv-focus-skip-link");
  await kbd.press("Enter");
  assert.ok(await kbd.is("#model-title"), `the skip link moves focus to the model heading, not ${await kbd.active()}`);
  await kbd.press("Tab");
  assert.ok(await kbd.is("#model-preset"), `after the heading: the model preset, not ${await kbd.active()}`);
  // arrow keys through the presets to the tiny demo model (fills in URL and weights)
  for (let n = 0; n < 10 && (await page.inputValue("#model-preset")) !== "tiny"; n++) await kbd.press("ArrowDown");
  assert.equal(await page.inputValue("#model-preset"), "tiny", "ArrowDown reaches the tiny preset");
  await tabTo("#model-url", { max: 4 }); // the preset's help text may hold a link
  assert.equal(await page.inputValue("#model-url"), "/models/tiny-sd1/");
  assert.equal(await page.inputValue("#weights"), "fp32");
  const toLoad = await tabTo("#load-button", { max: 8 });
  await focusShot("xv-focus-load-button");
  await kbd.press("Space");
  await page.waitForFunction(() => document.body.dataset.state === "loading", null, { timeout: 10_000 }).catch(() => {});
  await page.waitForFunction(() => ["loaded", "error"].includes(document.body.dataset.state), null, { timeout: h.LOAD_TIMEOUT, polling: 250 });
  const load = await page.evaluate(() => ({ state: window.__pseudoword.state, error: window.__pseudoword.error, info: window.__pseudoword.info }));
  assert.equal(load.state, "loaded", `keyboard load failed: ${load.error}`);
  assert.ok(load.info.can_generate, "tiny model can generate");
  h.setLoaded("/models/tiny-sd1/", "fp32");
  assert.ok(await kbd.is("#load-button"), `after loading, focus is back on Load (it was disabled meanwhile), not ${await kbd.active()}`);
  lap("load", t);

  // ---- 2. encode a prompt (Enter on Encode); focus comes back to the button
  t = Date.now();
  const seq = await page.evaluate(() => window.__pseudoword.seq);
  await tabTo("#encode-button");
  await kbd.press("Enter");
  await page.waitForFunction((b) => window.__pseudoword.seq > b || window.__pseudoword.state === "error", seq, { timeout: 120_000, polling: 100 });
  assert.equal(await page.evaluate(() => window.__pseudoword.state), "loaded", "encode by Enter");
  assert.ok(await page.isVisible("#encode-result"), "encode result shown");
  assert.match(await page.textContent("#encode-status"), /Encoded in/);
  assert.ok(await kbd.is("#encode-button"), `after encoding, focus is on Encode, not ${await kbd.active()}`);
  lap("encode", t);

  // ---- 3. open a <details> with Enter (Shift+Tab back up the page to it)
  assert.equal(await page.evaluate(() => document.getElementById("model-details").open), false);
  await tabTo("#model-details > summary", { back: true });
  await kbd.press("Enter");
  assert.equal(await page.evaluate(() => document.getElementById("model-details").open), true, "Enter opens the details");
  await focusShot("xv-focus-summary");

  // ---- 4. photos through the drop zone's keyboard path (Enter opens the file chooser)
  const photoDir = path.join(h.REPO, "tests/fixtures/photos");
  await tabTo("#photo-drop");
  await focusShot("xv-focus-photo-drop");
  let [chooser] = await Promise.all([page.waitForEvent("filechooser", { timeout: 10_000 }), kbd.press("Enter")]);
  assert.ok(chooser.isMultiple(), "the photo chooser takes several files");
  await chooser.setFiles(["chelsea_1_center.jpg", "chelsea_5_right.png"].map((f) => path.join(photoDir, f)));
  await page.waitForFunction(() => window.__pseudoword.training.photos.length === 2, null, { timeout: 60_000 });
  assert.match(await page.textContent("#photo-status"), /Added 2 photos\. 2 photos chosen\./, "photos announced");
  assert.ok(await kbd.is("#photo-drop"), "focus stays on the drop zone");

  // ---- 5. embedding files through the library's file input (Space opens the chooser)
  const libSeq = await page.evaluate(() => window.__pseudoword.library.seq);
  await tabTo("#import-file");
  await focusShot("xv-focus-file-input");
  [chooser] = await Promise.all([page.waitForEvent("filechooser", { timeout: 10_000 }), kbd.press("Space")]);
  await chooser.setFiles([
    { name: "xv-a.safetensors", mimeType: "application/octet-stream", buffer: embeddingFile("<xv-a>", 0.25) },
    { name: "xv-b.safetensors", mimeType: "application/octet-stream", buffer: embeddingFile("<xv-b>", 0.5) },
  ]);
  await page.waitForFunction((b) => window.__pseudoword.library.seq > b && ["<xv-a>", "<xv-b>"].every((tk) => document.querySelector(`#library-list li[data-token="${tk}"]`)), libSeq, { timeout: 60_000 });
  const lib = await page.evaluate(() => window.__pseudoword.library);
  assert.equal(lib.error, null, `import: ${lib.error}`);

  // ---- 6. generate by keyboard: sampler by ArrowDown, heatmaps by Space, sizes typed, Enter
  t = Date.now();
  await tabTo("#gen-scheduler", { back: true });
  assert.equal(await page.inputValue("#gen-scheduler"), "");
  await kbd.press("ArrowDown");
  assert.equal(await page.inputValue("#gen-scheduler"), "ddim", "ArrowDown changes the sampler");
  await typeInto("#gen-steps", 1);
  await typeInto("#gen-width", 64);
  await typeInto("#gen-height", 64);
  await typeInto("#gen-seed", 7);
  await tabTo("#gen-heatmaps");
  assert.equal(await page.isChecked("#gen-heatmaps"), false);
  await focusShot("xv-focus-checkbox");
  await kbd.press("Space");
  assert.equal(await page.isChecked("#gen-heatmaps"), true, "Space toggles the checkbox");
  const genSeq = await page.evaluate(() => window.__pseudoword.generation.seq);
  await tabTo("#generate-button");
  await kbd.press("Enter");
  await page.waitForFunction((b) => window.__pseudoword.generation.seq > b, genSeq, { timeout: h.GENERATE_TIMEOUT, polling: 100 });
  let g = await page.evaluate(() => ({ ...window.__pseudoword.generation, result: { ...window.__pseudoword.generation.result, image: null } }));
  assert.equal(g.state, "done", `keyboard generation: ${g.error}`);
  assert.deepEqual([g.result.width, g.result.height, g.result.seed, String(g.result.scheduler).toLowerCase()], [64, 64, 7, "ddim"], "the typed settings were used");
  assert.ok(g.result.heatmaps && g.result.heatmaps.branches[0].tiles > 0, "heatmaps (the checkbox) returned");
  assert.ok(await kbd.is("#generate-button"), `after the run, focus is back on Generate, not ${await kbd.active()}`);
  lap("generate", t);

  // ---- 7. the Tab cycle: every visible, enabled control, in document order, then back
  t = Date.now();
  const cand = await page.evaluate(() => window.__kbd.candidates());
  assert.ok(cand.length > 40, `only ${cand.length} interactive elements found`);
  // go to the top: Tab until the first candidate (the skip link) has focus
  await tabTo("a.skip-link", { max: 400 });
  const order = [];
  const steps = [];
  const extra = [];
  const unfocused = {}; // candidate -> its ring once Tab has moved on
  let prev = -1;
  for (let n = 0; n < 600; n++) {
    const s = await page.evaluate((p) => window.__kbd.step(p), prev);
    if (prev >= 0) unfocused[prev] = s.prevRing;
    prev = s.i >= 0 ? s.i : -1;
    if (s.i === -2) {
      // past the last control focus leaves the document; the next Tab comes back to the top
    } else if (order.length && s.i === order[0]) break;
    else if (s.i < 0) extra.push(s.desc);
    else {
      order.push(s.i);
      steps.push(s);
    }
    await kbd.press("Tab");
  }
  const reached = new Set(order);
  const missed = cand.filter((c) => !reached.has(c.i)).map((c) => c.desc);
  assert.deepEqual(missed, [], `controls not reached with Tab (${reached.size}/${cand.length} reached)`);
  assert.deepEqual(extra, [], "Tab stopped on elements that are not visible interactive controls");
  assert.equal(order.length, reached.size, "each control is reached once per cycle");
  assert.deepEqual(order, [...order].sort((a, b) => a - b), `Tab order is document order: ${order.map((i) => cand[i].desc).join(" > ")}`);
  // focus indicators
  const ringProblems = [];
  for (const s of steps) {
    const off = unfocused[s.i] || {};
    const outline = s.ring.outlineStyle !== "none" && s.ring.outlineWidth >= 2;
    const shadow = s.ring.boxShadow !== "none" && s.ring.boxShadow !== off.boxShadow;
    const differs = s.ring.outlineStyle !== off.outlineStyle || s.ring.outlineWidth !== off.outlineWidth || s.ring.outlineColor !== off.outlineColor || shadow;
    if (!s.focusVisible) ringProblems.push(`${s.desc}: not :focus-visible after Tab`);
    if (!(outline || shadow) || !differs) ringProblems.push(`${s.desc}: no focus indicator (${JSON.stringify(s.ring)} vs unfocused ${JSON.stringify(off)})`);
    if (outline && s.contrast < 3) ringProblems.push(`${s.desc}: focus outline contrast ${s.contrast.toFixed(2)} < 3`);
    if (!s.inViewport || !s.visible) ringProblems.push(`${s.desc}: focused but not on screen`);
  }
  assert.deepEqual(ringProblems, [], "focus indicators");
  const minContrast = Math.min(...steps.map((s) => s.contrast));
  // accessible names: computed here, cross-checked with Chromium's accessibility tree
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("DOM.enable");
  await cdp.send("Accessibility.enable");
  const nameProblems = [];
  const names = [];
  for (const i of order) {
    const mine = await page.evaluate((k) => window.__kbd.name(k), i);
    const { result } = await cdp.send("Runtime.evaluate", { expression: `window.__kbd.cand[${i}]` });
    const ax = await cdp.send("Accessibility.getPartialAXTree", { objectId: result.objectId, fetchRelatives: false });
    const node = ax.nodes.find((nd) => !nd.ignored) || ax.nodes[0];
    const chromium = String(node?.name?.value ?? "").trim();
    names.push({ desc: cand[i].desc, name: mine.name, from: mine.from, chromium, role: node?.role?.value });
    if (!/[\p{L}\p{N}]/u.test(mine.name)) nameProblems.push(`${cand[i].desc}: no accessible name (${JSON.stringify(mine.name)})`);
    if (!/[\p{L}\p{N}]/u.test(chromium)) nameProblems.push(`${cand[i].desc}: Chromium computes no name (${JSON.stringify(chromium)}, role ${node?.role?.value})`);
  }
  await cdp.detach().catch(() => {});
  assert.deepEqual(nameProblems, [], "accessible names");
  // Shift+Tab: from the 12th stop back to the 5th, then from the top back round to the last
  const at = Math.min(11, order.length - 1);
  for (let n = 0; n < at; n++) await kbd.press("Tab");
  assert.equal((await page.evaluate(() => window.__kbd.step())).i, order[at], "Tab again lands where the cycle said");
  for (let k = at - 1; k >= Math.max(0, at - 7); k--) {
    await kbd.press("Shift+Tab");
    const s = await page.evaluate(() => window.__kbd.step());
    assert.equal(s.i, order[k], `Shift+Tab goes back to ${cand[order[k]].desc}, not ${s.desc}`);
  }
  await tabTo("a.skip-link", { back: true, max: 20 });
  let wrapped = null;
  for (let n = 0; n < 3 && !wrapped; n++) {
    await kbd.press("Shift+Tab");
    const s = await page.evaluate(() => window.__kbd.step());
    if (s.i !== -2) wrapped = s;
  }
  assert.equal(wrapped && wrapped.i, order[order.length - 1], `Shift+Tab from the top wraps to the last control, not ${wrapped && wrapped.desc}`);
  lap("walk", t);
  // screenshots with focus rings: a list button, a heatmap tile link, the download link, the full page
  await tabTo('#library-list li[data-token="<xv-a>"] .library-delete', { back: true, max: 200 });
  await focusShot("xv-focus-library-delete", 60);
  await tabTo("#gen-heatmaps-tiles a", { back: true, max: 200 });
  await focusShot("xv-focus-heatmap-tile");
  await tabTo("#gen-download", { back: true, max: 200 });
  await focusShot("xv-focus-download-link");
  await h.shot(page, "xv-keyboard-page");

  // ---- 8. start a longer run and cancel it by keyboard: focus goes Generate > Cancel > Generate
  t = Date.now();
  await tabTo("#gen-heatmaps", { back: true });
  await kbd.press("Space");
  assert.equal(await page.isChecked("#gen-heatmaps"), false, "Space unticks");
  await typeInto("#gen-steps", 40, true);
  const cancelSeq = await page.evaluate(() => window.__pseudoword.generation.seq);
  await tabTo("#generate-button");
  await kbd.press("Enter");
  assert.ok(await kbd.is("#cancel-button"), `while it runs, focus is on Cancel, not ${await kbd.active()}`);
  await focusShot("xv-focus-cancel", 60);
  await page.waitForFunction(() => window.__pseudoword.generation.done >= 1 || window.__pseudoword.generation.state !== "running", null, { timeout: h.GENERATE_TIMEOUT, polling: 50 });
  await kbd.press("Enter");
  await page.waitForFunction((b) => window.__pseudoword.generation.seq > b, cancelSeq, { timeout: h.GENERATE_TIMEOUT, polling: 100 });
  g = await page.evaluate(() => ({ state: window.__pseudoword.generation.state, done: window.__pseudoword.generation.done, error: window.__pseudoword.generation.error }));
  assert.equal(g.state, "cancelled", `Enter on Cancel cancels: ${g.state} ${g.error || ""}`);
  assert.ok(g.done < 40, `cancelled after step ${g.done}`);
  assert.match(await page.textContent("#gen-status"), /Cancelled after step/);
  assert.ok(await kbd.is("#generate-button"), `after cancelling, focus is on Generate, not ${await kbd.active()}`);
  lap("cancel", t);

  // ---- 9. library Delete by keyboard: dismissed, then confirmed; focus moves to the next entry
  const libKeys = () => page.evaluate(() => [...document.querySelectorAll("#library-list li")].map((li) => li.dataset.token));
  const libAct = async (fn) => {
    const before = await page.evaluate(() => window.__pseudoword.library.seq);
    await fn();
    await page.waitForFunction((b) => window.__pseudoword.library.seq > b, before, { timeout: 60_000, polling: 50 });
  };
  const delSel = (tk) => `#library-list li[data-token="${tk}"] .library-delete`;
  await tabTo(delSel("<xv-a>"), { back: true, max: 200 });
  page.once("dialog", (d) => d.dismiss()); // Cancel / Escape in the confirmation
  await kbd.press("Enter");
  assert.ok((await libKeys()).includes("<xv-a>"), "dismissed: the entry stays");
  assert.ok(await kbd.is(delSel("<xv-a>")), `dismissed: focus stays on Delete, not ${await kbd.active()}`);
  const focusAfterDelete = [];
  for (const tk of ["<xv-a>", "<xv-b>"]) {
    await tabTo(delSel(tk), { max: 200 });
    const keys = await libKeys();
    const idx = keys.indexOf(tk);
    const rest = keys.filter((k) => k !== tk);
    page.once("dialog", (d) => d.accept());
    await libAct(() => kbd.press("Enter"));
    assert.ok(!(await libKeys()).includes(tk), `${tk} deleted`);
    const expected = rest.length ? delSel(rest[Math.min(idx, rest.length - 1)]) : "#library-title";
    assert.ok(await kbd.is(expected), `after deleting ${tk} focus is on ${expected}, not ${await kbd.active()}`);
    focusAfterDelete.push(await kbd.active());
  }
  assert.match(await page.textContent("#library-status"), /was deleted/);

  // ---- 10. remove the photos by keyboard: next photo's remove button, then the drop zone
  await tabTo('#photo-list button[aria-label="Remove chelsea_1_center.jpg"]', { back: true, max: 200 });
  await focusShot("xv-focus-photo-remove");
  await kbd.press("Enter");
  assert.deepEqual(await page.evaluate(() => window.__pseudoword.training.photos), ["chelsea_5_right.png"]);
  assert.ok(await kbd.is('#photo-list button[aria-label="Remove chelsea_5_right.png"]'), `after removing a photo, focus is on the next one's remove button, not ${await kbd.active()}`);
  await kbd.press("Space");
  assert.deepEqual(await page.evaluate(() => window.__pseudoword.training.photos), []);
  assert.ok(await kbd.is("#photo-drop"), `no photo left: focus on the drop zone, not ${await kbd.active()}`);
  assert.match(await page.textContent("#photo-status"), /Removed chelsea_5_right\.png\. 0 photos chosen\./);

  const fromName = names.reduce((m, n) => ((m[n.from] = (m[n.from] || 0) + 1), m), {});
  const dup = Object.entries(names.reduce((m, n) => ((m[n.name] = (m[n.name] || 0) + 1), m), {})).filter(([, c]) => c > 1).map(([n, c]) => `${n} x${c}`);
  console.log(`      xv: Tab order (${order.length}): ${order.map((i) => cand[i].desc).join(" > ")}`);
  console.log(`      xv: names by source ${JSON.stringify(fromName)}; repeated names: ${dup.join("; ") || "none"}; focus after deletes: ${focusAfterDelete.join(", ")}`);
  return `${reached.size}/${cand.length} controls reached by Tab (load button after ${toLoad} Tabs from the URL field), Shift+Tab ok; all named, ` +
    `focus rings >= 2px, min contrast ${minContrast.toFixed(1)}:1; ${stat.helps} help texts tied, ${stat.progress} progress bars named; ` +
    `load ${timings.load} s, encode ${timings.encode} s, generate ${timings.generate} s, walk ${timings.walk} s, cancel ${timings.cancel} s; total ${((Date.now() - t0) / 1000).toFixed(0)} s`;
}
