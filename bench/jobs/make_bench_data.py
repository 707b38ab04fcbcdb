"""Long synthetic chat and preference datasets for throughput benchmarks (every row longer than max_length).

    python bench/jobs/make_bench_data.py --out DIR --source demo/data/sft.jsonl [--rows 512] [--words 1200]

Writes DIR/chat.jsonl ({"messages": [user, assistant]}) and DIR/preference.jsonl ({"prompt", "chosen",
"rejected"}), built from words of the demo data (so the demo tokenizer covers them), deterministic per --seed.
With --words well above max_length every sequence is truncated to exactly max_length tokens, so a training step
processes batch_size x max_length tokens (DPO: twice that, chosen and rejected).
"""

from __future__ import annotations

import argparse
import json
import os
import random


def words_of(path: str) -> list[str]:
    words: list[str] = []

    def walk(v):
        if isinstance(v, str):
            words.extend(v.split())
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                walk(json.loads(line))
    return words


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--words", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    vocab = words_of(args.source)
    text = lambda n: " ".join(rng.choice(vocab) for _ in range(n))  # noqa: E731
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "chat.jsonl"), "w", encoding="utf-8") as f:
        for _ in range(args.rows):
            f.write(json.dumps({"messages": [{"role": "user", "content": text(24)},
                                             {"role": "assistant", "content": text(args.words)}]}) + "\n")
    with open(os.path.join(args.out, "preference.jsonl"), "w", encoding="utf-8") as f:
        for _ in range(args.rows):
            f.write(json.dumps({"prompt": text(24), "chosen": text(args.words), "rejected": text(args.words)}) + "\n")
    print(f"{args.rows} chat and {args.rows} preference rows of ~{args.words} words -> {args.out}")


if __name__ == "__main__":
    main()
