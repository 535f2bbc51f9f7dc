// One IndexedDB object store of this origin, opened per operation (short-lived connections, so a
// second tab or a schema upgrade is never blocked). Used by worker-train.js (training autosave,
// database "pseudoword") and library-store.js (embedding library, "pseudoword-library").

// Returns op(mode, fn): runs fn(objectStore) in one transaction and resolves to the result of
// the request fn returns, once the transaction completed. `storeOptions` (keyPath,
// autoIncrement) apply when the store is created.
export function idbStore(dbName, storeName, storeOptions = undefined) {
  const open = () =>
    new Promise((resolve, reject) => {
      const req = indexedDB.open(dbName, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(storeName, storeOptions);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error || new Error("IndexedDB is not available (private browsing?)"));
    });
  return async (mode, fn) => {
    const db = await open();
    try {
      return await new Promise((resolve, reject) => {
        const tx = db.transaction(storeName, mode);
        const req = fn(tx.objectStore(storeName));
        tx.oncomplete = () => resolve(req?.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error || new Error("IndexedDB transaction aborted (storage full?)"));
      });
    } finally {
      db.close();
    }
  };
}
