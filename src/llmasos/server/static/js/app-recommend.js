// Recommend: the recommender app. Pick a user (or say what you want), filter, and see the ranked items with why
// each was picked: the candidate sources behind it, the user's items it resembles, and the LLM's sentence.
import { useEffect, useState } from "preact/hooks";
import { callHandler } from "./api.js";
import { AppGate, ErrorLine } from "./appkit.js";
import { Empty, fmtInt, html, Icon, PageHeader, Toggle, useLocal } from "./ui.js";

const APP = "recommender";
const SOURCE_LABELS = {
  knn: "similar users", knn_recent: "recent items", transition: "comes next", als: "taste profile (ALS)",
  content_emb: "description (embeddings)", content_tfidf: "description (words)", category: "favourite category",
  price: "usual price", popularity: "popular", query: "what you asked for",
};

const WISH_HINT = "Or say what this user wants: “cheap wireless headphones for running”";
const money = (x) => (typeof x === "number" ? x.toFixed(2) : "–");

function Profile({ p }) {
  if (!p) return null;
  const prefs = Object.entries(p.preferences || {});
  return html`<div class="card" data-testid="rec-profile">
    <div class="card-title">Profile <span class="mono muted tiny">${p.user}</span></div>
    <dl class="kv-grid">
      <dt>interactions</dt><dd>${fmtInt(p.interactions)}</dd>
      <dt>categories</dt><dd class="chips">${Object.entries(p.categories || {}).slice(0, 6).map(([c, n]) =>
        html`<span class="chip" key=${c}>${c} · ${n}</span>`)}</dd>
      <dt>median price</dt><dd>${money(p.median_price)}</dd>
      <dt>recent</dt><dd class="small">${(p.recent_names || p.recent || []).join(", ") || "–"}</dd>
      <dt>preferences</dt><dd class="chips" data-testid="rec-prefs">${prefs.length ? prefs.map(([k, v]) =>
        html`<span class="chip perm" key=${k}>${k}: ${Array.isArray(v) ? v.join(", ") : String(v)}</span>`)
        : html`<span class="muted small">none stated</span>`}</dd>
    </dl>
  </div>`;
}

function ItemCard({ rank, d, why }) {
  return html`<div class="card rec-item" data-testid="rec-item" data-item=${d.id}>
    <div class="rec-item-head">
      <span class="rec-rank">${rank}</span>
      <div class="grow">
        <div class="strong">${d.name || d.id}</div>
        <div class="muted tiny"><span class="mono">${d.id}</span> · ${d.category || "–"}</div>
      </div>
      <div class="rec-price">${money(d.price)}</div>
    </div>
    ${d.description ? html`<div class="small muted rec-desc">${d.description}</div>` : null}
    ${why ? html`<div class="rec-why" data-testid="rec-why">
      <div class="small" data-testid="rec-explanation">${why.explanation}</div>
      ${why.explanation !== why.template ? html`<div class="muted tiny">${why.template}</div>` : null}
      <div class="chips">
        ${why.sources.map((s) => html`<span class="chip" key=${s} title=${s}>${SOURCE_LABELS[s] || s}</span>`)}
      </div>
    </div>` : null}
  </div>`;
}

function Recommend() {
  const [cat, setCat] = useState(null); // the catalogue handler's answer
  const [user, setUser] = useLocal("llmasos.recommend.user", "");
  const [category, setCategory] = useState("");
  const [priceMax, setPriceMax] = useState("");
  const [k, setK] = useState(5);
  const [explain, setExplain] = useLocal("llmasos.recommend.explain", true);
  const [wish, setWish] = useState("");
  const [result, setResult] = useState(null);
  const [profile, setProfile] = useState(null);
  const [busy, setBusy] = useState("");
  const [error, setError] = useState(null);

  const loadCatalogue = async () => {
    const c = await callHandler(APP, "catalogue", { users: 30 });
    setCat(c);
    if (c.fitted && !user && c.active_users.length) setUser(c.active_users[0]);
    return c;
  };
  useEffect(() => { loadCatalogue().catch(setError); }, []);

  const run = async (label, fn) => {
    setBusy(label);
    setError(null);
    try { return await fn(); } catch (err) { setError(err); return null; } finally { setBusy(""); }
  };

  const recommend = () => run("recommend", async () => {
    const filters = {};
    if (category) filters.category = category;
    if (priceMax !== "" && Number(priceMax) > 0) filters.price_max = Number(priceMax);
    const [out, prof] = await Promise.all([
      callHandler(APP, "recommend", { user_id: user, k: Number(k), filters, explain }),
      callHandler(APP, "profile", { user_id: user })]);
    setResult(out);
    setProfile(prof);
  });

  const tell = (e) => {
    e.preventDefault();
    if (!wish.trim()) return;
    run("preferences", async () => {
      await callHandler(APP, "preferences", { user_id: user, text: wish.trim() });
      setWish("");
      await recommend();
    });
  };

  const demo = () => run("demo", async () => { await callHandler(APP, "load_demo", {}); await loadCatalogue(); });

  useEffect(() => { if (cat && cat.fitted && user) recommend(); }, [cat && cat.fitted]);

  if (cat === null) return html`<div class="page"><${ErrorLine} error=${error} /><div class="muted">Loading…</div></div>`;
  if (!cat.fitted) {
    return html`<div class="page page-app">
      <${PageHeader} title="Recommend" subtitle="The recommender app." />
      <${ErrorLine} error=${error} />
      <${Empty} title="No catalogue yet">Fit one with your items and interactions
        (<code>POST /v1/apps/recommender/handlers/fit</code>), or load the evaluation's synthetic shop
        (300 users, 300 items, planted tastes).
        <div class="pad"><button class="btn btn-primary" onClick=${demo} disabled=${!!busy} data-testid="rec-demo">
          ${busy === "demo" ? "Fitting…" : "Load the demo shop"}</button></div></${Empty}>
    </div>`;
  }
  const why = {};
  for (const x of (result && result.explanations) || []) why[x.item] = x;
  return html`<div class="page page-app">
    <${PageHeader} title="Recommend" subtitle=${`The recommender app: ${fmtInt(cat.items)} items, ${fmtInt(cat.users)}
      users. Ten candidate sources blended with weights learned on a time-ordered split, then filters and diversity.`} />
    <${ErrorLine} error=${error} />
    <form class="card rec-controls" onSubmit=${(e) => { e.preventDefault(); recommend(); }}>
      <label>user<input class="input mono" list="rec-users" value=${user} data-testid="rec-user"
        onInput=${(e) => setUser(e.currentTarget.value)} />
        <datalist id="rec-users">${cat.active_users.map((u) => html`<option key=${u} value=${u} />`)}</datalist></label>
      <label>category<select class="input select" value=${category} onChange=${(e) => setCategory(e.currentTarget.value)}
        data-testid="rec-category">
        <option value="">any</option>
        ${cat.categories.map((c) => html`<option key=${c} value=${c}>${c}</option>`)}
      </select></label>
      <label>max price<input class="input num" type="number" min="0" step="any" value=${priceMax}
        placeholder=${cat.price_max ? money(cat.price_max) : ""} onInput=${(e) => setPriceMax(e.currentTarget.value)}
        data-testid="rec-price" /></label>
      <label>how many<select class="input select" value=${k} onChange=${(e) => setK(e.currentTarget.value)}>
        ${[3, 5, 10, 20].map((n) => html`<option key=${n} value=${n}>${n}</option>`)}</select></label>
      <${Toggle} checked=${explain} onChange=${setExplain} label="LLM explanations" testid="rec-explain" />
      <span class="grow"></span>
      <button class="btn btn-primary" type="submit" disabled=${!!busy || !user.trim()} data-testid="rec-go">
        ${busy === "recommend" ? "Ranking…" : "Recommend"}</button>
    </form>
    <form class="card rec-wish" onSubmit=${tell}>
      <${Icon} name="chat" size=${16} />
      <input class="input grow" value=${wish} placeholder=${WISH_HINT} onInput=${(e) => setWish(e.currentTarget.value)} data-testid="rec-wish" />
      <button class="btn" type="submit" disabled=${!!busy || !wish.trim() || !user.trim()} data-testid="rec-wish-go">
        ${busy === "preferences" ? "Reading…" : "Use as preferences"}</button>
    </form>
    <div class="app-split">
      <div>
        ${result ? (result.items.length ? html`<div class="rec-grid" data-testid="rec-results">${result.details.map((d, i) =>
          html`<${ItemCard} key=${d.id} rank=${i + 1} d=${d} why=${why[d.id]} />`)}</div>`
          : html`<${Empty} title="Nothing matches">No item passes these filters (the user's own items are never
            recommended).</${Empty}>`) : html`<div class="muted">Pick a user and press Recommend.</div>`}
      </div>
      <div class="app-side"><${Profile} p=${profile} /></div>
    </div>
  </div>`;
}

export function RecommendView() {
  return html`<${AppGate} app=${APP}><${Recommend} /></${AppGate}>`;
}
