// Knowledge: the knowledge_qa app. Upload documents (text, Markdown, HTML, PDF) into a knowledge base, ask a
// question, and read the answer as it streams with the passages it cites (their fused BM25 and embedding ranks).
import { useEffect, useRef, useState } from "preact/hooks";
import { callHandler, streamHandler } from "./api.js";
import { AppGate, ErrorLine } from "./appkit.js";
import { fmtInt, html, Icon, PageHeader, toast, useLocal } from "./ui.js";

const APP = "knowledge_qa";
const MAX_FILE = 6_000_000; // the server's default body limit is 8 MiB, and base64 grows a PDF by a third

function toBase64(buf) {
  const bytes = new Uint8Array(buf);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// A browser File as the add handler's document: the format from the extension, the name as its id.
async function fileDocument(file) {
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  const id = file.name.replace(/\.[^.]+$/, "").replace(/[^A-Za-z0-9_.-]+/g, "-").slice(0, 120) || "document";
  const metadata = { filename: file.name, bytes: file.size };
  if (ext === "pdf") return { id, pdf_base64: toBase64(await file.arrayBuffer()), metadata };
  const text = await file.text();
  if (ext === "html" || ext === "htm") return { id, html: text, metadata };
  if (ext === "md" || ext === "markdown") return { id, markdown: text, metadata };
  return { id, text, metadata };
}

function Documents({ kb, docs, reload, setError }) {
  const [busy, setBusy] = useState(false);
  const [drag, setDrag] = useState(false);
  const [pasteId, setPasteId] = useState("");
  const [pasteText, setPasteText] = useState("");
  const fileInput = useRef(null);

  const add = async (documents) => {
    setBusy(true);
    setError(null);
    try {
      const out = await callHandler(APP, "add", { documents, kb });
      toast(`Added ${out.added.join(", ")}`);
      await reload();
      return true;
    } catch (err) {
      setError(err);
      return false;
    } finally {
      setBusy(false);
    }
  };

  const upload = async (files) => {
    const list = [...files];
    const big = list.find((f) => f.size > MAX_FILE);
    if (big) { setError(new Error(`${big.name} is over ${MAX_FILE / 1e6} MB`)); return; }
    if (list.length) await add(await Promise.all(list.map(fileDocument)));
  };

  const paste = async (e) => {
    e.preventDefault();
    if (await add([{ id: pasteId.trim(), text: pasteText }])) { setPasteId(""); setPasteText(""); }
  };

  const remove = async (id) => {
    try {
      await callHandler(APP, "delete", { doc_id: id, kb });
      await reload();
    } catch (err) { setError(err); }
  };

  return html`<div class="card">
    <div class="card-title">Documents <span class="muted tiny">${docs.length} in “${kb}”</span></div>
    <div class="kb-drop ${drag ? "kb-drop-on" : ""}" onClick=${() => fileInput.current.click()}
      onDragOver=${(e) => { e.preventDefault(); setDrag(true); }} onDragLeave=${() => setDrag(false)}
      onDrop=${(e) => { e.preventDefault(); setDrag(false); upload(e.dataTransfer.files); }}>
      <${Icon} name="upload" size=${20} />
      <div>${busy ? "Indexing…" : "Drop files here or click to upload"}</div>
      <div class="muted tiny">.txt .md .html .pdf — chunked with overlap, indexed for BM25 and embeddings</div>
      <input ref=${fileInput} type="file" multiple hidden accept=".txt,.md,.markdown,.html,.htm,.pdf,text/*"
        data-testid="kb-file" onChange=${(e) => { upload(e.currentTarget.files); e.currentTarget.value = ""; }} />
    </div>
    <details class="kb-paste">
      <summary class="small">Paste a text</summary>
      <form onSubmit=${paste}>
        <input class="input" placeholder="document id" value=${pasteId} data-testid="kb-paste-id"
          onInput=${(e) => setPasteId(e.currentTarget.value)} />
        <textarea class="input kb-textarea" rows="5" placeholder="text" value=${pasteText} data-testid="kb-paste-text"
          onInput=${(e) => setPasteText(e.currentTarget.value)}></textarea>
        <button class="btn btn-sm" type="submit" disabled=${busy || !pasteId.trim() || !pasteText.trim()}
          data-testid="kb-paste-add">Add</button>
      </form>
    </details>
    ${docs.length ? html`<table class="table kb-docs"><tbody>${docs.map((d) => html`<tr key=${d.id} data-testid="kb-doc"
      data-doc=${d.id}>
      <td class="ellipsis" title=${(d.metadata && (d.metadata.title || d.metadata.filename)) || d.id}>
        <span class="mono">${d.id}</span>
        ${d.metadata && d.metadata.title && d.metadata.title !== d.id ? html`<div class="muted tiny ellipsis">
          ${d.metadata.title}</div>` : null}</td>
      <td class="muted small">${fmtInt(d.chars)} chars · ${d.chunks} chunk${d.chunks === 1 ? "" : "s"}</td>
      <td><button class="btn btn-ghost btn-icon" title="Delete" onClick=${() => remove(d.id)}
        data-testid="kb-delete"><${Icon} name="trash" size=${15} /></button></td>
    </tr>`)}</tbody></table>` : html`<div class="muted small">Empty. Upload a few documents to ask about them.</div>`}
  </div>`;
}

// The answer's text with each [doc-id] turned into a link to its passage below.
function Cited({ text, cited }) {
  const parts = text.split(/(\[[^\]\n]{1,120}\])/g);
  return html`<div class="kb-answer-text wrap" data-testid="kb-answer-text">${parts.map((p, i) => {
    const id = p.startsWith("[") && p.endsWith("]") ? p.slice(1, -1) : null;
    return id && cited.includes(id) ? html`<a key=${i} class="chip kb-cite" href=${`#/knowledge`}
      onClick=${(e) => { e.preventDefault(); const el = document.getElementById(`passage-${id}`);
        if (el) el.scrollIntoView({ behavior: "smooth", block: "center" }); }}>${id}</a>` : p;
  })}</div>`;
}

function Passage({ h, cited }) {
  return html`<div class="kb-passage ${cited ? "kb-passage-cited" : ""}" id=${`passage-${h.doc_id}`}
    data-testid="kb-passage" data-doc=${h.doc_id} data-cited=${cited ? "yes" : "no"}>
    <div class="kb-passage-head">
      <span class="mono strong">${h.doc_id}</span>
      ${cited ? html`<span class="badge st-finished">cited</span>` : null}
      <span class="grow"></span>
      <span class="muted tiny" title="Rank in each retriever (fused by z-scores), cosine similarity to the question">
        BM25 #${h.bm25_rank ?? "–"} · embeddings #${h.dense_rank ?? "–"} · similarity ${h.similarity.toFixed(2)}</span>
    </div>
    <div class="small wrap kb-passage-text">${h.text}</div>
  </div>`;
}

function Ask({ kb, empty }) {
  const [question, setQuestion] = useState("");
  const [answer, setAnswer] = useState(null); // {question, text, hits, citations, refused, done, pid}
  const [error, setError] = useState(null);
  const ctrl = useRef(null);
  useEffect(() => () => ctrl.current && ctrl.current.abort(), []);

  const ask = async (e) => {
    e.preventDefault();
    const q = question.trim();
    if (!q) return;
    if (ctrl.current) ctrl.current.abort();
    ctrl.current = new AbortController();
    setError(null);
    let a = { question: q, text: "", hits: [], citations: [], refused: false, done: false, mode: null, draft: "" };
    setAnswer(a);
    try {
      for await (const ev of streamHandler(APP, "answer_stream", { question: q, kb, k: 3 }, ctrl.current.signal)) {
        if (ev.data && ev.data.replace !== undefined) a = { ...a, ...ev.data, text: ev.data.replace, draft: a.text };
        else if (ev.data) a = { ...a, ...ev.data };
        else if (ev.delta !== undefined) a = { ...a, text: a.text + ev.delta };
        else if (ev.done) a = { ...a, pid: ev.pid };
        setAnswer(a);
      }
      setAnswer({ ...a, done: true });
    } catch (err) {
      if (err.name !== "AbortError") setError(err);
      setAnswer({ ...a, done: true });
    }
  };

  return html`<div class="card kb-ask">
    <form class="cs-composer" onSubmit=${ask}>
      <input class="input grow" placeholder=${empty ? "Add documents first…" : "Ask a question about your documents"}
        value=${question} onInput=${(e) => setQuestion(e.currentTarget.value)} data-testid="kb-question" />
      <button class="btn btn-primary" type="submit" disabled=${!question.trim() || (answer && !answer.done)}
        data-testid="kb-ask">Ask</button>
    </form>
    <${ErrorLine} error=${error} />
    ${answer ? html`<div class="kb-answer" data-testid="kb-answer" data-done=${answer.done ? "yes" : "no"}
      data-refused=${answer.refused ? "yes" : "no"}>
      ${answer.refused ? html`<div class="alert kb-refused" data-testid="kb-refused">${answer.text
        || "Not in the knowledge base."}<div class="muted tiny">The best passage is not similar enough to the question
        to answer from it.</div></div>`
        : html`<${Cited} text=${answer.text || (answer.done ? "" : "…")} cited=${answer.citations} />`}
      ${answer.mode === "extractive" ? html`<div class="muted tiny" data-testid="kb-extractive">Quoted from the top
        passage: the model's answer (“${answer.draft.trim().slice(0, 80)}”) was not grounded in the passages.</div>`
        : null}
      ${answer.hits.length ? html`<div class="kb-sources-title muted small">${answer.refused ? "Closest passages"
        : "Passages given to the model"}</div>
        ${answer.hits.map((h) => html`<${Passage} key=${h.doc_id} h=${h} cited=${answer.citations.includes(h.doc_id)} />`)}`
        : null}
      ${answer.done && answer.pid ? html`<div class="muted tiny">pid ${answer.pid}</div>` : null}
    </div>` : html`<div class="muted small">Answers come from the passages only, with their sources; when none is
      close enough the app says so instead of guessing. Retrieved text is treated as untrusted data.</div>`}
  </div>`;
}

function Knowledge() {
  const [kb, setKb] = useLocal("llmasos.knowledge.kb", "default");
  const [kbInput, setKbInput] = useState(kb);
  const [docs, setDocs] = useState([]);
  const [error, setError] = useState(null);
  const reload = async () => setDocs(await callHandler(APP, "documents", { kb }));
  useEffect(() => { reload().catch(setError); }, [kb]);
  return html`<div class="page page-app">
    <${PageHeader} title="Knowledge" subtitle="The knowledge_qa app: hybrid retrieval (BM25 + embeddings) and answers
      grounded in the passages, with citations.">
      <form class="row-form" onSubmit=${(e) => { e.preventDefault(); if (kbInput.trim()) setKb(kbInput.trim()); }}>
        <label class="muted small">knowledge base</label>
        <input class="input input-kb mono" value=${kbInput} onInput=${(e) => setKbInput(e.currentTarget.value)}
          data-testid="kb-name" />
      </form>
    </${PageHeader}>
    <${ErrorLine} error=${error} />
    <div class="app-split app-split-wide-side">
      <${Ask} key=${kb} kb=${kb} empty=${docs.length === 0} />
      <div class="app-side"><${Documents} kb=${kb} docs=${docs} reload=${reload} setError=${setError} /></div>
    </div>
  </div>`;
}

export function KnowledgeView() {
  return html`<${AppGate} app=${APP}><${Knowledge} /></${AppGate}>`;
}
