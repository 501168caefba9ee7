// Chat: talk to an app (POST /v1/apps/{app}/chat, streamed) or to the raw model (/v1/chat/completions with
// logprobs). Each reply shows its process record; the model's replies can show every token's probability.
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { get, stream } from "./api.js";
import { newSessionId } from "./appkit.js";
import { chatModel, useStore } from "./store.js";
import { fmtAgo, fmtDateTime, fmtMs, html, Icon, Markdown, procTiming, Toggle, useLocal } from "./ui.js";

const MODEL = "model";
const cache = new Map(); // "target|session" -> messages (replies keep their process records across switches)
const running = new Map(); // "target|session" -> AbortController of the reply being streamed
const TITLES = "llmasos.titles";
const MODEL_CHATS = "llmasos.modelChats";

const readJSON = (k, d) => { try { return JSON.parse(localStorage.getItem(k)) ?? d; } catch { return d; } };
const writeJSON = (k, v) => localStorage.setItem(k, JSON.stringify(v));
const titleOf = (text) => text.replace(/\s+/g, " ").trim().slice(0, 60);

function saveTitle(target, sid, text) {
  const t = readJSON(TITLES, {});
  if (!t[`${target}|${sid}`]) {
    t[`${target}|${sid}`] = titleOf(text);
    writeJSON(TITLES, t);
  }
}

function saveModelChat(sid, messages) {
  const chats = readJSON(MODEL_CHATS, []).filter((c) => c.id !== sid);
  const first = messages.find((m) => m.role === "user");
  chats.unshift({ id: sid, title: first ? titleOf(first.content) : sid, last_at: Date.now() / 1000,
    messages: messages.filter((m) => !m.error || m.content).map(({ role, content, stats }) => ({ role, content, stats })) });
  writeJSON(MODEL_CHATS, chats.slice(0, 50));
}

// -- the process record under an app's reply --------------------------------------------------------------
const MEMORY_LABELS = {
  budget: "token budget", prompt_tokens: "prompt tokens", kept_turns: "turns kept", summarised_turns: "turns summarised",
  dropped_turns: "turns dropped", recall_items: "recalled items", archival_items: "archival items",
  truncated: "truncated", build_ms: "built in",
};

function memoryValue(k, v) {
  if (k === "build_ms" && typeof v === "number") return `${v.toFixed(1)} ms`;
  if (Array.isArray(v)) return v.length ? v.join(", ") : "nothing";
  if (v && typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function MemoryReport({ memory }) {
  if (!memory) return html`<div class="muted small">No memory report (the call sent its own messages).</div>`;
  return html`<dl class="kv-grid" data-testid="memory-report">
    ${Object.entries(memory).map(([k, v]) => html`<dt>${MEMORY_LABELS[k] || k.replace(/_/g, " ")}</dt>
      <dd>${memoryValue(k, v)}</dd>`)}
  </dl>`;
}

function ProcDetails({ p }) {
  const t = procTiming(p);
  return html`<div class="proc-details">
    <div class="proc-details-head">pid ${p.pid} · ${p.kind} · <span class=${`st-text-${p.state}`}>${p.state}</span></div>
    <dl class="kv-grid">
      <dt>tokens in / out</dt><dd>${p.tokens_in} / ${p.tokens_out}</dd>
      <dt>time to first token</dt><dd>${fmtMs(t.ttft)}</dd>
      <dt>decode speed</dt><dd>${t.tps ? `${t.tps.toFixed(1)} tok/s` : "–"}</dd>
      <dt>total</dt><dd>${fmtMs(t.total)}</dd>
      <dt>priority</dt><dd>${p.priority}</dd>
      <dt>preemptions</dt><dd>${p.preemptions}</dd>
      <dt>queued at</dt><dd>${fmtDateTime(p.queued_at)}</dd>
      ${p.request_id ? html`<dt>kernel request</dt><dd class="mono">${p.request_id}</dd>` : null}
      ${p.error ? html`<dt>error</dt><dd class="text-bad">${p.error}</dd>` : null}
    </dl>
    <div class="proc-details-sub">What the memory manager put in the prompt</div>
    <${MemoryReport} memory=${p.memory} />
  </div>`;
}

function ProcessRecord({ record }) {
  const [open, setOpen] = useState(false);
  const procs = (record.processes || []).filter((p) => p.kind !== "handler");
  return html`<div class="record" data-testid="process-record">
    <div class="record-line">
      <span class="chip chip-muted" title="The handler process that ran the app's chat">handler ${record.pid ?? "–"}</span>
      ${procs.length === 0 ? html`<span class="chip chip-muted">no LLM call</span>` : null}
      ${procs.map((p) => {
        const t = procTiming(p);
        const m = p.memory;
        return html`<span class="record-proc" key=${p.pid} data-pid=${p.pid}>
          <span class="chip" title="LLM process">pid ${p.pid}${p.kind !== "llm" ? ` · ${p.kind}` : ""}</span>
          <span class="chip" title="prompt tokens → generated tokens">${p.tokens_in} → ${p.tokens_out} tok</span>
          <span class="chip" title="time to first token">TTFT ${fmtMs(t.ttft)}</span>
          <span class="chip" title="decode speed">${t.tps ? t.tps.toFixed(1) : "–"} tok/s</span>
          ${m ? html`<span class="chip" title="what the memory manager kept, summarised and dropped">
            memory: ${m.kept_turns ?? 0} kept · ${m.summarised_turns ?? 0} summarised · ${m.dropped_turns ?? 0} dropped
            ${m.recall_items || m.archival_items ? ` · ${(m.recall_items || 0) + (m.archival_items || 0)} recalled` : ""}
          </span>` : null}
          ${p.state !== "finished" ? html`<span class=${`badge st-${p.state}`}>${p.state}</span>` : null}
        </span>`;
      })}
      <button class="link-btn" onClick=${() => setOpen(!open)} data-testid="record-toggle">
        ${open ? "hide details" : "details"}</button>
    </div>
    ${open ? html`<div class="record-details">${procs.map((p) => html`<${ProcDetails} key=${p.pid} p=${p} />`)}</div>`
      : null}
  </div>`;
}

function ModelStats({ stats }) {
  return html`<div class="record" data-testid="model-stats">
    <div class="record-line">
      <span class="chip" title="prompt tokens → generated tokens">${stats.prompt_tokens ?? "?"} → ${stats.completion_tokens ?? "?"} tok</span>
      <span class="chip" title="time to first token, measured in the browser">TTFT ${fmtMs(stats.ttft)}</span>
      <span class="chip" title="decode speed, measured in the browser">${stats.tps ? stats.tps.toFixed(1) : "–"} tok/s</span>
      ${stats.finish_reason ? html`<span class="chip chip-muted">finish: ${stats.finish_reason}</span>` : null}
    </div>
  </div>`;
}

// -- token probabilities ----------------------------------------------------------------------------------
const prob = (lp) => Math.exp(lp);
const fmtP = (p) => {
  const x = p * 100;
  if (x >= 99.95) return "100%";
  if (x >= 1) return `${x.toFixed(1)}%`;
  if (x >= 0.01) return `${x.toFixed(2)}%`;
  return "<0.01%";
};
const showToken = (t) => JSON.stringify(t).slice(1, -1).replace(/ /g, "␣");
const SPECIAL = /^(<\|[^|]*\|>|<\/?s>|<unk>|<pad>)$/; // end-of-turn and other control tokens
const hue = (p) => Math.round(Math.max(0, Math.min(1, p)) * 120); // red (unlikely) → green (certain)

function TokenView({ tokens, streaming }) {
  const [pop, setPop] = useState(null); // {i, x, y, pinned}
  const box = useRef(null);
  const place = (el, i, pinned) => {
    const r = el.getBoundingClientRect();
    const b = box.current.getBoundingClientRect();
    const x = Math.max(0, Math.min(r.left - b.left, b.width - 290));
    setPop({ i, x, y: r.bottom - b.top + 6, pinned });
  };
  const target = (e) => e.target.closest && e.target.closest("[data-ti]");
  const over = (e) => {
    const el = target(e);
    if (el && !(pop && pop.pinned)) place(el, +el.dataset.ti, false);
  };
  const out = (e) => {
    if (pop && !pop.pinned && !(e.relatedTarget && e.relatedTarget.closest && e.relatedTarget.closest(".lp-pop"))) {
      setPop(null);
    }
  };
  const click = (e) => {
    const el = target(e);
    if (!el) return;
    const i = +el.dataset.ti;
    if (pop && pop.pinned && pop.i === i) setPop(null);
    else place(el, i, true);
  };
  useEffect(() => {
    if (!pop || !pop.pinned) return undefined;
    const away = (e) => { if (box.current && !box.current.contains(e.target)) setPop(null); };
    document.addEventListener("mousedown", away);
    return () => document.removeEventListener("mousedown", away);
  }, [pop]);
  const tok = pop ? tokens[pop.i] : null;
  return html`<div class="tokens" ref=${box} onMouseOver=${over} onMouseOut=${out} onClick=${click}
      data-testid="token-view">
    ${tokens.map((t, i) => {
      const p = prob(t.logprob);
      return html`<span key=${i} data-ti=${i}
        class="tok ${SPECIAL.test(t.token) ? "tok-special" : ""} ${pop && pop.i === i ? "tok-active" : ""}"
        style=${`--h:${hue(p)}`} title="">${t.token}</span>`;
    })}${streaming ? html`<span class="caret"></span>` : null}
    ${tok ? html`<div class="lp-pop ${pop.pinned ? "pinned" : ""}" style=${`left:${pop.x}px;top:${pop.y}px`}
        data-testid="lp-pop">
      <div class="lp-head">
        <code class="lp-token">${showToken(tok.token)}</code>
        <span class="lp-p" style=${`--h:${hue(prob(tok.logprob))}`}>${fmtP(prob(tok.logprob))}</span>
        <span class="muted tiny lp-lp">logprob ${tok.logprob.toFixed(3)}</span>
      </div>
      <div class="lp-sub">Top alternatives</div>
      ${(tok.top_logprobs || []).some((a) => a.token === tok.token) ? null
        : html`<div class="muted tiny">sampled outside the top ${(tok.top_logprobs || []).length}</div>`}
      ${(tok.top_logprobs || []).map((a) => html`<div class="lp-alt ${a.token === tok.token ? "chosen" : ""}"
          data-testid="lp-alt">
        <code>${showToken(a.token)}</code>
        <span class="lp-bar"><span style=${`width:${(prob(a.logprob) * 100).toFixed(1)}%;--h:${hue(prob(a.logprob))}`}>
        </span></span>
        <span class="lp-num">${fmtP(prob(a.logprob))}</span>
      </div>`)}
      ${pop.pinned ? null : html`<div class="muted tiny">click the token to pin</div>`}
    </div>` : null}
  </div>`;
}

// -- messages ---------------------------------------------------------------------------------------------
function Message({ m, showProbs }) {
  const copy = () => navigator.clipboard && navigator.clipboard.writeText(m.content);
  if (m.role === "user") {
    return html`<div class="msg msg-user" data-role="user"><div class="bubble">${m.content}</div></div>`;
  }
  if (m.role !== "assistant") {
    return html`<div class="msg msg-other" data-role=${m.role}><div class="muted small">${m.role}</div>
      <div class="bubble">${m.content}</div></div>`;
  }
  const probs = showProbs && m.tokens && m.tokens.length;
  return html`<div class="msg msg-assistant ${m.streaming ? "streaming" : ""}" data-role="assistant"
      data-streaming=${m.streaming ? "true" : "false"}>
    <div class="avatar"><${Icon} name="cpu" size=${16} /></div>
    <div class="msg-body">
      <div class="bubble" data-testid="assistant-text">
        ${probs ? html`<${TokenView} tokens=${m.tokens} streaming=${m.streaming} />`
          : html`<${Markdown} text=${m.content} />${m.streaming ? html`<span class="caret"></span>` : null}`}
        ${m.streaming && !m.content ? html`<span class="thinking">thinking…</span>` : null}
      </div>
      ${m.error ? html`<div class="alert alert-error small" data-testid="reply-error">${m.error}</div>` : null}
      ${m.stopped ? html`<div class="muted small">stopped</div>` : null}
      ${m.record ? html`<${ProcessRecord} record=${m.record} />` : null}
      ${m.stats ? html`<${ModelStats} stats=${m.stats} />` : null}
      ${!m.streaming && m.content ? html`<div class="msg-actions">
        <button class="icon-btn" title="Copy" onClick=${copy}><${Icon} name="copy" size=${14} /></button>
        ${m.created_at ? html`<span class="muted tiny">${fmtDateTime(m.created_at)}</span>` : null}
      </div>` : null}
    </div>
  </div>`;
}

const SUGGESTIONS = {
  app: ["What can you do?", "Remember that I prefer short answers.", "What is 17 * 23?"],
  model: ["Write a haiku about schedulers.", "Explain a KV cache in one sentence.", "Tell me a short story."],
};

// -- the view ---------------------------------------------------------------------------------------------
export function ChatView() {
  const s = useStore();
  const chatApps = s.apps.filter((a) => a.kind === "app" && (a.handlers || []).includes("chat"));
  const [target, setTarget] = useLocal("llmasos.chatTarget", "app:assistant");
  const [sessionId, setSessionId] = useLocal("llmasos.chatSession", null);
  const [messages, setMessages] = useState([]);
  const [sessions, setSessions] = useState([]);
  const [loading, setLoading] = useState(false);
  const [draft, setDraft] = useState("");
  const [showProbs, setShowProbs] = useLocal("llmasos.showProbs", true);
  const [params, setParams] = useLocal("llmasos.modelParams", { temperature: 0.7, max_tokens: 256, system: "" });
  const [showParams, setShowParams] = useState(false);
  const [, force] = useState(0);
  const key = `${target}|${sessionId || "new"}`;
  const keyRef = useRef(key);
  keyRef.current = key;
  const list = useRef(null);
  const stick = useRef(true);
  const input = useRef(null);
  const app = target.startsWith("app:") ? target.slice(4) : null;
  const isModel = target === MODEL;

  // An app that is gone (or not loaded yet) falls back to the first chat app.
  useEffect(() => {
    if (app && s.apps.length && !chatApps.find((a) => a.name === app)) {
      setTarget(chatApps.length ? `app:${chatApps[0].name}` : MODEL);
      setSessionId(null);
    }
  }, [s.apps, app]);

  const update = (k, fn) => {
    const next = fn(cache.get(k) || []);
    cache.set(k, next);
    if (keyRef.current === k) setMessages(next);
  };
  const patchLast = (k, fn) => update(k, (ms) => {
    const c = ms.slice();
    c[c.length - 1] = { ...c[c.length - 1], ...fn(c[c.length - 1]) };
    return c;
  });

  const loadSessions = async () => {
    if (isModel) {
      setSessions(readJSON(MODEL_CHATS, []).map((c) => ({ session_id: c.id, title: c.title, last_at: c.last_at,
        messages: c.messages.length })));
      return;
    }
    if (!app) return;
    let data;
    try { data = (await get(`v1/apps/${encodeURIComponent(app)}/sessions`)).data; } catch { return; }
    const titles = readJSON(TITLES, {});
    const withTitles = () => data.map((x) => ({ ...x, title: titles[`${target}|${x.session_id}`] }));
    setSessions(withTitles());
    // Sessions started elsewhere: their first message is the title (asked once, then kept in this browser).
    const missing = data.filter((x) => !titles[`${target}|${x.session_id}`]).slice(0, 20);
    for (const x of missing) {
      try {
        const first = (await get(`v1/apps/${encodeURIComponent(app)}/sessions/${encodeURIComponent(x.session_id)}`,
          { limit: 1 })).data[0];
        titles[`${target}|${x.session_id}`] = first ? titleOf(first.content) : x.session_id;
      } catch { break; }
    }
    if (missing.length) {
      writeJSON(TITLES, { ...readJSON(TITLES, {}), ...titles });
      setSessions(withTitles());
    }
  };

  useEffect(() => { setSessions([]); loadSessions(); }, [target]);

  // The messages of the open session: from the cache, else from the server (apps) or this browser (model).
  useEffect(() => {
    stick.current = true;
    if (cache.has(key)) { setMessages(cache.get(key)); return; }
    if (!sessionId) { setMessages([]); return; }
    if (isModel) {
      const c = readJSON(MODEL_CHATS, []).find((x) => x.id === sessionId);
      const ms = c ? c.messages : [];
      cache.set(key, ms);
      setMessages(ms);
      return;
    }
    setMessages([]);
    setLoading(true);
    const k = key;
    get(`v1/apps/${encodeURIComponent(app)}/sessions/${encodeURIComponent(sessionId)}`, { limit: 2000 })
      .then((r) => {
        const ms = r.data.map((m) => ({ role: m.role, content: m.content, created_at: m.created_at }));
        if (!cache.has(k)) cache.set(k, ms);
        if (keyRef.current === k) setMessages(cache.get(k));
      })
      .catch((err) => { if (keyRef.current === k) setMessages([{ role: "assistant", content: "", error: err.message }]); })
      .finally(() => setLoading(false));
  }, [key]);

  useLayoutEffect(() => {
    const el = list.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  });

  const onScroll = (e) => {
    const el = e.currentTarget;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 60;
  };

  async function runApp(k, sid, text, signal) {
    for await (const ev of stream(`v1/apps/${encodeURIComponent(app)}/chat`,
      { session_id: sid, message: text, stream: true }, signal)) {
      if (typeof ev.delta === "string") patchLast(k, (m) => ({ content: m.content + ev.delta }));
      else if (ev.done) patchLast(k, () => ({ record: ev }));
    }
  }

  async function runModel(k, history, signal) {
    const model = chatModel();
    const msgs = [];
    if (params.system && params.system.trim()) msgs.push({ role: "system", content: params.system });
    for (const m of history) if ((m.role === "user" || m.role === "assistant") && m.content) {
      msgs.push({ role: m.role, content: m.content });
    }
    const body = { model, messages: msgs, stream: true, stream_options: { include_usage: true },
      logprobs: true, top_logprobs: 5 };
    const temp = parseFloat(params.temperature);
    if (isFinite(temp)) body.temperature = Math.max(0, Math.min(2, temp));
    const maxTok = parseInt(params.max_tokens, 10);
    if (maxTok > 0) body.max_tokens = maxTok;
    const t0 = performance.now();
    let first = null;
    const stats = { prompt_tokens: null, completion_tokens: 0, ttft: null, tps: null, finish_reason: null };
    for await (const chunk of stream("v1/chat/completions", body, signal)) {
      const ch = chunk.choices && chunk.choices[0];
      if (ch) {
        const piece = (ch.delta && ch.delta.content) || "";
        const lps = (ch.logprobs && ch.logprobs.content) || [];
        if (piece || lps.length) {
          if (first === null) first = performance.now();
          stats.completion_tokens += lps.length;
          patchLast(k, (m) => ({ content: m.content + piece, tokens: [...(m.tokens || []), ...lps] }));
        }
        if (ch.finish_reason) stats.finish_reason = ch.finish_reason;
      }
      if (chunk.usage) {
        stats.prompt_tokens = chunk.usage.prompt_tokens;
        stats.completion_tokens = chunk.usage.completion_tokens;
      }
    }
    const end = performance.now();
    if (first !== null) {
      stats.ttft = (first - t0) / 1000;
      if (stats.completion_tokens > 1 && end > first) stats.tps = (stats.completion_tokens - 1) / ((end - first) / 1000);
    }
    patchLast(k, () => ({ stats }));
  }

  async function send(textIn) {
    const text = (textIn ?? draft).trim();
    if (!text || running.has(key)) return;
    if (isModel && !chatModel()) return;
    setDraft("");
    const sid = sessionId || newSessionId();
    const k = `${target}|${sid}`;
    const history = cache.get(key) || messages;
    const now = Date.now() / 1000;
    cache.set(k, [...history, { role: "user", content: text, created_at: now },
      { role: "assistant", content: "", streaming: true }]);
    saveTitle(target, sid, text);
    if (!sessionId) {
      cache.delete(key);
      keyRef.current = k;
      setSessionId(sid);
    }
    setMessages(cache.get(k));
    stick.current = true;
    const ctrl = new AbortController();
    running.set(k, ctrl);
    force((n) => n + 1);
    try {
      if (isModel) await runModel(k, [...history, { role: "user", content: text }], ctrl.signal);
      else await runApp(k, sid, text, ctrl.signal);
    } catch (err) {
      if (err.name === "AbortError") patchLast(k, () => ({ stopped: true }));
      else patchLast(k, () => ({ error: err.message }));
    } finally {
      patchLast(k, () => ({ streaming: false, created_at: Date.now() / 1000 }));
      running.delete(k);
      force((n) => n + 1);
      if (isModel) saveModelChat(sid, cache.get(k));
      loadSessions();
    }
  }

  const stop = () => { const c = running.get(key); if (c) c.abort(); };
  const newChat = () => { setSessionId(null); setDraft(""); input.current && input.current.focus(); };
  const pickTarget = (t) => { if (t !== target) { setTarget(t); setSessionId(null); } };
  const deleteModelChat = (id) => {
    writeJSON(MODEL_CHATS, readJSON(MODEL_CHATS, []).filter((c) => c.id !== id));
    cache.delete(`${MODEL}|${id}`);
    if (sessionId === id) setSessionId(null);
    loadSessions();
  };
  const onKey = (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  };
  useEffect(() => { // the composer grows with its text
    const el = input.current;
    if (el) { el.style.height = "auto"; el.style.height = `${Math.min(el.scrollHeight, 220)}px`; }
  }, [draft]);

  const busy = running.has(key);
  const modelId = chatModel();
  const targetLabel = isModel ? `${modelId || "model"} (raw)` : app;
  const current = sessions.find((x) => x.session_id === sessionId);
  const title = sessionId ? (current && current.title) || readJSON(TITLES, {})[key] || sessionId : "New chat";

  return html`<div class="chat">
    <aside class="sessions">
      <div class="sessions-head">
        <label class="muted tiny upper">Chat with</label>
        <select class="input select" value=${target} onChange=${(e) => pickTarget(e.currentTarget.value)}
            data-testid="chat-target">
          ${chatApps.map((a) => html`<option value=${`app:${a.name}`}>${a.name} · app</option>`)}
          ${!chatApps.find((a) => `app:${a.name}` === target) && app ? html`<option value=${target}>${app}</option>` : null}
          <option value=${MODEL}>${modelId || "model"} · raw model</option>
        </select>
        <button class="btn btn-primary btn-block" onClick=${newChat} data-testid="new-chat">
          <${Icon} name="plus" size=${16} /> New chat</button>
      </div>
      <div class="sessions-list" data-testid="sessions">
        ${sessions.length === 0 ? html`<div class="muted small pad">No conversations yet.</div>` : null}
        ${sessions.map((x) => html`<div key=${x.session_id}
            class="session ${x.session_id === sessionId ? "active" : ""}" data-session=${x.session_id}
            onClick=${() => setSessionId(x.session_id)} title=${x.session_id}>
          <div class="session-title ellipsis">${x.title || x.session_id}</div>
          <div class="session-meta muted tiny">
            ${x.messages} message${x.messages === 1 ? "" : "s"} · ${fmtAgo(x.last_at)}
            ${running.has(`${target}|${x.session_id}`) ? html`<span class="dot dot-ok pulse"></span>` : null}
          </div>
          ${isModel ? html`<button class="icon-btn session-del" title="Delete"
            onClick=${(e) => { e.stopPropagation(); deleteModelChat(x.session_id); }}>
            <${Icon} name="trash" size=${14} /></button>` : null}
        </div>`)}
      </div>
    </aside>
    <section class="conversation">
      <header class="chat-header">
        <div class="chat-title">
          <div class="ellipsis strong" data-testid="chat-title">${title}</div>
          <div class="muted tiny">${isModel ? "the raw model via /v1/chat/completions: no app, no memory"
            : html`app <b>${app}</b> · session <span class="mono">${sessionId || "(new)"}</span>`}</div>
        </div>
        <div class="chat-tools">
          <${Toggle} checked=${showProbs && isModel} disabled=${!isModel} onChange=${setShowProbs}
            label="Token probabilities" testid="probs-toggle"
            title=${isModel ? "Colour each token by its probability; hover or click for the alternatives"
              : "Only the raw model target returns token probabilities"} />
          ${isModel ? html`<button class="btn btn-ghost btn-icon ${showParams ? "active" : ""}" title="Parameters"
            onClick=${() => setShowParams(!showParams)}><${Icon} name="sliders" size=${16} /></button>` : null}
        </div>
      </header>
      ${isModel && showParams ? html`<div class="params">
        <label>System prompt<input class="input" value=${params.system} placeholder="(none)"
          onInput=${(e) => setParams({ ...params, system: e.currentTarget.value })} /></label>
        <label>Temperature<input class="input num" type="number" min="0" max="2" step="0.1" value=${params.temperature}
          onInput=${(e) => setParams({ ...params, temperature: e.currentTarget.value })} /></label>
        <label>Max tokens<input class="input num" type="number" min="1" step="1" value=${params.max_tokens}
          onInput=${(e) => setParams({ ...params, max_tokens: e.currentTarget.value })} /></label>
      </div>` : null}
      ${isModel && showProbs ? html`<div class="lp-legend muted tiny">
        <span>token probability</span>
        ${[0.95, 0.7, 0.4, 0.15, 0.02].map((p) => html`<span class="tok" style=${`--h:${hue(p)}`}>
          ${p >= 0.9 ? "≥ 90%" : p >= 0.6 ? "60–90%" : p >= 0.3 ? "30–60%" : p >= 0.1 ? "10–30%" : "< 10%"}</span>`)}
      </div>` : null}
      <div class="messages" ref=${list} onScroll=${onScroll} data-testid="messages">
        ${loading ? html`<div class="muted small pad">Loading…</div>` : null}
        ${!loading && messages.length === 0 ? html`<div class="welcome">
          <div class="welcome-title">${isModel ? "Talk to the model" : `Chat with ${app || "an app"}`}</div>
          <div class="muted">${isModel ? "Raw completions, every token with its probability and alternatives."
            : "Replies stream in; under each one, the process that produced it: tokens, latency and memory."}</div>
          <div class="suggestions">
            ${SUGGESTIONS[isModel ? "model" : "app"].map((t) => html`<button class="suggestion"
              onClick=${() => send(t)}>${t}</button>`)}
          </div>
        </div>` : null}
        <div class="messages-inner">
          ${messages.map((m, i) => html`<${Message} key=${i} m=${m} showProbs=${showProbs && isModel} />`)}
        </div>
      </div>
      <div class="composer-wrap">
        <div class="composer">
          <textarea ref=${input} rows="1" value=${draft} placeholder=${`Message ${targetLabel}…`}
            onInput=${(e) => setDraft(e.currentTarget.value)} onKeyDown=${onKey} data-testid="composer"></textarea>
          ${busy ? html`<button class="btn btn-round btn-stop" onClick=${stop} title="Stop" data-testid="stop">
              <${Icon} name="stop" size=${16} /></button>`
            : html`<button class="btn btn-round btn-primary" onClick=${() => send()} disabled=${!draft.trim()}
              title="Send (Enter)" data-testid="send"><${Icon} name="send" size=${16} /></button>`}
        </div>
        <div class="muted tiny composer-hint">Enter to send · Shift+Enter for a new line</div>
      </div>
    </section>
  </div>`;
}
