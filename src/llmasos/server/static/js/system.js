// System: the kernel's gauges and time series drawn from GET /v1/system (sampled once a second by the store).
import { useEffect, useRef, useState } from "preact/hooks";
import { useStore } from "./store.js";
import { Empty, fmtDuration, fmtInt, html, PageHeader, pct } from "./ui.js";

export const PALETTE = ["#6366f1", "#10b981", "#f59e0b", "#f43f5e", "#0ea5e9", "#8b5cf6", "#14b8a6", "#f97316"];

const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

function useTheme() {
  const [theme, setTheme] = useState(document.documentElement.dataset.theme);
  useEffect(() => {
    const fn = () => setTheme(document.documentElement.dataset.theme);
    window.addEventListener("llmasos-theme", fn);
    return () => window.removeEventListener("llmasos-theme", fn);
  }, []);
  return theme;
}

function alpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}

// One uPlot chart. `series`: [{label, color, fill, values?}]; `data`: [xs, ...ys]. Rebuilt when the theme
// or the series change; otherwise only its data is replaced.
const hms = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit",
  hourCycle: "h23" });
// 0.25, 2.5, 25, 250: as many decimals as the value needs.
const num = (v) => (Math.abs(v) >= 10 || Number.isInteger(v) ? v.toFixed(0) : v.toFixed(Math.abs(v) >= 1 ? 1 : 2));
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
const INT_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];

function Chart({ id, title, unit, series, data, yMin = 0, yMax, fmt = num, stacked = false, raw,
  integer = false }) {
  const box = useRef(null);
  const plot = useRef(null);
  const rawRef = useRef(raw);
  rawRef.current = raw; // the legend reads the latest values, not those of the render that built the chart
  const theme = useTheme();
  const sig = series.map((s) => s.label).join("|");
  useEffect(() => {
    const el = box.current;
    const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--grid"), width: 1 },
      ticks: { stroke: cssVar("--grid"), width: 1 }, font: "11px system-ui, sans-serif" };
    const opts = {
      width: Math.max(el.clientWidth, 200), height: 190,
      padding: [8, 28, 0, 0],
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      legend: { live: true },
      scales: { x: { time: true },
        y: { range: (u, lo, hi) => [yMin, Math.min(Math.max(hi * 1.15, yMin + 1), yMax ?? Infinity)] } },
      axes: [{ ...axis, space: 70, incrs: TIME_INCRS, values: (u, vals) => vals.map(hms) },
        { ...axis, size: 48, incrs: integer ? INT_INCRS : undefined,
          values: (u, vals) => vals.map((v) => (v === null ? "" : fmt(v))) }],
      series: [{ label: "time", value: (u, v) => (v === null ? "–" : hms(v)) },
        ...series.map((s, i) => ({
          label: s.label, stroke: s.color, width: 1.6, spanGaps: !!s.spanGaps,
          fill: s.fill ? alpha(s.color, stacked ? 0.85 : 0.12) : undefined,
          points: { show: !!s.points, size: 5, fill: s.color },
          value: (u, v, si, idx) => {
            const x = rawRef.current ? rawRef.current[i][idx] : v;
            return x === null || x === undefined ? "–" : `${fmt(x)}${unit ? ` ${unit}` : ""}`;
          },
        }))],
    };
    plot.current = new window.uPlot(opts, data, el);
    el.uplot = plot.current; // for tests and the curious: document.querySelector(".chart").uplot.data
    const ro = new ResizeObserver(() => plot.current && plot.current.setSize({ width: Math.max(el.clientWidth, 200),
      height: 190 }));
    ro.observe(el);
    return () => { ro.disconnect(); plot.current.destroy(); plot.current = null; };
  }, [theme, sig]);
  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    u.setData(data);
    if (u.cursor.left < 0 && data[0].length) u.setLegend({ idx: data[0].length - 1 }); // idle: the latest values
  });
  return html`<div class="card chart-card" data-testid=${`chart-${id}`}>
    <div class="card-title">${title}</div>
    <div class="chart" ref=${box} data-points=${data[0].length}></div>
  </div>`;
}

function Stat({ label, value, sub, testid }) {
  return html`<div class="stat card" data-testid=${testid}>
    <div class="stat-label">${label}</div>
    <div class="stat-value">${value}</div>
    ${sub ? html`<div class="stat-sub muted tiny">${sub}</div>` : null}
  </div>`;
}

export function SystemView() {
  const s = useStore();
  if (s.systemError && s.systemError.status === 403) {
    return html`<div class="page"><${PageHeader} title="System" />
      <${Empty} title="The system view needs an admin key">This key belongs to an app. Use an admin key
      (llmasos keys create --admin) to see the kernel.</${Empty}></div>`;
  }
  const sys = s.system;
  if (!sys) {
    return html`<div class="page"><${PageHeader} title="System" />
      ${s.systemError ? html`<div class="alert alert-error">${s.systemError.message}</div>`
        : html`<div class="muted pad">Waiting for the first sample…</div>`}</div>`;
  }
  const k = sys.kernel || {};
  const xs = s.samples.map((x) => x.t);
  const col = (f) => s.samples.map(f);
  const last = s.samples[s.samples.length - 1] || {};
  const apps = s.seenApps;
  // An app not seen yet had no tokens: 0, not a gap (only the first sample, with no rate yet, is one).
  const shareRaw = apps.map((a) => col((x) => (x.genRate === null ? null : x.share[a] ?? 0)));
  // Stacked: series k is the sum of the first k apps; drawn largest first so each band shows.
  const cum = apps.map((_, i) => col((x, j) => {
    let t = null;
    for (let q = 0; q <= i; q++) { const v = shareRaw[q][j]; if (v !== null) t = (t || 0) + v; }
    return t;
  }));
  const order = apps.map((_, i) => apps.length - 1 - i);
  const totalShare = Object.values(sys.apps_share || {}).reduce((a, b) => a + b, 0);

  return html`<div class="page">
    <${PageHeader} title="System" subtitle=${`Sampled every second · ${s.samples.length} samples`} />
    <div class="stats">
      <${Stat} label="Model" value=${sys.chat_model} sub=${`window ${fmtInt(sys.window)} tokens`} testid="stat-model" />
      <${Stat} label="Uptime" value=${fmtDuration(sys.uptime_s)} sub=${`${sys.apps.length} apps installed`} />
      <${Stat} label="KV cache" value=${pct(k.kv_usage)}
        sub=${`${fmtInt(k.kv_blocks_used)} / ${fmtInt(k.kv_blocks_total)} blocks`} testid="stat-kv" />
      <${Stat} label="Requests" value=${`${k.running ?? 0} running`} sub=${`${k.waiting ?? 0} waiting`} />
      <${Stat} label="Throughput" value=${last.genRate != null ? `${last.genRate.toFixed(1)} tok/s` : "–"}
        sub=${`prompt ${last.promptRate != null ? last.promptRate.toFixed(0) : "–"} tok/s`} />
      <${Stat} label="Prefix cache hits" value=${pct(k.prefix_hit_rate)} sub=${`${fmtInt(k.preemptions)} preemptions`} />
      <${Stat} label="Tokens" value=${fmtInt(k.generated_tokens)} sub=${`generated · ${fmtInt(k.prompt_tokens)} prompt`} />
      <${Stat} label="Engine steps" value=${fmtInt(k.steps)} />
    </div>
    <div class="charts">
      <${Chart} id="kv" title="KV cache usage" unit="%" yMax=${100} fmt=${num}
        series=${[{ label: "KV cache", color: PALETTE[0], fill: true }]} data=${[xs, col((x) => x.kv)]} />
      <${Chart} id="throughput" title="Throughput" unit="tok/s" fmt=${(v) => v.toFixed(0)}
        series=${[{ label: "generated", color: PALETTE[1], fill: true }, { label: "prompt", color: PALETTE[4] }]}
        data=${[xs, col((x) => x.genRate), col((x) => x.promptRate)]} />
      <${Chart} id="latency" title="Latency (mean of the requests seen each second)" unit="ms"
        series=${[{ label: "time to first token", color: PALETTE[2], spanGaps: true, points: true },
          { label: "inter-token (finished)", color: PALETTE[5], spanGaps: true, points: true }]}
        data=${[xs, col((x) => x.ttft), col((x) => x.itl)]} />
      <${Chart} id="queue" title="Kernel queue (requests)" fmt=${(v) => v.toFixed(0)} integer
        series=${[{ label: "running", color: PALETTE[1] }, { label: "waiting", color: PALETTE[3] }]}
        data=${[xs, col((x) => x.running), col((x) => x.waiting)]} />
      <div class="chart-wide">
        <${Chart} id="share" title="Token share by app (prompt + generated tokens/s, stacked)" unit="tok/s" stacked
          fmt=${(v) => v.toFixed(0)} raw=${order.map((i) => shareRaw[i])}
          series=${order.map((i) => ({ label: apps[i], color: PALETTE[i % PALETTE.length], fill: true }))}
          data=${[xs, ...order.map((i) => cum[i])]} />
      </div>
    </div>
    <div class="grid-2">
      <div class="card">
        <div class="card-title">Token share since start</div>
        ${apps.length === 0 ? html`<div class="muted small">No LLM work yet.</div>` : html`<div class="share-list">
          ${apps.map((a, i) => {
            const v = (sys.apps_share || {})[a] || 0;
            return html`<div class="share-row" key=${a}>
              <span class="swatch" style=${`background:${PALETTE[i % PALETTE.length]}`}></span>
              <span class="share-app">${a}</span>
              <span class="bar"><span class="bar-fill" style=${`width:${totalShare ? (v / totalShare) * 100 : 0}%;background:${PALETTE[i % PALETTE.length]}`}></span></span>
              <span class="mono small">${fmtInt(v)} tok · ${totalShare ? pct(v / totalShare, 0) : "–"}</span>
            </div>`;
          })}
        </div>`}
      </div>
      <div class="card">
        <div class="card-title">Configuration</div>
        <dl class="kv-grid">
          <dt>chat model</dt><dd class="mono">${sys.chat_model}</dd>
          <dt>model source</dt><dd class="mono ellipsis" title=${sys.model}>${sys.model || "–"}</dd>
          <dt>context window</dt><dd>${fmtInt(sys.window)} tokens</dd>
          <dt>embedder</dt><dd class="mono">${sys.embed_model || sys.embedder}</dd>
          <dt>database</dt><dd>${sys.database}${sys.pgvector ? " + pgvector" : ""}</dd>
          <dt>data directory</dt><dd class="mono ellipsis" title=${sys.data_dir}>${sys.data_dir}</dd>
          <dt>apps</dt><dd>${sys.apps.join(", ")}</dd>
        </dl>
      </div>
    </div>
  </div>`;
}
