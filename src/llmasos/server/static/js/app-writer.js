// Writer: the writer app. Correction shown as a diff of its minimal edits (each one can be kept or refused, and
// a word added to the user's dictionary), polishing in a named style (a word diff against the draft), titles,
// and a continuation that streams in after the text.
import { useEffect, useRef, useState } from "preact/hooks";
import { callHandler, streamHandler } from "./api.js";
import { AppGate, ErrorLine } from "./appkit.js";
import { html, Icon, PageHeader, toast, Toggle, useLocal } from "./ui.js";

const APP = "writer";
const SAMPLE = "Teh quick brown fox jumpd over the lazy dog. We recieved you're mesage and will adress it tomorow.";

// The text with the kept edits applied (edits are character ranges of the original, never overlapping).
export function applyEdits(text, edits) {
  let out = "";
  let pos = 0;
  for (const e of [...edits].sort((a, b) => a.start - b.start)) {
    out += text.slice(pos, e.start) + e.replacement;
    pos = e.end;
  }
  return out + text.slice(pos);
}

// Word-level diff (longest common subsequence over words and the spaces between them): [{op, text}].
export function wordDiff(a, b) {
  const x = a.split(/(\s+)/).filter(Boolean);
  const y = b.split(/(\s+)/).filter(Boolean);
  if (x.length * y.length > 4_000_000) return [{ op: "del", text: a }, { op: "ins", text: b }];
  const n = x.length;
  const m = y.length;
  const L = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  }
  const out = [];
  const push = (op, text) => {
    const last = out[out.length - 1];
    if (last && last.op === op) last.text += text; else out.push({ op, text });
  };
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { push("eq", x[i]); i++; j++; } else if (L[i + 1][j] >= L[i][j + 1]) push("del", x[i++]);
    else push("ins", y[j++]);
  }
  while (i < n) push("del", x[i++]);
  while (j < m) push("ins", y[j++]);
  return out;
}

function Diff({ parts }) {
  return html`<div class="wr-diff wrap" data-testid="wr-diff">${parts.map((p, i) => (p.op === "eq" ? p.text
    : html`<span key=${i} class=${`wr-${p.op}`}>${p.text}</span>`))}</div>`;
}

function Correction({ text, result, onApply, onLearn }) {
  const [kept, setKept] = useState(() => result.edits.map(() => true));
  const edits = result.edits.filter((_, i) => kept[i]);
  if (!result.edits.length) return html`<div class="alert wr-clean" data-testid="wr-no-edits">No corrections: the text
    is left as it is.</div>`;
  // The original with each edit shown in place: the removed text struck out, the replacement after it.
  const parts = [];
  let pos = 0;
  result.edits.forEach((e, i) => {
    parts.push(text.slice(pos, e.start));
    parts.push(html`<span key=${i} class="wr-edit ${kept[i] ? "" : "wr-edit-off"}" data-testid="wr-edit"
      title=${`${e.kind}: chars ${e.start}-${e.end}`}><del class="wr-del">${e.original}</del><ins
      class="wr-ins">${e.replacement}</ins></span>`);
    pos = e.end;
  });
  parts.push(text.slice(pos));
  return html`<div>
    <div class="wr-diff wrap" data-testid="wr-diff">${parts}</div>
    <div class="wr-edits"><table class="table"><thead><tr><th>keep</th><th>original</th><th>replacement</th><th>kind</th>
      <th>chars</th><th></th></tr></thead>
      <tbody>${result.edits.map((e, i) => html`<tr key=${i} data-testid="wr-edit-row">
        <td><input type="checkbox" checked=${kept[i]} data-testid="wr-keep"
          onChange=${(ev) => setKept(kept.map((k, j) => (j === i ? ev.currentTarget.checked : k)))} /></td>
        <td class="mono">${e.original}</td><td class="mono">${e.replacement}</td><td class="muted">${e.kind}</td>
        <td class="muted">${e.start}–${e.end}</td>
        <td><button class="btn btn-ghost btn-sm" title="Never correct this word again" onClick=${() => onLearn(e.original)}
          data-testid="wr-learn">+ dictionary</button></td>
      </tr>`)}</tbody></table></div>
    <div class="wr-actions"><span class="muted small">${edits.length} of ${result.edits.length} edits kept</span>
      <span class="grow"></span>
      <button class="btn btn-primary btn-sm" onClick=${() => onApply(applyEdits(text, edits))} data-testid="wr-apply">
        Apply to the draft</button></div>
  </div>`;
}

function Writer() {
  const [text, setText] = useLocal("llmasos.writer.text", SAMPLE);
  const [mode, setMode] = useState("correct");
  const [style, setStyle] = useState("formal");
  const [styles, setStyles] = useState({});
  const [grammar, setGrammar] = useState(false);
  const [maxTokens, setMaxTokens] = useState(80);
  const [out, setOut] = useState(null); // {mode, source, ...result}
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const ctrl = useRef(null);
  useEffect(() => { callHandler(APP, "styles", {}).then((r) => setStyles(r.styles)).catch(setError); }, []);
  useEffect(() => () => ctrl.current && ctrl.current.abort(), []);

  const go = async () => {
    const source = text;
    if (!source.trim() || busy) return;
    setBusy(true);
    setError(null);
    setOut(null);
    try {
      if (mode === "correct") {
        setOut({ mode, source, ...(await callHandler(APP, "correct", { text: source, llm_grammar: grammar })) });
      } else if (mode === "polish") {
        setOut({ mode, source, ...(await callHandler(APP, "polish", { text: source, style })) });
      } else if (mode === "titles") {
        setOut({ mode, source, ...(await callHandler(APP, "titles", { text: source, n: 5 })) });
      } else {
        ctrl.current = new AbortController();
        let cont = "";
        setOut({ mode, source, continuation: "", streaming: true });
        for await (const ev of streamHandler(APP, "continue_stream", { text: source, max_tokens: Number(maxTokens) },
          ctrl.current.signal)) {
          if (ev.delta !== undefined) {
            cont += ev.delta;
            setOut({ mode, source, continuation: cont, streaming: true });
          }
        }
        setOut({ mode, source, continuation: cont, streaming: false });
      }
    } catch (err) {
      if (err.name !== "AbortError") setError(err);
    } finally {
      setBusy(false);
    }
  };

  const learn = async (word) => {
    try {
      await callHandler(APP, "add_words", { words: [word] });
      toast(`“${word}” is in your dictionary`);
      if (out && out.mode === "correct") go();
    } catch (err) { setError(err); }
  };

  const stale = out && out.source !== text;
  return html`<div class="page page-app">
    <${PageHeader} title="Writer" subtitle="The writer app: minimal-edit correction (SymSpell with a frequency
      dictionary, optional LLM grammar pass), polishing, titles and continuation." />
    <${ErrorLine} error=${error} />
    <div class="app-split app-split-even">
      <div class="card wr-editor">
        <textarea class="input wr-text" value=${text} onInput=${(e) => setText(e.currentTarget.value)} rows="14"
          placeholder="Write or paste a text" data-testid="wr-text"></textarea>
        <div class="wr-modes" role="tablist">
          ${["correct", "polish", "titles", "continue"].map((m) => html`<button key=${m} role="tab"
            class="btn btn-sm ${mode === m ? "btn-primary" : "btn-ghost"}" onClick=${() => setMode(m)}
            data-testid=${`wr-mode-${m}`}>${m}</button>`)}
        </div>
        <div class="wr-options">
          ${mode === "correct" ? html`<${Toggle} checked=${grammar} onChange=${setGrammar} label="LLM grammar pass"
            title="The model proposes grammar fixes; only small local edits are accepted" />` : null}
          ${mode === "polish" ? html`<label class="small">style <select class="input select" value=${style}
            onChange=${(e) => setStyle(e.currentTarget.value)} data-testid="wr-style">
            ${Object.entries(styles).map(([k, d]) => html`<option key=${k} value=${k} title=${d}>${k}</option>`)}
          </select></label>` : null}
          ${mode === "continue" ? html`<label class="small">up to <input class="input num" type="number" min="1"
            max="1000" value=${maxTokens} onInput=${(e) => setMaxTokens(e.currentTarget.value)}
            data-testid="wr-max-tokens" /> tokens</label>` : null}
          <span class="grow"></span>
          ${busy && mode === "continue" ? html`<button class="btn btn-sm" onClick=${() => ctrl.current.abort()}>
            <${Icon} name="stop" size=${14} /> Stop</button>` : null}
          <button class="btn btn-primary btn-sm" onClick=${go} disabled=${busy || !text.trim()} data-testid="wr-go">
            ${busy ? "Working…" : mode}</button>
        </div>
      </div>
      <div class="card wr-result" data-testid="wr-result" data-mode=${out ? out.mode : ""}>
        ${stale ? html`<div class="muted tiny">The draft changed since this result.</div>` : null}
        ${!out ? html`<div class="muted small">${busy ? "Working…" : html`Results appear here. Correction changes
          only what it must: every edit is listed with its position in your text.`}</div>` : null}
        ${out && out.mode === "correct" ? html`<${Correction} key=${out.source + out.edits.length} text=${out.source}
          result=${out} onApply=${setText} onLearn=${learn} />` : null}
        ${out && out.mode === "polish" ? html`<div>
          <div class="muted small">Polished (${out.style}), as a word diff against the draft:</div>
          <${Diff} parts=${wordDiff(out.source, out.text)} />
          <div class="wr-actions"><span class="grow"></span><button class="btn btn-primary btn-sm"
            onClick=${() => setText(out.text)} data-testid="wr-apply">Use this text</button></div></div>` : null}
        ${out && out.mode === "titles" ? html`<ol class="wr-titles" data-testid="wr-titles">${out.titles.map((t) =>
          html`<li key=${t}>${t}</li>`)}</ol>` : null}
        ${out && out.mode === "continue" ? html`<div>
          <div class="wr-diff wrap" data-testid="wr-continuation"><span class="muted">${out.source}</span><span
            class="wr-ins">${out.continuation}</span>${out.streaming ? html`<span class="caret"></span>` : null}</div>
          ${!out.streaming ? html`<div class="wr-actions"><span class="grow"></span><button class="btn btn-primary btn-sm"
            onClick=${() => setText(out.source + out.continuation)} data-testid="wr-apply">Append to the draft</button>
          </div>` : null}</div>` : null}
      </div>
    </div>
  </div>`;
}

export function WriterView() {
  return html`<${AppGate} app=${APP}><${Writer} /></${AppGate}>`;
}
