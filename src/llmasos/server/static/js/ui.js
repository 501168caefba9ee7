// Shared pieces: the htm tag, icons, formatting, toasts, small widgets.
import { h } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import htm from "htm";
import { marked } from "marked";

export const html = htm.bind(h);

// -- icons (24x24 stroke paths) ---------------------------------------------------------------------------
const PATHS = {
  chat: "M4 5h16v11H9l-5 4z",
  procs: "M4 6h16M4 12h16M4 18h10",
  system: "M3 12h4l3-7 4 14 3-7h4",
  apps: "M4 4h7v7H4zM13 4h7v7h-7zM4 13h7v7H4zM13 13h7v7h-7z",
  audit: "M12 3l8 3v6c0 5-3.5 8-8 9-4.5-1-8-4-8-9V6zM9 12l2 2 4-4",
  key: "M8 11a4 4 0 1 0 0 8 4 4 0 0 0 0-8zM11 12l9-9M17 6l3 3M14.5 8.5l2 2",
  sun: "M12 8a4 4 0 1 0 0 8 4 4 0 0 0 0-8zM12 2v2M12 20v2M4.9 4.9l1.4 1.4M17.7 17.7l1.4 1.4M2 12h2M20 12h2M4.9 19.1l1.4-1.4M17.7 6.3l1.4-1.4",
  moon: "M20 14.5A8 8 0 0 1 9.5 4 8 8 0 1 0 20 14.5z",
  plus: "M12 5v14M5 12h14",
  send: "M5 12h14M13 6l6 6-6 6",
  stop: "M7 7h10v10H7z",
  trash: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13",
  x: "M6 6l12 12M18 6L6 18",
  refresh: "M20 12a8 8 0 1 1-2.3-5.7M20 4v5h-5",
  sliders: "M4 7h10M18 7h2M4 17h4M12 17h8M14 5v4M8 15v4",
  cpu: "M7 7h10v10H7zM10 3v4M14 3v4M10 17v4M14 17v4M3 10h4M3 14h4M17 10h4M17 14h4",
  copy: "M9 9h10v11H9zM5 15V4h10",
  chevron: "M9 6l6 6-6 6",
  support: "M4 13a8 8 0 0 1 16 0v4h-3v-5h3M4 13v4h3v-5H4M17 17c0 2-2 3-5 3",
  book: "M4 5a2 2 0 0 1 2-2h13v16H6a2 2 0 0 0-2 2zM4 5v16M8 7h7",
  star: "M12 3l2.7 5.6 6.1.9-4.4 4.3 1 6.1L12 17l-5.4 2.9 1-6.1-4.4-4.3 6.1-.9z",
  pen: "M4 20h4L19 9l-4-4L4 16zM13.5 6.5l4 4",
  upload: "M12 16V4M7 9l5-5 5 5M4 20h16",
};

export function Icon({ name, size = 18, cls = "" }) {
  return html`<svg class="icon ${cls}" width=${size} height=${size} viewBox="0 0 24 24" fill="none"
    stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">
    <path d=${PATHS[name] || ""} /></svg>`;
}

// -- formatting -------------------------------------------------------------------------------------------
export const fmtInt = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));

export function fmtMs(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  const ms = s * 1000;
  if (ms < 1) return "<1 ms";
  if (ms < 1000) return `${ms.toFixed(0)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function fmtAgo(t) {
  if (!t) return "";
  const s = Date.now() / 1000 - t;
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t * 1000).toLocaleDateString();
}

export function fmtTime(t) {
  if (!t) return "–";
  const d = new Date(t * 1000);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

export function fmtDateTime(t) {
  if (!t) return "–";
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${fmtTime(t)}`;
}

export const pct = (x, digits = 1) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(digits)}%`);

// Timing of one process record: time to first token and decode speed.
export function procTiming(p) {
  const ttft = p.first_token_at && p.queued_at ? Math.max(p.first_token_at - p.queued_at, 0) : null;
  let tps = null;
  if (p.first_token_at && p.tokens_out > 1) {
    const end = p.finished_at || Date.now() / 1000;
    const dt = end - p.first_token_at;
    if (dt > 0) tps = (p.tokens_out - 1) / dt;
  }
  const total = p.queued_at ? (p.finished_at || Date.now() / 1000) - p.queued_at : null;
  return { ttft, tps, total };
}

export const LIVE_STATES = ["waiting", "running", "preempted"];
export const STATES = [...LIVE_STATES, "finished", "killed", "failed"];

export function StateBadge({ state }) {
  return html`<span class="badge st-${state}">${state}</span>`;
}

export function DecisionBadge({ decision }) {
  return html`<span class="badge dec-${decision}">${decision}</span>`;
}

// -- toasts -----------------------------------------------------------------------------------------------
const toastListeners = new Set();
let toastId = 0;

export function toast(message, kind = "info") {
  const t = { id: ++toastId, message, kind };
  for (const fn of toastListeners) fn(t);
}

export function Toasts() {
  const [items, setItems] = useState([]);
  useEffect(() => {
    const add = (t) => {
      setItems((xs) => [...xs.slice(-3), t]);
      setTimeout(() => setItems((xs) => xs.filter((x) => x.id !== t.id)), t.kind === "error" ? 6000 : 3000);
    };
    toastListeners.add(add);
    return () => toastListeners.delete(add);
  }, []);
  return html`<div class="toasts" role="status">
    ${items.map((t) => html`<div key=${t.id} class="toast toast-${t.kind}">${t.message}</div>`)}
  </div>`;
}

// -- hooks ------------------------------------------------------------------------------------------------

// Call `fn` now and every `ms` while mounted (and `enabled`); the latest `fn` is always the one called.
export function useInterval(fn, ms, enabled = true) {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    if (!enabled) return undefined;
    let stopped = false;
    let timer = null;
    const tick = async () => {
      try { await ref.current(); } finally { if (!stopped) timer = setTimeout(tick, ms); }
    };
    tick();
    return () => { stopped = true; clearTimeout(timer); };
  }, [ms, enabled]);
}

export function useLocal(key, initial) {
  const [v, setV] = useState(() => {
    const s = localStorage.getItem(key);
    if (s === null) return initial;
    try { return JSON.parse(s); } catch { return initial; }
  });
  const set = (x) => setV((old) => {
    const nv = typeof x === "function" ? x(old) : x;
    localStorage.setItem(key, JSON.stringify(nv));
    return nv;
  });
  return [v, set];
}

export function Empty({ title, children }) {
  return html`<div class="empty"><div class="empty-title">${title}</div><div class="muted">${children}</div></div>`;
}

export function PageHeader({ title, subtitle, children }) {
  return html`<header class="page-header">
    <div><h1>${title}</h1>${subtitle ? html`<div class="muted small">${subtitle}</div>` : null}</div>
    <div class="page-actions">${children}</div>
  </header>`;
}

export function Toggle({ checked, onChange, label, title, disabled, testid }) {
  return html`<label class="toggle ${disabled ? "disabled" : ""}" title=${title || ""}>
    <input type="checkbox" checked=${checked} disabled=${disabled} data-testid=${testid}
      onChange=${(e) => onChange(e.currentTarget.checked)} />
    <span class="toggle-track"><span class="toggle-thumb"></span></span>
    <span>${label}</span>
  </label>`;
}

// Markdown from a model or an app, sanitised (a reply is untrusted text).
export function Markdown({ text, cls = "" }) {
  const out = useMemo(() => window.DOMPurify.sanitize(marked.parse(text || "", { gfm: true, breaks: true })), [text]);
  return html`<div class="md ${cls}" dangerouslySetInnerHTML=${{ __html: out }} />`;
}
