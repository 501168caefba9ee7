"""Chat fine-tuning of HF models through transformers.Trainer (full and LoRA), on a tiny random checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmasos.train.config import TrainConfig

CONVS = [[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "a tiny model"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
          {"role": "assistant", "content": "Paris"}]]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from llmasos.models.random_checkpoint import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("hf") / "m", "llama", preset="tiny", seed=3)


def cfg(out: Path, **kw) -> TrainConfig:
    base = dict(out_dir=str(out), max_steps=6, batch_size=4, lr=5e-3, warmup_steps=1, precision="fp32",
                eval_interval=3, ckpt_interval=6, log_interval=2, num_threads=2)
    return TrainConfig(**{**base, **kw})


def test_collated_labels_cover_only_assistant_tokens_and_align_with_inputs(base):
    from transformers import AutoTokenizer

    from llmasos.train.hf_sft import ChatCollator, build_datasets

    tok = AutoTokenizer.from_pretrained(str(base))
    train, val = build_datasets(tok, CONVS * 4, 128, val_fraction=0.25)
    assert len(train) == 6 and len(val) == 2
    batch = ChatCollator(tok.pad_token_id)([train[i] for i in range(len(train))])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape
    keep = labels != -100
    assert torch.equal(labels[keep], ids[keep])  # unshifted: transformers shifts inside the model
    assert not keep[mask == 0].any()  # no loss on padding
    learned = {tok.decode(labels[i][keep[i]]) for i in range(len(labels))}
    assert learned == {"a tiny model<|im_end|>\n", "Paris<|im_end|>\n"}
    full = {tok.decode(ids[i][mask[i] == 1]) for i in range(len(ids))}
    assert tok.apply_chat_template(CONVS[1], tokenize=False) in full


def test_full_fine_tune_trains_and_serves_in_llmasos(base, tmp_path):
    from llmasos import LLM, SamplingParams
    from llmasos.train.hf_sft import hf_sft

    result = hf_sft(base, CONVS * 8, cfg(tmp_path / "full"), progress=False)
    assert result.steps == 6 and result.trainable_params == result.total_params
    # a random init starts near ln(512) = 6.2; 6 steps reach ~4.7
    assert result.val_loss < 5.5 and result.train_loss is not None
    assert json.loads((tmp_path / "full" / "result.json").read_text())["steps"] == 6
    llm = LLM(result.model_dir, dtype="float32")
    out = llm.chat([CONVS[1][:-1]], SamplingParams(max_tokens=5, temperature=0))
    assert len(out[0].token_ids) >= 1


def test_lora_saves_an_adapter_and_the_merged_model_matches_peft(base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmasos import LLM, SamplingParams
    from llmasos.train.hf_sft import LoraSpec, hf_sft

    result = hf_sft(base, CONVS * 8, cfg(tmp_path / "lora", lr=2e-2), lora=LoraSpec(rank=4, alpha=8), merge=True,
                    progress=False)
    adapter = Path(result.adapter_dir)
    conf = json.loads((adapter / "adapter_config.json").read_text())
    assert conf["r"] == 4 and set(conf["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert (adapter / "adapter_model.safetensors").is_file()
    assert result.trainable_params < result.total_params / 5

    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                           str(adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(result.model_dir, dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    with torch.no_grad():
        a, b, c = peft_model(ids).logits, merged(ids).logits, plain(ids).logits
    assert (a - b).abs().max() < 1e-5
    assert (a - c).abs().max() > 1e-3  # the adapter did learn something
    out = LLM(result.model_dir, dtype="float32").chat([CONVS[0][:-1]], SamplingParams(max_tokens=4, temperature=0))
    assert len(out[0].token_ids) >= 1


def test_bad_options_are_refused(base, tmp_path):
    from llmasos.train.hf_sft import LoraSpec, hf_sft

    with pytest.raises(ValueError, match="merge only applies"):
        hf_sft(base, CONVS * 4, cfg(tmp_path / "x"), merge=True, progress=False)
    with pytest.raises(ValueError, match="not in this model"):
        hf_sft(base, CONVS * 4, cfg(tmp_path / "y"), lora=LoraSpec(target_modules=["c_attn"]), progress=False)
    with pytest.raises(ValueError, match="rank"):
        LoraSpec(rank=0)


def test_cli_hf_backend_with_lora(base, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVS * 4))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "llmasos.cli", "train", "sft", "-m", str(base), "-d", str(data), "-o",
           str(tmp_path / "run"), "--steps", "4", "--batch-size", "4", "--precision", "fp32", "--backend", "hf",
           "--lora", "--lora-rank", "2", "--merge"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["steps"] == 4 and Path(out["model_dir"], "config.json").is_file()
    r = subprocess.run([*cmd[:-6], "--backend", "native", "--lora"], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 2 and "--backend hf" in r.stderr and "Traceback" not in r.stderr
