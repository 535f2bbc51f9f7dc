// The page's Content-Security-Policy (the <meta http-equiv> in index.html) as data: which hosts
// connect-src allows, and a message for a model URL it would block (instead of a bare
// "Failed to fetch"). Pure functions; cspAllows is also used by the browser tests.

export function connectSources(policy) {
  for (const part of String(policy || "").split(";")) {
    const [name, ...values] = part.trim().split(/\s+/);
    if (name === "connect-src") return values;
  }
  for (const part of String(policy || "").split(";")) {
    const [name, ...values] = part.trim().split(/\s+/);
    if (name === "default-src") return values;
  }
  return null; // no restriction
}

// Does one connect-src source expression (CSP3 host-source, 'self', scheme) allow `url`?
function sourceAllows(src, url, selfOrigin) {
  if (src === "'self'") return url.origin === selfOrigin;
  if (src === "*") return url.protocol === "http:" || url.protocol === "https:";
  if (/^[a-z][a-z0-9+.-]*:$/i.test(src)) return url.protocol === src.toLowerCase();
  const m = /^(?:([a-z][a-z0-9+.-]*):\/\/)?(\*\.)?([^/:]+)(?::(\d+|\*))?(\/.*)?$/i.exec(src);
  if (!m) return false;
  const [, scheme, wild, host, port, pathPart] = m;
  if (scheme && url.protocol !== scheme.toLowerCase() + ":") return false;
  const h = url.hostname.toLowerCase();
  const want = host.toLowerCase();
  if (wild ? !h.endsWith("." + want) : h !== want) return false;
  if (port && port !== "*" && (url.port || (url.protocol === "https:" ? "443" : "80")) !== port) return false;
  if (pathPart && !url.pathname.startsWith(pathPart)) return false;
  return true;
}

export function cspAllows(policy, rawUrl, selfOrigin) {
  const sources = connectSources(policy);
  if (!sources) return true;
  const url = new URL(rawUrl, selfOrigin);
  return sources.some((s) => sourceAllows(s, url, selfOrigin));
}

// The page's policy (meta tag), or "" where it has none.
export function pagePolicy(doc = globalThis.document) {
  return doc?.querySelector('meta[http-equiv="Content-Security-Policy"]')?.getAttribute("content") || "";
}

// null if `url` may be fetched, else a message that says why not and what to change.
export function cspBlockMessage(policy, url, selfOrigin) {
  if (cspAllows(policy, url, selfOrigin)) return null;
  const u = new URL(url, selfOrigin);
  const allowed = connectSources(policy).map((s) => (s === "'self'" ? selfOrigin : s)).join(", ");
  return (
    `${u.host} is not allowed by this page's Content-Security-Policy (connect-src: ${allowed}), so the browser would refuse ` +
    `to download the model from it. To host models elsewhere, add ${u.protocol}//${u.host} to connect-src in the ` +
    `<meta http-equiv="Content-Security-Policy"> tag of index.html and in your server's Content-Security-Policy header ` +
    `(see the README, "Hosting the web app"), or download the model folder and load it from this computer.`
  );
}
