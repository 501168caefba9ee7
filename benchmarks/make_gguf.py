"""Export the benchmark checkpoint to GGUF with llama.cpp's own converter, for the llama.cpp baseline in C.

The optional baseline needs three things this project does not install: llama-cpp-python, a llama.cpp
source tree (for `convert_hf_to_gguf.py`; the llama-cpp-python sdist carries one in `vendor/llama.cpp`) and
the converter's requirements (`gguf`, `sentencepiece`):

    pip install llama-cpp-python gguf sentencepiece
    pip download --no-deps --no-binary :all: llama-cpp-python -d /tmp/src && tar xzf /tmp/src/llama_cpp_python-*.tar.gz -C /tmp/src
    python benchmarks/make_gguf.py --llama-cpp /tmp/src/llama_cpp_python-*/vendor/llama.cpp
    python benchmarks/bench_engine.py --workloads C --gguf bench_out/gguf/*.gguf

The checkpoint has no tokenizer (every engine is fed token ids), but the converter insists on one, so a
throwaway SentencePiece model is trained on Python's bundled pydoc topics; its pieces only name the ids in
the GGUF's vocabulary and play no part in the benchmark.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ensure_checkpoint  # noqa: E402


def throwaway_tokenizer(out: Path) -> None:
    import pydoc_data.topics as topics

    import sentencepiece as spm

    corpus = out.with_suffix(".txt")
    corpus.write_text("\n".join(topics.topics.values()))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out.with_suffix("")), vocab_size=2000,
                                   model_type="bpe", minloglevel=2)
    corpus.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source tree (has convert_hf_to_gguf.py)")
    p.add_argument("--out-dir", type=Path, default=Path("bench_out"), help="bench_engine.py's --out-dir")
    p.add_argument("--layers", type=int, default=None, help="as bench_engine.py's --layers (default 28)")
    p.add_argument("--outtype", nargs="+", default=["bf16", "q8_0"], help="GGUF weight types to write")
    args = p.parse_args(argv)
    converter = args.llama_cpp / "convert_hf_to_gguf.py"
    if not converter.is_file():
        p.error(f"{converter} not found: --llama-cpp must be a llama.cpp source tree")
    ckpt = ensure_checkpoint(args.out_dir, args.layers, print)
    gguf_dir = args.out_dir / "gguf"
    src = gguf_dir / f"src-{ckpt.name}"  # the checkpoint's files (linked) plus the throwaway tokenizer
    src.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.name != ".complete" and not (src / f.name).exists():
            (src / f.name).symlink_to(f.resolve())
    if not (src / "tokenizer.model").is_file():
        throwaway_tokenizer(src / "tokenizer.model")
    for outtype in args.outtype:
        out = gguf_dir / f"{ckpt.name.removesuffix('-bf16')}-{outtype}.gguf"
        print(f"writing {out}")
        subprocess.run([sys.executable, str(converter.resolve()), str(src.resolve()), "--outtype", outtype,
                        "--outfile", str(out.resolve())],
                       check=True, cwd=args.llama_cpp)
    print(f"done: python benchmarks/bench_engine.py --workloads C --gguf {gguf_dir}/*.gguf")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
