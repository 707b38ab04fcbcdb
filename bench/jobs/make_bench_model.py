"""A randomly initialised Llama of a chosen size, with the demo tokenizer, for GPU benchmarks (no model hub).

    cd jobs && python ../bench/jobs/make_bench_model.py --out /tmp/llama-0.5b --data ../demo/data/*.jsonl \
        [--hidden 1536 --intermediate 4096 --layers 20 --heads 12 --kv-heads 4] [--seed 0]

Defaults give ~0.5B parameters (20 layers × 25.2M; the demo vocabulary is ~1k tokens, so the embeddings are
negligible). The tokenizer is make_tiny_model's (trained on --data), so the model fits the demo data formats and
the jobs' chat template. Weights are saved in bf16.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.getcwd())  # run with cwd jobs/

from refinery_jobs import make_tiny_model as tiny  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--intermediate", type=int, default=4096)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--max-positions", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    # make_tiny_model builds its Llama from these module constants: widen them.
    tiny.HIDDEN, tiny.INTERMEDIATE, tiny.LAYERS = args.hidden, args.intermediate, args.layers
    tiny.HEADS, tiny.KV_HEADS, tiny.MAX_POSITIONS = args.heads, args.kv_heads, args.max_positions
    tokenizer = tiny.build_tokenizer(tiny.corpus(args.data))
    tokenizer.model_max_length = args.max_positions
    model = tiny.build_model(tokenizer, args.seed).to(torch.bfloat16)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"bench llama: {params / 1e6:.1f}M parameters, vocab {len(tokenizer)}, bf16 -> {args.out}")


if __name__ == "__main__":
    main()
