"""Run one batch through vLLM (CPU backend) and print the timing as JSON; executed by bench_engine.py with the
python of vLLM's own virtual environment (`--vllm-python`), since vLLM pins its own torch and transformers.

    /path/to/vllm-venv/bin/python benchmarks/vllm_worker.py --model CKPT --threads 2 --requests req.json

req.json: {"prompts": [[token ids]], "out_lens": [n, ...]}. Greedy, EOS ignored, no prefix caching, token ids
in and out (the benchmark checkpoint has no tokenizer). A small warm-up batch runs before the timed one.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def run_batch(model: str, prompts: list[list[int]], out_lens: list[int]) -> dict:
    """One timed batch (after a small warm-up): {"elapsed", "token_ids", "version"}."""
    import vllm
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="bfloat16", skip_tokenizer_init=True, enable_prefix_caching=False,
              max_model_len=max(len(p) for p in prompts) + max(out_lens) + 16)
    params = [SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True, detokenize=False) for o in out_lens]
    inputs = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(inputs[:2], params[:2], use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(inputs, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    return {"elapsed": elapsed, "token_ids": [list(o.outputs[0].token_ids) for o in outs], "version": vllm.__version__}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--kv-cache-gib", type=int, default=4)
    args = ap.parse_args()
    # vLLM's CPU backend binds its OpenMP threads to cores itself; give it exactly the benchmark's threads.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with open(args.requests) as f:
        req = json.load(f)
    print("VLLM_RESULT " + json.dumps(run_batch(args.model, req["prompts"], req["out_lens"])))


if __name__ == "__main__":
    main()
