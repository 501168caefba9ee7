// What the bundled apps' pages share: whether the app is installed here, and how a page shows a failed call.
import { useStore } from "./store.js";
import { Empty, html } from "./ui.js";

// null while the app list loads, then whether `name` is installed with its code (it has handlers).
export function useInstalled(name) {
  const s = useStore();
  if (!s.apps.length) return null;
  return s.apps.some((a) => a.name === name && (a.handlers || []).length > 0);
}

// The page body once the app is known to be installed; a note when it is not.
export function AppGate({ app, children }) {
  const ok = useInstalled(app);
  if (ok === null) return html`<div class="muted pad">Loading…</div>`;
  if (!ok) {
    return html`<${Empty} title=${`${app} is not available`}>Either the server does not run it (<code>llmasos
      serve</code> installs every bundled app; <code>LLMASOS_APPS</code> or the config's <code>apps</code> choose),
      or this API key belongs to another app (an app's key sees that app only).</${Empty}>`;
  }
  return children;
}

export function ErrorLine({ error }) {
  if (!error) return null;
  return html`<div class="alert alert-error" data-testid="app-error">${error.message || String(error)}</div>`;
}

export const newSessionId = () => `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;

// A session id kept in this browser per page, so a reload continues the same conversation.
export function sessionFor(page) {
  const key = `llmasos.${page}.session`;
  let sid = localStorage.getItem(key);
  if (!sid) {
    sid = newSessionId();
    localStorage.setItem(key, sid);
  }
  return sid;
}

export function newSessionFor(page) {
  localStorage.removeItem(`llmasos.${page}.session`);
  return sessionFor(page);
}
