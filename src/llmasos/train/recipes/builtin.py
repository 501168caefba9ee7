"""The built-in model's recipe: corpus -> tokenizer -> pre-training -> chat fine-tuning -> teacher replies ->
distillation -> evaluation of both candidates -> package the better one.

`llmasos train recipe builtin` runs every stage into a work directory; each finished stage leaves a marker, so
an interrupted rebuild continues where it stopped (pre-training resumes from its last checkpoint). The shipped
model (`llmasos/builtin/model`, served as `--model builtin`) is the `final` directory it writes.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from llmasos.train.recipes.distill import (
    TOPIC_TEMPLATES,
    reply_rouge,
    teacher_prompts,
    teacher_replies,
    vocab_tradeoff,
)
from llmasos.train.recipes.sources import (
    Synset,
    chatterbot_conversations,
    find_wordnet,
    python_topics,
    read_wordnet,
)
from llmasos.train.recipes.synthetic import synthetic_conversations, turns_to_messages


@dataclass(frozen=True)
class BuiltinRecipe:
    """Every knob of the rebuild. `smoke()` is a minutes-long shrink for tests of the pipeline itself."""

    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 4
    max_position: int = 1024
    synthetic_conversations: int = 60000
    pretrain_steps: int = 1600
    pretrain_batch: int = 16
    pretrain_seq_len: int = 256
    pretrain_lr: float = 2e-3
    sft_steps: int = 500
    sft_batch: int = 16
    sft_lr: float = 5e-4
    # Sequence-level distillation (0 prompts: skip it): the teacher's replies to open prompts, mixed with
    # grounded synthetic conversations, fine-tune the chat model; the better of the two is shipped.
    distill_prompts: int = 5000
    distill_gold: int = 6000
    distill_steps: int = 400
    distill_lr: float = 3e-4
    distill_eval_prompts: int = 30  # held-out teacher replies per prompt family
    teacher: str | None = None  # None: the default model (SmolLM2-135M-Instruct)
    seed: int = 0

    @classmethod
    def smoke(cls) -> BuiltinRecipe:
        return cls(vocab_size=600, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   max_position=256, synthetic_conversations=300, pretrain_steps=20, pretrain_batch=4,
                   pretrain_seq_len=64, sft_steps=10, sft_batch=4, distill_prompts=20, distill_gold=20,
                   distill_steps=4, distill_eval_prompts=2)


SAMPLE_PROMPTS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "user", "content": "What does volcano mean?"}],
    [{"role": "user", "content": "Give me a synonym for happy."}],
    [{"role": "system", "content": "You are the support assistant of Northwind. Order 51234: shipped, sent with "
                                   "UPS on 2026-05-02. Returns are accepted within 30 days of delivery."},
     {"role": "user", "content": "Where is my order 51234?"}],
    [{"role": "system", "content": 'You recommend books from this catalogue only: "The Harbor" (mystery book); '
                                   '"The Lantern" (fantasy book); "The Orchard" (history book).'},
     {"role": "user", "content": "Can you recommend a fantasy book?"}],
    [{"role": "user", "content": "Hello, how are you?"}],
]


def synset_text(s: Synset) -> str:
    text = f"The word {s.words[0]} ({s.pos}) means {s.definition}."  # the same form as the chat answers
    if len(s.words) > 1:
        text += " Also: " + ", ".join(s.words[1:]) + "."
    if s.hypernym:
        text += f" It is a kind of {s.hypernym}."
    for ex in s.examples[:2]:
        text += f' Example: "{ex}".'
    return text


def build_corpus(recipe: BuiltinRecipe, out: Path, wordnet_dir: str | None = None) -> dict[str, int]:
    """pretrain.jsonl (plain text) and chat.jsonl (conversations); returns document counts."""
    synsets = read_wordnet(find_wordnet(wordnet_dir))
    rng = random.Random(recipe.seed)
    convs = synthetic_conversations(recipe.synthetic_conversations, synsets, recipe.seed)
    convs += [turns_to_messages(t) for t in chatterbot_conversations()] * 5  # small, so seen a few times
    rng.shuffle(convs)
    texts = [synset_text(s) for s in synsets] + list(python_topics())
    rng.shuffle(texts)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pretrain.jsonl").open("w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    with (out / "chat.jsonl").open("w") as f:
        for c in convs:
            f.write(json.dumps({"messages": c}) + "\n")
    return {"pretrain_texts": len(texts), "conversations": len(convs), "wordnet_synsets": len(synsets),
            "wordnet_dir": str(find_wordnet(wordnet_dir))}


def _done(stage_dir: Path) -> bool:
    return (stage_dir / ".done").is_file()


def _mark(stage_dir: Path, info: dict, started: float) -> None:
    (stage_dir / ".done").write_text(json.dumps({**info, "stage_seconds": round(time.time() - started)}, indent=2))


def run_builtin(work_dir: str | Path, recipe: BuiltinRecipe | None = None, wordnet_dir: str | None = None,
                num_threads: int | None = None, progress: bool = True, console: Console | None = None) -> Path:
    """Rebuild the built-in model under `work_dir`; returns the final model directory."""
    from transformers import AutoTokenizer

    from llmasos.train.config import TrainConfig
    from llmasos.train.data import prepare_dataset, read_texts
    from llmasos.train.pretrain import PretrainSpec, pretrain
    from llmasos.train.sft import read_chat_jsonl, sft
    from llmasos.train.tokenizer import train_tokenizer

    recipe = recipe or BuiltinRecipe()
    console = console or Console(stderr=True)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    corpus, tok_dir, data_dir = work / "corpus", work / "tokenizer", work / "data"

    if not _done(corpus):
        console.print("[bold]1/6[/bold] building the corpus (WordNet, chatterbot-corpus, Python topics, synthetic)")
        t0 = time.time()
        _mark(corpus, build_corpus(recipe, corpus, wordnet_dir), t0)
    if not _done(tok_dir):
        console.print("[bold]2/6[/bold] training the tokenizer")
        t0 = time.time()
        convs = read_chat_jsonl(corpus / "chat.jsonl")
        # The tokenizer sees dialogue text too, so chat turns tokenize as compactly as definitions.
        chat_texts = ["\n".join(m["content"] for m in c) for c in convs]
        texts = list(read_texts(corpus / "pretrain.jsonl")) + chat_texts
        train_tokenizer(texts, recipe.vocab_size, tok_dir, show_progress=progress)
        _mark(tok_dir, {"vocab_size": recipe.vocab_size}, t0)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    if not _done(data_dir):
        console.print("[bold]3/6[/bold] tokenizing the pre-training data")
        t0 = time.time()
        convs = read_chat_jsonl(corpus / "chat.jsonl")
        # Pre-training mixes rendered conversations in, so the chat format is familiar before fine-tuning.
        rendered = (tokenizer.apply_chat_template(c, tokenize=False) for c in convs)
        texts = list(read_texts(corpus / "pretrain.jsonl")) + list(rendered)
        random.Random(recipe.seed).shuffle(texts)
        meta = prepare_dataset(texts, tokenizer, data_dir, val_fraction=0.01, seed=recipe.seed,
                               tokenizer_path=str(tok_dir.resolve()), progress=progress)
        _mark(data_dir, asdict(meta), t0)

    pre_dir = work / "pretrain"
    if not _done(pre_dir):
        console.print("[bold]4/6[/bold] pre-training")
        t0 = time.time()
        spec = PretrainSpec(
            model=dict(family="llama", hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
                       num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
                       num_key_value_heads=recipe.num_kv_heads, max_position_embeddings=recipe.max_position,
                       tie_word_embeddings=True, rope_theta=10000.0),
            data=str(data_dir), tokenizer=str(tok_dir),
            train=TrainConfig(out_dir=str(pre_dir), max_steps=recipe.pretrain_steps, batch_size=recipe.pretrain_batch,
                              seq_len=recipe.pretrain_seq_len, lr=recipe.pretrain_lr, schedule="wsd",
                              warmup_steps=max(1, recipe.pretrain_steps // 20), decay_fraction=0.25,
                              eval_interval=max(1, recipe.pretrain_steps // 12), eval_batches=16,
                              ckpt_interval=max(1, recipe.pretrain_steps // 24), log_interval=10,
                              seed=recipe.seed, num_threads=num_threads))
        r = pretrain(spec, resume=True, progress=progress)
        _mark(pre_dir, asdict(r), t0)

    sft_dir = work / "sft"
    if not _done(sft_dir):
        console.print("[bold]5/6[/bold] chat fine-tuning")
        t0 = time.time()
        convs = read_chat_jsonl(corpus / "chat.jsonl")
        cfg = TrainConfig(out_dir=str(sft_dir), max_steps=recipe.sft_steps, batch_size=recipe.sft_batch, seq_len=384,
                          lr=recipe.sft_lr, schedule="cosine", warmup_steps=max(1, recipe.sft_steps // 20),
                          eval_interval=max(1, recipe.sft_steps // 6), eval_batches=16,
                          ckpt_interval=max(1, recipe.sft_steps // 6), seed=recipe.seed, num_threads=num_threads)
        r = sft(pre_dir / "model", convs, cfg, resume=True, progress=progress)
        _mark(sft_dir, asdict(r), t0)

    candidates = {"chat fine-tuned": sft_dir / "model"}
    if recipe.distill_prompts:
        teacher_dir = work / "teacher"
        if not _done(teacher_dir):
            console.print("[bold]6/8[/bold] teacher replies for sequence-level distillation")
            t0 = time.time()
            _mark(teacher_dir, build_teacher_data(recipe, work, num_threads, console), t0)
        distill_dir = work / "distill"
        if not _done(distill_dir):
            console.print("[bold]7/8[/bold] distillation: fine-tuning on the teacher's replies and grounded dialogues")
            t0 = time.time()
            convs = [c for _, c in read_family_jsonl(teacher_dir / "train.jsonl")]
            synsets = read_wordnet(find_wordnet(json.loads((corpus / ".done").read_text()).get("wordnet_dir")))
            convs += synthetic_conversations(recipe.distill_gold, synsets, recipe.seed + 3)
            random.Random(recipe.seed).shuffle(convs)
            cfg = TrainConfig(out_dir=str(distill_dir), max_steps=recipe.distill_steps, batch_size=recipe.sft_batch,
                              seq_len=384, lr=recipe.distill_lr, schedule="cosine",
                              warmup_steps=max(1, recipe.distill_steps // 20),
                              eval_interval=max(1, recipe.distill_steps // 4), eval_batches=16,
                              ckpt_interval=max(1, recipe.distill_steps // 4), seed=recipe.seed,
                              num_threads=num_threads)
            r = sft(sft_dir / "model", convs, cfg, resume=True, progress=progress)
            _mark(distill_dir, {**asdict(r), "conversations": len(convs)}, t0)
        candidates["distilled"] = distill_dir / "model"
    final = work / "final"
    console.print(f"[bold]{8 if recipe.distill_prompts else 6}/{8 if recipe.distill_prompts else 6}[/bold] "
                  "evaluating and packaging")
    package_model(candidates, final, work, recipe, console)
    console.print(f"built-in model written to {final}")
    return final


def seed_from_model(work: Path, model_dir: Path) -> None:
    """Start a rebuild from an already trained chat model (e.g. the shipped one): its tokenizer becomes the
    tokenizer stage and the model the chat fine-tuning stage (with the figures its build recorded), so only the
    corpus, data, distillation and packaging stages run. The held-out split is the original one: same corpus,
    same tokenizer, same seed."""
    stats = json.loads((model_dir / "build_stats.json").read_text())
    tok = work / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, tok / name)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    (tok / ".done").write_text(json.dumps({"vocab_size": vocab, "seeded_from": str(model_dir)}))
    for stage in ("pretrain", "sft"):
        (work / stage).mkdir(parents=True, exist_ok=True)
        (work / stage / ".done").write_text(json.dumps({**stats[stage], "seeded_from": str(model_dir)}))
        if (model_dir / f"{stage}_loss.png").is_file():
            shutil.copy(model_dir / f"{stage}_loss.png", work / stage / "loss.png")
    if (work / "sft" / "model").exists():
        shutil.rmtree(work / "sft" / "model")
    shutil.copytree(model_dir, work / "sft" / "model")


def build_teacher_data(recipe: BuiltinRecipe, work: Path, num_threads: int | None, console: Console) -> dict:
    """teacher/train.jsonl and teacher/held_out.jsonl: the teacher's replies to disjoint sets of open prompts."""
    from llmasos.kernel.llm import LLM

    synsets = read_wordnet(find_wordnet(json.loads((work / "corpus" / ".done").read_text()).get("wordnet_dir")))
    train = teacher_prompts(synsets, recipe.distill_prompts, recipe.seed + 1)
    seen = {m[-1]["content"] for _, m in train}
    families = 1 + len(TOPIC_TEMPLATES)
    held = [p for p in teacher_prompts(synsets, 4 * families * recipe.distill_eval_prompts, recipe.seed + 2)
            if p[1][-1]["content"] not in seen]
    by_family: dict[str, list] = {}
    for p in held:
        by_family.setdefault(p[0], []).append(p)
    held = [p for family in by_family.values() for p in family[: recipe.distill_eval_prompts]]
    (work / "teacher").mkdir(parents=True, exist_ok=True)
    teacher = LLM(recipe.teacher, num_threads=num_threads)
    name = recipe.teacher or "the default model"
    out = {"teacher": name, "train_prompts": len(train), "held_out_prompts": len(held)}
    for split, prompts in (("train", train), ("held_out", held)):
        kept = teacher_replies(teacher, prompts, console=console)
        with (work / "teacher" / f"{split}.jsonl").open("w") as f:
            for family, conv in kept:
                f.write(json.dumps({"family": family, "messages": conv}) + "\n")
        out[f"{split}_kept"] = len(kept)
    return out


def read_family_jsonl(path: Path) -> list[tuple[str, list[dict[str, str]]]]:
    return [(r["family"], r["messages"]) for r in map(json.loads, path.read_text().splitlines()) if r]


OPEN_SAMPLE_PROMPTS = [
    [{"role": "user", "content": "Write a title for a blog post about saving energy at home."}],
    [{"role": "user", "content": "Continue the story: The old lighthouse keeper opened the door and"}],
    [{"role": "user", "content": "What is your favourite book?"}],
]


def evaluate_candidate(model_dir: Path, work: Path) -> tuple[dict, list[str]]:
    """Held-out figures of one candidate (bf16, as shipped) and its sample replies."""
    from llmasos.eval.perplexity import perplexity
    from llmasos.kernel.llm import LLM
    from llmasos.kernel.sampling_params import SamplingParams
    from llmasos.models.loader import load_model
    from llmasos.train.data import TokenDataset

    val = TokenDataset(work / "data", "val")
    n = min(len(val.tokens), 64 * 256)
    windows = [val.tokens[i : i + 256].astype("int64").tolist() for i in range(0, n - 1, 256)]
    bf16, _ = load_model(model_dir, dtype="bfloat16")
    llm = LLM(str(model_dir), dtype="bfloat16")
    figures = {"val_ppl_pretrain_data": round(perplexity(bf16, windows).corpus_ppl, 3),
               "task_exact_match": task_accuracy(llm, work)}
    held = work / "teacher" / "held_out.jsonl"
    if held.is_file():
        figures["teacher_rouge_l"] = reply_rouge(llm, read_family_jsonl(held))
    outs = llm.chat(SAMPLE_PROMPTS + OPEN_SAMPLE_PROMPTS,
                    SamplingParams(max_tokens=80, temperature=0.0, repetition_penalty=1.1))
    return figures, [o.text for o in outs]


def choose(figures: dict[str, dict]) -> str:
    """The distilled model replaces the chat model only if it learned the teacher's open skills (mean ROUGE-L
    against held-out teacher replies up) without losing the grounded ones (mean task exact match down by at
    most 5 points) or the language model (held-out perplexity up by at most 10%)."""
    base = figures["chat fine-tuned"]
    if "distilled" not in figures:
        return "chat fine-tuned"
    d = figures["distilled"]

    def mean(x: dict[str, float]) -> float:
        return sum(x.values()) / max(1, len(x))

    better = (mean(d.get("teacher_rouge_l", {})) > mean(base.get("teacher_rouge_l", {}))
              and mean(d["task_exact_match"]) >= mean(base["task_exact_match"]) - 0.05
              and d["val_ppl_pretrain_data"] <= 1.10 * base["val_ppl_pretrain_data"])
    return "distilled" if better else "chat fine-tuned"


def package_model(candidates: dict[str, Path], final: Path, work: Path, recipe: BuiltinRecipe,
                  console: Console | None = None) -> None:
    """Evaluate every candidate on the same held-out sets, ship the better one in bf16 with a model card."""
    started = time.time()
    from transformers import AutoTokenizer

    from llmasos.models.hf_format import save_hf_checkpoint
    from llmasos.models.loader import load_model, read_hf_config

    figures: dict[str, dict] = {}
    replies: dict[str, list[str]] = {}
    for name, path in candidates.items():
        figures[name], replies[name] = evaluate_candidate(path, work)
        if console is not None:
            console.print(f"  {name}: {figures[name]}")
    chosen = choose(figures)
    if final.exists():
        shutil.rmtree(final)
    src = candidates[chosen]
    model, _ = load_model(src, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    save_hf_checkpoint(model, read_hf_config(src), final, tokenizer=tokenizer, dtype=torch.bfloat16)
    prompts = SAMPLE_PROMPTS + OPEN_SAMPLE_PROMPTS
    samples = [(msgs, {name: r[i] for name, r in replies.items()}) for i, msgs in enumerate(prompts)]
    stats = {
        **figures[chosen],
        "shipped": chosen,
        "candidates": figures,
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_mb": round(sum(f.stat().st_size for f in final.iterdir()) / 1e6, 2),
        "weights_mb": round((final / "model.safetensors").stat().st_size / 1e6, 2),
        "pretrain": json.loads((work / "pretrain" / ".done").read_text()),
        "sft": json.loads((work / "sft" / ".done").read_text()),
        "corpus": json.loads((work / "corpus" / ".done").read_text()),
        "vocab_tradeoff": vocab_tradeoff(recipe.hidden_size, recipe.vocab_size, 49152),
    }
    stages_run = ["corpus", "tokenizer", "data", "pretrain", "sft", "teacher", "distill"]
    markers = {s: json.loads((work / s / ".done").read_text()) for s in stages_run if (work / s / ".done").is_file()}
    for s in ("teacher", "distill"):
        if s in markers:
            stats[s] = markers[s]
    # Wall time of every stage as it ran (a stage's own marker; older markers may lack it).
    stages = {s: m.get("stage_seconds", m.get("seconds")) for s, m in markers.items()}
    stages["package"] = round(time.time() - started)
    stats["stage_seconds"] = stages
    (final / "build_stats.json").write_text(json.dumps(stats, indent=2))
    (final / "README.md").write_text(model_card(recipe, stats, samples))
    for png in ["pretrain/loss.png", "sft/loss.png", "distill/loss.png"]:
        if (work / png).is_file():
            shutil.copy(work / png, final / png.replace("/", "_"))


def task_accuracy(llm, work: Path, per_task: int = 50, seed: int = 12345) -> dict[str, float]:  # noqa: ANN001
    """Exact-match rate of greedy replies on fresh synthetic conversations (a seed training never used)."""
    from llmasos.kernel.sampling_params import SamplingParams
    from llmasos.train.recipes.synthetic import GENERATORS

    synsets = read_wordnet(find_wordnet(json.loads((work / "corpus" / ".done").read_text()).get("wordnet_dir")))
    out = {}
    for name in ["customer_service", "recommendation", "knowledge_qa", "writing"]:
        rng = random.Random(seed)
        convs = [GENERATORS[name][0](rng, synsets) for _ in range(per_task)]
        replies = llm.chat([c[:-1] for c in convs], SamplingParams(max_tokens=96, temperature=0.0))
        hits = sum(r.text.strip() == c[-1]["content"].strip() for r, c in zip(replies, convs, strict=True))
        out[name] = hits / per_task
    return out


def distillation_section(stats: dict) -> list[str]:
    """Before/after figures of the distillation stage, if it ran."""
    cands = stats.get("candidates") or {}
    if "distilled" not in cands:
        return []
    t, d = stats.get("teacher", {}), stats.get("distill", {})
    v = stats["vocab_tradeoff"]
    lines = [
        "",
        "## Distillation from SmolLM2-135M-Instruct",
        f"- Teacher: {t.get('teacher')}. It answered {t.get('train_prompts')} open prompts (small talk from "
        "chatterbot-corpus openers, titles, short stories, explanations, rewrites of WordNet example sentences); "
        f"{t.get('train_kept')} replies that ended their turn were kept. The chat model was fine-tuned on them "
        f"mixed with grounded synthetic dialogues ({d.get('conversations')} conversations, {d.get('steps')} steps, "
        f"validation loss {d.get('val_loss', float('nan')):.3f}).",
        "- Sequence-level, not logit, distillation: the teacher's vocabulary has 49152 tokens; at this width "
        f"its embedding table alone takes {v['teacher_vocab_embedding_bf16_mb']} MB in bf16 "
        f"({v['teacher_vocab_embedding_int8_mb']} MB in int8) of the {v['budget_mb']:.0f} MB budget, against "
        f"{v['student_vocab_embedding_bf16_mb']} MB for our 8192 tokens.",
        "",
        "| held-out figure | chat fine-tuned | distilled |",
        "|---|---|---|",
        f"| perplexity, pre-training split | {cands['chat fine-tuned']['val_ppl_pretrain_data']} | "
        f"{cands['distilled']['val_ppl_pretrain_data']} |",
    ]
    for k in cands["chat fine-tuned"]["task_exact_match"]:
        lines.append(f"| task exact match, {k} | {cands['chat fine-tuned']['task_exact_match'][k]:.0%} | "
                     f"{cands['distilled']['task_exact_match'][k]:.0%} |")
    for k in cands["distilled"].get("teacher_rouge_l", {}):
        lines.append(f"| ROUGE-L vs the teacher's reply, {k} | {cands['chat fine-tuned']['teacher_rouge_l'][k]:.3f} | "
                     f"{cands['distilled']['teacher_rouge_l'][k]:.3f} |")
    lines += ["", f"Shipped: **{stats['shipped']}** (rule: `recipes/builtin.choose`: the distilled model must gain "
              "on the teacher's held-out replies without losing more than 5 points of task exact match or 10% "
              "of perplexity)."]
    return lines


def model_card(recipe: BuiltinRecipe, stats: dict, samples: list) -> str:
    p, s = stats["pretrain"], stats["sft"]
    lines = [
        "# llmasos-builtin: the model LLMasOS trains itself",
        "",
        "A small Llama-architecture chat model trained from scratch on this project's CPU pipeline. It is served "
        "as `--model builtin` / `LLM(\"builtin\")` (the default model is SmolLM2-135M-Instruct). It is tiny: it can hold a short "
        "conversation in the chat template, define English words, answer from a context it is given, recommend from "
        "a catalogue and do simple support and writing tasks. It is not a general assistant: its facts come "
        "only from WordNet glosses, and it will invent things outside that.",
        "",
        "## Size",
        f"- {stats['parameters'] / 1e6:.2f}M parameters: Llama, {recipe.num_layers} layers, hidden "
        f"{recipe.hidden_size}, {recipe.num_heads} query / {recipe.num_kv_heads} KV heads, SwiGLU "
        f"{recipe.intermediate_size}, tied embeddings, vocabulary {recipe.vocab_size} (byte-level BPE), context "
        f"{recipe.max_position} tokens.",
        f"- bf16 safetensors: {stats['weights_mb']} MB ({stats['size_mb']} MB with tokenizer and card).",
        "",
        "## Data (all redistributable, rebuilt offline)",
        f"- WordNet 3.0 glosses, examples and hypernyms ({stats['corpus']['wordnet_synsets']} synsets; "
        "Princeton WordNet licence), from Debian's `wordnet-base`.",
        "- chatterbot-corpus English conversations (BSD-3-Clause).",
        "- Python's language-reference topics from `pydoc_data` (PSF licence).",
        f"- {recipe.synthetic_conversations} synthetic conversations generated by `llmasos.train.recipes.synthetic` "
        "(identity, customer service with an order record, catalogue recommendations, writing fixes, "
        "context QA, word definitions).",
        "",
        "## Training",
        f"- Pre-training: {p['steps']} steps x {recipe.pretrain_batch} x {recipe.pretrain_seq_len} tokens "
        f"({p['tokens'] / 1e6:.1f}M tokens), AdamW, warmup-stable-decay lr {recipe.pretrain_lr}, {p['precision']}, "
        f"{p['seconds'] / 60:.0f} min. Validation loss {p['val_loss']:.3f} (perplexity {p['val_ppl']:.2f}).",
        f"- Chat fine-tuning: {s['steps']} steps x {recipe.sft_batch} conversations, loss on assistant tokens "
        f"only, lr {recipe.sft_lr} cosine, {s['seconds'] / 60:.0f} min. Validation loss {s['val_loss']:.3f} "
        f"(perplexity {s['val_ppl']:.2f} on assistant tokens).",
        f"- Perplexity of the shipped bf16 weights on the held-out pre-training split (256-token windows): "
        f"{stats['val_ppl_pretrain_data']}.",
        "- Exact-match rate of greedy replies on 50 fresh synthetic conversations per app skill (a seed not used "
        "in training): " + ", ".join(f"{k} {v:.0%}" for k, v in stats["task_exact_match"].items()) + ".",
        "- Wall time per stage on a 2-core CPU (minutes): "
        + ", ".join(f"{k} {v / 60:.1f}" if v is not None else f"{k} not recorded"
                    for k, v in stats["stage_seconds"].items())
        + ". Command: `llmasos train recipe builtin --out runs/builtin` (needs `apt-get install wordnet-base`).",
    ]
    lines += distillation_section(stats)
    lines += ["", "## Sample outputs (greedy, repetition penalty 1.1 as in `llmasos chat`)"]
    names = list(stats.get("candidates", {}) or {"model": None})
    for msgs, texts in samples:
        prompt = " / ".join(f"{m['role']}: {m['content']}" for m in msgs)
        lines += ["", f"> {prompt}", ""]
        for name in names:
            text = texts[name] if isinstance(texts, dict) else texts
            label = f"{name}{' (shipped)' if name == stats.get('shipped') else ''}: " if len(names) > 1 else ""
            lines += [f"{label}", "```", text.strip(), "```"] if label else ["```", text.strip(), "```"]
    lines += ["", "## Limits",
              "- Knows only what WordNet glosses and its synthetic dialogues contain; anything else is made up.",
              "- Short context habits: trained on sequences of 256 (pre-training) and 384 (chat) tokens.",
              "- English only. No safety tuning beyond what LLMasOS's system services add.",
              f"- Loss curves: `pretrain_loss.png`, `sft_loss.png`. Exact-ish perplexity of math: exp(loss); "
              f"val ppl {math.exp(min(p['val_loss'], 50)):.2f} before fine-tuning."]
    return "\n".join(lines) + "\n"
