// The console's shared state: the apps, the model id, and the system samples polled once a second so the
// System view's charts have a history whichever view is open.
import { useEffect, useState } from "preact/hooks";
import { get } from "./api.js";

const MAX_SAMPLES = 300; // 5 minutes at 1 s

export const store = {
  apps: [],
  models: [],
  system: null, // the latest GET /v1/system
  systemError: null,
  samples: [], // {t, kv, genRate, promptRate, running, waiting, ttft, itl, share: {app: tokens/s}}
  seenApps: [], // every app that ever had a token share, in first-seen order (stable chart colours)
  listeners: new Set(),
  emit() { for (const fn of this.listeners) fn(); },
};

let prev = null; // the previous sample's {time, kernel, cum}
let seenFirst = null; // pids whose first token was already charted (null until the first sample: history)
let seenDone = null; // pids whose end was already charted
let timer = null;

export async function loadApps() {
  const [apps, models] = await Promise.all([get("v1/apps"), get("v1/models")]);
  store.apps = apps.data;
  store.models = models.data;
  store.emit();
}

export function chatModel() {
  return store.models.length ? store.models[0].id : null;
}

const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);

// Latency of the LLM processes seen since the last sample: time to first token as soon as a process has its first
// token, mean inter-token latency once it has finished (ms).
function latency(live, finished) {
  const first = seenFirst === null;
  if (first) { seenFirst = new Set(); seenDone = new Set(); }
  const llm = (p) => p.kind !== "handler" && p.first_token_at;
  const ttfts = [];
  for (const p of [...live, ...finished].filter(llm)) {
    if (!seenFirst.has(p.pid) && !first) ttfts.push((p.first_token_at - p.queued_at) * 1000);
    seenFirst.add(p.pid);
  }
  const itls = [];
  for (const p of finished.filter(llm)) {
    if (!seenDone.has(p.pid) && !first && p.tokens_out > 1 && p.finished_at) {
      itls.push(((p.finished_at - p.first_token_at) / (p.tokens_out - 1)) * 1000);
    }
    seenDone.add(p.pid);
  }
  if (seenFirst.size > 20000) { seenFirst = new Set(finished.map((p) => p.pid)); seenDone = new Set(seenFirst); }
  return { ttft: mean(ttfts), itl: mean(itls) };
}

async function sample() {
  let sys;
  let live = [];
  let finished = [];
  try {
    const [s, running, preempted, done] = await Promise.all([get("v1/system"),
      get("v1/processes", { state: "running", limit: 1000 }), get("v1/processes", { state: "preempted", limit: 1000 }),
      get("v1/processes", { state: "finished", limit: 200 })]);
    sys = s;
    live = [...running.data, ...preempted.data];
    finished = done.data;
  } catch (err) {
    store.systemError = err;
    store.emit();
    return err.status !== 403; // an app's key cannot read the system view: stop asking
  }
  store.systemError = null;
  store.system = sys;
  const k = sys.kernel;
  const now = k ? k.time : Date.now() / 1000;
  const s = { t: now, kv: k ? k.kv_usage * 100 : null, running: k ? k.running : null, waiting: k ? k.waiting : null,
    genRate: null, promptRate: null, share: {}, ...latency(live, finished) };
  // Tokens per app so far: those of ended processes (apps_share) plus those of the processes still running.
  const cum = { ...(sys.apps_share || {}) };
  for (const p of live) if (p.kind !== "handler") cum[p.app] = (cum[p.app] || 0) + p.tokens_in + p.tokens_out;
  for (const app of Object.keys(cum)) if (!store.seenApps.includes(app)) store.seenApps.push(app);
  if (prev && k && prev.kernel) {
    const dt = now - prev.time;
    if (dt > 0) {
      s.genRate = Math.max(k.generated_tokens - prev.kernel.generated_tokens, 0) / dt;
      s.promptRate = Math.max(k.prompt_tokens - prev.kernel.prompt_tokens, 0) / dt;
      for (const app of store.seenApps) s.share[app] = Math.max((cum[app] || 0) - (prev.cum[app] || 0), 0) / dt;
    }
  }
  prev = { time: now, kernel: k, cum };
  store.samples.push(s);
  if (store.samples.length > MAX_SAMPLES) store.samples.splice(0, store.samples.length - MAX_SAMPLES);
  store.emit();
  return true;
}

export function startPolling(ms = 1000) {
  if (timer !== null) return;
  const tick = async () => {
    let again = true;
    try { again = await sample(); } catch { /* network blip: try again */ }
    timer = again ? setTimeout(tick, ms) : null;
  };
  timer = setTimeout(tick, 0);
}

export function restartPolling() {
  clearTimeout(timer);
  timer = null;
  prev = null;
  startPolling();
}

// Re-render the calling component whenever the store changes.
export function useStore() {
  const [, setN] = useState(0);
  useEffect(() => {
    const fn = () => setN((n) => n + 1);
    store.listeners.add(fn);
    return () => store.listeners.delete(fn);
  }, []);
  return store;
}

// Open the chat on an app ("app:NAME") or on the raw model ("model").
export function openChat(target) {
  localStorage.setItem("llmasos.chatTarget", JSON.stringify(target));
  localStorage.removeItem("llmasos.chatSession");
  location.hash = "#/chat";
}
