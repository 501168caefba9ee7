"""Sequence-level distillation for the built-in model: a teacher (by default the default model, SmolLM2-135M-
Instruct) answers open prompts the synthetic data cannot answer well (small talk, titles, short stories,
explanations, rewrites), and the student is fine-tuned on those replies mixed with the grounded synthetic
conversations, whose answers follow exactly from their context and stay the better target there.

The student keeps its own 8192-token vocabulary: logit distillation would need the teacher's 49152-token one,
whose embedding table alone (49152 x 256 x 2 bytes = 25.2 MB in bf16) fills the 25 MB budget (`vocab_tradeoff`).
"""

from __future__ import annotations

import random
from typing import Any

from llmasos.train.recipes.sources import Synset, chatterbot_conversations

Message = dict[str, str]

TOPIC_TEMPLATES = {
    "title": ["Write a title for a blog post about {t}.", "Suggest a short title for an article about {t}.",
              "Give me a catchy headline about {t}."],
    "story": ["Continue the story: The {t} was", "Write two sentences about a {t}.",
              "Start a short story about a {t}."],
    "explain": ["Explain what a {t} is in one sentence.", "Tell me something interesting about {t}.",
                "Why do people care about {t}?"],
    "rewrite": ["Rewrite this sentence in a formal style: {s}", "Make this sentence more friendly: {s}",
                "Say this more simply: {s}"],
}


def teacher_prompts(synsets: list[Synset], n: int, seed: int) -> list[tuple[str, list[Message]]]:
    """(family, messages) pairs: every chatterbot opener (small talk), then topic prompts from WordNet nouns and
    example sentences, round-robin over the families, `n` in all."""
    rng = random.Random(seed)
    out: list[tuple[str, list[Message]]] = []
    openers = sorted({turns[0] for turns in chatterbot_conversations()})
    rng.shuffle(openers)
    out += [("chat", [{"role": "user", "content": t}]) for t in openers[: n // 5]]
    nouns = [s for s in synsets if s.pos == "noun" and s.words[0].isalpha() and len(s.words[0]) > 3] or synsets
    sentences = [s.examples[0] for s in synsets if s.examples and 20 < len(s.examples[0]) < 120] \
        or [s.definition for s in synsets]
    families = list(TOPIC_TEMPLATES)
    while len(out) < n:
        family = families[len(out) % len(families)]
        template = rng.choice(TOPIC_TEMPLATES[family])
        text = template.format(t=rng.choice(nouns).words[0], s=rng.choice(sentences))
        out.append((family, [{"role": "user", "content": text}]))
    return out


def teacher_replies(teacher: Any, prompts: list[tuple[str, list[Message]]], max_tokens: int = 96,
                    console: Any = None) -> list[tuple[str, list[Message]]]:
    """The teacher's greedy replies (repetition penalty 1.1, as `llmasos chat`), kept where the teacher ended its
    turn (a reply cut off at `max_tokens` would teach the student to ramble)."""
    from llmasos.kernel.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, repetition_penalty=1.1)
    kept = []
    batch = 256
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        outs = teacher.chat([m for _, m in chunk], params)
        for (family, msgs), o in zip(chunk, outs, strict=True):
            if o.finish_reason == "stop" and o.text.strip():
                kept.append((family, [*msgs, {"role": "assistant", "content": o.text.strip()}]))
        if console is not None:
            console.print(f"  teacher: {min(i + batch, len(prompts))}/{len(prompts)} prompts, {len(kept)} kept")
    return kept


def vocab_tradeoff(hidden: int, student_vocab: int, teacher_vocab: int, budget_mb: float = 25.0) -> dict[str, float]:
    """Embedding-table sizes behind the choice of sequence-level over logit distillation (tied embeddings)."""
    def mb(params: int, nbytes: float) -> float:
        return round(params * nbytes / 1e6, 2)

    return {"student_vocab_embedding_bf16_mb": mb(student_vocab * hidden, 2),
            "teacher_vocab_embedding_bf16_mb": mb(teacher_vocab * hidden, 2),
            "teacher_vocab_embedding_int8_mb": mb(teacher_vocab * hidden, 1), "budget_mb": budget_mb}


def reply_rouge(llm: Any, held_out: list[tuple[str, list[Message]]], max_tokens: int = 96) -> dict[str, float]:
    """ROUGE-L F1 of greedy replies against the teacher's, per prompt family (how much of the teacher's skill
    the model has)."""
    from llmasos.eval.rouge import rouge_l
    from llmasos.kernel.sampling_params import SamplingParams

    outs = llm.chat([c[:-1] for _, c in held_out], SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                 repetition_penalty=1.1))
    hyps: dict[str, list[str]] = {}
    refs: dict[str, list[str]] = {}
    for (family, conv), o in zip(held_out, outs, strict=True):
        hyps.setdefault(family, []).append(o.text)
        refs.setdefault(family, []).append(conv[-1]["content"])
    return {f: round(rouge_l(hyps[f], [refs[f]])["rougeL"]["fmeasure"], 3) for f in sorted(hyps)}
