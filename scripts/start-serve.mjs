// What the browser tests and scripts/bench-page.mjs share: the Chromium they drive and its flags,
// and starting scripts/serve.mjs as a child process on a free port: `startServe` resolves {child, url} once it prints `serving http://127.0.0.1:PORT/`,
// rejects when it exits or says nothing within 15 s. `args`: extra serve.mjs arguments
// (`--mount /prefix/=DIR`, ...); `env`: its environment.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

// Exactly the flags of docs/BROWSER.md ("Real browser"). A fresh temp --user-data-dir is passed
// as launchPersistentContext's first argument: Playwright refuses it inside `args`.
export const WEBGPU_FLAGS = [
  "--headless=new",
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export function startServe(args = [], env = process.env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO, "scripts/serve.mjs"), "--port", "0", ...args], {
      cwd: REPO,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    const timer = setTimeout(() => reject(new Error(`serve.mjs did not start: ${out}`)), 15_000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = /serving (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1] });
      }
    });
    child.stderr.on("data", (d) => process.stderr.write(`[serve] ${d}`));
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`serve.mjs exited with ${code}: ${out}`));
    });
  });
}
