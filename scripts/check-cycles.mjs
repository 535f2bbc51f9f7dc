// Fails when the layers go round in a circle (docs/ARCHITECTURE.md): the top-level modules of
// src/ (edges: `crate::<module>` paths outside comments; src/bin and src/lib.rs excluded) and the
// modules of www/ (edges: static `import ... from "./x.js"`). Prints each graph's cycles; exit 1
// if there is one. Run by scripts/test.sh.
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

function files(dir, ext) {
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name);
    return statSync(p).isDirectory() ? files(p, ext) : p.endsWith(ext) ? [p] : [];
  });
}

// Strongly connected components with more than one node (Tarjan).
function cycles(graph) {
  let index = 0;
  const idx = new Map(), low = new Map(), stack = [], on = new Set(), out = [];
  const visit = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) || []) {
      if (!graph.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const c = [];
      let w;
      do {
        w = stack.pop();
        on.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1) out.push(c.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return out;
}

const rust = new Map();
const src = path.join(REPO, "src");
for (const f of files(src, ".rs")) {
  const rel = path.relative(src, f).split(path.sep);
  if (rel[0] === "bin" || rel[0] === "lib.rs") continue;
  const module = rel[0].replace(/\.rs$/, "");
  const text = readFileSync(f, "utf8").replace(/\/\/[^\n]*/g, "");
  const deps = rust.get(module) || new Set();
  for (const m of text.matchAll(/crate::([a-z_][a-z0-9_]*)/g)) if (m[1] !== module) deps.add(m[1]);
  rust.set(module, deps);
}

const js = new Map();
const www = path.join(REPO, "www");
for (const f of readdirSync(www).filter((n) => n.endsWith(".js"))) {
  const text = readFileSync(path.join(www, f), "utf8");
  js.set(f, new Set([...text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+["']\.\/([^"']+)["']/gm)].map((m) => m[1])));
}

let bad = 0;
for (const [name, graph] of [["src/ modules", rust], ["www/ modules", js]]) {
  const found = cycles(graph);
  console.log(`check-cycles: ${name}: ${graph.size} modules, ${found.length ? found.map((c) => c.join(" <-> ")).join("; ") : "no cycles"}`);
  bad += found.length;
}
process.exit(bad ? 1 : 0);
