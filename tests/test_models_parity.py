"""Our native models against `transformers` on the same weights: logits and greedy continuations."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from llmasos import LLM, SamplingParams
from llmasos.models import UnsupportedModelError, load_model
from llmasos.models.attention import AttentionMetadata, PrefillChunk

PARITY = ["llama", "mistral", "qwen2", "qwen3", "gpt2", "llama3-rope"]


def _hf(path):
    return tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("name", PARITY)
def test_logits_match_transformers(checkpoints, name):
    ours, _ = load_model(checkpoints[name], dtype="float32")
    ref = _hf(checkpoints[name])
    torch.manual_seed(1)
    ids = torch.randint(0, 470, (3, 80))  # 80 > 32: exercises llama3 scaling beyond the original context
    with torch.no_grad():
        a, b = ours(ids), ref(ids).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", PARITY)
def test_greedy_continuation_matches_transformers(checkpoints, name):
    llm = LLM(checkpoints[name], dtype="float32", block_size=8, kv_cache_memory=1 << 20)
    ref = _hf(checkpoints[name])
    prompts = [[5, 9, 17, 33, 65, 129], list(range(40, 61)), [7]]
    outs = llm.generate(prompts, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    for prompt, out in zip(prompts, outs, strict=True):
        expect = ref.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert out.token_ids == expect
        assert out.finish_reason == "length"


def test_paged_forward_equals_dense_forward(llama_dir):
    """The engine's flattened paged path (prefix in cache + chunk) gives the dense model's logits."""
    model, _ = load_model(llama_dir, dtype="float32")
    cfg = model.config
    bs, nblocks = 4, 16
    kv = [(torch.zeros(nblocks, bs, cfg.num_kv_heads, cfg.head_dim),
           torch.zeros(nblocks, bs, cfg.num_kv_heads, cfg.head_dim)) for _ in range(cfg.num_layers)]
    ids = torch.arange(10, 30)
    table = torch.tensor([3, 7, 1, 9, 12])  # deliberately non-contiguous blocks
    slots = (table[:, None] * bs + torch.arange(bs)).reshape(-1)
    with torch.no_grad():
        dense = model(ids[None])[0]
        # chunk 1: tokens 0..11 ; chunk 2: tokens 12..19 reading the first 12 from the cache
        outs = []
        for start, end in [(0, 12), (12, 20)]:
            meta = AttentionMetadata(slot_mapping=slots[start:end], block_size=bs,
                                     prefills=[PrefillChunk(0, end - start, end, table)])
            h = model.forward_paged(ids[start:end], torch.arange(start, end), meta, kv)
            outs.append(model.compute_logits(h))
    assert (torch.cat(outs) - dense).abs().max().item() < 1e-4


def test_sharded_safetensors_load(tmp_path, llama_dir):
    ref = _hf(llama_dir)
    ref.save_pretrained(str(tmp_path), max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    ours, _ = load_model(tmp_path, dtype="float32")
    ids = torch.arange(1, 20)[None]
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max().item() < 1e-4


def test_unknown_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(UnsupportedModelError) as err:
        load_model(tmp_path)
    msg = str(err.value)
    assert "mamba" in msg and "llama" in msg and "qwen3" in msg and "gpt2" in msg


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "empty")


def test_bf16_load_runs_close_to_fp32(llama_dir):
    m32, _ = load_model(llama_dir, dtype="float32")
    m16, _ = load_model(llama_dir, dtype="bfloat16")
    assert next(m16.parameters()).dtype == torch.bfloat16
    ids = torch.arange(1, 30)[None]
    with torch.no_grad():
        a, b = m32(ids), m16(ids).float()
    assert torch.allclose(a, b, atol=0.1, rtol=0.05)
