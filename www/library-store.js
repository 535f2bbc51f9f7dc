// The embedding library's storage: one IndexedDB database of this origin ("pseudoword-library",
// separate from the training autosave), store "embeddings", records
//   {id, name /* file or display name */, token, bytes: Uint8Array /* the file as imported or
//    trained */, vectors, dim, source: "trained" | "imported", format, digest, created}
// Used by worker-library.js (the worker owns the wasm that reads and converts the files).

import { idbStore } from "./idb.js";

const op = idbStore("pseudoword-library", "embeddings", { keyPath: "id", autoIncrement: true });

export const listEntries = () => op("readonly", (s) => s.getAll());
export const getEntry = (id) => op("readonly", (s) => s.get(Number(id)));
export const addEntry = (entry) => op("readwrite", (s) => s.add(entry)); // resolves to the new id
export const putEntry = (entry) => op("readwrite", (s) => s.put(entry));
export const deleteEntry = (id) => op("readwrite", (s) => s.delete(Number(id)));

export async function sha256Hex(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A token a prompt can use: non-empty, no whitespace (the tokenizer splits on it).
export function tokenProblem(token) {
  const t = String(token ?? "");
  if (!t.trim()) return "The token must not be empty.";
  if (/\s/.test(t)) return `The token ${JSON.stringify(t)} contains spaces; prompts could not name it. Use e.g. <my-thing>.`;
  return null;
}
