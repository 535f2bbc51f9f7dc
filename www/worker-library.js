// Embedding-library commands of the worker (imported by worker.js): every trained embedding and
// every imported file is kept in IndexedDB (library-store.js) and can be used in the current
// session, renamed, deleted and downloaded in any format.
//
// Protocol (adds to worker.js's):
//   main -> worker
//     {id, command: "library_list"}                    // {entries: [entry without bytes, + active]}
//     {id, command: "library_add", name, bytes, token?, use?}  // import a file (use: load it now)
//     {id, command: "library_use", key}                // its token works in prompts of this session
//     {id, command: "library_rename", key, token}
//     {id, command: "library_delete", key}
//     {id, command: "library_export", key, format}     // {bytes, file_name, format}
// A corrupt file, one whose vectors have another width than the loaded text encoder, or a token
// that is already taken is refused with a message; neither the library nor the session change.

import { listEntries, getEntry, addEntry, putEntry, deleteEntry, sha256Hex, tokenProblem } from "./library-store.js";

export const FILE_NAMES = { diffusers: "learned_embeds.safetensors", a1111: ".safetensors", "a1111-pt": ".pt", "a1111-png": ".png" };

export function exportFileName(token, format) {
  const base = String(token).replace(/[^A-Za-z0-9_-]+/g, "") || "embedding";
  const ext = FILE_NAMES[format];
  if (!ext) throw new Error(`Unknown embedding format ${JSON.stringify(format)}`);
  return format === "diffusers" ? ext : base + ext;
}

export function makeLibraryHandlers({ getSession, ensureWasm, plain }) {
  // tokens added to the current session -> digest of their embedding (canonical diffusers file)
  let activeSession = null;
  let activeTokens = new Map();
  function active() {
    const s = getSession();
    if (s !== activeSession) {
      activeSession = s;
      activeTokens = new Map();
    }
    return activeTokens;
  }

  async function canonicalDigest(wasm, bytes, name, token) {
    return sha256Hex(Uint8Array.from(wasm.convert_embedding(bytes, name, token, "diffusers")));
  }

  function summary(e) {
    const { bytes, digest, ...rest } = e;
    return { ...rest, size: bytes.length, active: active().get(e.token) === digest };
  }

  // Throws unless `token` may be used for entry `selfId` (null: a new entry) with `digest` and
  // `vectors` rows.
  function checkToken(entries, token, selfId, digest, vectors) {
    const problem = tokenProblem(token);
    if (problem) throw new Error(problem);
    const s = getSession();
    const clash = s && !active().has(token) ? plain(s.token_clash(token, vectors || 1)) : null;
    if (clash) {
      throw new Error(
        `The loaded model's tokenizer already knows ${JSON.stringify(clash.token)} (id ${clash.id}), so ${token} cannot name an embedding ` +
          `(its word would be replaced). Choose a token that is not a word, e.g. <${token.replace(/[<>]/g, "")}>.`,
      );
    }
    const other = entries.find((e) => e.token === token && e.id !== selfId);
    if (other) throw new Error(`The library already has an embedding with the token ${token} ("${other.name}"): rename one of them.`);
    const inSession = active().get(token);
    if (inSession !== undefined && inSession !== digest) {
      throw new Error(`${token} is already used in this session by another embedding: choose another token (or reload the page and load the model again).`);
    }
  }

  function checkWidth(info, name) {
    const s = getSession();
    if (!s) return;
    const width = Number(plain(s.info()).hidden_size);
    if (width && info.dim !== width) {
      throw new Error(
        `${name}: its vectors are ${info.dim} wide but the loaded model's text encoder is ${width} wide ` +
          `(an embedding for another model family, e.g. SD 2.x (1024) vs SD 1.x (768)). Nothing was changed.`,
      );
    }
  }

  // Adds the token of `entry` to the session (no-op when it is there with the same vectors).
  function useEntry(entry) {
    const s = getSession();
    if (!s) throw new Error("No model loaded: load one, then use the embedding.");
    const tokens = active();
    if (tokens.get(entry.token) === entry.digest) return { already: true };
    if (tokens.has(entry.token)) throw new Error(`${entry.token} is already used in this session by another embedding: rename this one first.`);
    const r = plain(s.import_embedding(entry.bytes, String(entry.name), entry.token));
    tokens.set(entry.token, entry.digest);
    return { already: false, tokens: r.tokens };
  }

  async function list({ id }) {
    const entries = (await listEntries()).map(summary);
    postMessage({ id, status: "result", command: "library_list", result: { entries } });
  }

  // Stores a file (and, with `use`, loads it into the session); returns the entry.
  async function store({ name, bytes, token, source, use }) {
    const wasm = await ensureWasm();
    bytes = new Uint8Array(bytes);
    let info;
    try {
      info = plain(wasm.inspect_embedding(bytes, String(name), token || undefined));
    } catch (err) {
      throw new Error(`${name} is not a usable embedding file: ${err.message || err}. Nothing was changed.`);
    }
    checkWidth(info, name);
    const digest = await canonicalDigest(wasm, bytes, String(name), info.token);
    const entries = await listEntries();
    const same = entries.find((e) => e.token === info.token && e.digest === digest);
    let entry = same;
    if (!same) {
      checkToken(entries, info.token, null, digest, info.vectors);
      entry = { name: String(name), token: info.token, bytes, vectors: info.vectors, dim: info.dim, source, format: info.format, digest, created: Date.now() };
      entry.id = await addEntry(entry);
    }
    if (use && getSession()) {
      try {
        useEntry(entry);
      } catch (err) {
        if (!same) await deleteEntry(entry.id); // keep the library as it was
        throw err;
      }
    }
    return { entry: summary(entry), duplicate: !!same };
  }

  async function add(msg) {
    const r = await store({ ...msg, source: "imported" });
    postMessage({ id: msg.id, status: "result", command: "library_add", result: r });
  }

  async function entryOf(key) {
    const e = await getEntry(key);
    if (!e) throw new Error("That embedding is no longer in the library.");
    return e;
  }

  async function use({ id, key }) {
    const e = await entryOf(key);
    const r = useEntry(e);
    postMessage({ id, status: "result", command: "library_use", result: { ...r, entry: summary(e) } });
  }

  async function rename({ id, key, token }) {
    const e = await entryOf(key);
    token = String(token ?? "");
    const wasm = await ensureWasm();
    const problem = tokenProblem(token);
    if (problem) throw new Error(problem);
    const digest = await canonicalDigest(wasm, e.bytes, e.name, token);
    const entries = await listEntries();
    checkToken(entries, token, e.id, digest, e.vectors);
    if (active().has(token)) throw new Error(`${token} is already used in this session: choose another token.`);
    const updated = { ...e, token, digest };
    await putEntry(updated);
    // In use: the new token works at once; the old one stays in this session's tokenizer (tokens
    // cannot be taken out of a loaded model) until the model is loaded again.
    let note = null;
    if (getSession() && active().get(e.token) === e.digest) {
      useEntry(updated);
      note = `${token} works in prompts now; ${e.token} also keeps working until the model is loaded again.`;
    }
    postMessage({ id, status: "result", command: "library_rename", result: { entry: summary(updated), note } });
  }

  async function remove({ id, key }) {
    await entryOf(key);
    await deleteEntry(key);
    postMessage({ id, status: "result", command: "library_delete", result: { key } });
  }

  async function exportEntry({ id, key, format }) {
    const e = await entryOf(key);
    const wasm = await ensureWasm();
    const bytes = Uint8Array.from(wasm.convert_embedding(e.bytes, e.name, e.token, String(format)));
    const result = { bytes, format, file_name: exportFileName(e.token, format) };
    postMessage({ id, status: "result", command: "library_export", result }, [bytes.buffer]);
  }

  // Called by worker-train.js: a finished training goes into the library (diffusers file).
  async function addTrained(bytes, token) {
    return store({ name: token, bytes, source: "trained", use: false });
  }

  // Called by worker-train.js when "Use the token" added a trained embedding to the session.
  async function noteActive(bytes, token) {
    const wasm = await ensureWasm();
    active().set(token, await canonicalDigest(wasm, bytes, token, token));
  }

  return {
    queued: { library_list: list, library_add: add, library_use: use, library_rename: rename, library_delete: remove, library_export: exportEntry },
    addTrained,
    noteActive,
  };
}
