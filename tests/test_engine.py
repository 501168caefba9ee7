"""The engine end to end on a tiny float32 Llama: batching, chunking, caching, preemption, sampling, limits."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from llmasos import LLM, AsyncLLM, SamplingParams, StructuredOutput

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [[5, 6, 7], list(range(10, 60)), [99] * 9, list(range(200, 233)), [3], list(range(300, 317))]


def make_llm(path, **kw):
    opts = dict(dtype="float32", block_size=4, kv_cache_memory=2 << 20, max_num_batched_tokens=64)
    return LLM(path, **{**opts, **kw})


@pytest.fixture(scope="module")
def reference(llama_dir):
    """Each prompt generated alone, with a large step budget and no prefix cache: the ground truth."""
    llm = make_llm(llama_dir, max_num_batched_tokens=4096, enable_prefix_caching=False)
    return [llm.generate([p], GREEDY)[0].token_ids for p in PROMPTS]


def test_continuous_batching_equals_one_at_a_time(llm, reference):
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == reference
    assert all(o.finish_reason == "length" and len(o.token_ids) == 12 for o in outs)


def test_chunked_prefill_of_a_long_prompt_equals_one_shot(llama_dir):
    long_prompt = [(i * 7) % 470 for i in range(300)]
    one_shot = make_llm(llama_dir, max_num_batched_tokens=4096).generate([long_prompt], GREEDY)[0].token_ids
    llm = make_llm(llama_dir, max_num_batched_tokens=16)
    assert llm.generate([long_prompt], GREEDY)[0].token_ids == one_shot
    assert llm.engine.stats.steps >= 300 // 16 + 11


def test_prefix_cache_hits_shared_prompt_and_gives_same_tokens(llama_dir, reference):
    llm = make_llm(llama_dir)
    system = list(range(100, 140))  # 10 full blocks of 4
    a = llm.generate([system + [1, 2, 3]], GREEDY)[0]
    b = llm.generate([system + [7, 8]], GREEDY)[0]
    assert a.metrics.num_cached_prompt_tokens == 0
    assert b.metrics.num_cached_prompt_tokens == 40
    fresh = make_llm(llama_dir, enable_prefix_caching=False).generate([system + [7, 8]], GREEDY)[0]
    assert b.token_ids == fresh.token_ids


def test_preemption_under_memory_pressure_keeps_results_exact(llama_dir, reference):
    # 2 layers x 2 kv heads x 16 dims x 4 bytes x 2 (K,V) = 512 bytes/token: 40 blocks of 4 = 160 tokens,
    # far less than the batch needs at once.
    llm = make_llm(llama_dir, kv_cache_memory=40 * 4 * 512)
    assert llm.engine.block_manager.num_blocks == 40
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == reference
    assert llm.engine.stats.preemptions > 0


def test_abort_frees_blocks_at_once(llm):
    eng = llm.engine
    total = eng.block_manager.num_blocks
    rid = eng.add_request(list(range(1, 40)), SamplingParams(max_tokens=50, ignore_eos=True))
    for _ in range(3):
        eng.step()
    assert eng.block_manager.num_free_blocks < total
    out = eng.abort_request(rid)
    assert out.finished and out.outputs[0].finish_reason == "abort"
    assert eng.block_manager.num_free_blocks == total
    assert not eng.has_unfinished_requests()
    assert eng.abort_request("no-such-request") is None


def test_n_greater_than_one_forks_and_shares_prompt_blocks(llm):
    eng = llm.engine
    p = SamplingParams(n=3, max_tokens=8, temperature=1.0, seed=7, ignore_eos=True)
    rid = eng.add_request(list(range(1, 23)), p)  # 22 tokens: 5 full blocks + a partial one
    outs = []
    while eng.has_unfinished_requests():
        outs += eng.step()
        if rid in eng.requests and len(eng.requests[rid].seqs) == 3:
            seqs = eng.requests[rid].seqs
            shared = set(seqs[0].block_table[:5]) & set(seqs[1].block_table[:5]) & set(seqs[2].block_table[:5])
            assert len(shared) == 5  # the prompt's full blocks exist once
    final = outs[-1]
    assert final.finished and len(final.outputs) == 3
    assert [c.index for c in final.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in final.outputs}) > 1
    again = llm.generate([list(range(1, 23))], p)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in final.outputs]  # seeded: reproducible


def test_n_greedy_completions_are_identical(llm, reference):
    out = llm.generate([PROMPTS[1]], SamplingParams(n=2, max_tokens=12, temperature=0, ignore_eos=True))[0]
    assert [c.token_ids for c in out.outputs] == [reference[1], reference[1]]


def test_stop_string_truncates_text(llm):
    base = llm.generate(["Hello, how can"], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))[0]
    text = base.text
    assert len(text) > 6
    stop = text[3:6]
    first = text.find(stop)
    out = llm.generate(["Hello, how can"], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert out.text == text[:first]
    incl = llm.generate(["Hello, how can"], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=[stop],
                                                           include_stop_str_in_output=True))[0]
    assert incl.text == text[: first + len(stop)]


def test_stop_token_ids_and_max_tokens(llm, reference):
    stop_tok = reference[0][4]
    first = reference[0].index(stop_tok)
    out = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                    stop_token_ids=[stop_tok]))[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop_tok
    assert out.token_ids == reference[0][: first + 1]
    short = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))[0]
    assert short.token_ids == reference[0][:3] and short.finish_reason == "length"


def test_generation_stops_at_the_context_window(llama_dir):
    llm = make_llm(llama_dir, max_model_len=64)
    out = llm.generate([list(range(1, 61))], SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 4 and out.finish_reason == "length"


def test_logprobs_are_returned_per_token(llm):
    out = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=2))[0]
    lps = out.outputs[0].logprobs
    assert len(lps) == 5
    for tok, lp in zip(out.token_ids, lps, strict=True):
        assert tok in lp and lp[tok] <= 0 and len(lp) in (2, 3)
        assert lp[tok] == max(lp.values())  # greedy picks the most likely token
    assert out.outputs[0].cumulative_logprob == pytest.approx(sum(lp[t] for t, lp in zip(out.token_ids, lps, strict=True)))


@pytest.mark.parametrize("bad", [
    "", [], [10**9], [-1], ["a"], 42, list(range(3000)),
])
def test_bad_prompt_is_rejected_and_others_keep_running(llm, bad):
    eng = llm.engine
    ok = eng.add_request([1, 2, 3], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    eng.step()
    with pytest.raises(ValueError):
        eng.add_request(bad, SamplingParams(max_tokens=4))
    finished = {}
    while eng.has_unfinished_requests():
        finished.update({o.request_id: o for o in eng.step() if o.finished})
    assert len(finished[ok].token_ids) == 4


def test_bad_request_options_are_rejected(llm):
    eng = llm.engine
    with pytest.raises(ValueError):
        eng.add_request([1, 2], {"max_tokens": 3})
    with pytest.raises(ValueError):
        eng.add_request([1, 2], SamplingParams(), weight=0)
    with pytest.raises(ValueError):
        eng.add_request([1, 2], SamplingParams(), priority="high")
    with pytest.raises(ValueError):
        eng.add_request([1, 2], SamplingParams(structured=StructuredOutput(regex="(unclosed")))
    rid = eng.add_request([1, 2], SamplingParams(max_tokens=1), request_id="dup")
    with pytest.raises(ValueError):
        eng.add_request([1, 2], SamplingParams(), request_id="dup")
    eng.abort_request(rid)
    with pytest.raises(ValueError):
        llm.generate([[1, 2], ""], SamplingParams(max_tokens=2))
    assert not eng.has_unfinished_requests()  # the good half of a bad batch was withdrawn


def test_structured_output_json_schema(llm):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                               "ok": {"type": "boolean"}},
              "required": ["name", "ok"], "additionalProperties": False}
    outs = llm.generate(["Give JSON:"] * 2, SamplingParams(max_tokens=60, temperature=0.8, seed=3,
                                                           structured=StructuredOutput(json=schema)))
    for o in outs:
        assert o.finish_reason == "stop", o.text
        value = json.loads(o.text)
        assert set(value) == {"name", "ok"} and isinstance(value["ok"], bool) and len(value["name"]) <= 6


def test_structured_output_regex_and_choice(llm):
    out = llm.generate(["Code:"], SamplingParams(max_tokens=30, temperature=1.0, seed=1,
                                                 structured=StructuredOutput(regex=r"[0-9]{3}-[a-z]{2}")))[0]
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", out.text), out.text
    choices = ["yes", "no", "maybe"]
    outs = llm.generate(["Answer:"] * 4, [SamplingParams(max_tokens=10, temperature=1.0, seed=s,
                                                         structured=StructuredOutput(choice=choices)) for s in range(4)])
    assert all(o.text in choices for o in outs)


def test_chat_applies_the_template(llm):
    prompt = llm.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt.startswith("<|im_start|>user\nhi<|im_end|>") and prompt.endswith("<|im_start|>assistant\n")
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=5, temperature=0))[0]
    assert out.prompt == prompt and 1 <= len(out.token_ids) <= 5
    with pytest.raises(ValueError):
        llm.chat([{"role": "user"}])


def test_priority_request_overtakes_a_flood(llama_dir):
    llm = make_llm(llama_dir, max_num_batched_tokens=32)
    eng = llm.engine
    flood = [eng.add_request(list(range(1, 60)), SamplingParams(max_tokens=4, ignore_eos=True), app_id="batch")
             for _ in range(8)]
    urgent = eng.add_request(list(range(1, 30)), SamplingParams(max_tokens=4, ignore_eos=True),
                             app_id="chat", priority=-1)
    first_token_step = {}
    step = 0
    while eng.has_unfinished_requests():
        step += 1
        for o in eng.step():
            first_token_step.setdefault(o.request_id, step)
    assert first_token_step[urgent] == 1
    assert all(first_token_step[r] > 1 for r in flood)


def test_async_streaming_deltas_add_up(llama_dir):
    from llmasos.kernel.config import EngineConfig
    from llmasos.kernel.llm import build_engine

    engine = build_engine(EngineConfig(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory=2 << 20))
    allm = AsyncLLM(engine)

    async def collect(prompt, **kw):
        parts, last = [], None
        async for out in allm.generate(prompt, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, **kw)):
            parts.append(out.outputs[0].delta_text)
            last = out
        return "".join(parts), last

    async def early_exit():
        async for _out in allm.generate([1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True)):
            break

    async def main():
        return await asyncio.gather(collect("Hello, how"), collect("The quick"), collect("Hello, how", stop=["o"]))

    try:
        results = asyncio.run(main())
        for text, last in results:
            assert last.finished and text == last.text
        assert "o" not in results[2][0]
        asyncio.run(early_exit())
        allm.submit(lambda e: None).result(timeout=30)  # the abort was queued before this: it has run
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
        with pytest.raises(ValueError):
            asyncio.run(collect(""))
    finally:
        allm.shutdown()


def test_chat_does_not_add_special_tokens_twice(tmp_path):
    """A Llama-3-style template writes BOS itself; the tokenizer must not add a second one."""
    from transformers import AutoTokenizer

    from llmasos.models.random_checkpoint import build_random_checkpoint

    path = build_random_checkpoint(tmp_path / "bos", "llama")
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.bos_token = "<|endoftext|>"
    tok.add_bos_token = True
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(str(path))
    llm = make_llm(path)
    bos = llm.tokenizer.bos_token_id
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2))[0]
    assert out.prompt_token_ids.count(bos) == 1 and out.prompt_token_ids[0] == bos


def test_a_sequence_larger_than_the_kv_pool_ends_with_length_not_a_stall(llama_dir):
    llm = make_llm(llama_dir, kv_cache_memory=10 * 4 * 512)  # 10 blocks of 4 tokens: 40 tokens in all
    assert llm.engine.max_seq_tokens == 40
    out = llm.generate([list(range(1, 37))], SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4
    with pytest.raises(ValueError, match="KV cache"):
        llm.generate([list(range(1, 45))], SamplingParams(max_tokens=2))


def test_bf16_engine_same_tokens_with_and_without_prepacked_weights(llama_dir):
    """The bf16 CPU fast paths (prepacked oneDNN weights for batched steps, the native small-batch kernel,
    fused SwiGLU) give the tokens the plain weights give."""
    kw = dict(dtype="bfloat16", max_num_batched_tokens=4096)
    packed = make_llm(llama_dir, prepack_weights=True, **kw)
    plain = make_llm(llama_dir, prepack_weights=False, **kw)
    assert packed.engine.prepacked_bytes > 0  # the pinned torch's oneDNN supports prepacking
    assert plain.engine.prepacked_bytes == 0
    a = [o.token_ids for o in packed.generate(PROMPTS, GREEDY)]
    b = [o.token_ids for o in plain.generate(PROMPTS, GREEDY)]
    assert a == b and all(len(t) == 12 for t in a)


@pytest.mark.parametrize("weights", ["bf16", "prepacked", "int8", "int8_copies", "int4", "q4_0"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])  # qwen2: biased q/k/v; qwen3: q/k norms
def test_straight_line_decode_equals_the_general_path(family, weights, tmp_path):
    """Decode steps of any batch size take models.fast_decode (one native call per step), whatever the
    weights (bf16, oneDNN-prepacked, int8, int8 with its prepacked and interleaved copies, int4, Q4_0-like int4
    with its interleaved copy); its tokens and logprobs are the general layer-by-layer path's, bit for bit, at
    batch 1, 3 (our small-batch kernels) and 8 (past them: oneDNN / expanded weights for bf16 and plain int8,
    still ours with an interleaved copy)."""
    import torch

    from llmasos.compress.quantize import quantize_model
    from llmasos.models.fast_decode import FastDecode
    from llmasos.models.random_checkpoint import build_random_checkpoint
    from llmasos.ops import native_kernels

    if native_kernels() is None:
        pytest.skip("no native kernels on this CPU")
    ckpt = build_random_checkpoint(tmp_path / family, family, seed=3, dtype=torch.bfloat16, hidden_size=128,
                                   intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    # No prefix cache: the second run must compute the same prefill steps the first did, not reuse its blocks.
    llm = make_llm(ckpt, dtype="bfloat16", prepack_weights=weights == "prepacked", max_num_batched_tokens=512,
                   enable_prefix_caching=False)
    if weights in ("int8", "int8_copies", "int4", "q4_0"):
        quantize_model(llm.engine.model, bits=8 if weights.startswith("int8") else 4,
                       group_size=32 if weights == "q4_0" else 64)
    if weights == "int8_copies":
        from llmasos.ops.quant_linear import QuantLinear

        for m in llm.engine.model.modules():
            if isinstance(m, QuantLinear):
                m.prepack()
                assert m.interleaved is not None and m.packed is not None
    if weights == "q4_0":
        # As GGUF's Q4_0: groups of 32, minimums of -8 x the scales (folded: sym8), and the 16-row-interleaved
        # copy the engine makes along with the prepacked one.
        from llmasos.ops.quant_linear import QuantLinear

        for m in llm.engine.model.modules():
            if isinstance(m, QuantLinear):
                m.mins, m.sym8 = (m.scales.float() * -8).to(m.scales.dtype), True
                m.prepack()
                assert m.interleaved is not None
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=3)
    prompts = PROMPTS + [[7, 8, 9, 10], list(range(40, 52))]

    def run():
        outs = [llm.generate([p], params)[0] for p in prompts[:1]] + llm.generate(prompts[:3], params) \
            + llm.generate(prompts, params)
        return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]

    fast = run()
    assert isinstance(llm.engine.model._fast_decode, FastDecode)
    llm.engine.model._fast_decode = None  # general path from here on
    assert run() == fast
    # Hooks or wrapped modules (adapters) rule it out; reset_fast_paths makes the decoder look again.
    model = llm.engine.model
    model.layers[0].attn.kv_hook = lambda k, v: (k, v)
    model.reset_fast_paths()
    llm.generate([PROMPTS[0]], params)
    assert model._fast_decode is None


def test_bf16_engine_logprobs_match_transformers(tmp_path):
    """The whole bf16 CPU path (prepacked matmuls, native norms, rotary, prefill attention over chunks and a
    cached prefix, decode attention) against transformers' bf16 forward on the same weights."""
    import torch
    import transformers as tf

    from llmasos.models.random_checkpoint import build_random_checkpoint

    ckpt = build_random_checkpoint(tmp_path / "m", "llama", seed=5, dtype=torch.bfloat16, hidden_size=128,
                                   intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    hf = tf.AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.bfloat16)
    system = list(range(100, 164))
    prompts = [system + [7, 8, 9], system + list(range(300, 345))]
    llm = make_llm(ckpt, dtype="bfloat16", max_num_batched_tokens=16)  # chunked prefill, 2nd prompt hits the cache
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, logprobs=5)
    outs = [llm.generate([p], params)[0] for p in prompts]
    assert outs[1].metrics.num_cached_prompt_tokens == 64
    for prompt, out in zip(prompts, outs, strict=True):
        with torch.no_grad():
            ref = hf(torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)
        ours = out.outputs[0].logprobs[0]
        assert out.outputs[0].token_ids[0] == int(ref.argmax())
        for tok, lp in ours.items():
            assert abs(lp - float(ref[tok])) < 0.02, (tok, lp, float(ref[tok]))  # measured <= 0.004
