"""The project's own synthetic conversations for the bundled apps, generated from seeded templates.

Each generator writes conversations whose right answer follows from what is in the conversation (an order
record in the system prompt, a catalogue, a context passage, a sentence to rewrite), so a small model can
learn the skill the app needs (read the context, answer from it, say when it cannot) rather than facts.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from llmasos.train.recipes.sources import Synset

Message = dict[str, str]
Conversation = list[Message]

IDENTITY = [
    ("Who are you?", "I am the built-in model of LLMasOS, a small language model trained by the project's own "
                     "pipeline. I can chat, define words, and answer from the context I am given."),
    ("What is your name?", "I am the LLMasOS built-in model."),
    ("What can you do?", "I can chat, explain what words mean, answer questions from a context, recommend items "
                         "from a catalogue, help with short writing tasks and answer simple support questions."),
    ("Who made you?", "I was trained by the LLMasOS project, from WordNet definitions, open conversation data and "
                      "the project's own synthetic dialogues."),
    ("What is LLMasOS?", "LLMasOS is an operating system for LLM applications: the language model is the CPU, "
                         "apps are processes, and the KV cache is virtual memory."),
    ("Are you human?", "No, I am a small language model running inside LLMasOS."),
]
SHOPS = ["Northwind", "Acme Store", "Bluebird Books", "Green Garden", "Pixel Parts", "Cedar Home"]
CARRIERS = ["DHL", "UPS", "FedEx", "the postal service"]
STATUSES = ["processing", "shipped", "delivered", "cancelled"]
GENRES = ["mystery", "science fiction", "romance", "history", "fantasy", "biography", "comedy", "travel"]
KINDS = ["book", "film"]


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def identity(rng: random.Random, _: list[Synset]) -> Conversation:
    q, a = rng.choice(IDENTITY)
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def customer_service(rng: random.Random, _: list[Synset]) -> Conversation:
    shop, order = rng.choice(SHOPS), rng.randint(10000, 99999)
    status, carrier, date = rng.choice(STATUSES), rng.choice(CARRIERS), _date(rng)
    days = rng.choice([14, 30, 60])
    system = (f"You are the support assistant of {shop}. Order {order}: {status}"
              + (f", sent with {carrier} on {date}" if status in ("shipped", "delivered") else "")
              + f". Returns are accepted within {days} days of delivery.")
    task = rng.randrange(4)
    if task == 0:
        q = rng.choice([f"Where is my order {order}?", f"What is the status of order {order}?",
                        f"Has order {order} shipped yet?"])
        a = {"processing": f"Order {order} is still being processed. You will get a message when it ships.",
             "shipped": f"Order {order} was sent with {carrier} on {date}.",
             "delivered": f"Order {order} was delivered; it was sent with {carrier} on {date}.",
             "cancelled": f"Order {order} was cancelled. No payment was taken."}[status]
    elif task == 1:
        age = rng.randint(1, 90)
        q = f"I received my item {age} days ago. Can I still return it?"
        a = (f"Yes. Returns are accepted within {days} days of delivery, so you can still return it."
             if age <= days else
             f"I am sorry, returns are accepted only within {days} days of delivery, and it has been {age} days.")
    elif task == 2:
        q = rng.choice(["I want to talk to a person.", "Can I speak to a human?", "Please get me a real agent."])
        a = "Of course. I am passing you to a human agent now; they will reply here shortly."
    else:
        q = rng.choice(["Thanks for your help!", "Thank you.", "Great, thanks."])
        a = rng.choice([f"You are welcome! Thank you for shopping at {shop}.", "Glad I could help. Have a nice day!"])
    return [{"role": "system", "content": system}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]


def recommendation(rng: random.Random, synsets: list[Synset]) -> Conversation:
    kind = rng.choice(KINDS)
    items = []
    for genre in rng.sample(GENRES, 4):
        noun = rng.choice(synsets).words[0]
        items.append((f"The {noun.title()}", genre))
    title, genre = rng.choice(items)
    catalog = "; ".join(f'"{t}" ({g} {kind})' for t, g in items)
    system = f"You recommend {kind}s from this catalogue only: {catalog}."
    if rng.random() < 0.8:
        q = rng.choice([f"I like {genre}. What {kind} should I try?", f"Can you recommend a {genre} {kind}?",
                        f"Any {genre} {kind} for tonight?"])
        a = f'I recommend "{title}", a {genre} {kind} from the catalogue.'
    else:
        missing = rng.choice([g for g in GENRES if g not in {g2 for _, g2 in items}])
        q = f"Do you have a {missing} {kind}?"
        a = f"Sorry, the catalogue has no {missing} {kind}. It has " + ", ".join(g for _, g in items) + " titles."
    return [{"role": "system", "content": system}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]


def writing(rng: random.Random, synsets: list[Synset]) -> Conversation:
    sentence = rng.choice([s for s in rng.sample(synsets, 50) if s.examples] or [synsets[0]])
    text = sentence.examples[0] if sentence.examples else sentence.definition
    task = rng.randrange(4)
    if task == 0:
        q, a = f"Fix the capitalization and punctuation: {text}", text[:1].upper() + text[1:].rstrip(".!?") + "."
    elif task == 1:
        words = text.split()
        q, a = f"Turn this into a title: {text}", " ".join(w[:1].upper() + w[1:] for w in words)
    elif task == 2:
        words = text.split()
        i = rng.randrange(len(words))
        doubled = " ".join(words[: i + 1] + [words[i]] + words[i + 1 :])
        q, a = f"Remove the repeated word: {doubled}", text
    else:
        n = len(text.split())
        q, a = f"How many words are in this sentence: {text}", f"It has {n} word{'s' if n != 1 else ''}."
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def knowledge_qa(rng: random.Random, synsets: list[Synset]) -> Conversation:
    facts = [s for s in rng.sample(synsets, 4)]
    context = " ".join(f"{s.words[0].capitalize()}: {s.definition}." for s in facts[:3])
    system = f"Answer the question using only this context. Context: {context}"
    if rng.random() < 0.8:
        s = rng.choice(facts[:3])
        q = rng.choice([f"What is {s.words[0]}?", f"What does {s.words[0]} mean?", f"Define {s.words[0]}."])
        a = f"According to the context, {s.words[0]} means {s.definition}."
    else:
        s = facts[3]
        q = f"What does {s.words[0]} mean?"
        a = f"The context does not say what {s.words[0]} means."
    return [{"role": "system", "content": system}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]


def define(rng: random.Random, synsets: list[Synset]) -> Conversation:
    s = rng.choice(synsets)
    w = s.words[0]
    task = rng.random()
    if task < 0.6 or (task < 0.8 and len(s.words) < 2) or (task >= 0.8 and not s.examples):
        q = rng.choice([f"What does {w} mean?", f"Define {w}.", f'What is the meaning of "{w}"?',
                        f"What is {'a ' if s.pos == 'noun' else ''}{w}?"])
        # "The word <w>" keeps <w> as the same token sequence as in the question: easy to copy.
        a = f"The word {w} ({s.pos}) means {s.definition}."
        if s.hypernym:
            a += f" It is a kind of {s.hypernym}."
        if s.examples:
            a += f' For example: "{s.examples[0]}".'
    elif task < 0.8:
        q = rng.choice([f"Give me a synonym for {w}.", f"What is another word for {w}?"])
        others = [x for x in s.words[1:] if x != w]
        a = f"Another word for {w} is {others[0]}." + (f" You can also say {others[1]}." if len(others) > 1 else "")
    else:
        q = f"Use {w} in a sentence."
        a = s.examples[0][:1].upper() + s.examples[0][1:] + "."
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


GENERATORS: dict[str, tuple[Callable[[random.Random, list[Synset]], Conversation], float]] = {
    "identity": (identity, 0.005),
    "customer_service": (customer_service, 0.14),
    "recommendation": (recommendation, 0.12),
    "writing": (writing, 0.12),
    "knowledge_qa": (knowledge_qa, 0.15),
    "define": (define, 0.45),
}


def synthetic_conversations(n: int, synsets: list[Synset], seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    names = list(GENERATORS)
    weights = [GENERATORS[k][1] for k in names]
    return [GENERATORS[rng.choices(names, weights)[0]][0](rng, synsets) for _ in range(n)]


def turns_to_messages(turns: list[str]) -> Conversation:
    """chatterbot's alternating turns: the user speaks first."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
