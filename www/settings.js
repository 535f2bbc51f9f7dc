// Default settings of the page's forms, from the library itself: the worker calls the wasm
// settings_defaults() once it is up and posts {generate, suppress, edit, train} ("ready", see
// worker.js); applyDefaults fills the inputs from them, so no default is repeated here or in
// index.html. null means "the model's own" (width, height: set when a model loads) or "random"
// (seed): the input stays empty and shows that as its placeholder.

const $ = (id) => document.getElementById(id);

// input id -> [job, field, null placeholder]; a checkbox named with "!" is ticked when the
// field is false (suppress_opt_off <-> "Optimise the embedding").
const FIELDS = {
  "gen-negative": ["generate", "negative_prompt"],
  "gen-scheduler": ["generate", "scheduler"],
  "gen-steps": ["generate", "steps"],
  "gen-guidance": ["generate", "guidance"],
  "gen-width": ["generate", "width", "model's own"],
  "gen-height": ["generate", "height", "model's own"],
  "gen-seed": ["generate", "seed", "random"],
  "gen-suppress-alpha": ["suppress", "suppress_alpha"],
  "gen-suppress-iters": ["suppress", "suppress_opt_iters"],
  "!gen-suppress-opt": ["suppress", "suppress_opt_off"],
  "edit-null-iters": ["edit", "null_text_iters"],
  "train-steps": ["train", "steps"],
  "train-lr": ["train", "lr"],
  "train-vectors": ["train", "vectors"],
  "train-seed": ["train", "seed"],
  "train-templates": ["train", "templates"],
};

let current = null;

// The defaults posted by the worker, or null before they arrived.
export function settingsDefaults() {
  return current;
}

// Fills the inputs once (a restarted worker posts them again: what the user typed stays).
// Returns false when they had been applied already.
export function applyDefaults(defaults) {
  if (current || !defaults) return false;
  current = defaults;
  for (const [key, [job, field, none]] of Object.entries(FIELDS)) {
    const of = defaults[job] || {};
    if (!(field in of)) continue; // not a setting of this library version
    const value = of[field] ?? null; // None may come as undefined (serde-wasm-bindgen's default)
    const el = $(key.replace(/^!/, ""));
    if (el.type === "checkbox") el.checked = key.startsWith("!") ? !value : !!value;
    else if (el.tagName === "SELECT") {
      const v = value === null ? "" : String(value);
      if ([...el.options].some((o) => o.value === v)) el.value = v;
    } else {
      el.value = value === null ? "" : String(value);
      if (value === null && none) el.placeholder = none;
    }
  }
  return true;
}
