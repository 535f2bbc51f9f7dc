// Model manager: presets, URL normalisation and picked-file mapping (pure functions, also
// importable from node for tests). The browser-storage cache used by worker.js lives in
// models-store.js (which imports from here, never the other way round):
// one OPFS folder per (model URL, variant) under models/, with a manifest.json
//   {version, key, url, name, variant, created, last_used, complete, bytes,
//    files: {path: {name, size, complete} | {missing: true}}}
// Downloads stream chunk by chunk into OPFS files (`<name>.part` until complete); an
// interrupted download resumes with `Range: bytes=N-` (appends on 206, restarts on 200).
// Without OPFS (or with caching off) files are kept as in-memory Blobs.
// Single-file checkpoints (one `.safetensors` with the original LDM key names, as A1111 and
// ComfyUI use): a URL ending in .safetensors is cached the same way with variant "single" and
// the one file; picked, it is recognised by its tensor names. Either way it reaches the wasm
// Session.load under its own file name, a top-level key of `files` (singleFileKey), named by
// options.single_file (converted to diffusers components while loading, src/web/single_file.rs).

export const HF = "https://huggingface.co/";
const GB = 1e9;
export const PRESETS = [
  { id: "sd15", name: "Stable Diffusion 1.5 (fp16)", repo: "stable-diffusion-v1-5/stable-diffusion-v1-5", variant: "fp16", size: 2.13 * GB, default: true },
  { id: "sd21-base", name: "Stable Diffusion 2.1-base (fp16)", repo: "stabilityai/stable-diffusion-2-1-base", variant: "fp16", size: 2.6 * GB },
  { id: "sd-turbo", name: "SD-Turbo (fp16, 1 step)", repo: "stabilityai/sd-turbo", variant: "fp16", size: 2.6 * GB, recommend: { steps: 1, guidance: 0 } },
  { id: "bk-sdm-small", name: "BK-SDM-Small, distilled SD 1.4 (fp32)", repo: "nota-ai/bk-sdm-small", variant: "fp32", size: 2.76 * GB },
  { id: "tiny", name: "Tiny demo model (ships with the app, offline)", url: "/models/tiny-sd1/", variant: "fp32", size: 14.4e6 },
];

// Files of a diffusers folder, in the order they are fetched. Weights follow the variant;
// UNet/VAE weights are optional and fall back to the other variant.
const TE = { fp32: "text_encoder/model.safetensors", fp16: "text_encoder/model.fp16.safetensors" };
const CW = {
  fp32: ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"],
  fp16: ["unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"],
};
const REQUIRED = ["tokenizer/vocab.json", "tokenizer/merges.txt", "text_encoder/config.json"];
const OPTIONAL = ["tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "model_index.json",
  "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json"];

// The key of a single-file checkpoint in {path: Blob}: its file name, the only top-level
// .safetensors key (a diffusers folder has none: mapPickedFiles drops a folder's top-level ones).
export function singleFileKey(files) {
  return Object.keys(files).find((p) => !p.includes("/") && /\.safetensors$/i.test(p)) ?? null;
}

// Where a single-file checkpoint's tokenizer comes from when none is picked with it: the CLIP
// BPE files of the demo model that ships with the app (SD 1.x and 2.x use the same ones; the
// checkpoint decides the pad token).
export const BUNDLED_TOKENIZER = "models/tiny-sd1/tokenizer/";
// Configs a single-file checkpoint may take from a diffusers folder instead of inferring them.
export const SINGLE_FILE_CONFIGS = ["text_encoder/config.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"];
export const TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"];

// True for the URL of one .safetensors file (a single-file checkpoint), not a folder.
export function isSingleFileUrl(url) {
  try {
    return /\.safetensors$/i.test(new URL(url).pathname);
  } catch {
    return false;
  }
}

// Files to fetch for (variant, url): a diffusers folder, or (variant "single") the one file the
// URL names (its last path segment, still URL-encoded).
export function wantedFiles(variant, url) {
  if (variant === "single") return [{ path: new URL(url).pathname.split("/").pop(), optional: false }];
  const v = variant === "fp16" ? "fp16" : "fp32";
  const o = v === "fp16" ? "fp32" : "fp16";
  return [
    ...REQUIRED.map((path) => ({ path, optional: false })),
    { path: TE[v], optional: false },
    ...OPTIONAL.map((path) => ({ path, optional: true })),
    ...CW[v].map((path, i) => ({ path, optional: true, fallback: CW[o][i] })),
  ];
}

// Any http(s) folder URL -> absolute URL ending in "/"; a Hugging Face repo page
// (https://huggingface.co/ORG/NAME[/tree/REV[/...]]) -> .../ORG/NAME/resolve/REV/.
// A URL of a .safetensors file stays a file URL (no "/" added); on Hugging Face its file page
// (.../blob/REV/x.safetensors) becomes the download (.../resolve/REV/x.safetensors).
export function normalizeModelUrl(raw, base) {
  const text = String(raw ?? "").trim();
  if (!text) throw new Error("empty model URL");
  const url = new URL(text, base);
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error(`Model URL must be http(s), got ${url.protocol}`);
  url.search = "";
  url.hash = "";
  if (url.hostname === "huggingface.co" || url.hostname === "www.huggingface.co") {
    url.hostname = "huggingface.co";
    const seg = url.pathname.split("/").filter(Boolean);
    if (seg.length >= 2 && !["spaces", "datasets", "api"].includes(seg[0])) {
      let rev = "main";
      let rest = [];
      if (["resolve", "tree", "blob"].includes(seg[2]) && seg[3]) {
        rev = seg[3];
        rest = seg.slice(4);
        // a file page: the repo, except for a checkpoint file (loaded as a single file)
        if (seg[2] === "blob" && !/\.safetensors$/i.test(seg[seg.length - 1])) rest = [];
      }
      url.pathname = "/" + [seg[0], seg[1], "resolve", rev, ...rest].join("/");
    }
  }
  if (!url.pathname.endsWith("/") && !/\.safetensors$/i.test(url.pathname)) url.pathname += "/";
  return url.href;
}

export function presetUrl(preset, base) {
  return normalizeModelUrl(preset.url ?? HF + preset.repo, base);
}

export function findPreset(url, variant, base) {
  return PRESETS.find((p) => presetUrl(p, base) === url && p.variant === variant) || null;
}

// The model's display name: "ORG/NAME" for Hugging Face, else the last path segment; for a
// single-file checkpoint its file name (decoded).
export function modelName(url) {
  const u = new URL(url);
  const seg = u.pathname.split("/").filter(Boolean);
  if (isSingleFileUrl(url)) return decodeURIComponent(seg.pop());
  if (u.hostname === "huggingface.co" && seg[2] === "resolve") return `${seg[0]}/${seg[1]}`;
  return seg.pop() || u.hostname;
}

// OPFS folder name of (url, variant): readable slug + FNV-1a hash of the full key.
export function cacheKey(url, variant) {
  const s = `${url}#${variant}`;
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  const slug = modelName(url).replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 40);
  return `${slug}-${variant}-${h.toString(16).padStart(8, "0")}`;
}

const SINGLE = Symbol("single-file checkpoint"); // what sniffSafetensors says of the LDM layout

// Picked files -> {relative path: File}. A folder pick (webkitRelativePath "top/unet/x")
// drops the top folder (and top-level .safetensors files, e.g. the checkpoints a Hugging Face
// repo keeps next to its diffusers folders); loose files are placed by name, and config.json /
// *.safetensors by their content (class name / tensor names). A single-file checkpoint keeps
// its file name as key (see singleFileKey).
export async function mapPickedFiles(files) {
  const out = {};
  let single = null;
  const BY_NAME = { "vocab.json": "tokenizer/", "merges.txt": "tokenizer/", "tokenizer_config.json": "tokenizer/",
    "special_tokens_map.json": "tokenizer/", "scheduler_config.json": "scheduler/", "model_index.json": "" };
  for (const f of files) {
    const rel = f.webkitRelativePath || "";
    if (rel.includes("/")) {
      const p = rel.split("/").slice(1).join("/");
      if (p.includes("/") || !/\.safetensors$/i.test(p)) out[p] = f;
      continue;
    }
    let dir = BY_NAME[f.name];
    if (dir === undefined && f.name === "config.json") dir = await sniffConfig(f);
    if (dir === undefined && f.name.endsWith(".safetensors")) dir = await sniffSafetensors(f);
    if (dir === SINGLE) {
      if (single) throw new Error(`Pick one single-file checkpoint at a time (got ${single.name} and ${f.name}).`);
      single = f;
      out[f.name] = f;
    } else if (dir !== undefined && dir !== null) out[dir + f.name] = f;
  }
  return out;
}

async function sniffConfig(f) {
  try {
    const j = JSON.parse(await f.text());
    const c = String(j._class_name || (j.architectures || [])[0] || j.model_type || "");
    if (/UNet/i.test(c)) return "unet/";
    if (/Autoencoder|VAE/i.test(c)) return "vae/";
    if (/CLIP|clip_text/i.test(c)) return "text_encoder/";
  } catch {
    /* not JSON */
  }
  return null;
}

async function sniffSafetensors(f) {
  try {
    const n = Number(new DataView(await f.slice(0, 8).arrayBuffer()).getBigUint64(0, true));
    const keys = Object.keys(JSON.parse(await f.slice(8, 8 + Math.min(n, 1 << 24)).text()));
    if (keys.some((k) => k.startsWith("model.diffusion_model."))) return SINGLE; // original LDM layout
    if (keys.some((k) => k.startsWith("text_model."))) return "text_encoder/";
    if (keys.some((k) => k.startsWith("time_embedding.") || k.startsWith("down_blocks."))) return "unet/";
    if (keys.some((k) => k.startsWith("encoder.") || k.startsWith("decoder.") || k.startsWith("quant_conv"))) return "vae/";
  } catch {
    /* not safetensors */
  }
  return null;
}

// From {path: Blob} keep what the wanted list of `variant` needs (other variant as fallback).
// With a single-file checkpoint: it, plus any tokenizer files and configs picked with it.
export function selectFiles(all, variant) {
  const files = {};
  const single = singleFileKey(all);
  if (single) {
    for (const [p, f] of Object.entries(all)) {
      if (p === single || p.startsWith("tokenizer/") || /^(text_encoder|unet|vae)\/config\.json$|^scheduler\/scheduler_config\.json$/.test(p)) files[p] = f;
    }
    return { files, missing: [] };
  }
  const missing = [];
  for (const { path, optional, fallback } of wantedFiles(variant)) {
    let p = path in all ? path : fallback && fallback in all ? fallback : null;
    if (!p && path.startsWith("text_encoder/model")) p = Object.values(TE).find((q) => q in all) || null;
    if (p) files[p] = all[p];
    else if (!optional) missing.push(path);
  }
  return { files, missing };
}

export function fmtBytes(n) {
  if (n == null || !Number.isFinite(n)) return "?";
  if (n < 1024) return `${n} B`;
  const u = ["KB", "MB", "GB", "TB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${u[i]}`;
}
