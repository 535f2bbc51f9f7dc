// Training panel (UI only; the work happens in worker-train.js). Tests read
// window.__pseudoword.training: {state: "idle" | "preparing" | "running" | "paused" | "done" |
// "cancelled" | "error", step, steps, losses: number[], eta_ms, error, tokens, autosave, photos,
// recovered /* resumes after a lost GPU device */, recovering /* true while one is under way */}.

import { libraryChanged } from "./library.js";
import { noteFocus, restoreFocus } from "./focus.js";

const $ = (id) => document.getElementById(id);

// "quality" is the library's own recipe: its steps come with the default settings
// (trainingDefaults); "fast" is this page's shortcut.
const PRESETS = {
  quality: { steps: null, scale: 1, preview: 250, help: "Native resolution, the library's default steps: the usual textual-inversion recipe; slowest." },
  fast: { steps: 500, scale: 0.5, preview: 100, help: "Half resolution, 500 steps: minutes instead of hours; less detail and likeness." },
  custom: { help: "Your own steps, learning rate and resolution." },
};

let request = null;
let api = null;
let restartGpu = null;
let info = null;
const photos = []; // {name, bytes: Uint8Array, url}
let running = false;
let trained = false;
let previewUrl = null;

function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

function setTraining(patch) {
  Object.assign(api.training, patch);
  document.body.dataset.training = api.training.state;
}

function fmtMs(ms) {
  if (ms == null || !isFinite(ms)) return "…";
  const s = Math.round(ms / 1000);
  return s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function updateControls() {
  const loaded = !!(info && info.can_generate);
  $("train-start").disabled = !loaded || running || photos.length === 0;
  $("train-pause").disabled = !running;
  $("train-cancel").disabled = !running;
  for (const b of $("train-downloads").querySelectorAll("button")) b.disabled = running || !trained;
}

// After a photo is removed, focus goes to the next photo's remove button (the last one's when
// the last was removed), or back to the drop zone when none is left.
function renderPhotos(announce = "") {
  const ul = $("photo-list");
  const focus = noteFocus();
  const inList = focus && focus.list === ul;
  ul.replaceChildren();
  photos.forEach((p, i) => {
    const li = document.createElement("li");
    li.dataset.key = p.url;
    const img = document.createElement("img");
    img.src = p.url;
    img.alt = p.name;
    const rm = document.createElement("button");
    rm.type = "button";
    rm.textContent = "×";
    rm.dataset.action = "remove";
    rm.setAttribute("aria-label", `Remove ${p.name}`);
    rm.title = `Remove ${p.name}`;
    rm.addEventListener("click", () => {
      URL.revokeObjectURL(p.url);
      photos.splice(i, 1);
      renderPhotos(`Removed ${p.name}.`);
    });
    const cap = document.createElement("small");
    cap.textContent = p.size ? `${p.name} (${p.size})` : p.name;
    li.append(img, rm, cap);
    ul.append(li);
  });
  api.training.photos = photos.map((p) => p.name);
  if (inList) restoreFocus(focus, $("photo-drop"));
  const n = photos.length;
  $("photo-status").textContent = announce ? `${announce} ${n} photo${n === 1 ? "" : "s"} chosen.` : "";
  updateControls();
}

async function addFiles(files) {
  const errors = [];
  for (const file of files) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    try {
      const r = (await request("check_photo", { name: file.name, bytes })).result;
      photos.push({ name: file.name, bytes, url: URL.createObjectURL(file), size: `${r.width}x${r.height}` });
    } catch (err) {
      errors.push(err.message || String(err));
    }
  }
  showError($("photo-error"), errors.join("\n"));
  const added = files.length - errors.length;
  renderPhotos(added > 0 ? `Added ${added} photo${added === 1 ? "" : "s"}.` : "");
}

function applyPreset() {
  const preset = PRESETS[$("train-preset").value];
  $("train-preset-help").textContent = preset.help;
  if (!preset.steps || !info) return;
  $("train-steps").value = preset.steps;
  $("train-preview-every").value = preset.preview;
  const size = Math.max(64, Math.round((info.default_size * preset.scale) / 8) * 8);
  $("train-resolution").value = size;
}

function drawLoss() {
  const c = $("train-loss");
  const ctx = c.getContext("2d");
  const losses = api.training.losses;
  ctx.clearRect(0, 0, c.width, c.height);
  if (losses.length < 2) return;
  const max = Math.max(...losses);
  const min = Math.min(...losses);
  const span = Math.max(1e-9, max - min);
  ctx.strokeStyle = "#3b6fd8";
  ctx.beginPath();
  losses.forEach((l, i) => {
    const x = (i / (losses.length - 1)) * (c.width - 4) + 2;
    const y = c.height - 2 - ((l - min) / span) * (c.height - 4);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#666";
  ctx.fillText(`loss ${min.toFixed(4)}–${max.toFixed(4)}`, 6, 12);
}

const NUMBERS = { steps: "train-steps", lr: "train-lr", resolution: "train-resolution", vectors: "train-vectors", seed: "train-seed", preview_every: "train-preview-every" };

// The form's settings. An empty number field and everything without a field (warmup, weight
// decay, batch, checkpoint_every...) are left out: the library's defaults (resolution: the
// model's size; preview_every: none). How often the browser autosaves is worker-train.js's
// (autosaveInterval).
function readParams() {
  const params = {
    token: $("train-token").value.trim(),
    init_word: $("train-init").value.trim(),
    templates: $("train-templates").value,
  };
  for (const [key, id] of Object.entries(NUMBERS)) {
    const text = $(id).value.trim();
    if (text !== "") params[key] = Number(text);
  }
  return params;
}

function onTrainProgress(msg) {
  if (msg.stage === "train_state") {
    setTraining({ state: msg.state });
    $("train-pause").textContent = msg.state === "paused" ? "Resume" : "Pause";
    if (msg.state === "preparing") $("train-status").textContent = "Preparing: decoding photos and encoding them with the VAE…";
    return;
  }
  if (msg.stage === "train_preview") {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(new Blob([msg.png], { type: "image/png" }));
    $("train-preview-img").src = previewUrl;
    $("train-preview-caption").textContent = `Preview after step ${msg.step} (fixed prompt and seed).`;
    $("train-preview").hidden = false;
    api.training.previews = (api.training.previews || 0) + 1;
    return;
  }
  if (msg.stage !== "train") return;
  const log = msg.log;
  api.training.losses.push(log.loss);
  setTraining({ step: log.step, steps: msg.steps, eta_ms: msg.eta_ms, autosaved_step: msg.autosaved_step });
  $("train-progress").max = msg.steps;
  $("train-progress").value = log.step;
  const rb = log.rollback ? ` Diverged (${log.rollback.reason}): rolled back to step ${log.rollback.to_step}, learning rate x${log.rollback.lr_scale}.` : "";
  const saved = msg.autosaved_step != null ? ` Autosaved at step ${msg.autosaved_step}.` : "";
  $("train-status").textContent = `Step ${log.step} / ${msg.steps}, loss ${log.loss.toFixed(4)}, ETA ${fmtMs(msg.eta_ms)}.${saved}${rb}`;
  drawLoss();
}

// Shows the settings of the autosaved run in the form (what a resume continues).
function fillForm(params) {
  if (!params) return;
  const set = (id, v) => v !== undefined && v !== null && ($(id).value = v);
  set("train-token", params.token);
  set("train-init", params.init_word);
  set("train-templates", params.templates);
  set("train-steps", params.steps);
  set("train-lr", params.lr);
  set("train-resolution", params.resolution);
  set("train-vectors", params.vectors);
  set("train-seed", params.seed);
  set("train-preview-every", params.preview_every);
  $("train-preset").value = "custom";
}

async function startTraining(resume, recovered = 0) {
  if (running) return;
  if (resume) fillForm(api.training.autosave && api.training.autosave.params);
  showError($("train-error"), "");
  running = true;
  trained = false;
  setTraining({ state: "preparing", step: 0, steps: 0, losses: recovered ? api.training.losses : [], error: null, tokens: null, previews: 0, recovered });
  const focus = noteFocus();
  updateControls();
  // Start training (or Resume) is disabled while it runs: keyboard focus goes to Pause.
  if (!focus || focus.el === $("train-start") || focus.el === $("train-resume-autosave")) $("train-pause").focus();
  let recover = null;
  try {
    // a resumed run keeps its own settings (preview interval included)
    const payload = resume ? { resume: true, preview_steps: 10 } : { params: readParams(), photos: photos.map((p) => ({ name: p.name, bytes: p.bytes })), preview_steps: 10 };
    const hook = api.testHooks && api.testHooks.deviceLostAtStep;
    if (hook != null && !recovered) payload.simulate_device_lost_at = Number(hook);
    const r = (await request("train", payload, onTrainProgress)).result;
    trained = r.state === "done"; // a cancelled run is dropped (its GPU memory freed)
    setTraining({ state: r.state, step: r.step, steps: r.steps, tokens: r.tokens, library: r.library || null });
    const kept = r.library ? " It is kept in the embedding library." : r.library_error ? ` ${r.library_error}` : "";
    const again = recovered ? ` (resumed from the autosave after a lost GPU device)` : "";
    $("train-status").textContent =
      r.state === "done" ? `Done${again}: ${r.step} steps in ${fmtMs(r.elapsed_ms)}. Download the embedding or use ${r.tokens[0]} in prompts.${kept}` : `Cancelled at step ${r.step}. Resume continues from the autosave.`;
    if (r.state === "done") libraryChanged();
  } catch (err) {
    const message = err.message || String(err);
    setTraining({ state: "error", error: message });
    showError($("train-error"), message);
    // a lost device (or a crashed module): new worker, same model, continue from the autosave (once)
    if ((err.kind === "device_lost" || err.kind === "crash") && restartGpu && !recovered) {
      recover = message;
      setTraining({ recovering: true });
    }
  } finally {
    running = false;
    updateControls();
    await refreshAutosave();
    // Pause / Cancel are disabled again: back to Start, or to the downloads of what was learned
    restoreFocus(focus, $("train-start"), ...$("train-downloads").querySelectorAll("button"));
  }
  if (recover && !(api.training.autosave && api.training.autosave.exists)) setTraining({ recovering: false });
  if (recover && api.training.autosave && api.training.autosave.exists) {
    $("train-status").textContent = `GPU device lost: loading the model again and resuming from the autosave at step ${api.training.autosave.step}…`;
    try {
      await restartGpu();
      await refreshAutosave();
      setTraining({ recovering: false });
      await startTraining(true, recovered + 1);
    } catch (err) {
      setTraining({ recovering: false });
      showError($("train-error"), `${recover} Recovering failed: ${err.message || err}. Reload the page and choose "Resume".`);
    }
  }
}

async function download(format) {
  try {
    const { bytes } = (await request("export_embedding", { format })).result;
    const token = (api.training.tokens && api.training.tokens[0]) || "embedding";
    const base = token.replace(/[^A-Za-z0-9_-]+/g, "") || "embedding";
    const name = { diffusers: "learned_embeds.safetensors", a1111: `${base}.safetensors`, "a1111-pt": `${base}.pt`, "a1111-png": `${base}.png` }[format];
    const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    showError($("train-error"), err.message || String(err));
  }
}

async function refreshAutosave() {
  try {
    const r = (await request("autosave_info", {})).result;
    api.training.autosave = r;
    const box = $("train-autosave");
    box.hidden = !r.exists || running;
    if (r.exists) {
      const finished = r.step >= r.steps;
      $("train-autosave-text").textContent = finished
        ? `A finished training of ${r.params.token} (${r.steps} steps, ${r.photos.length} photos, saved ${new Date(r.saved_at).toLocaleString()}) is kept in this browser. `
        : `An autosaved training of ${r.params.token} is at step ${r.step} of ${r.steps} (${r.photos.length} photos, saved ${new Date(r.saved_at).toLocaleString()}). `;
      $("train-resume-autosave").textContent = finished ? "Restore" : "Resume";
    }
  } catch {
    /* IndexedDB unavailable (private mode): no autosave */
  }
}

/// Called once by app.js with its worker request function and the test API object.
export function initTraining(options) {
  request = options.request;
  api = options.api;
  restartGpu = options.restartGpu || null;
  api.training = { state: "idle", step: 0, steps: 0, losses: [], eta_ms: null, error: null, tokens: null, autosave: null, photos: [] };
  const drop = $("photo-drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  // The drop zone is a button (role="button", tabindex="0"): a click anywhere on it, or Enter or
  // Space while it has focus, opens the file chooser (the input's own click bubbles up: ignored).
  drop.addEventListener("click", (e) => {
    if (e.target !== $("photo-input")) $("photo-input").click();
  });
  drop.addEventListener("keydown", (e) => {
    if (e.target === drop && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      $("photo-input").click();
    }
  });
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles([...e.dataTransfer.files]);
  });
  $("photo-input").addEventListener("change", () => {
    addFiles([...$("photo-input").files]);
    $("photo-input").value = "";
  });
  $("train-preset").addEventListener("change", applyPreset);
  for (const id of ["train-steps", "train-resolution", "train-lr"]) $(id).addEventListener("input", () => ($("train-preset").value = "custom"));
  $("train-form").addEventListener("submit", (e) => {
    e.preventDefault();
    startTraining(false);
  });
  $("train-pause").addEventListener("click", () => {
    const paused = api.training.state === "paused";
    request("train_control", { action: paused ? "resume" : "pause" });
  });
  $("train-cancel").addEventListener("click", () => request("train_control", { action: "cancel" }));
  $("train-resume-autosave").addEventListener("click", () => startTraining(true));
  $("train-discard-autosave").addEventListener("click", async () => {
    const focus = noteFocus();
    await request("clear_autosave", {});
    await refreshAutosave();
    restoreFocus(focus, $("photo-drop")); // the autosave notice is gone
  });
  for (const b of $("train-downloads").querySelectorAll("button[data-format]")) b.addEventListener("click", () => download(b.dataset.format));
  $("train-use").addEventListener("click", async () => {
    const focus = noteFocus();
    try {
      const r = (await request("finish_training", {})).result;
      trained = false;
      updateControls();
      restoreFocus(focus, $("gen-prompt")); // the buttons are disabled now; the token goes into prompts
      $("train-status").textContent = `${r.tokens.join(", ")} can now be used in prompts (step ${r.step}).`;
      libraryChanged();
    } catch (err) {
      showError($("train-error"), err.message || String(err));
    }
  });
}

/// Called by app.js once the library's default settings arrived (settings.js filled the inputs):
/// the "quality" preset is the default number of steps.
export function trainingDefaults(train) {
  const steps = train && train.steps;
  if (!steps) return;
  PRESETS.quality.steps = steps;
  PRESETS.quality.help = `Native resolution, ${steps} steps: the usual textual-inversion recipe; slowest.`;
  $("train-preset").querySelector('option[value="quality"]').textContent = `Quality: native size, ${steps} steps`;
  if ($("train-preset").value === "quality") $("train-preset-help").textContent = PRESETS.quality.help;
}

/// Called by app.js after a model loaded.
export function trainingModelLoaded(modelInfo) {
  info = modelInfo;
  $("train-panel").hidden = !(info && info.can_generate);
  applyPreset();
  updateControls();
  refreshAutosave();
}
