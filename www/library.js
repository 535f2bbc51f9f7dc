// Embedding library panel (UI only; storage and wasm work in worker-library.js). Every trained
// embedding and every imported file (picker or dropped anywhere on the page) is kept in this
// browser; each can be used in prompts, renamed, deleted and downloaded in any format.
// Tests read window.__pseudoword.library: {entries, status, error, seq}.

import { noteFocus, restoreFocus } from "./focus.js";

const $ = (id) => document.getElementById(id);
const FORMATS = [
  ["diffusers", "diffusers .safetensors"],
  ["a1111", "A1111 .safetensors"],
  ["a1111-pt", "A1111 .pt"],
  ["a1111-png", "A1111 .png"],
];
const EMBEDDING_EXT = /\.(safetensors|pt|bin|png)$/i;

let request = null;
let api = null;
let modelLoaded = false;

function say(message, isError) {
  api.library.status = isError ? null : message;
  api.library.error = isError ? message : null;
  api.library.seq++;
  $("library-status").textContent = isError ? "" : message;
  $("library-error").textContent = isError ? message : "";
  $("library-error").hidden = !isError;
}

async function refresh() {
  try {
    const { entries } = (await request("library_list", {})).result;
    api.library.entries = entries;
    render(entries);
  } catch (err) {
    say(`The embedding library is not available: ${err.message || err}`, true);
  }
}

function button(text, label, onClick, secondary = true) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  if (secondary) b.className = "secondary";
  b.addEventListener("click", onClick);
  return b;
}

// The list is rebuilt on every change: a focused control in it (Use, Rename, Delete...) goes back
// to its twin in the same entry, to the entry that took its place after a Delete, or to the
// panel heading when the list is now empty.
function render(entries) {
  const ul = $("library-list");
  const focus = noteFocus();
  const inList = focus && focus.list === ul;
  ul.replaceChildren();
  $("library-empty").hidden = entries.length > 0;
  for (const e of entries) {
    const li = document.createElement("li");
    li.dataset.key = e.id;
    li.dataset.token = e.token;
    const title = document.createElement("span");
    title.className = "library-name";
    const tok = document.createElement("code");
    tok.textContent = e.token;
    const meta = document.createElement("small");
    meta.textContent = ` ${e.vectors} x ${e.dim}, ${e.source}${e.name !== e.token ? ` from ${e.name}` : ""}, ${new Date(e.created).toLocaleString()}${e.active ? " (in use)" : ""}`;
    title.append(tok, meta);
    const use = button(e.active ? "In use" : "Use", e.active ? `${e.token} is in use` : `Use ${e.token} in prompts`, () => act("library_use", { key: e.id }, (r) => (r.already ? `${e.token} is already usable in prompts.` : `${e.token} can now be used in prompts.`)), false);
    use.disabled = !modelLoaded || e.active;
    use.className = "library-use";
    const rename = button("Rename", `Rename ${e.token}`, () => renameEntry(e));
    rename.className = "secondary library-rename";
    const format = document.createElement("select");
    format.className = "library-format";
    format.setAttribute("aria-label", `Download format for ${e.token}`);
    for (const [v, t] of FORMATS) format.append(new Option(t, v));
    const dl = button("Download", `Download ${e.token}`, () => download(e, format.value));
    dl.className = "secondary library-download";
    const del = button("Delete", `Delete ${e.token}`, () => {
      if (!confirm(`Delete ${e.token} from this browser's embedding library?`)) return;
      act("library_delete", { key: e.id }, () => `${e.token} was deleted from the library.`);
    });
    del.className = "secondary library-delete";
    li.append(title, use, rename, format, dl, del);
    ul.append(li);
  }
  if (inList) restoreFocus(focus, $("library-title"));
}

async function act(command, payload, message) {
  try {
    const r = (await request(command, payload)).result;
    await refresh();
    say(message(r), false);
    return r;
  } catch (err) {
    await refresh();
    say(err.message || String(err), true);
    return null;
  }
}

async function renameEntry(e) {
  const token = prompt(`New token for ${e.token} (what prompts will use):`, e.token);
  if (token === null) return;
  await act("library_rename", { key: e.id, token }, (r) => r.note ? `Renamed: ${r.note}` : `Renamed: prompts now use ${r.entry.token}${modelLoaded ? " (press Use to load it)" : ""}.`);
}

async function download(e, format) {
  try {
    const { bytes, file_name } = (await request("library_export", { key: e.id, format })).result;
    const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = file_name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    say(`Downloaded ${e.token} as ${file_name}.`, false);
  } catch (err) {
    say(err.message || String(err), true);
  }
}

// Imports files into the library (and, with a model loaded, into the session).
export async function importEmbeddingFiles(files, token = "") {
  const done = [];
  for (const file of files) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    try {
      const r = (await request("library_add", { name: file.name, bytes, token, use: modelLoaded })).result;
      const e = r.entry;
      done.push(`${r.duplicate ? "Already in the library" : "Added"}: ${e.token} (${e.vectors} x ${e.dim})${modelLoaded ? `; use ${e.token} in prompts` : "; load a model and press Use"}.`);
    } catch (err) {
      await refresh();
      say(err.message || String(err), true);
      return;
    }
  }
  await refresh();
  say(done.join(" "), false);
}

function isEmbeddingFile(f) {
  return EMBEDDING_EXT.test(f.name);
}

/// Called once by app.js with its worker request function and the test API object.
export function initLibrary(options) {
  request = options.request;
  api = options.api;
  api.library = { entries: [], status: null, error: null, seq: 0 };
  $("import-file").addEventListener("change", async () => {
    const files = [...$("import-file").files];
    $("import-file").value = "";
    await importEmbeddingFiles(files, $("import-token").value.trim());
  });
  // Embedding files dropped anywhere but on the training-photo zone go into the library.
  document.addEventListener("dragover", (e) => {
    if (!e.target.closest?.("#photo-drop")) e.preventDefault();
  });
  document.addEventListener("drop", (e) => {
    if (e.target.closest?.("#photo-drop")) return;
    e.preventDefault();
    const files = [...(e.dataTransfer?.files || [])];
    const emb = files.filter(isEmbeddingFile);
    if (emb.length) importEmbeddingFiles(emb);
    else if (files.length) say(`Dropped ${files.map((f) => f.name).join(", ")}: not an embedding file (.safetensors, .pt, .bin, .png). Drop training photos on the photo area.`, true);
  });
  refresh();
}

/// Called by app.js after a model loaded (or failed to): re-offers the stored embeddings.
export function libraryModelLoaded(info) {
  modelLoaded = !!info;
  refresh().then(() => {
    const n = api.library.entries.filter((e) => !e.active).length;
    if (modelLoaded && n) say(`${n} embedding${n > 1 ? "s" : ""} in your library: press Use to load ${n > 1 ? "them" : "it"} into this model.`, false);
  });
}

/// Called by train.js when a training finished and its embedding was stored.
export const libraryChanged = refresh;
