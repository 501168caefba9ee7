"""`customer_service`: a support bot for an online shop. Intent recognition from a handful of examples (with
out-of-scope detection), FAQ answers, forms that collect and validate slots, actions on the app's storage, and
handoff to a human with a stored, summarised ticket. The dialogue state lives in the app's storage, so a
session survives a restart.

    from llmasos.apps.customer_service import IntentClassifier
    clf = IntentClassifier.fit({"order_status": ["Where is my order?", ...], "cancel_order": [...]})
    clf.predict(["where's my parcel"])[0].intent
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

from llmasos.apps.customer_service.domain import Domain, DomainError, load_domain
from llmasos.apps.customer_service.nlu import CentroidBaseline, IntentClassifier, LogisticBaseline, Prediction
from llmasos.sdk import App, Manifest, handler

__all__ = ["CentroidBaseline", "CustomerService", "Domain", "DomainError", "IntentClassifier", "LogisticBaseline",
           "Prediction", "load_domain"]

SYSTEM_PROMPT = "You summarise customer support conversations for a human agent. Be brief and factual."
CLARIFY_MARGIN = 0.05      # just under the threshold, or two intents this close: ask which one
MAX_FAILURES = 3           # failed slot answers / not understood turns in a row before a human takes over
MAX_TURNS = 30             # turns kept in the stored state (for the ticket)
ANGER_WORDS = ["ridiculous", "useless", "angry", "furious", "terrible", "worst", "awful", "unacceptable", "wtf",
               "damn", "stupid", "pathetic", "scam", "fed up", "sick of", "horrible", "disgusting", "idiot",
               "垃圾", "气死", "生气", "太差", "废物", "骗子", "投诉你们", "什么破", "受够"]
CORRECTION = re.compile(r"^\s*(no\b|nope|actually|sorry|i meant|i mean|wait|wrong|correction|不是|不对|错了|应该是|我是说)",
                        re.IGNORECASE)
STOP = re.compile(r"^\s*(stop|cancel that|never ?mind|forget it|算了|不用了|停止)\b", re.IGNORECASE)
YES = re.compile(r"^\s*(yes|yeah|yep|correct|right|the first|first|1|是|是的|对|第一个)\b", re.IGNORECASE)
SECOND = re.compile(r"^\s*(the second|second|the other|2|第二个|后者)\b", re.IGNORECASE)
NO = re.compile(r"^\s*(no|nope|neither|none|不是|都不是)\b", re.IGNORECASE)
CJK = re.compile(r"[\u3400-\u9fff]")

_classifiers: dict[str, IntentClassifier] = {}


def detect_anger(text: str) -> float:
    """0..1: angry words, SHOUTED words, repeated exclamation marks."""
    low = text.lower()
    score = 0.5 * sum(w in low for w in ANGER_WORDS)
    shouted = [w for w in re.findall(r"[A-Za-z]{3,}", text) if w.isupper()]
    score += 0.25 * min(len(shouted), 4)
    score += 0.3 if re.search(r"[!！]{2,}", text) else 0.0
    return min(score, 1.0)


async def _get(ctx: Any, key: str, default: Any = None) -> Any:
    try:
        return await ctx.storage.get(key)
    except LookupError:
        return default


async def _get_doc(ctx: Any, collection: str, doc_id: str) -> dict | None:
    try:
        return await ctx.storage.get_doc(collection, doc_id)
    except LookupError:
        return None


class CustomerService(App):
    manifest = Manifest(
        name="customer_service", version="0.1.0",
        description="Support bot: intents with out-of-scope detection, FAQ, forms, actions, handoff with tickets.",
        permissions=["llm", "embed", "storage"], priority=0, weight=1.0, latency_sensitive=True,
        system_prompt=SYSTEM_PROMPT,
    )

    def __init__(self, domains: dict[str, Domain | str | dict] | None = None) -> None:
        given = domains or {"en": "en", "zh": "zh"}
        self.domains: dict[str, Domain] = {k: v if isinstance(v, Domain) else load_domain(v) for k, v in given.items()}

    # -- NLU ----------------------------------------------------------------------------------------------------
    async def classifier(self, ctx: Any, lang: str) -> IntentClassifier:
        domain = self.domains[lang]
        examples = domain.training_examples(with_faq=True)
        key = hashlib.sha1(repr(sorted(examples.items())).encode()).hexdigest()
        if key not in _classifiers:
            _classifiers[key] = await IntentClassifier.afit(examples, ctx=ctx)
        return _classifiers[key]

    def _lang(self, text: str) -> str:
        return "zh" if CJK.search(text) and "zh" in self.domains else next(iter(self.domains))

    # -- handlers -----------------------------------------------------------------------------------------------
    @handler
    async def classify(self, ctx: Any, texts: list[str], lang: str | None = None) -> list[dict]:
        """Intent (None = out of scope), confidence and the top intents for each text (FAQ entries are `faq:<id>`)."""
        lang = lang or self._lang(" ".join(texts))
        clf = await self.classifier(ctx, lang)
        return [p.as_dict() for p in await clf.apredict(texts)]

    @handler
    async def validate_domain(self, ctx: Any, text: str) -> dict:
        """Check a domain file (YAML text): {"ok": true, "intents": n, ...} or {"ok": false, "error": "..."}."""
        try:
            d = load_domain(text if "\n" in text else text + "\n")
        except DomainError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "intents": len(d.intents), "faq": len(d.faq), "forms": len(d.forms)}

    @handler
    async def domain_info(self, ctx: Any, lang: str = "en") -> dict:
        """The domain in brief (the console's support page): intents with an example each, forms with their
        slots in the order they are asked, the FAQ questions."""
        if lang not in self.domains:
            raise ValueError(f"no domain for language {lang!r}; this app has: {', '.join(self.domains)}")
        d = self.domains[lang]
        return {"language": lang, "languages": list(self.domains), "name": d.name,
                "intents": [{"name": k, "label": self._describe(d, k), "example": v.examples[0], "form": v.form,
                             "handoff": v.handoff} for k, v in d.intents.items()],
                "forms": {k: [{"name": s.name, "type": s.type, "prompt": s.prompt} for s in f.slots]
                          for k, f in d.forms.items()},
                "faq": [{"id": f.id, "question": f.questions[0]} for f in d.faq]}

    @handler
    async def state(self, ctx: Any, session_id: str) -> dict:
        """The stored dialogue state of a session."""
        return await _get(ctx, f"state:{session_id}", {}) or {}

    @handler
    async def reset(self, ctx: Any, session_id: str) -> dict:
        if await _get(ctx, f"state:{session_id}") is not None:
            await ctx.storage.delete(f"state:{session_id}")
        return {"reset": session_id}

    @handler
    async def tickets(self, ctx: Any, limit: int = 50) -> list[dict]:
        """Stored tickets (handoffs and support requests), newest first."""
        return [{"id": d["id"], **d["body"]} for d in await ctx.storage.find("tickets", limit=limit)]

    @handler
    async def lookup_order(self, ctx: Any, order_id: str, lang: str = "en") -> dict | None:
        await self._seed(ctx, lang)
        return await _get_doc(ctx, f"orders_{lang}", order_id)

    # -- dialogue -----------------------------------------------------------------------------------------------
    async def chat(self, ctx: Any, session_id: str, message: str) -> str:
        key = f"state:{session_id}"
        state = await _get(ctx, key) or {}
        if not state:
            state = {"lang": self._lang(message), "form": None, "slots": {}, "requested": None, "failures": 0,
                     "clarify": None, "last_form": None, "last_slots": {}, "turns": [], "tickets": []}
        text = message.strip()
        if not text:
            return self.domains[state["lang"]].say("clarify_retry")
        lang = self._lang(text)
        if lang != state["lang"] and (CJK.search(text) or len(re.findall(r"[A-Za-z]{2,}", text)) >= 2):
            state.update(lang=lang, form=None, slots={}, requested=None, clarify=None, last_form=None)
        state["turns"].append(["user", text])
        reply = await self._turn(ctx, session_id, state, text)
        state["turns"].append(["assistant", reply])
        state["turns"] = state["turns"][-MAX_TURNS:]
        await ctx.storage.set(key, state)
        return reply

    async def _turn(self, ctx: Any, session_id: str, state: dict, text: str) -> str:
        d = self.domains[state["lang"]]
        if detect_anger(text) >= 0.5:
            return await self._handoff(ctx, session_id, state, "anger detected")
        clf = await self.classifier(ctx, state["lang"])
        pred = (await clf.apredict([text]))[0]

        # 1. an open clarifying question
        if state.get("clarify"):
            a, b = state["clarify"]
            state["clarify"] = None
            if pred.intent in (a, b):
                chosen = pred.intent
            elif SECOND.match(text):
                chosen = b
            elif YES.match(text):
                chosen = a
            elif NO.match(text):
                return self._not_understood(state, d)
            else:
                chosen = None
            if chosen:
                return await self._start(ctx, session_id, state, chosen, text)

        if pred.intent == "talk_to_human" or (pred.intent and d.intents.get(pred.intent, None) is not None
                                              and d.intents[pred.intent].handoff):
            return await self._handoff(ctx, session_id, state, "customer asked for a human")

        # 2. inside a form: slot values, corrections, digressions
        if state.get("form"):
            return await self._in_form(ctx, session_id, state, text, pred, clf.threshold)

        # 3. a correction right after a completed form ("no, it's order 48213")
        if state.get("last_form") and CORRECTION.match(text):
            form = d.forms[state["last_form"]]
            changed = {s.name: v for s in form.slots if s.type != "text"
                       for v in [s.extract(text)] if v is not None and v != state["last_slots"].get(s.name)}
            if changed:
                state["form"], state["slots"] = state["last_form"], {**state["last_slots"], **changed}
                note = " ".join(d.say("updated", slot=k.replace("_", " "), value=v) for k, v in changed.items())
                return note + " " + await self._advance(ctx, session_id, state)

        # 4. a new request
        if pred.intent is None:
            if pred.confidence >= clf.threshold - CLARIFY_MARGIN and len(pred.ranking) > 1:
                return self._clarify(state, d, pred)
            return await self._fallback(ctx, session_id, state, d)
        r = pred.ranking
        if len(r) > 1 and r[1][1] >= clf.threshold and r[0][1] - r[1][1] < 0.01 and r[0][0] != r[1][0]:
            return self._clarify(state, d, pred)
        return await self._start(ctx, session_id, state, pred.intent, text)

    def _clarify(self, state: dict, d: Domain, pred: Prediction) -> str:
        a, b = pred.ranking[0][0], pred.ranking[1][0]
        state["clarify"] = [a, b]
        return d.say("clarify", a=self._describe(d, a), b=self._describe(d, b))

    @staticmethod
    def _describe(d: Domain, label: str) -> str:
        if label.startswith("faq:"):
            faq = next((f for f in d.faq if f"faq:{f.id}" == label), None)
            return f"ask \"{faq.questions[0]}\"" if faq and d.language == "en" else (faq.questions[0] if faq else label)
        return (d.responses.get("intent_names") or {}).get(label, label.replace("_", " "))

    def _not_understood(self, state: dict, d: Domain) -> str:
        state["failures"] = state.get("failures", 0) + 1
        return d.say("fallback")

    async def _fallback(self, ctx: Any, session_id: str, state: dict, d: Domain) -> str:
        state["failures"] = state.get("failures", 0) + 1
        if state["failures"] >= MAX_FAILURES:
            return await self._handoff(ctx, session_id, state, "repeated failure to understand")
        return d.say("fallback")

    async def _start(self, ctx: Any, session_id: str, state: dict, label: str, text: str) -> str:
        d = self.domains[state["lang"]]
        state["failures"] = 0
        if label.startswith("faq:"):
            faq = next(f for f in d.faq if f"faq:{f.id}" == label)
            return faq.answer
        intent = d.intents[label]
        if intent.handoff:
            return await self._handoff(ctx, session_id, state, "customer asked for a human")
        if intent.form:
            form = d.forms[intent.form]
            state["form"], state["slots"], state["requested"] = intent.form, {}, None
            for s in form.slots:
                if s.type != "text":
                    v = s.extract(text)
                    if v is not None:
                        state["slots"][s.name] = v
            return await self._advance(ctx, session_id, state)
        return d.say(intent.response or "fallback")

    async def _in_form(self, ctx: Any, session_id: str, state: dict, text: str, pred: Prediction,
                       threshold: float) -> str:
        d = self.domains[state["lang"]]
        form = d.forms[state["form"]]
        requested = next((s for s in form.slots if s.name == state.get("requested")), None)
        if STOP.match(text):
            state.update(form=None, slots={}, requested=None)
            return d.say("form_cancelled")
        confident = pred.intent is not None and pred.confidence >= threshold + 0.05
        other_request = confident and pred.intent != self._form_intent(d, state["form"])
        if requested is not None and requested.type == "text" and not other_request:
            value = requested.extract(text, requested=True)
            if value is not None:
                state["slots"][requested.name] = value
                return await self._advance(ctx, session_id, state)
        found = {s.name: v for s in form.slots if s.type != "text"
                 for v in [s.extract(text, requested=s is requested)] if v is not None}
        if found:
            notes = [d.say("updated", slot=k.replace("_", " "), value=v) for k, v in found.items()
                     if state["slots"].get(k) not in (None, v)]
            state["slots"].update(found)
            reply = await self._advance(ctx, session_id, state)
            return " ".join([*notes, reply]) if notes else reply
        if pred.intent and pred.intent.startswith("faq:"):
            answer = next(f.answer for f in d.faq if f"faq:{f.id}" == pred.intent)
            prompt = requested.prompt if requested else ""
            return f"{answer} {d.say('digression_resume', prompt=prompt)}".strip()
        if other_request and pred.intent in d.intents and pred.intent not in ("greet",):
            state.update(form=None, slots={}, requested=None)
            return await self._start(ctx, session_id, state, pred.intent, text)
        state["failures"] = state.get("failures", 0) + 1
        if state["failures"] >= MAX_FAILURES:
            return await self._handoff(ctx, session_id, state, f"could not fill {requested.name if requested else 'form'}")
        return requested.error if requested else d.say("fallback")

    @staticmethod
    def _form_intent(d: Domain, form: str) -> str | None:
        return next((k for k, v in d.intents.items() if v.form == form), None)

    async def _advance(self, ctx: Any, session_id: str, state: dict) -> str:
        """Ask the next missing slot, or run the form's action when every slot is filled."""
        d = self.domains[state["lang"]]
        form = d.forms[state["form"]]
        for s in form.slots:
            if s.name not in state["slots"]:
                state["requested"] = s.name
                return s.prompt
        state["failures"] = 0
        name, slots = state["form"], dict(state["slots"])
        state.update(form=None, requested=None, last_form=name, last_slots=slots, slots={})
        return await self._run_action(ctx, session_id, state, form.action, slots)

    # -- actions: the shop's data in the app's storage ---------------------------------------------------------
    async def _seed(self, ctx: Any, lang: str) -> None:
        if await _get(ctx, f"seeded:{lang}"):
            return
        d = self.domains[lang]
        for coll, key in (("orders", "id"), ("products", "id"), ("codes", "code")):
            for row in d.fixtures.get(coll, []):
                await ctx.storage.put_doc(f"{coll}_{lang}", str(row[key]), row)
        await ctx.storage.set(f"seeded:{lang}", True)

    async def _run_action(self, ctx: Any, session_id: str, state: dict, action: str, slots: dict) -> str:
        lang = state["lang"]
        d = self.domains[lang]
        spec = d.action(action)
        await self._seed(ctx, lang)
        values: dict[str, Any] = dict(slots)
        order = None
        if "order_id" in slots:
            order = await _get_doc(ctx, f"orders_{lang}", slots["order_id"])
            if order is None and spec.not_found:
                return d.say(spec.not_found, **values)
            values.update({k: v for k, v in (order or {}).items() if k != "id"})
        if action in ("lookup_order", "lookup_refund"):
            return d.say(spec.response, **values)
        if action in ("cancel_order", "change_address"):
            if order.get("status") not in ("processing", "处理中"):
                return d.say(spec.refused, **values)
            update = {"status": "cancelled" if lang == "en" else "已取消"} if action == "cancel_order" \
                else {"address": slots["address"]}
            order.update(update)
            if action == "cancel_order":
                order["cancel_reason"] = slots.get("reason")
            await ctx.storage.put_doc(f"orders_{lang}", slots["order_id"], order)
            values.update(update)
            values["address"] = slots.get("address", values.get("address"))
            return d.say(spec.response, **values)
        if action == "create_return":
            rid = "R" + uuid.uuid4().hex[:6].upper()
            await ctx.storage.put_doc("returns", rid, {"order_id": slots["order_id"], "reason": slots.get("reason"),
                                                       "email": slots.get("email"), "session": session_id})
            return d.say(spec.response, return_id=rid, **values)
        if action == "create_ticket":
            tid = await self._store_ticket(ctx, session_id, state, kind=state.get("last_form") or "support",
                                           slots=slots, summary=None)
            return d.say(spec.response, ticket_id=tid, **values)
        if action == "check_stock":
            p = await _get_doc(ctx, f"products_{lang}", slots["product"]) or {"name": slots["product"], "stock": 0}
            if lang == "zh":
                stock = f"有货（{p['stock']} 件）。" if p.get("stock") else f"暂时缺货，预计{p.get('restock', '稍后')}补货。"
            else:
                stock = f"in stock ({p['stock']} available)." if p.get("stock") else \
                    f"out of stock; expected back {p.get('restock', 'soon')}."
            return d.say(spec.response, product_name=p["name"], stock_text=stock, **values)
        if action == "send_password_reset":
            await ctx.storage.put_doc("password_resets", uuid.uuid4().hex[:12],
                                      {"email": slots["email"], "session": session_id})
            return d.say(spec.response, **values)
        if action == "check_code":
            code = await _get_doc(ctx, f"codes_{lang}", slots["code"].upper())
            if code is None:
                return d.say(spec.not_found, **values)
            return d.say(spec.response, description=code["description"], **values)
        return d.say("fallback")

    # -- tickets and handoff ------------------------------------------------------------------------------------
    async def _store_ticket(self, ctx: Any, session_id: str, state: dict, kind: str, slots: dict,
                            summary: str | None, reason: str = "") -> str:
        tid = "T" + uuid.uuid4().hex[:6].upper()
        turns = state.get("turns", [])
        await ctx.storage.put_doc("tickets", tid, {
            "session": session_id, "kind": kind, "reason": reason, "status": "open", "lang": state.get("lang"),
            "slots": slots, "summary": summary or _digest(turns), "digest": _digest(turns),
            "transcript": turns[-MAX_TURNS:],
        })
        state.setdefault("tickets", []).append(tid)
        return tid

    async def _handoff(self, ctx: Any, session_id: str, state: dict, reason: str) -> str:
        d = self.domains[state["lang"]]
        summary = await self.summarise(ctx, state.get("turns", []), reason)
        slots = {**state.get("last_slots", {}), **state.get("slots", {})}
        tid = await self._store_ticket(ctx, session_id, state, kind="handoff", slots=slots, summary=summary,
                                       reason=reason)
        state.update(form=None, requested=None, slots={}, failures=0, clarify=None, handoff=tid)
        return d.say("handoff", ticket_id=tid)

    async def summarise(self, ctx: Any, turns: list, reason: str) -> str:
        """The LLM's summary of the conversation for the agent; the extractive digest when it gives nothing."""
        transcript = "\n".join(f"{r}: {t}" for r, t in turns[-12:])
        try:
            out = await ctx.llm.chat([
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Handoff reason: {reason}.\nConversation:\n{transcript}\n\n"
                                            "Summarise the customer's problem in one or two sentences."}],
                max_tokens=80, temperature=0.0)
            text = (out.get("text") or "").strip()
        except Exception as exc:  # noqa: BLE001 - the ticket must be stored even when the model fails
            ctx.log.warning("summary failed: %s", exc)
            text = ""
        return text if len(text) >= 15 else _digest(turns)


def _digest(turns: list) -> str:
    said = [t for r, t in turns if r == "user"]
    return "Customer said: " + " | ".join(said[-5:]) if said else "No messages."
