"""The contract test job (jobs/refinery_jobs/testjob.py) with checkpoints of a realistic size.

    cd jobs && python /abs/bench/jobs/padded_testjob.py --config job.json

Each checkpoint-N/ also gets `model.safetensors` of BENCH_CKPT_BYTES random bytes (default
16 MiB), written before trainer_state.json so the checkpoint stays complete-when-marked. Everything
else -- steps, events, resume, fault injection -- is the test job's. Used by bench/resume-latency.ts so
that a restore downloads (and verifies) something the size of a small model's checkpoint.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.getcwd())  # workers run jobs with cwd jobs/

from refinery_jobs import contract as common, testjob  # noqa: E402

PAD_BYTES = int(os.environ.get("BENCH_CKPT_BYTES", str(16 * 1024 * 1024)))
_original_write_json_atomic = common.write_json_atomic


def _write_json_atomic(path: str, obj) -> None:
    # trainer_state.json is the last file of a checkpoint: pad the folder just before it.
    if os.path.basename(path) == common.TRAINER_STATE and PAD_BYTES > 0:
        pad = os.path.join(os.path.dirname(path), "model.safetensors")
        with open(pad, "wb") as f:
            left = PAD_BYTES
            while left > 0:
                n = min(left, 4 * 1024 * 1024)
                f.write(os.urandom(n))
                left -= n
    _original_write_json_atomic(path, obj)


common.write_json_atomic = _write_json_atomic

if __name__ == "__main__":
    common.main(testjob.SPEC, testjob.recipe_main)
