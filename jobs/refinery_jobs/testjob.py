"""A purpose-built contract job for fault and timing tests (no torch, starts in well under a second).

    python -m refinery_jobs.testjob --config job.json

It stands in for any stage kind. It "trains" for hyper.max_steps steps (default 20), sleeping
params.step_seconds per step, emits `progress` with a falling loss, writes checkpoint-N/ every
hyper.save_steps (state.json first, trainer_state.json last, then the `checkpoint` event), resumes from
resume_from, and writes output_dir/result.json before `done`.

Fault injection (params):
  fail_at_step N     emit an `error` (runtime) and exit with exit_code (default 1) at step N, once: only on a
                     fresh start, never when resuming (so a retry from a checkpoint succeeds)
  hang_at_step N     at step N stop emitting anything and sleep forever (stall detection); fresh start only
  exit_code C        without fail_at_step: exit with C right after reading the config, with an `error` event
                     of the matching category (2 config, 3 data, 4 unsupported, else runtime); C=0 exits 0
                     without `done` (a crash by the contract)
  setup_seconds S    sleep before `started`
  ignore_sigterm     ignore SIGTERM (the worker must escalate to SIGKILL)
  child_pid_file P   spawn a child process that sleeps forever and write its pid to P (orphan tests)
  checkpoint_bytes B each checkpoint-N/ also holds weights.bin, B random bytes (written before
                     trainer_state.json), so that checkpoint writes and uploads take real time and space
                     (faults/run.ts: object-store outages mid-upload, a full scratch disk)
  bad_event_at_step N  at step N also write a line that breaks the contract (not JSON) to the events fd;
                     the worker must count and record it, and the job goes on
  dump_env           write the job's environment to output_dir/env.json (secret-leak tests: the worker
                     must not pass REFINERY_S3_* or other credentials to a job)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from refinery_jobs import contract, data
from refinery_jobs.config import JobConfig, JobSpec, Param
from refinery_jobs.contract import JobError

SPEC = JobSpec(
    kinds=(),
    any_kind=True,
    inputs=(),
    optional_inputs=("model", "base", "reward_model", "reward_model_base"),
    formats=data.FORMATS,
    needs_train=False,
    params={
        "step_seconds": Param(float, 0.05, min=0.0),
        "setup_seconds": Param(float, 0.0, min=0.0),
        "fail_at_step": Param(int, None, min=1),
        "hang_at_step": Param(int, None, min=1),
        "exit_code": Param(int, None, min=0, max=255),
        "ignore_sigterm": Param(bool, False),
        "child_pid_file": Param(str, None),
        "checkpoint_bytes": Param(int, 0, min=0, max=1 << 31),
        "dump_env": Param(bool, False),
        "bad_event_at_step": Param(int, None, min=1),
    },
)

CATEGORY_BY_CODE = {2: "config", 3: "data", 4: "unsupported"}


class TestJob:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events, self.p = cfg, events, cfg.params
        self.total = cfg.hyper.max_steps or 20
        self.save_steps = cfg.hyper.save_steps
        self.start_step = cfg.resumed_from_step or 0
        self.fresh = cfg.resume_from is None

    def setup(self) -> None:
        p = self.p
        if p["exit_code"] is not None and p["fail_at_step"] is None:
            code = p["exit_code"]
            if code == 0:
                contract.log("exit_code 0 requested: exiting without a done event")
                sys.stdout.flush()
                os._exit(0)
            category = CATEGORY_BY_CODE.get(code, "runtime")
            self.events.error(JobError(category, f"testjob: exit_code {code} requested"))
            os._exit(code)
        if p["ignore_sigterm"]:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if p["child_pid_file"]:
            child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(60)"])
            with open(p["child_pid_file"], "w", encoding="utf-8") as f:
                f.write(str(child.pid))
        time.sleep(p["setup_seconds"])
        self.events.started(total_steps=self.total, resumed_from_step=self.cfg.resumed_from_step, device="cpu")

    def loss(self, step: int) -> float:
        return round(2.0 / (1.0 + 0.1 * step), 6)

    def save_checkpoint(self, step: int) -> None:
        path = os.path.join(self.cfg.checkpoint_dir, f"checkpoint-{step}")
        os.makedirs(path, exist_ok=True)
        contract.write_json_atomic(os.path.join(path, "state.json"), {"step": step, "loss": self.loss(step)})
        remaining = self.p["checkpoint_bytes"]
        if remaining:
            with open(os.path.join(path, "weights.bin"), "wb") as f:
                while remaining > 0:
                    chunk = os.urandom(min(remaining, 1 << 22))
                    f.write(chunk)
                    remaining -= len(chunk)
                f.flush()
                os.fsync(f.fileno())
        contract.write_json_atomic(os.path.join(path, contract.TRAINER_STATE),
                                   {"global_step": step, "max_steps": self.total, "run_id": self.cfg.run_id})
        self.events.checkpoint(step, path)

    def train(self) -> None:
        p = self.p
        for step in range(self.start_step + 1, self.total + 1):
            time.sleep(p["step_seconds"])
            if self.fresh and p["hang_at_step"] == step:
                contract.log(f"hanging at step {step}")
                while True:
                    time.sleep(3600)
            if self.fresh and p["fail_at_step"] == step:
                code = p["exit_code"] if p["exit_code"] is not None else 1
                self.events.error(JobError(CATEGORY_BY_CODE.get(code, "runtime"),
                                           f"testjob: injected failure at step {step}"))
                os._exit(code)
            if p["bad_event_at_step"] == step:
                os.write(self.events.fd, b"this line is not a contract event\n")
            self.events.progress(step, self.total, loss=self.loss(step), metrics={"steps_per_second":
                                                                                   1.0 / max(p["step_seconds"], 1e-3)})
            if self.save_steps and (step % self.save_steps == 0 or step == self.total):
                self.save_checkpoint(step)

    def save(self) -> dict:
        result = {"steps": self.total, "final_loss": self.loss(self.total), "resumed_from_step":
                  self.cfg.resumed_from_step, "run_id": self.cfg.run_id, "stage_id": self.cfg.stage_id}
        contract.write_json_atomic(os.path.join(self.cfg.output_dir, "result.json"), result)
        if self.p["dump_env"]:
            contract.write_json_atomic(os.path.join(self.cfg.output_dir, "env.json"), dict(os.environ))
        return {"steps": self.total, "final_loss": self.loss(self.total)}


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    job = TestJob(cfg, events)
    job.setup()
    job.train()
    return job.save()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
