"""The domain file: intents with examples, FAQ entries, forms (typed, validated slots), actions, responses and
fixtures (the shop's orders, products and codes), validated with pydantic. Errors name the field:
`intents.order_status.form: unknown form 'order_sttus'`."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DATA = Path(__file__).parent / "data"
SAMPLES = {"en": DATA / "shop_en.yaml", "zh": DATA / "shop_zh.yaml"}
ACTIONS = {"lookup_order", "cancel_order", "create_return", "lookup_refund", "change_address", "create_ticket",
           "check_stock", "send_password_reset", "check_code"}
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


class DomainError(ValueError):
    """A domain file that does not validate; the message names each bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Intent(_Strict):
    examples: list[str] = Field(min_length=2)
    form: str | None = None
    response: str | None = None
    handoff: bool = False


class Faq(_Strict):
    id: str
    questions: list[str] = Field(min_length=1)
    answer: str


class Slot(_Strict):
    name: str
    type: Literal["pattern", "email", "date", "choice", "text"]
    prompt: str
    error: str = "That doesn't look right."
    pattern: str | None = None
    ignore_case: bool = False
    choices: dict[str, list[str]] | None = None
    past_only: bool = False
    min_length: int = 1

    @model_validator(mode="after")
    def _check(self) -> Slot:
        if self.type == "pattern":
            if not self.pattern:
                raise ValueError("a pattern slot needs 'pattern'")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice slot needs 'choices'")
        return self

    # -- extraction and validation ---------------------------------------------------------------------------
    def extract(self, text: str, requested: bool = False, today: dt.date | None = None) -> Any:
        """The slot's value found in `text`, or None. A text slot only takes the whole message when asked for."""
        if self.type == "pattern":
            m = re.search(self.pattern, text, re.IGNORECASE if self.ignore_case else 0)
            if m is None:
                return None
            return m.group(0).upper() if self.ignore_case else m.group(0)
        if self.type == "email":
            m = EMAIL.search(text)
            return m.group(0).lower() if m else None
        if self.type == "date":
            d = parse_date(text, today or dt.date.today())
            if d is None or (self.past_only and d > (today or dt.date.today())):
                return None
            return d.isoformat()
        if self.type == "choice":
            low = text.lower()
            best = None
            for key, syns in (self.choices or {}).items():
                for s in [key.replace("_", " "), *syns]:
                    if s.lower() in low and (best is None or len(s) > best[1]):
                        best = (key, len(s))
            return best[0] if best else None
        value = text.strip()
        return value if requested and len(value) >= self.min_length else None


class Form(_Strict):
    slots: list[Slot] = Field(min_length=1)
    action: str

    @field_validator("action")
    @classmethod
    def _known_action(cls, v: str) -> str:
        if v not in ACTIONS:
            raise ValueError(f"unknown action {v!r}; known: {', '.join(sorted(ACTIONS))}")
        return v


class Action(_Strict):
    name: str
    response: str
    not_found: str | None = None
    refused: str | None = None


class Domain(_Strict):
    language: Literal["en", "zh"] = "en"
    name: str = "Shop"
    intents: dict[str, Intent] = Field(min_length=2)
    faq: list[Faq] = []
    forms: dict[str, Form] = {}
    actions: list[Action] = []
    responses: dict[str, Any] = {}
    fixtures: dict[str, list[dict]] = {}

    @model_validator(mode="after")
    def _references(self) -> Domain:
        errors = []
        for name, intent in self.intents.items():
            if intent.form and intent.form not in self.forms:
                errors.append(f"intents.{name}.form: unknown form {intent.form!r}")
            if intent.response and intent.response not in self.responses:
                errors.append(f"intents.{name}.response: unknown response {intent.response!r}")
        names = {a.name for a in self.actions}
        for name, form in self.forms.items():
            if form.action not in names:
                errors.append(f"forms.{name}.action: {form.action!r} is not declared under actions")
        for i, a in enumerate(self.actions):
            for field in ("response", "not_found", "refused"):
                ref = getattr(a, field)
                if ref and ref not in self.responses:
                    errors.append(f"actions.{i}.{field}: unknown response {ref!r}")
        for key in ("fallback", "handoff", "clarify"):
            if key not in self.responses:
                errors.append(f"responses.{key}: missing")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def action(self, name: str) -> Action:
        return next(a for a in self.actions if a.name == name)

    def training_examples(self, per_intent: int | None = None, with_faq: bool = False) -> dict[str, list[str]]:
        out = {k: v.examples[:per_intent] if per_intent else list(v.examples) for k, v in self.intents.items()}
        if with_faq:
            for f in self.faq:
                out[f"faq:{f.id}"] = list(f.questions)
        return out

    def say(self, key: str, **values: Any) -> str:
        text = self.responses.get(key, key)
        if isinstance(text, list):
            text = text[0]
        try:
            return str(text).format(**values)
        except (KeyError, IndexError, ValueError):
            return str(text)


def load_domain(source: str | Path | dict | None = None) -> Domain:
    """A domain from a YAML file, YAML text, a dict, or a sample's language code ("en", "zh"; default "en")."""
    if source is None:
        source = "en"
    where = "domain"
    if isinstance(source, dict):
        data = source
    else:
        if isinstance(source, str) and source in SAMPLES:
            source = SAMPLES[source]
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith(
                (".yaml", ".yml"))):
            where = str(source)
            text = Path(source).read_text(encoding="utf-8")
        else:
            text = str(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DomainError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DomainError(f"{where}: the domain must be a mapping")
    try:
        return Domain.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "domain"
            lines.append(f"{loc}: {err['msg']}")
        raise DomainError(f"{where}: " + "; ".join(lines)) from None


# -- dates ------------------------------------------------------------------------------------------------------

MONTHS = {m: i + 1 for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                          "nov", "dec"])}


def parse_date(text: str, today: dt.date) -> dt.date | None:
    """ISO dates, d/m/y, '3 May', 'May 3 2024', today / yesterday, 今天 / 昨天 / 前天, 2024年5月3日."""
    low = text.lower()
    if "day before yesterday" in low or "前天" in text:
        return today - dt.timedelta(days=2)
    if "yesterday" in low or "昨天" in text:
        return today - dt.timedelta(days=1)
    if "today" in low or "今天" in text:
        return today
    if "tomorrow" in low or "明天" in text:
        return today + dt.timedelta(days=1)
    tries = []
    m = re.search(r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})", text)
    if m:
        tries.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    m = re.search(r"(?<!\d)(\d{1,2})[/.](\d{1,2})[/.](\d{4})", text)
    if m:
        tries.append((int(m.group(3)), int(m.group(2)), int(m.group(1))))
    m = re.search(r"(\d{1,2})月(\d{1,2})[日号]", text)
    if m:
        tries.append((today.year, int(m.group(1)), int(m.group(2))))
    m = re.search(r"(?<!\d)(\d{1,2})(?:st|nd|rd|th)?\s+([a-z]{3})[a-z]*\.?(?:\s+(\d{4}))?", low)
    if m and m.group(2) in MONTHS:
        tries.append((int(m.group(3) or today.year), MONTHS[m.group(2)], int(m.group(1))))
    m = re.search(r"\b([a-z]{3})[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?(?:,?\s+(\d{4}))?", low)
    if m and m.group(1) in MONTHS:
        tries.append((int(m.group(3) or today.year), MONTHS[m.group(1)], int(m.group(2))))
    for y, mo, d in tries:
        try:
            return dt.date(y, mo, d)
        except ValueError:
            continue
    return None
