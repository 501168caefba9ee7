"""Files and documents to plain text (text, Markdown, HTML, PDF), and text into overlapping chunks."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

CHUNK_WORDS, OVERLAP_WORDS = 160, 40
_WORD = re.compile(r"\S+")


def html_to_text(html: str) -> tuple[str, str]:
    """(text, title) of an HTML page: scripts, styles and navigation dropped, blocks on their own lines."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "nav", "footer"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    text = soup.get_text("\n")
    lines = [" ".join(ln.split()) for ln in text.splitlines()]
    return "\n".join(ln for ln in lines if ln), title


def markdown_to_text(md: str) -> tuple[str, str]:
    """(text, title) of Markdown: the first heading is the title; markup that carries no words is removed."""
    title = ""
    m = re.search(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", md, re.MULTILINE)
    if m:
        title = m.group(1).strip()
    text = re.sub(r"^\s{0,3}#{1,6}\s+", "", md, flags=re.MULTILINE)  # headings
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images: keep the alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links: keep the words
    text = re.sub(r"^\s*```.*$", "", text, flags=re.MULTILINE)  # code fences (the code stays)
    text = re.sub(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1", r"\2", text)  # emphasis and inline code
    text = re.sub(r"^\s*>\s?", "", text, flags=re.MULTILINE)  # quotes
    return text.strip(), title


def pdf_to_text(data: bytes) -> tuple[str, str]:
    """(text, title) of a PDF, page by page (pypdf)."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    pages = [(p.extract_text() or "").strip() for p in reader.pages]
    title = ""
    try:
        title = str((reader.metadata or {}).get("/Title") or "")
    except Exception:  # noqa: BLE001 - broken metadata must not stop the text
        title = ""
    return "\n\n".join(p for p in pages if p), title


def load_file(path: str | Path, doc_id: str | None = None, metadata: dict | None = None) -> dict:
    """A document dict ({"id", "text", "metadata"}) from a .txt/.md/.html/.pdf file (by suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        doc = {"pdf_base64": base64.b64encode(path.read_bytes()).decode()}
    elif suffix in (".html", ".htm", ".xhtml"):
        doc = {"html": path.read_text(encoding="utf-8", errors="replace")}
    elif suffix in (".md", ".markdown"):
        doc = {"markdown": path.read_text(encoding="utf-8", errors="replace")}
    else:
        doc = {"text": path.read_text(encoding="utf-8", errors="replace")}
    doc["id"] = doc_id or path.stem
    doc["metadata"] = {"source": str(path), **(metadata or {})}
    return normalize(doc)


def normalize(doc: Any) -> dict:
    """Validate one input document and convert it to plain text. Accepted keys: `id` (required), one of
    `text`,
    `markdown`, `html`, `pdf_base64`, and `metadata` (a JSON object). `format` ("text", "markdown", "html")
    may say how to read `text`."""
    if not isinstance(doc, dict):
        raise ValueError(
            "a document is an object with an 'id' and a 'text' (or 'markdown', 'html', 'pdf_base64')"
        )
    doc_id = doc.get("id")
    if not isinstance(doc_id, str) or not doc_id.strip() or len(doc_id) > 200:
        raise ValueError("a document needs an 'id': a non-empty string of at most 200 characters")
    meta = dict(doc.get("metadata") or {})
    if not isinstance(doc.get("metadata") or {}, dict):
        raise ValueError(f"document {doc_id!r}: metadata must be an object")
    fmt = str(doc.get("format") or "text").lower()
    title = ""
    if doc.get("pdf_base64") is not None:
        text, title = pdf_to_text(base64.b64decode(doc["pdf_base64"]))
        meta.setdefault("format", "pdf")
    elif doc.get("html") is not None or (fmt == "html" and doc.get("text") is not None):
        text, title = html_to_text(str(doc.get("html") if doc.get("html") is not None else doc["text"]))
        meta.setdefault("format", "html")
    elif doc.get("markdown") is not None or (fmt in ("markdown", "md") and doc.get("text") is not None):
        text, title = markdown_to_text(
            str(doc.get("markdown") if doc.get("markdown") is not None else doc["text"])
        )
        meta.setdefault("format", "markdown")
    elif isinstance(doc.get("text"), str):
        text = doc["text"]
    else:
        raise ValueError(f"document {doc_id!r} has no text")
    text = text.replace("\x00", "").strip()
    if not text:
        raise ValueError(f"document {doc_id!r} is empty")
    if title and "title" not in meta:
        meta["title"] = title
    return {"id": doc_id.strip(), "text": text, "metadata": meta}


def chunk_text(text: str, words: int = CHUNK_WORDS, overlap: int = OVERLAP_WORDS) -> list[str]:
    """Windows of `words` words that overlap by `overlap` words; the original spacing inside each is kept. A
    window
    is pulled back to end at a paragraph or sentence end when one lies in its last quarter."""
    spans = [m.span() for m in _WORD.finditer(text)]
    if len(spans) <= words:
        return [text.strip()]
    out, start = [], 0
    while start < len(spans):
        end = min(start + words, len(spans))
        if end < len(spans):
            for j in range(end - 1, start + (3 * words) // 4, -1):
                tok = text[spans[j][0] : spans[j][1]]
                if tok.endswith((".", "!", "?", ":")) or "\n\n" in text[spans[j][1] : spans[j + 1][0]]:
                    end = j + 1
                    break
        out.append(text[spans[start][0] : spans[end - 1][1]])
        if end >= len(spans):
            break
        start = max(end - overlap, start + 1)
    return out


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"*>])|\n\s*\n")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if s and s.strip()]
