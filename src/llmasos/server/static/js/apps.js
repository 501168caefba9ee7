// Apps: every installed app's manifest — kind, permissions, scheduling, quotas, PII policy, handlers.
import { useEffect, useState } from "preact/hooks";
import { loadApps, openChat, useStore } from "./store.js";
import { Empty, fmtInt, html, Icon, PageHeader, pct } from "./ui.js";

const PERMISSION_HELP = {
  llm: "run LLM calls", embed: "compute embeddings", "memory.read": "read its memory", "memory.write": "write its memory",
  storage: "its own key-value, document and file storage",
};

function permHelp(p) {
  if (PERMISSION_HELP[p]) return PERMISSION_HELP[p];
  if (p.startsWith("tools:")) return `call the tool ${p.slice(6)}`;
  if (p.startsWith("mcp:")) return `use the MCP server ${p.slice(4)}`;
  return p;
}

function Quotas({ q }) {
  const items = Object.entries(q || {}).filter(([, v]) => v !== null && v !== undefined);
  if (!items.length) return html`<span class="muted">none</span>`;
  return items.map(([k, v]) => html`<span class="chip" key=${k}>${k.replace(/_/g, " ")}: ${fmtInt(v)}</span>`);
}

function AppCard({ a, share, total }) {
  const canChat = a.kind === "app" && (a.handlers || []).includes("chat");
  const pii = a.pii || {};
  return html`<div class="card app-card" data-app=${a.name} data-testid="app-card">
    <div class="app-head">
      <div class="app-icon">${a.name.slice(0, 2).toUpperCase()}</div>
      <div class="grow">
        <div class="app-name">${a.name} <span class="muted small">v${a.version}</span></div>
        <div class="muted small">${a.description || "—"}</div>
      </div>
      <span class="badge kind-badge-${a.kind}">${a.kind}</span>
    </div>
    <div class="app-section">
      <div class="app-label">Permissions</div>
      <div class="chips">${(a.permissions || []).length ? a.permissions.map((p) => html`<span class="chip perm"
        title=${permHelp(p)} key=${p}>${p}</span>`) : html`<span class="muted small">none</span>`}</div>
    </div>
    <dl class="kv-grid">
      <dt>priority</dt><dd>${a.priority} <span class="muted tiny">(nice: lower runs first)</span></dd>
      <dt>fair-share weight</dt><dd>${a.weight}</dd>
      <dt>quotas</dt><dd class="chips"><${Quotas} q=${a.quotas} /></dd>
      <dt>PII</dt><dd>input ${pii.input || "–"} · output ${pii.output || "–"} · logs ${pii.logs || "–"}
        ${pii.kinds && pii.kinds.length ? html`<div class="muted tiny">${pii.kinds.join(", ")}</div>` : null}</dd>
      ${a.handler_timeout ? html`<dt>handler timeout</dt><dd>${a.handler_timeout} s</dd>` : null}
      ${a.latency_sensitive !== undefined ? html`<dt>latency sensitive</dt><dd>${a.latency_sensitive ? "yes" : "no"}</dd>`
        : null}
      ${a.auto_approve && a.auto_approve.length ? html`<dt>auto-approve</dt><dd>${a.auto_approve.join(", ")}</dd>` : null}
      ${a.mcp_servers && a.mcp_servers.length ? html`<dt>MCP servers</dt>
        <dd>${a.mcp_servers.map((m) => (typeof m === "string" ? m : m.name || JSON.stringify(m))).join(", ")}</dd>` : null}
      <dt>handlers</dt><dd>${(a.handlers || []).length ? a.handlers.map((hd) => html`<code class="handler" key=${hd}>${hd}</code>`)
        : html`<span class="muted">${a.kind === "client" ? "an API client: no code" : "none"}</span>`}</dd>
      <dt>tokens used</dt><dd>${fmtInt(share || 0)}${total ? html` <span class="muted">(${pct((share || 0) / total, 0)})</span>` : null}</dd>
    </dl>
    ${a.system_prompt ? html`<details class="app-prompt"><summary>System prompt</summary>
      <pre>${a.system_prompt}</pre></details>` : null}
    ${canChat ? html`<div class="app-actions"><button class="btn btn-primary btn-sm" onClick=${() => openChat(`app:${a.name}`)}>
      <${Icon} name="chat" size=${14} /> Chat</button></div>` : null}
  </div>`;
}

export function AppsView() {
  const s = useStore();
  const [error, setError] = useState(null);
  useEffect(() => { loadApps().catch((err) => setError(err)); }, []);
  const share = (s.system && s.system.apps_share) || {};
  const total = Object.values(share).reduce((a, b) => a + b, 0);
  const apps = s.apps.slice().sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind === "app" ? -1 : 1));
  return html`<div class="page">
    <${PageHeader} title="Apps" subtitle="Installed apps and API clients, as their manifests declare them." />
    ${error && error.status !== 401 ? html`<div class="alert alert-error">${error.message}</div>` : null}
    ${error && error.status === 401 ? html`<${Empty} title="API key needed">This server has API keys: paste one
      (the key button at the bottom left).</${Empty}>` : null}
    ${error ? null : apps.length === 0 ? html`<${Empty} title="No apps">Install one with os.install(App()) or an entry
      point.</${Empty}>`
      : html`<div class="app-grid">${apps.map((a) => html`<${AppCard} key=${a.name} a=${a} share=${share[a.name]}
        total=${total} />`)}</div>`}
  </div>`;
}
