"""Compare the weights of two model (or adapter) directories tensor by tensor with torch.allclose.

    python jobs/tests/compare_weights.py DIR_A DIR_B [--atol 1e-4] [--rtol 0]

Reads every *.safetensors file (and pytorch *.bin file) under each directory, sub-folders included (a PEFT
folder with several adapters keeps the others in sub-folders), keyed by relative file path and tensor name.
Prints one JSON object on stdout:

    {"tensors": N, "allclose": bool, "max_abs_diff": float, "atol": ..., "rtol": ...,
     "only_in_a": [...], "only_in_b": [...], "shape_mismatch": [...], "not_close": [...]}

`allclose` is true only when both sides hold the same tensors with the same shapes and every pair is
allclose. Exit code 0 when it compared (whatever the verdict), 2 on bad arguments or unreadable files.
The resume-equivalence harness (infra/harness/real-resume.ts) runs it with the jobs' Python.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def load_tensors(root: str) -> dict[str, "object"]:
    import torch
    from safetensors.torch import load_file

    out = {}
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if name.endswith(".safetensors"):
                tensors = load_file(path)
            elif name.endswith(".bin") and not name.startswith("training_args"):
                tensors = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(tensors, dict):
                    continue
            else:
                continue
            for key, value in tensors.items():
                if isinstance(value, torch.Tensor):
                    out[f"{rel}:{key}"] = value
    return out


def compare_weights(a: str, b: str, *, atol: float = 1e-4, rtol: float = 0.0) -> dict:
    import torch

    ta, tb = load_tensors(a), load_tensors(b)
    only_a = sorted(set(ta) - set(tb))
    only_b = sorted(set(tb) - set(ta))
    shape_mismatch, not_close = [], []
    max_diff = 0.0
    compared = 0
    for key in sorted(set(ta) & set(tb)):
        x, y = ta[key], tb[key]
        if x.shape != y.shape:
            shape_mismatch.append(key)
            continue
        compared += 1
        if x.numel() == 0:
            continue
        x, y = x.detach().float(), y.detach().float()
        diff = float((x - y).abs().max())
        max_diff = max(max_diff, diff)
        if not torch.allclose(x, y, atol=atol, rtol=rtol):
            not_close.append(key)
    return {
        "tensors": compared,
        "allclose": compared > 0 and not (only_a or only_b or shape_mismatch or not_close),
        "max_abs_diff": max_diff,
        "atol": atol,
        "rtol": rtol,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "shape_mismatch": shape_mismatch,
        "not_close": not_close[:50],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--rtol", type=float, default=0.0)
    args = parser.parse_args(argv)
    for d in (args.a, args.b):
        if not os.path.isdir(d):
            print(f"not a directory: {d}", file=sys.stderr)
            return 2
    try:
        result = compare_weights(args.a, args.b, atol=args.atol, rtol=args.rtol)
    except Exception as e:  # unreadable file: say which
        print(f"cannot compare: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
