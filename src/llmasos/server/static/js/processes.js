// Processes: the live process table (GET /v1/processes, once a second), with kill and renice.
import { useState } from "preact/hooks";
import { api, get } from "./api.js";
import { useStore } from "./store.js";
import {
  Empty, fmtDuration, fmtInt, fmtMs, html, Icon, LIVE_STATES, PageHeader, procTiming, STATES, StateBadge, toast,
  Toggle, useInterval, useLocal,
} from "./ui.js";

function memorySummary(m) {
  if (!m) return "–";
  const parts = [`${m.kept_turns ?? 0} kept`];
  if (m.summarised_turns) parts.push(`${m.summarised_turns} summarised`);
  if (m.dropped_turns) parts.push(`${m.dropped_turns} dropped`);
  const recalled = (m.recall_items || 0) + (m.archival_items || 0);
  if (recalled) parts.push(`${recalled} recalled`);
  return parts.join(" · ");
}

function Renice({ p, onDone }) {
  const [value, setValue] = useState(String(p.priority));
  const [busy, setBusy] = useState(false);
  const apply = async (e) => {
    e.preventDefault();
    const n = Number(value);
    if (!Number.isInteger(n) || n < -20 || n > 19) { toast("Priority must be an integer from -20 to 19", "error"); return; }
    setBusy(true);
    try {
      await api("PATCH", `v1/processes/${p.pid}`, { body: { priority: n } });
      toast(`pid ${p.pid} reniced to ${n}`);
      onDone();
    } catch (err) {
      toast(`renice ${p.pid}: ${err.message}`, "error");
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="renice" onSubmit=${apply}>
    <input class="input num input-sm" type="number" min="-20" max="19" step="1" value=${value}
      title="nice value: -20 (first) … 19 (last)" onInput=${(e) => setValue(e.currentTarget.value)}
      data-testid="renice-input" />
    <button class="btn btn-sm" type="submit" disabled=${busy || String(p.priority) === value}
      data-testid="renice">Set</button>
  </form>`;
}

export function ProcessesView() {
  const s = useStore();
  const [procs, setProcs] = useState([]);
  const [error, setError] = useState(null);
  const [filters, setFilters] = useLocal("llmasos.procFilters", { app: "", state: "", kind: "", live: false });
  const [auto, setAuto] = useState(true);
  const [killing, setKilling] = useState({});

  const load = async () => {
    try {
      const r = await get("v1/processes", { app: filters.app, state: filters.state, limit: 300 });
      setProcs(r.data.slice().reverse());
      setError(null);
    } catch (err) {
      setError(err.message);
    }
  };
  useInterval(load, 1000, auto);

  const kill = async (p) => {
    setKilling((k) => ({ ...k, [p.pid]: true }));
    try {
      const r = await api("DELETE", `v1/processes/${p.pid}`);
      toast(`pid ${p.pid} ${r.state === "killed" ? "killed" : `is ${r.state}`}`);
      setProcs((xs) => xs.map((x) => (x.pid === p.pid ? { ...x, ...r } : x)));
      load();
    } catch (err) {
      toast(`kill ${p.pid}: ${err.message}`, "error");
    } finally {
      setKilling((k) => { const c = { ...k }; delete c[p.pid]; return c; });
    }
  };

  const shown = procs.filter((p) => (!filters.kind || p.kind === filters.kind)
    && (!filters.live || LIVE_STATES.includes(p.state)));
  const counts = {};
  for (const p of procs) counts[p.state] = (counts[p.state] || 0) + 1;
  const set = (k) => (e) => setFilters({ ...filters, [k]: e.currentTarget.value });

  return html`<div class="page">
    <${PageHeader} title="Processes" subtitle="Every LLM call and every app handler run is a process: ps, kill, renice.">
      <${Toggle} checked=${auto} onChange=${setAuto} label="Live" testid="procs-live" />
      <button class="btn btn-ghost btn-icon" onClick=${load} title="Refresh"><${Icon} name="refresh" size=${16} /></button>
    </${PageHeader}>
    <div class="toolbar">
      <select class="input select" value=${filters.app} onChange=${set("app")} data-testid="proc-app">
        <option value="">All apps</option>
        ${s.apps.map((a) => html`<option value=${a.name}>${a.name}</option>`)}
      </select>
      <select class="input select" value=${filters.state} onChange=${set("state")} data-testid="proc-state">
        <option value="">All states</option>
        ${STATES.map((x) => html`<option value=${x}>${x}</option>`)}
      </select>
      <select class="input select" value=${filters.kind} onChange=${set("kind")}>
        <option value="">All kinds</option>
        ${["llm", "handler", "summary"].map((x) => html`<option value=${x}>${x}</option>`)}
      </select>
      <${Toggle} checked=${filters.live} onChange=${(v) => setFilters({ ...filters, live: v })} label="Live only" />
      <span class="grow"></span>
      <div class="state-counts">
        ${STATES.filter((x) => counts[x]).map((x) => html`<span class="count"><${StateBadge} state=${x} />
          <b>${counts[x]}</b></span>`)}
      </div>
    </div>
    ${error ? html`<div class="alert alert-error">${error}</div>` : null}
    ${shown.length === 0 && !error ? html`<${Empty} title="No processes">Chat with an app or call the API: each LLM call
      shows up here while it runs and after it ends.</${Empty}>` : html`<div class="table-wrap">
    <table class="table" data-testid="proc-table">
      <thead><tr>
        <th class="r">PID</th><th>App</th><th>Kind</th><th>Session</th><th>State</th>
        <th title="nice value: -20 (first) … 19 (last)">Priority</th><th class="r">Tokens in</th>
        <th class="r">Tokens out</th><th class="r">TTFT</th><th class="r">tok/s</th><th class="r">Time</th>
        <th class="r" title="times the kernel took its KV blocks back">Preempt.</th><th>Memory</th><th></th>
      </tr></thead>
      <tbody>
        ${shown.map((p) => {
          const t = procTiming(p);
          const live = LIVE_STATES.includes(p.state);
          return html`<tr key=${p.pid} data-pid=${p.pid} data-state=${p.state} class=${live ? "row-live" : ""}>
            <td class="r mono">${p.pid}</td>
            <td>${p.app}</td>
            <td><span class="kind kind-${p.kind}">${p.kind}</span>
              ${p.parent ? html`<span class="muted tiny" title="parent process"> ← ${p.parent}</span>` : null}</td>
            <td class="mono ellipsis cell-session" title=${p.session || ""}>${p.session || "–"}</td>
            <td data-testid="proc-state-cell"><${StateBadge} state=${p.state} />
              ${p.error ? html`<div class="tiny text-bad ellipsis cell-error" title=${p.error}>${p.error}</div>` : null}</td>
            <td>${live ? html`<${Renice} key=${`${p.pid}-${p.priority}`} p=${p} onDone=${load} />`
              : html`<span class="mono">${p.priority}</span>`}</td>
            <td class="r mono">${fmtInt(p.tokens_in)}</td>
            <td class="r mono">${fmtInt(p.tokens_out)}</td>
            <td class="r mono">${fmtMs(t.ttft)}</td>
            <td class="r mono">${t.tps ? t.tps.toFixed(1) : "–"}</td>
            <td class="r mono" title="since queued">${fmtDuration(t.total)}</td>
            <td class="r mono">${p.preemptions || 0}</td>
            <td class="small ellipsis cell-mem" title=${p.memory ? JSON.stringify(p.memory, null, 1) : ""}>
              ${memorySummary(p.memory)}</td>
            <td class="r">${live ? html`<button class="btn btn-danger btn-sm" disabled=${!!killing[p.pid]}
              onClick=${() => kill(p)} data-testid="kill">Kill</button>` : null}</td>
          </tr>`;
        })}
      </tbody>
    </table></div>`}
  </div>`;
}
