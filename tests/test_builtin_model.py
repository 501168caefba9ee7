"""The built-in model as shipped: within the size budget, served as `--model builtin`, and a real language model."""

from __future__ import annotations

import json
import random

import pytest

from llmasos.models.default_model import BUILTIN_DIR, resolve_model_name

SENTENCES = [
    "The word river (noun) means a large natural stream of water.",
    "Order 12345 was sent with UPS on 2026-03-02.",
    "I recommend a mystery book from the catalogue.",
    "Returns are accepted within 30 days of delivery.",
    "A dog is a kind of animal that people keep at home.",
]


@pytest.fixture(scope="module")
def builtin_llm():
    from llmasos import LLM

    return LLM("builtin", dtype="bfloat16")


def test_shipped_files_fit_the_budget_and_carry_a_model_card():
    assert resolve_model_name("builtin") == BUILTIN_DIR
    total = sum(p.stat().st_size for p in BUILTIN_DIR.iterdir())
    assert total <= 25 * 1024 * 1024
    card = (BUILTIN_DIR / "README.md").read_text()
    for section in ["## Size", "## Data", "## Training", "## Sample outputs", "## Limits"]:
        assert section in card
    stats = json.loads((BUILTIN_DIR / "build_stats.json").read_text())
    assert stats["parameters"] > 1_000_000 and stats["val_ppl_pretrain_data"] < 50


def test_builtin_model_follows_the_chat_template(builtin_llm):
    from llmasos import SamplingParams

    out = builtin_llm.chat([{"role": "user", "content": "Who are you?"}],
                           SamplingParams(max_tokens=40, temperature=0))[0]
    assert "LLMasOS" in out.text and out.finish_reason == "stop"  # it ends its turn with <|im_end|>


def test_builtin_model_prefers_english_to_shuffled_words(builtin_llm):
    from llmasos.eval.perplexity import text_perplexity
    from llmasos.models.loader import load_model

    model, _ = load_model(BUILTIN_DIR, dtype="float32")
    tok = builtin_llm.tokenizer
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(s.split(), len(s.split()))) for s in SENTENCES]
    real = text_perplexity(model, tok, SENTENCES).corpus_ppl
    noise = text_perplexity(model, tok, shuffled).corpus_ppl
    assert real * 3 < noise, (real, noise)
