// Model cache in browser storage (OPFS) and resumable downloads, for worker.js (listing
// also works on the page). Layout and manifest: see models.js. Errors name the file and
// host (HTTP status, network/CORS, quota).

import { wantedFiles, cacheKey, modelName, fmtBytes } from "./models.js";

const DIR = "models";
const enc = (path) => encodeURIComponent(path); // one flat file name per relative path

export function opfsAvailable() {
  return typeof navigator !== "undefined" && !!navigator.storage?.getDirectory;
}

async function modelsDir() {
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle(DIR, { create: true });
}

async function readManifest(dir) {
  try {
    const f = await (await dir.getFileHandle("manifest.json")).getFile();
    return JSON.parse(await f.text());
  } catch {
    return null;
  }
}

async function writeFile(dir, name, data) {
  const fh = await dir.getFileHandle(name, { create: true });
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  if (fh.createSyncAccessHandle) {
    const h = await fh.createSyncAccessHandle();
    try {
      h.truncate(0);
      h.write(bytes, { at: 0 });
      h.flush();
    } finally {
      h.close();
    }
  } else {
    const w = await fh.createWritable();
    await w.write(bytes);
    await w.close();
  }
}

// All cached models (manifests), most recently used first.
export async function listCached() {
  if (!opfsAvailable()) return [];
  const dir = await modelsDir();
  const out = [];
  for await (const [name, h] of dir.entries()) {
    if (h.kind !== "directory") continue;
    const m = await readManifest(h);
    if (m) out.push({ ...m, key: name });
  }
  return out.sort((a, b) => (b.last_used || 0) - (a.last_used || 0));
}

export async function deleteCached(key) {
  await (await modelsDir()).removeEntry(key, { recursive: true });
}

// Appending writer on an OPFS file (SyncAccessHandle where offered, else createWritable).
async function opfsSink(dir, name) {
  const fh = await dir.getFileHandle(name, { create: true });
  if (fh.createSyncAccessHandle) {
    const h = await fh.createSyncAccessHandle();
    const s = {
      size: h.getSize(),
      write(c) { s.size += h.write(c, { at: s.size }); },
      truncate() { h.truncate(0); s.size = 0; },
      async close() { h.flush(); h.close(); },
    };
    return s;
  }
  const size = (await fh.getFile()).size;
  const w = await fh.createWritable({ keepExistingData: true });
  await w.seek(size);
  let pending = Promise.resolve();
  const s = {
    size,
    write(c) { s.size += c.byteLength; pending = pending.then(() => w.write(c)); },
    truncate() { s.size = 0; pending = pending.then(() => w.truncate(0)).then(() => w.seek(0)); },
    async close() { await pending; await w.close(); },
  };
  return s;
}

function memorySink() {
  const chunks = [];
  return {
    size: 0,
    write(c) { chunks.push(c); this.size += c.byteLength; },
    truncate() { chunks.length = 0; this.size = 0; },
    async close() {},
    blob: () => new Blob(chunks),
  };
}

const msgOf = (e) => (e && e.message) || String(e);
const isQuota = (e) => e && (e.name === "QuotaExceededError" || /quota/i.test(msgOf(e)));
const quotaError = (path) => new Error(`Browser storage is full (quota exceeded) while saving ${path}: delete cached models in the list below, allow persistent storage, or untick "Keep in browser storage".`);

// Streams url into sink (resuming from sink.size). Returns {status, total, resumedFrom} or null
// for an optional file that is absent (404).
async function fetchInto(url, path, sink, { optional, signal, onHeaders, onChunk }) {
  const start = sink.size;
  const host = new URL(url).host;
  let res;
  try {
    res = await fetch(url, { signal, cache: "no-store", headers: start > 0 ? { Range: `bytes=${start}-` } : {} });
  } catch (err) {
    if (signal.aborted) throw signal.reason ?? err;
    throw new Error(`Network error fetching ${path} from ${host}: ${msgOf(err)} (offline, host unreachable, or ${host} does not allow cross-origin requests (CORS)). URL: ${url}`);
  }
  const cr = /bytes (\d+)-(\d+)\/(\d+|\*)/.exec(res.headers.get("Content-Range") || "");
  if (res.status === 416 && start > 0) {
    const total = /\/(\d+)/.exec(res.headers.get("Content-Range") || "");
    if (total && Number(total[1]) === start) return { status: 416, total: start, resumedFrom: start }; // already whole
    sink.truncate();
    return fetchInto(url, path, sink, { optional, signal, onHeaders, onChunk });
  }
  if (!res.ok) {
    if (optional && res.status === 404) return null;
    const what = res.status === 404 ? `${path} not found` : `${path} could not be fetched`;
    throw new Error(`HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}: ${what} (${url})`);
  }
  const coded = (res.headers.get("Content-Encoding") || "identity") !== "identity";
  const len = res.headers.get("Content-Length") !== null && !coded ? Number(res.headers.get("Content-Length")) : null;
  let total = len;
  let resumedFrom = 0;
  if (res.status === 206 && start > 0) {
    if (cr && Number(cr[1]) !== start) {
      // not the range asked for: start over
      await res.body?.cancel();
      sink.truncate();
      return fetchInto(url, path, sink, { optional, signal, onHeaders, onChunk });
    }
    resumedFrom = start;
    total = cr && cr[3] !== "*" ? Number(cr[3]) : len !== null ? start + len : null;
  } else if (start > 0) sink.truncate(); // 200: the server ignored the range
  onHeaders(total, resumedFrom);
  const reader = res.body.getReader();
  for (;;) {
    let r;
    try {
      r = await reader.read();
    } catch (err) {
      if (signal.aborted) throw signal.reason ?? err;
      throw new Error(`Download of ${path} from ${host} was interrupted after ${fmtBytes(sink.size)}${total ? " of " + fmtBytes(total) : ""} (${msgOf(err)}). Load again to resume.`);
    }
    if (r.done) break;
    try {
      sink.write(r.value);
    } catch (err) {
      throw isQuota(err) ? quotaError(path) : err;
    }
    onChunk(r.value.byteLength);
  }
  if (total !== null && sink.size !== total) {
    throw new Error(`Download of ${path} from ${host} is incomplete: ${sink.size} of ${total} bytes. Load again to resume.`);
  }
  return { status: res.status, total: sink.size, resumedFrom };
}

// Fetches (or takes from the cache) the files of the model at `url` (normalised, ends in "/").
// onProgress({loaded, total, file, cached_bytes, resumed_bytes, fetched_bytes, speed, eta_ms}).
// Returns {files: {path: Blob}, bytes: {path: n}, source: "cache"|"network"|"partial"|"memory",
// key, cached_files, resumed_files, ms, note}.
export async function fetchModel({ url, variant, cache = true, signal: outer, onProgress }) {
  const t0 = performance.now();
  // One failed file stops the others (their .part files stay for a resume).
  const ctl = new AbortController();
  const signal = ctl.signal;
  if (outer) {
    if (outer.aborted) ctl.abort(outer.reason);
    else outer.addEventListener("abort", () => ctl.abort(outer.reason), { once: true });
  }
  let dir = null;
  let note = "";
  const key = cacheKey(url, variant);
  if (cache && opfsAvailable()) {
    try {
      dir = await (await modelsDir()).getDirectoryHandle(key, { create: true });
    } catch (err) {
      note = `Browser storage (OPFS) unavailable (${msgOf(err)}): the model is kept in memory only.`;
    }
  } else if (cache) note = "Browser storage (OPFS) unavailable here: the model is kept in memory only.";
  const now = Date.now();
  const old = dir ? await readManifest(dir) : null;
  const manifest = old && old.url === url && old.variant === variant ? old
    : { version: 1, key, url, name: modelName(url), variant, created: now, files: {}, complete: false };
  manifest.last_used = now;
  let saving = Promise.resolve();
  const save = () => {
    if (!dir) return saving;
    manifest.bytes = Object.values(manifest.files).reduce((a, f) => a + (f.size || 0), 0);
    const text = JSON.stringify(manifest);
    saving = saving.then(() => writeFile(dir, "manifest.json", text)).catch((e) => {
      throw isQuota(e) ? quotaError("manifest.json") : e;
    });
    return saving;
  };

  // Whole model cached and intact: no network at all.
  const files = {};
  const sizes = {};
  if (dir && manifest.complete) {
    try {
      for (const [path, f] of Object.entries(manifest.files)) {
        if (f.missing) continue;
        const file = await (await dir.getFileHandle(f.name)).getFile();
        if (file.size !== f.size) throw new Error(`${path}: ${file.size} bytes, expected ${f.size}`);
        files[path] = file;
        sizes[path] = f.size;
      }
      await save();
      const total = Object.values(sizes).reduce((a, b) => a + b, 0);
      onProgress({ loaded: total, total, file: "", cached_bytes: total, resumed_bytes: 0, fetched_bytes: 0, speed: null, eta_ms: 0 });
      return { files, bytes: sizes, source: "cache", key, cached_files: Object.keys(files).length, resumed_files: [], ms: performance.now() - t0, note };
    } catch {
      manifest.complete = false; // something vanished: fetch what is not intact
      for (const k of Object.keys(files)) delete files[k];
    }
  }

  const wanted = wantedFiles(variant, url);
  const known = new Map(); // path -> total bytes (null unknown)
  let loaded = 0;
  let cachedBytes = 0;
  let resumedBytes = 0;
  let fetched = 0;
  let current = "";
  let lastReport = 0;
  const report = (force) => {
    const t = performance.now();
    if (!force && t - lastReport < 100) return;
    lastReport = t;
    const all = known.size === wanted.length && [...known.values()].every((s) => s !== null);
    const total = all ? [...known.values()].reduce((a, b) => a + b, 0) : null;
    const speed = fetched > 0 ? fetched / ((t - t0) / 1000) : null;
    const eta = total !== null && speed ? ((total - loaded) / speed) * 1000 : null;
    onProgress({ loaded, total, file: current, cached_bytes: cachedBytes, resumed_bytes: resumedBytes, fetched_bytes: fetched, speed, eta_ms: eta });
  };
  const resumed = [];
  let cachedFiles = 0;
  if (dir) await save();

  const one = async (path, optional, slot) => {
    const entry = manifest.files[path];
    if (dir && entry?.complete) {
      try {
        const file = await (await dir.getFileHandle(entry.name)).getFile();
        if (file.size === entry.size) {
          known.set(slot, file.size);
          loaded += file.size;
          cachedBytes += file.size;
          cachedFiles++;
          return file;
        }
      } catch {
        /* re-download */
      }
    }
    const part = enc(path) + ".part";
    let sink;
    try {
      sink = dir ? await opfsSink(dir, part) : memorySink();
    } catch (err) {
      throw isQuota(err) ? quotaError(path) : err;
    }
    let r;
    try {
      r = await fetchInto(new URL(path, url).href, path, sink, {
        optional,
        signal,
        onHeaders: (total, from) => {
          known.set(slot, total);
          if (from) {
            resumedBytes += from;
            loaded += from;
            resumed.push({ path, from });
          }
          report(false);
        },
        onChunk: (n) => {
          loaded += n;
          fetched += n;
          current = path;
          report(false);
        },
      });
    } finally {
      await sink.close();
    }
    if (r === null) {
      if (dir) await dir.removeEntry(part).catch(() => {});
      manifest.files[path] = { missing: true };
      return null;
    }
    if (r.status === 416) {
      known.set(slot, r.total);
      resumedBytes += r.total;
      loaded += r.total;
    }
    if (!dir) return sink.blob();
    let name = part;
    const fh = await dir.getFileHandle(part);
    if (fh.move) {
      await fh.move(enc(path));
      name = enc(path);
    }
    manifest.files[path] = { name, size: r.total, complete: true };
    await save();
    return (await dir.getFileHandle(name)).getFile();
  };

  // A few files at a time (big weights stream while the small ones finish).
  const queue = wanted.slice();
  const worker = async () => {
    while (queue.length) {
      const { path, optional, fallback } = queue.shift();
      let p = path;
      let blob = await one(path, optional || !!fallback, path);
      if (blob === null && fallback) {
        p = fallback;
        blob = await one(fallback, true, path);
      }
      if (blob === null) known.set(path, 0);
      else {
        files[p] = blob;
        sizes[p] = blob.size;
      }
      report(false);
    }
  };
  let failure = null;
  const run = (w) => w().catch((err) => {
    failure ??= err;
    ctl.abort(err);
  });
  // allSettled semantics: every file handle is closed before the error surfaces
  await Promise.all([run(worker), run(worker), run(worker), run(worker)]);
  if (failure) {
    // A model that stored nothing (e.g. a 404 on the first file) leaves no entry behind.
    if (dir && !old && fetched === 0 && !Object.values(manifest.files).some((f) => f.complete)) {
      await saving.catch(() => {});
      await (await modelsDir()).removeEntry(key, { recursive: true }).catch(() => {});
    } else await save().catch(() => {});
    throw failure;
  }
  report(true);
  if (dir) {
    manifest.complete = true;
    await save();
  }
  const source = !dir ? "memory" : cachedFiles === 0 && resumed.length === 0 ? "network" : "partial";
  return { files, bytes: sizes, source, key: dir ? key : null, cached_files: cachedFiles, resumed_files: resumed, ms: performance.now() - t0, note };
}
