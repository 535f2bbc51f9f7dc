#!/usr/bin/env node
// Dependency-free static server for the pseudoword web app.
//
//   node scripts/serve.mjs [--port N] [--mount /url/prefix/=DIR]...
//
// Binds 127.0.0.1 only (http://127.0.0.1 is a secure context, which WebGPU needs).
// Port: --port, else $PORT, else 8080; 0 picks a free port. Prints exactly one line
// `serving http://127.0.0.1:PORT/` once listening (scripts and tests parse it).
//
// Mounts (longest prefix wins):
//   /                  -> www/
//   /models/tiny-sd1/  -> tests/fixtures/tiny-sd1/   (the tiny demo model)
//   extra --mount /models/sd15/=/path/to/stable-diffusion-v1-5 as needed.
//
// Single byte ranges (`Range: bytes=a-b`, `bytes=a-`, `bytes=-n`) get 206 + Content-Range
// (416 when unsatisfiable), as static hosts and Hugging Face do; resumed downloads use them.
// Every response carries the Content-Security-Policy of www/index.html's <meta> tag.
// Test switch: PSEUDOWORD_SERVE_ABORT_ONCE="/url/path=BYTES[,...]" cuts the connection after
// BYTES bytes of that file's body on its first GET (simulates an interrupted download).

import { createServer } from "node:http";
import { createReadStream, readFileSync } from "node:fs";
import { stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".htm": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".wasm": "application/wasm",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".svg": "image/svg+xml",
  ".ico": "image/x-icon",
  ".txt": "text/plain; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".d.ts": "text/plain; charset=utf-8",
};

function usage(code) {
  const out = code ? process.stderr : process.stdout;
  out.write(
    "usage: node scripts/serve.mjs [--port N] [--mount /url/prefix/=DIR]...\n" +
      "  --port N   port on 127.0.0.1 (default $PORT or 8080; 0 = pick a free one)\n" +
      "  --mount    serve DIR under /url/prefix/ (repeatable)\n",
  );
  process.exit(code);
}

function parseArgs(argv) {
  let port = process.env.PORT !== undefined && process.env.PORT !== "" ? process.env.PORT : "8080";
  const mounts = [
    { prefix: "/", dir: path.join(ROOT, "www") },
    { prefix: "/models/tiny-sd1/", dir: path.join(ROOT, "tests/fixtures/tiny-sd1") },
  ];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const take = () => {
      if (a.includes("=") && a.startsWith("--port")) return a.slice(a.indexOf("=") + 1);
      if (i + 1 >= argv.length) usage(2);
      return argv[++i];
    };
    if (a === "-h" || a === "--help") usage(0);
    else if (a === "--port" || a.startsWith("--port=")) port = take();
    else if (a === "--mount") {
      const spec = argv[++i] ?? usage(2);
      const eq = spec.indexOf("=");
      if (eq < 1) usage(2);
      let prefix = spec.slice(0, eq);
      if (!prefix.startsWith("/")) prefix = "/" + prefix;
      if (!prefix.endsWith("/")) prefix += "/";
      mounts.push({ prefix, dir: path.resolve(spec.slice(eq + 1)) });
    } else usage(2);
  }
  if (!/^\d+$/.test(String(port)) || Number(port) > 65535) {
    process.stderr.write(`serve.mjs: invalid port ${JSON.stringify(port)}\n`);
    process.exit(2);
  }
  mounts.sort((a, b) => b.prefix.length - a.prefix.length);
  return { port: Number(port), mounts };
}

const { port, mounts } = parseArgs(process.argv.slice(2));

// The page's Content-Security-Policy, sent as a header on every response (the same policy as the
// <meta http-equiv> in www/index.html, read from it so the two cannot drift apart). The header
// also covers the worker scripts, which a <meta> tag does not.
const CSP = (() => {
  const html = readFileSync(path.join(ROOT, "www/index.html"), "utf8");
  const m = /<meta http-equiv="Content-Security-Policy" content="([^"]+)">/.exec(html);
  if (!m) throw new Error("www/index.html has no Content-Security-Policy meta tag");
  return m[1];
})();

const abortOnce = new Map(); // url path -> bytes after which the first GET is cut
for (const spec of (process.env.PSEUDOWORD_SERVE_ABORT_ONCE || "").split(",").filter(Boolean)) {
  const eq = spec.lastIndexOf("=");
  if (eq > 0 && /^\d+$/.test(spec.slice(eq + 1))) abortOnce.set(spec.slice(0, eq), Number(spec.slice(eq + 1)));
}

// `Range` header -> {start, end} (inclusive), "unsatisfiable", or null (ignore: whole file).
function parseRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(String(header || "").trim());
  if (!m || (m[1] === "" && m[2] === "")) return null;
  let start;
  let end;
  if (m[1] === "") {
    start = Math.max(0, size - Number(m[2]));
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return "unsatisfiable";
  return { start, end };
}

function mimeOf(file) {
  const base = path.basename(file).toLowerCase();
  if (base.endsWith(".d.ts")) return MIME[".d.ts"];
  return MIME[path.extname(base)] ?? "application/octet-stream";
}

function send(res, status, body, headers = {}) {
  const buf = Buffer.from(body);
  res.writeHead(status, {
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Length": buf.length,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    ...headers,
  });
  res.end(res.req.method === "HEAD" ? undefined : buf);
}

// Map a URL path to a file inside one of the mounts, or null (-> 404).
function resolvePath(urlPath) {
  let decoded;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (decoded.includes("\0") || decoded.includes("\\")) return null;
  // Reject any `..` segment outright rather than normalising it away.
  if (decoded.split("/").some((seg) => seg === "..")) return null;
  const mount = mounts.find((m) => decoded === m.prefix.slice(0, -1) || decoded.startsWith(m.prefix));
  if (!mount) return null;
  const rel = decoded.slice(mount.prefix.length);
  const file = path.resolve(mount.dir, "." + path.posix.sep + rel);
  if (file !== mount.dir && !file.startsWith(mount.dir + path.sep)) return null;
  return { file, mount, rel, trailingSlash: decoded.endsWith("/") };
}

async function handle(req, res) {
  if (req.method !== "GET" && req.method !== "HEAD") {
    return send(res, 405, "405 method not allowed\n", { Allow: "GET, HEAD" });
  }
  let url;
  try {
    url = new URL(req.url, "http://127.0.0.1");
  } catch {
    return send(res, 400, "400 bad request\n");
  }
  const hit = resolvePath(url.pathname);
  if (!hit) return send(res, 404, `404 not found: ${url.pathname}\n`);
  let file = hit.file;
  let st;
  try {
    st = await stat(file);
    if (st.isDirectory()) {
      // Directories: serve their index.html (no listings); /dir -> /dir/ redirect first.
      if (!hit.trailingSlash) {
        return send(res, 301, "301 moved\n", { Location: url.pathname + "/" + url.search });
      }
      file = path.join(file, "index.html");
      st = await stat(file);
    }
    if (!st.isFile()) throw new Error("not a file");
  } catch {
    return send(res, 404, `404 not found: ${url.pathname}\n`);
  }
  const range = req.headers.range ? parseRange(req.headers.range, st.size) : null;
  if (range === "unsatisfiable") {
    return send(res, 416, "416 range not satisfiable\n", { "Content-Range": `bytes */${st.size}`, "Accept-Ranges": "bytes" });
  }
  const start = range ? range.start : 0;
  const end = range ? range.end : st.size - 1;
  res.writeHead(range ? 206 : 200, {
    "Content-Type": mimeOf(file),
    "Content-Length": end - start + 1,
    ...(range ? { "Content-Range": `bytes ${start}-${end}/${st.size}` } : {}),
    "Accept-Ranges": "bytes",
    "Cache-Control": "no-cache",
    "Last-Modified": st.mtime.toUTCString(),
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
  });
  if (req.method === "HEAD" || st.size === 0) return res.end();
  // test switch: cut this file's first GET after N bytes (see the header)
  const cut = abortOnce.get(url.pathname);
  if (cut !== undefined) abortOnce.delete(url.pathname);
  const stop = cut !== undefined ? Math.min(end, start + cut - 1) : end;
  const stream = createReadStream(file, { start, end: stop });
  stream.on("error", (err) => {
    process.stderr.write(`serve.mjs: read error ${file}: ${err.message}\n`);
    res.destroy(err);
  });
  if (cut !== undefined) {
    stream.on("data", (c) => res.write(c));
    stream.on("end", () => setTimeout(() => res.destroy(), 50));
  } else stream.pipe(res);
}

const server = createServer((req, res) => {
  handle(req, res).catch((err) => {
    process.stderr.write(`serve.mjs: ${err.stack || err}\n`);
    if (!res.headersSent) send(res, 500, "500 internal error\n");
    else res.destroy();
  });
});

server.on("error", (err) => {
  process.stderr.write(`serve.mjs: cannot listen on 127.0.0.1:${port}: ${err.message}\n`);
  process.exit(1);
});

server.listen(port, "127.0.0.1", () => {
  const actual = server.address().port;
  process.stdout.write(`serving http://127.0.0.1:${actual}/\n`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
