// The console's shell: sidebar navigation, hash routing, theme, and the API key dialog.
import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { auth } from "./api.js";
import { KnowledgeView } from "./app-knowledge.js";
import { RecommendView } from "./app-recommend.js";
import { SupportView } from "./app-support.js";
import { WriterView } from "./app-writer.js";
import { AppsView } from "./apps.js";
import { AuditView } from "./audit.js";
import { ChatView } from "./chat.js";
import { ProcessesView } from "./processes.js";
import { loadApps, restartPolling, startPolling, useStore } from "./store.js";
import { SystemView } from "./system.js";
import { html, Icon, pct, toast, Toasts } from "./ui.js";

const VIEWS = [
  { id: "chat", label: "Chat", icon: "chat", view: ChatView },
  { id: "processes", label: "Processes", icon: "procs", view: ProcessesView },
  { id: "system", label: "System", icon: "system", view: SystemView },
  { id: "apps", label: "Apps", icon: "apps", view: AppsView },
  { id: "audit", label: "Audit", icon: "audit", view: AuditView },
];

// The bundled apps' own pages, listed when the app is installed with its code.
const APP_VIEWS = [
  { id: "support", app: "customer_service", label: "Support", icon: "support", view: SupportView },
  { id: "knowledge", app: "knowledge_qa", label: "Knowledge", icon: "book", view: KnowledgeView },
  { id: "recommend", app: "recommender", label: "Recommend", icon: "star", view: RecommendView },
  { id: "writer", app: "writer", label: "Writer", icon: "pen", view: WriterView },
];
const ALL_VIEWS = [...VIEWS, ...APP_VIEWS];

function route() {
  const id = location.hash.replace(/^#\/?/, "").split("/")[0];
  return ALL_VIEWS.find((v) => v.id === id) ? id : "chat";
}

function NavItem({ v, current, count }) {
  return html`<a href=${`#/${v.id}`} class="nav-item ${current === v.id ? "active" : ""}" data-testid=${`nav-${v.id}`}
    title=${v.label}>
    <${Icon} name=${v.icon} /><span>${v.label}</span>
    ${count ? html`<span class="nav-count">${count}</span>` : null}
  </a>`;
}

function KeyDialog({ reason, onClose, onSaved }) {
  const [value, setValue] = useState(auth.key);
  const input = useRef(null);
  useEffect(() => { input.current && input.current.focus(); }, []);
  const save = (e) => {
    e.preventDefault();
    auth.key = value;
    onSaved();
  };
  return html`<div class="modal-backdrop" onClick=${(e) => e.target === e.currentTarget && onClose()}>
    <form class="modal" onSubmit=${save} data-testid="key-dialog">
      <h2>API key</h2>
      ${reason ? html`<div class="alert alert-error">${reason}</div>` : null}
      <p class="muted small">With no keys on the server (local mode) the console needs none and acts as the
        operator. Once keys exist, paste one here: an admin key (<code>llmasos keys create --admin</code>) sees
        everything, an app's key sees that app only. It is kept in this browser (localStorage) and sent as${" "}
        <code>Authorization: Bearer …</code>.</p>
      <input ref=${input} class="input mono" type="password" placeholder="llmos-…" value=${value}
        autocomplete="off" onInput=${(e) => setValue(e.currentTarget.value)} data-testid="key-input" />
      <div class="modal-actions">
        ${auth.key ? html`<button type="button" class="btn btn-ghost" onClick=${() => { setValue(""); auth.key = "";
          onSaved(); }}>Forget key</button>` : null}
        <span class="grow"></span>
        <button type="button" class="btn" onClick=${onClose}>Cancel</button>
        <button type="submit" class="btn btn-primary">Save</button>
      </div>
    </form>
  </div>`;
}

function Sidebar({ current, onKey, theme, setTheme, keyNeeded }) {
  const s = useStore();
  const sys = s.system;
  const k = sys && sys.kernel;
  const keyed = !!auth.key;
  const mode = keyed ? `key …${auth.key.slice(-4)}` : keyNeeded ? "API key needed" : "local mode";
  const online = !!sys && !s.systemError;
  const installed = APP_VIEWS.filter((v) => s.apps.some((a) => a.name === v.app && (a.handlers || []).length));
  return html`<nav class="sidebar">
    <a class="brand" href="#/chat">
      <img src="static/favicon.svg" width="26" height="26" alt="" />
      <span>LLMasOS</span>
    </a>
    <div class="nav">
      ${VIEWS.map((v) => html`<${NavItem} key=${v.id} v=${v} current=${current}
        count=${v.id === "processes" && k ? k.running + k.waiting : 0} />`)}
      ${installed.length ? html`<div class="nav-group">Bundled apps</div>` : null}
      ${installed.map((v) => html`<${NavItem} key=${v.id} v=${v} current=${current} />`)}
    </div>
    <div class="sidebar-foot">
      ${k ? html`<div class="mini-kv" title="KV cache in use">
        <div class="mini-kv-label"><span>KV cache</span><span>${pct(k.kv_usage, 0)}</span></div>
        <div class="bar"><div class="bar-fill" style=${`width:${Math.max(k.kv_usage * 100, 1)}%`}></div></div>
      </div>` : null}
      <div class="model-line" title=${sys ? sys.model : ""}>
        <span class="dot ${online ? "dot-ok" : s.systemError && s.systemError.status === 403 ? "dot-idle" : "dot-bad"}"></span>
        <span class="ellipsis">${sys ? sys.chat_model : s.models.length ? s.models[0].id : "connecting…"}</span>
      </div>
      <div class="foot-buttons">
        <button class="btn btn-ghost btn-sm" onClick=${onKey} title="API key" data-testid="key-button">
          <${Icon} name="key" size=${16} /><span>${mode}</span></button>
        <button class="btn btn-ghost btn-icon" title=${`Switch to ${theme === "dark" ? "light" : "dark"} theme`}
          onClick=${() => setTheme(theme === "dark" ? "light" : "dark")} data-testid="theme-toggle">
          <${Icon} name=${theme === "dark" ? "sun" : "moon"} size=${16} /></button>
      </div>
    </div>
  </nav>`;
}

function Shell() {
  const [current, setCurrent] = useState(route());
  const [keyDialog, setKeyDialog] = useState(null); // null: closed; "": opened by the user; text: why
  const [epoch, setEpoch] = useState(0); // bumped when the key changes: views reload
  const [theme, setThemeState] = useState(document.documentElement.dataset.theme || "light");
  const [bootError, setBootError] = useState(null);
  const [keyNeeded, setKeyNeeded] = useState(false);

  const setTheme = (t) => {
    localStorage.setItem("llmasos.theme", t);
    document.documentElement.dataset.theme = t;
    setThemeState(t);
    window.dispatchEvent(new CustomEvent("llmasos-theme"));
  };

  const boot = async () => {
    try {
      await loadApps();
      setBootError(null);
    } catch (err) {
      setBootError(err.status === 401 ? null : err.message); // a missing key opens the key dialog instead
    }
  };

  useEffect(() => {
    const onHash = () => setCurrent(route());
    window.addEventListener("hashchange", onHash);
    const onUnauthorized = (err) => {
      setKeyNeeded(true);
      setKeyDialog(err.message || "This server needs an API key.");
    };
    auth.listeners.add(onUnauthorized);
    boot();
    startPolling();
    return () => {
      window.removeEventListener("hashchange", onHash);
      auth.listeners.delete(onUnauthorized);
    };
  }, []);

  const saved = async () => {
    setKeyDialog(null);
    setKeyNeeded(false);
    await boot();
    restartPolling();
    setEpoch((n) => n + 1);
    toast(auth.key ? "API key saved" : "API key forgotten");
  };

  const View = ALL_VIEWS.find((v) => v.id === current).view;
  return html`<div class="shell">
    <${Sidebar} current=${current} onKey=${() => setKeyDialog("")} theme=${theme} setTheme=${setTheme}
      keyNeeded=${keyNeeded} />
    <main class="main" data-view=${current}>
      ${bootError ? html`<div class="alert alert-error banner">Cannot reach the server: ${bootError}
        <button class="btn btn-sm" onClick=${boot}>Retry</button></div>` : null}
      <${View} key=${`${current}-${epoch}`} />
    </main>
    ${keyDialog !== null ? html`<${KeyDialog} reason=${keyDialog} onClose=${() => setKeyDialog(null)}
      onSaved=${saved} />` : null}
    <${Toasts} />
  </div>`;
}

render(html`<${Shell} />`, document.getElementById("app"));
