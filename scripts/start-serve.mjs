// Starts scripts/serve.mjs as a child process on a free port (the browser tests and
// scripts/bench-page.mjs): resolves {child, url} once it prints `serving http://127.0.0.1:PORT/`,
// rejects when it exits or says nothing within 15 s. `args`: extra serve.mjs arguments
// (`--mount /prefix/=DIR`, ...); `env`: its environment.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

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
