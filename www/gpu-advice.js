// GPU trouble, explained: adapter limits too low for a model's largest tensor (checked before
// the weights are uploaded), and the kinds of errors burn/wgpu report when the GPU runs out of
// memory or the device is lost, each with what to do. Used by worker.js.

const MB = 1024 * 1024;
const fmt = (n) => (n >= 1024 * MB ? `${(n / (1024 * MB)).toFixed(2)} GiB` : `${(n / MB).toFixed(1)} MiB`);
const DTYPE_BYTES = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

// The largest tensor of a safetensors Blob: {name, elements}.
export async function largestTensor(blob) {
  const head = new DataView(await blob.slice(0, 8).arrayBuffer());
  const n = Number(head.getBigUint64(0, true));
  if (!(n > 0 && n < 100 * MB)) return null;
  const header = JSON.parse(await blob.slice(8, 8 + n).text());
  let best = null;
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__" || !t || !t.data_offsets) continue;
    const elements = (t.data_offsets[1] - t.data_offsets[0]) / (DTYPE_BYTES[t.dtype] || 4);
    if (!best || elements > best.elements) best = { name, elements };
  }
  return best;
}

// Throws a message with advice when one tensor (in GPU memory: 4 bytes per weight in f32, 2 in
// f16) exceeds the adapter's maxStorageBufferBindingSize or maxBufferSize. `files`: {relative
// path: Blob}; every weights file is looked at (*.safetensors, and `singleFile`, the key of a
// single-file checkpoint, whatever its name). `limits` overrides the adapter's (test hook);
// without WebGPU in the worker nothing is checked. f16 storage on an adapter without
// "shader-f16" is refused with what to choose instead.
export async function checkLimits(files, storage, limits, singleFile = null) {
  // `limits.shaderF16` (test hook) stands in for the adapter's "shader-f16" feature
  let shaderF16 = limits?.shaderF16;
  if (!limits || shaderF16 === undefined) {
    const adapter = await globalThis.navigator?.gpu?.requestAdapter?.();
    if (!adapter) return null;
    limits ??= adapter.limits;
    shaderF16 ??= adapter.features.has("shader-f16");
  }
  // f16 weights need f16 shaders: without the feature the first kernel fails to compile and the
  // worker dies (SwiftShader, Chrome on Linux/NVIDIA), so refuse before anything is uploaded
  if (storage === "f16" && !shaderF16) {
    throw new Error(
      'This GPU has no "shader-f16" feature, so weights cannot be kept in f16 here (its shaders would not compile). ' +
        'Choose "f32" or "auto" under "Weights in GPU memory".',
    );
  }
  const per = storage === "f16" ? 2 : 4;
  for (const [path, blob] of Object.entries(files)) {
    if (!(/\.(safetensors|ckpt)$/i.test(path) || path === singleFile) || !(blob instanceof Blob)) continue;
    const t = await largestTensor(blob).catch(() => null);
    if (!t) continue;
    const bytes = t.elements * per;
    for (const limit of ["maxStorageBufferBindingSize", "maxBufferSize"]) {
      const value = Number(limits[limit]);
      if (value && bytes > value) {
        throw new Error(
          `This GPU's ${limit} is ${fmt(value)} (${value} bytes), but the model's largest tensor (${t.name} in ${blob.name || path}) needs ` +
            `${fmt(bytes)} in ${storage}. ` +
            (storage === "f32" && shaderF16 ? `Choose "f16" under "Weights in GPU memory" (halves it), ` : "") +
            `use a smaller model, or another browser or GPU with a higher ${limit} (desktop Chrome/Edge on a discrete GPU usually allows 2 GiB or more).`,
        );
      }
    }
  }
  return limits;
}

// "oom" | "device_lost" | "crash" | null for an error message from the worker.
export function errorKind(message) {
  const m = String(message || "");
  if (/device (was |is |has been )?lost|lost (the |its )?device|DeviceLost|device_lost/i.test(m)) return "device_lost";
  if (/out of memory|OutOfMemory|outofmemory|allocation failed|failed to allocate|could not allocate/i.test(m)) return "oom";
  if (/\bunreachable\b|RuntimeError|panicked/i.test(m)) return "crash";
  return null;
}

export const ADVICE = {
  oom:
    "The GPU ran out of memory. Try a smaller image size, \"f16\" under \"Weights in GPU memory\", batch 1 and fewer vectors for training, " +
    "closing other tabs or programs that use the GPU, or a smaller model (BK-SDM-Small).",
  device_lost:
    "The GPU device was lost (a driver reset, another program needed the GPU, or the system suspended it). The model has to be loaded again; " +
    "a training run resumes from its autosave.",
  crash: "The WebAssembly module stopped after an internal error; the model has to be loaded again (a training run resumes from its autosave).",
};

export function withAdvice(message) {
  const kind = errorKind(message);
  return { kind, message: kind ? `${message} ${ADVICE[kind]}` : message };
}
