// The HTTP API: JSON requests, OpenAI error JSON turned into ApiError, server-sent events, the API key.

const KEY = "llmasos.key";
const BASE = new URL(".", document.baseURI); // the console is served at the server's root (or a proxy prefix)

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.type = e.type || null;
    this.code = e.code || null;
    this.param = e.param || null;
  }
}

export const auth = {
  get key() { return localStorage.getItem(KEY) || ""; },
  set key(v) { v ? localStorage.setItem(KEY, v.trim()) : localStorage.removeItem(KEY); },
  listeners: new Set(),
  // The server asked for a key (401) or refused this one: the shell opens the key dialog.
  unauthorized(err) { for (const fn of this.listeners) fn(err); },
};

export function url(path, params) {
  const u = new URL(path.replace(/^\//, ""), BASE);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, v);
  }
  return u.toString();
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  if (auth.key) h.Authorization = `Bearer ${auth.key}`;
  return h;
}

async function fail(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  const err = new ApiError(res.status, body);
  if (res.status === 401) auth.unauthorized(err);
  return err;
}

export async function api(method, path, { params, body, signal } = {}) {
  const res = await fetch(url(path, params), {
    method, signal,
    headers: headers(body !== undefined ? { "Content-Type": "application/json" } : {}),
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  if (!res.ok) throw await fail(res);
  return res.json();
}

export const get = (path, params, signal) => api("GET", path, { params, signal });

// POST a JSON body and yield each `data:` event of the text/event-stream answer, parsed; stops at [DONE].
// An error before the stream starts is an HTTP error (ApiError); one mid-stream arrives as {"error": ...}.
export async function* stream(path, body, signal) {
  const res = await fetch(url(path), {
    method: "POST", signal,
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
  });
  if (!res.ok) throw await fail(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart())
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const obj = JSON.parse(data);
        if (obj && obj.error) throw new ApiError(500, obj);
        yield obj;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// An app's own route (a `@handler`): POST /v1/apps/{app}/handlers/{name} with JSON arguments; its result.
export async function callHandler(app, name, args, signal) {
  return (await api("POST", `v1/apps/${app}/handlers/${name}`, { body: args || {}, signal })).result;
}

// The same handler streamed: `{delta}` for text pieces, `{data}` for anything else, then the process record.
export const streamHandler = (app, name, args, signal) => stream(`v1/apps/${app}/handlers/${name}/stream`, args || {},
  signal);
