// Audit: the append-only log of system calls (GET /v1/audit), filtered by app, call, decision and time.
import { useEffect, useRef, useState } from "preact/hooks";
import { get } from "./api.js";
import { useStore } from "./store.js";
import { DecisionBadge, Empty, fmtDateTime, fmtInt, html, Icon, PageHeader, Toggle, useInterval } from "./ui.js";

const SINCE = [["", "any time"], ["300", "last 5 min"], ["3600", "last hour"], ["86400", "last 24 h"]];
const knownCalls = new Set();

function AuditRow({ r, open, onToggle }) {
  const args = r.args !== undefined ? r.args : r.args_digest;
  const argsText = typeof args === "string" ? args : JSON.stringify(args);
  const flags = r.flags && (typeof r.flags === "string" ? r.flags : JSON.stringify(r.flags));
  return html`
    <tr class="clickable ${open ? "open" : ""}" data-decision=${r.decision} data-call=${r.call} data-app=${r.app}
        onClick=${onToggle}>
      <td class="r mono muted">${r.id}</td>
      <td class="mono nowrap">${fmtDateTime(r.time)}</td>
      <td>${r.principal}</td>
      <td>${r.app}</td>
      <td class="mono">${r.call}</td>
      <td><${DecisionBadge} decision=${r.decision} /></td>
      <td class="small ellipsis cell-detail" title=${r.detail || ""}>${r.detail || ""}</td>
      <td class="r mono">${r.pid ?? ""}</td>
      <td class="r mono">${r.tokens ? fmtInt(r.tokens) : ""}</td>
      <td class="r mono">${r.latency_ms != null ? r.latency_ms.toFixed(1) : ""}</td>
      <td>${flags && flags !== "{}" && flags !== "null" ? html`<span class="badge dec-flag" title=${flags}>flagged</span>`
        : null}</td>
    </tr>
    ${open ? html`<tr class="detail-row"><td colspan="11">
      <dl class="kv-grid">
        <dt>arguments${r.args === undefined ? " (digest)" : " (redacted)"}</dt><dd class="mono wrap">${argsText ?? "–"}</dd>
        ${r.detail ? html`<dt>detail</dt><dd class="wrap">${r.detail}</dd>` : null}
        ${flags ? html`<dt>flags</dt><dd class="mono wrap">${flags}</dd>` : null}
        <dt>time</dt><dd class="mono">${r.time}</dd>
      </dl></td></tr>` : null}`;
}

export function AuditView() {
  const s = useStore();
  const [filters, setFilters] = useState({ app: "", call: "", decision: "", since: "", limit: "200" });
  const [callDraft, setCallDraft] = useState("");
  const [rows, setRows] = useState(null);
  const [error, setError] = useState(null);
  const [auto, setAuto] = useState(false);
  const [open, setOpen] = useState(null);
  const seq = useRef(0);

  const load = async () => {
    const n = ++seq.current;
    const params = { app: filters.app, call: filters.call, decision: filters.decision, limit: filters.limit };
    if (filters.since) params.since = Date.now() / 1000 - Number(filters.since);
    try {
      const r = await get("v1/audit", params);
      if (n !== seq.current) return; // a newer filter won
      for (const x of r.data) knownCalls.add(x.call);
      setRows(r.data);
      setError(null);
    } catch (err) {
      if (n === seq.current) setError(err.message);
    }
  };
  useEffect(() => { load(); }, [filters]);
  useInterval(load, 3000, auto);

  const set = (k) => (e) => setFilters({ ...filters, [k]: e.currentTarget.value });
  const applyCall = (e) => {
    if (e) e.preventDefault();
    if (callDraft.trim() !== filters.call) setFilters({ ...filters, call: callDraft.trim() });
  };
  const clear = () => { setCallDraft(""); setFilters({ app: "", call: "", decision: "", since: "", limit: filters.limit }); };
  const counts = { allowed: 0, denied: 0, failed: 0 };
  for (const r of rows || []) counts[r.decision] = (counts[r.decision] || 0) + 1;
  const filtered = filters.app || filters.call || filters.decision || filters.since;

  return html`<div class="page">
    <${PageHeader} title="Audit" subtitle="Every system call, allowed or not, with its caller, outcome, tokens and latency.">
      <${Toggle} checked=${auto} onChange=${setAuto} label="Auto-refresh" />
      <button class="btn btn-ghost btn-icon" onClick=${load} title="Refresh"><${Icon} name="refresh" size=${16} /></button>
    </${PageHeader}>
    <form class="toolbar" onSubmit=${applyCall} data-testid="audit-filters">
      <select class="input select" value=${filters.app} onChange=${set("app")} data-testid="audit-app">
        <option value="">All apps</option>
        ${s.apps.map((a) => html`<option value=${a.name}>${a.name}</option>`)}
      </select>
      <input class="input" list="audit-calls" placeholder="call, e.g. llm.chat" value=${callDraft}
        onInput=${(e) => setCallDraft(e.currentTarget.value)} onBlur=${() => applyCall()}
        onChange=${() => applyCall()} data-testid="audit-call" />
      <datalist id="audit-calls">${[...knownCalls].sort().map((c) => html`<option value=${c} />`)}</datalist>
      <select class="input select" value=${filters.decision} onChange=${set("decision")} data-testid="audit-decision">
        <option value="">All decisions</option>
        <option value="allowed">allowed</option>
        <option value="denied">denied</option>
        <option value="failed">failed</option>
      </select>
      <select class="input select" value=${filters.since} onChange=${set("since")}>
        ${SINCE.map(([v, l]) => html`<option value=${v}>${l}</option>`)}
      </select>
      <select class="input select" value=${filters.limit} onChange=${set("limit")} title="rows">
        ${["50", "200", "1000"].map((v) => html`<option value=${v}>${v} rows</option>`)}
      </select>
      <button class="btn" type="submit">Apply</button>
      ${filtered ? html`<button class="btn btn-ghost" type="button" onClick=${clear}>Clear</button>` : null}
      <span class="grow"></span>
      ${rows ? html`<span class="muted small audit-count" data-testid="audit-count"><span>${rows.length} row${rows.length === 1 ? "" : "s"}</span>
        <span class="text-ok">${counts.allowed} allowed</span><span class="text-warn">${counts.denied} denied</span>
        <span class="text-bad">${counts.failed} failed</span></span>` : null}
    </form>
    ${error ? html`<div class="alert alert-error">${error}</div>` : null}
    ${rows && rows.length === 0 ? html`<${Empty} title="No matching entries">${filtered ? "Try other filters."
      : "System calls appear here as apps and clients make them."}</${Empty}>` : null}
    ${rows && rows.length ? html`<div class="table-wrap"><table class="table" data-testid="audit-table">
      <thead><tr><th class="r">#</th><th>Time</th><th>Principal</th><th>App</th><th>Call</th><th>Decision</th>
        <th>Detail</th><th class="r">PID</th><th class="r">Tokens</th><th class="r">ms</th><th></th></tr></thead>
      <tbody>${rows.map((r) => html`<${AuditRow} key=${r.id} r=${r} open=${open === r.id}
        onToggle=${() => setOpen(open === r.id ? null : r.id)} />`)}</tbody>
    </table></div>` : null}
  </div>`;
}
