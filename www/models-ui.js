// Model section of the page (besides the URL form in app.js): the preset list, the local
// folder / file pickers, browser-storage usage (estimate, persist) and the stored-model list
// with Load / Delete. State for tests: api.storage {opfs, usage, quota, persisted, models, seq}.

import { PRESETS, presetUrl, findPreset, normalizeModelUrl, mapPickedFiles } from "./models.js";
import { listCached, opfsAvailable } from "./models-store.js";
import { noteFocus, restoreFocus } from "./focus.js";

const $ = (id) => document.getElementById(id);
const gb = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB` : `${Math.round(n / 1e6)} MB`);

let ctx = null; // {api, request, load(payload, label), isBusy(), fmtBytes}

export function presetFor(url, variant) {
  return findPreset(url, variant, location.href);
}

function fillPresets() {
  const sel = $("model-preset");
  sel.replaceChildren();
  for (const p of PRESETS) sel.append(new Option(`${p.name}, ≈${gb(p.size)}${p.default ? " (default)" : ""}`, p.id));
  sel.append(new Option("Custom URL…", "custom"));
  const def = PRESETS.find((p) => p.default);
  sel.value = def.id;
  applyPreset(def);
  sel.addEventListener("change", () => {
    const p = PRESETS.find((q) => q.id === sel.value);
    if (p) applyPreset(p);
    else $("model-url").focus();
  });
  const sync = () => {
    let url = null;
    try {
      url = normalizeModelUrl($("model-url").value, location.href);
    } catch {
      /* shown on Load */
    }
    const p = url && presetFor(url, $("weights").value);
    sel.value = p ? p.id : "custom";
    if (!p) $("model-preset-help").textContent = "Custom model: any diffusers folder URL below (static host or Hugging Face repo).";
  };
  $("model-url").addEventListener("input", sync);
  $("weights").addEventListener("change", sync);
}

function applyPreset(p) {
  $("model-url").value = presetUrl(p, location.href).replace(location.origin, "");
  $("weights").value = p.variant;
  const rec = p.recommend ? ` Recommended: ${p.recommend.steps} step(s), guidance ${p.recommend.guidance} (applied on load).` : "";
  $("model-preset-help").textContent = `${p.url ? "Served by this app." : `huggingface.co/${p.repo}, ${p.variant} weights.`} Download ≈${gb(p.size)}.${rec}`;
}

async function onPick(input) {
  const list = [...input.files];
  input.value = "";
  if (!list.length || ctx.isBusy()) return;
  const files = await mapPickedFiles(list);
  const top = (list[0].webkitRelativePath || "").split("/")[0];
  await ctx.load({ files, name: top || "local", variant: $("weights").value }, `${top || "picked files"} (${list.length} files, local)`);
}

export async function refreshStorage() {
  const api = ctx.api;
  const st = { opfs: opfsAvailable(), usage: null, quota: null, persisted: null, models: [], seq: (api.storage?.seq || 0) + 1 };
  try {
    const e = await navigator.storage?.estimate?.();
    if (e) Object.assign(st, { usage: e.usage, quota: e.quota });
    st.persisted = (await navigator.storage?.persisted?.()) ?? null;
  } catch {
    /* no StorageManager */
  }
  try {
    st.models = (await listCached()).map((m) => ({ key: m.key, name: m.name, url: m.url, variant: m.variant, bytes: m.bytes || 0, complete: !!m.complete, last_used: m.last_used }));
  } catch (err) {
    st.error = String(err?.message || err);
  }
  const f = ctx.fmtBytes;
  $("storage-estimate").textContent = !st.opfs
    ? "Browser storage (OPFS) is not available here: models are kept in memory and downloaded again after a reload."
    : `Browser storage: ${f(st.usage)} used of ${f(st.quota)} available to this site` +
      (st.persisted ? " (persistent: the browser will not evict it)." : " (the browser may evict it when space runs low).");
  $("persist-button").hidden = !st.opfs || !!st.persisted || !navigator.storage?.persist;
  const ul = $("cached-models");
  const focus = noteFocus();
  ul.replaceChildren();
  for (const m of st.models) {
    const li = document.createElement("li");
    li.dataset.key = m.key;
    const text = document.createElement("span");
    const date = m.last_used ? new Date(m.last_used).toLocaleString() : "?";
    text.textContent = `${m.name} (${m.variant === "single" ? "single file" : m.variant}) ${f(m.bytes)}${m.complete ? "" : ", incomplete: Load resumes it"}, last used ${date}`;
    text.className = "cached-name";
    text.title = m.url;
    const load = document.createElement("button");
    load.type = "button";
    load.textContent = m.complete ? "Load" : "Resume";
    load.dataset.action = "load";
    load.setAttribute("aria-label", `${load.textContent} ${m.name} (${m.variant})`);
    load.disabled = ctx.isBusy();
    load.addEventListener("click", () => {
      $("model-url").value = m.url.startsWith(location.origin) ? m.url.slice(location.origin.length) : m.url;
      if (m.variant !== "single") $("weights").value = m.variant; // "single": one checkpoint file
      $("model-url").dispatchEvent(new Event("input"));
      $("model-cache").checked = true;
      $("load-form").requestSubmit();
    });
    const del = document.createElement("button");
    del.type = "button";
    del.className = "secondary";
    del.textContent = "Delete";
    del.dataset.action = "delete";
    del.setAttribute("aria-label", `Delete ${m.name} (${m.variant}) from browser storage`);
    del.disabled = ctx.isBusy();
    del.addEventListener("click", async () => {
      const again = m.complete ? " Loading it again downloads it again." : " The part downloaded so far is lost.";
      if (!confirm(`Delete ${m.name} (${m.variant === "single" ? "single file" : m.variant}, ${f(m.bytes)}) from browser storage?${again}`)) return;
      const focus = noteFocus(); // before disabling: Chrome then moves focus to <body>
      del.disabled = true;
      try {
        await ctx.request("models_delete", { key: m.key });
      } catch (err) {
        $("storage-estimate").textContent = `Deleting ${m.name} failed: ${err.message || err}`;
        return;
      }
      await refreshStorage();
      restoreFocus(focus, $("model-storage").querySelector("summary"));
    });
    li.append(text, " ", load, " ", del);
    ul.append(li);
  }
  $("cached-empty").hidden = st.models.length > 0;
  // the list was rebuilt: a focused Load / Delete goes to its twin, or after a Delete to the
  // next stored model's Delete, or to the section's summary when none is left
  if (focus && focus.list === ul) restoreFocus(focus, $("model-storage").querySelector("summary"));
  api.storage = st;
  return st;
}

export function updateModelControls(busy, gpuOk) {
  for (const id of ["model-folder", "model-files", "model-preset", "model-cache"]) $(id).disabled = busy || (id.startsWith("model-f") && !gpuOk);
  for (const b of document.querySelectorAll("#cached-models button")) b.disabled = busy || (b.dataset.action === "load" && !gpuOk);
}

export function initModelManager(c) {
  ctx = c;
  fillPresets();
  $("model-folder").addEventListener("change", () => onPick($("model-folder")));
  $("model-files").addEventListener("change", () => onPick($("model-files")));
  $("persist-button").addEventListener("click", async () => {
    const ok = await navigator.storage.persist().catch(() => false);
    await refreshStorage();
    if (!ok) $("storage-estimate").textContent += " The browser declined persistent storage (it often grants it to installed or bookmarked sites).";
  });
  return refreshStorage();
}
