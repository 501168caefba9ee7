// Support: the customer_service app's chat with its dialogue state beside it — the open form and its slots
// (filled, asked, missing), failures before a handoff, and the tickets that handoffs and forms stored.
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { api, callHandler } from "./api.js";
import { AppGate, ErrorLine, newSessionFor, sessionFor } from "./appkit.js";
import { fmtMs, html, Icon, PageHeader, procTiming } from "./ui.js";

const APP = "customer_service";
const MAX_FAILURES = 3; // the app hands over after this many failed turns in a row

function Slots({ state, domain }) {
  const form = state && (state.form || state.last_form);
  if (!form) return html`<div class="muted small" data-testid="no-form">No form open. Ask to track, cancel or return
    an order, change an address, check stock…</div>`;
  const open = !!state.form;
  const values = open ? state.slots || {} : state.last_slots || {};
  const slots = (domain && domain.forms[form]) || Object.keys(values).map((name) => ({ name, type: "" }));
  return html`<div data-testid="form" data-form=${form} data-open=${open ? "yes" : "no"}>
    <div class="cs-form-head"><span class="strong">${form.replace(/_/g, " ")}</span>
      <span class="badge ${open ? "st-running" : "st-finished"}">${open ? "collecting" : "done"}</span></div>
    <table class="table cs-slots">
      <tbody>${slots.map((s) => {
        const has = values[s.name] !== undefined && values[s.name] !== null;
        const asked = open && state.requested === s.name;
        return html`<tr key=${s.name} data-testid="slot" data-slot=${s.name} data-filled=${has ? "yes" : "no"}
          class=${asked ? "cs-asked" : ""}>
          <td class="muted">${s.name.replace(/_/g, " ")}<div class="tiny">${s.type}</div></td>
          <td class="wrap">${has ? html`<span class="mono" data-testid="slot-value">${String(values[s.name])}</span>`
            : html`<span class="muted">${asked ? "asked…" : "missing"}</span>`}</td>
        </tr>`;
      })}</tbody>
    </table>
  </div>`;
}

function Ticket({ t, current }) {
  const [open, setOpen] = useState(false);
  return html`<div class="cs-ticket ${current ? "cs-ticket-current" : ""}" data-testid="ticket" data-ticket=${t.id}>
    <div class="cs-ticket-head clickable" onClick=${() => setOpen(!open)}>
      <span class="mono strong">${t.id}</span>
      <span class="badge ${t.kind === "handoff" ? "st-preempted" : "st-finished"}">${t.kind}</span>
      <span class="grow"></span><span class="muted tiny">${t.status}</span>
    </div>
    ${t.reason ? html`<div class="small"><span class="muted">reason:</span> ${t.reason}</div>` : null}
    <div class="small" data-testid="ticket-summary">${t.summary}</div>
    ${t.digest && t.digest !== t.summary ? html`<div class="muted tiny">${t.digest}</div>` : null}
    ${open ? html`<div class="cs-transcript">
      ${Object.keys(t.slots || {}).length ? html`<div class="chips">${Object.entries(t.slots).map(([k, v]) =>
        html`<span class="chip" key=${k}>${k}: ${String(v)}</span>`)}</div>` : null}
      ${(t.transcript || []).map(([role, text], i) => html`<div key=${i} class="small"><span class="muted">${role}:</span>
        ${text}</div>`)}
    </div>` : null}
  </div>`;
}

function Message({ m }) {
  const t = m.procs && m.procs.length ? procTiming(m.procs[0]) : null;
  return html`<div class="cs-msg cs-${m.role}" data-testid="support-msg" data-role=${m.role}>
    <div class="cs-bubble wrap">${m.text}</div>
    ${m.role === "assistant" && (m.pid || t) ? html`<div class="muted tiny">pid ${m.pid}
      ${t ? html` · LLM ${m.procs[0].tokens_out} tokens in ${fmtMs(t.total)}` : null}</div>` : null}
  </div>`;
}

function Support() {
  const [sid, setSid] = useState(() => sessionFor("support"));
  const [lang, setLang] = useState("en");
  const [domain, setDomain] = useState(null);
  const [state, setState] = useState(null);
  const [tickets, setTickets] = useState([]);
  const [messages, setMessages] = useState([]);
  const [input, setInput] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const end = useRef(null);

  const refresh = async (session = sid) => {
    const [st, tk] = await Promise.all([callHandler(APP, "state", { session_id: session }),
      callHandler(APP, "tickets", { limit: 20 })]);
    setState(st);
    setTickets(tk);
    return st;
  };

  useEffect(() => { callHandler(APP, "domain_info", { lang }).then(setDomain).catch(setError); }, [lang]);
  useEffect(() => {
    // A reload (or a server restart) continues the stored conversation.
    refresh().then((st) => {
      setMessages((st.turns || []).map(([role, text]) => ({ role, text })));
      if (st.lang) setLang(st.lang);
    }).catch(setError);
  }, []);
  useLayoutEffect(() => { end.current && end.current.scrollIntoView({ block: "end" }); }, [messages]);

  const send = async (text) => {
    text = (text ?? input).trim();
    if (!text || busy) return;
    setInput("");
    setError(null);
    setBusy(true);
    setMessages((ms) => [...ms, { role: "user", text }]);
    try {
      const out = await api("POST", `v1/apps/${APP}/chat`, { body: { session_id: sid, message: text } });
      setMessages((ms) => [...ms, { role: "assistant", text: out.reply, pid: out.pid, procs: out.processes }]);
      const st = await refresh();
      if (st.lang && st.lang !== lang) setLang(st.lang);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  const restart = async () => {
    await callHandler(APP, "reset", { session_id: sid }).catch(() => {});
    const fresh = newSessionFor("support");
    setSid(fresh);
    setMessages([]);
    setError(null);
    await refresh(fresh);
  };

  const handoff = state && state.handoff;
  const failures = (state && state.failures) || 0;
  const examples = domain ? [...domain.intents.filter((i) => !i.handoff).slice(0, 5).map((i) => i.example),
    ...domain.faq.slice(0, 2).map((f) => f.question)] : [];
  return html`<div class="page page-app">
    <${PageHeader} title="Support" subtitle="The customer_service app: intents with out-of-scope detection, forms
      that collect and validate slots, FAQ answers, and handoff to a human with a stored ticket.">
      <select class="input select" value=${lang} onChange=${(e) => setLang(e.currentTarget.value)} title="Domain language"
        data-testid="support-lang">
        ${(domain ? domain.languages : ["en"]).map((l) => html`<option key=${l} value=${l}>${l}</option>`)}
      </select>
      <button class="btn btn-sm" onClick=${restart} data-testid="support-new"><${Icon} name="plus" size=${14} /> New
        conversation</button>
    </${PageHeader}>
    <${ErrorLine} error=${error} />
    <div class="app-split">
      <div class="card cs-chat">
        ${handoff ? html`<div class="alert cs-handoff" data-testid="handoff">Handed over to a human: ticket${" "}
          <span class="mono strong">${handoff}</span>. An agent sees the summary in the ticket list.</div>` : null}
        <div class="cs-messages" data-testid="support-messages">
          ${messages.length === 0 ? html`<div class="muted small">Say what you need, as a customer would. Try:</div>`
            : messages.map((m, i) => html`<${Message} key=${i} m=${m} />`)}
          ${busy ? html`<div class="muted small pulse">…</div>` : null}
          <div ref=${end}></div>
        </div>
        ${messages.length === 0 ? html`<div class="suggestions">${examples.map((x) => html`<button key=${x}
          class="suggestion" onClick=${() => send(x)} data-testid="support-example">${x}</button>`)}</div>` : null}
        <form class="cs-composer" onSubmit=${(e) => { e.preventDefault(); send(); }}>
          <input class="input grow" value=${input} placeholder="Message the support bot…" autocomplete="off"
            onInput=${(e) => setInput(e.currentTarget.value)} data-testid="support-input" />
          <button class="btn btn-primary" type="submit" disabled=${busy || !input.trim()} data-testid="support-send">
            <${Icon} name="send" size=${16} /></button>
        </form>
      </div>
      <div class="app-side">
        <div class="card">
          <div class="card-title">Dialogue state <span class="muted tiny mono">${sid}</span></div>
          <${Slots} state=${state} domain=${domain} />
          <dl class="kv-grid cs-meta">
            <dt>language</dt><dd>${(state && state.lang) || "–"}</dd>
            <dt>failed turns</dt><dd data-testid="failures">${failures} / ${MAX_FAILURES}${" "}
              <span class="muted tiny">(then a human takes over)</span></dd>
            ${state && state.clarify ? html`<dt>clarifying</dt><dd>${state.clarify.join(" or ")}</dd>` : null}
          </dl>
        </div>
        <div class="card">
          <div class="card-title">Tickets <span class="muted tiny">(handoffs and support requests, newest first)</span></div>
          ${tickets.length === 0 ? html`<div class="muted small">None yet. Ask for a human, or get angry.</div>`
            : html`<div class="cs-tickets">${tickets.map((t) => html`<${Ticket} key=${t.id} t=${t}
              current=${state && (state.tickets || []).includes(t.id)} />`)}</div>`}
        </div>
      </div>
    </div>
  </div>`;
}

export function SupportView() {
  return html`<${AppGate} app=${APP}><${Support} /></${AppGate}>`;
}
