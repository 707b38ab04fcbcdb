"""A purpose-built contract job for fault and timing tests (no torch, starts in well under a second).

    python -m refinery_jobs.testjob --config job.json

It stands in for any stage kind. It "trains" for hyper.max_steps steps (default 20), sleeping
params.step_seconds per step, emits `progress` with a falling loss (2 / (1 + 0.1 * step), a pure function of the
step unless a fault below changes it), writes checkpoint-N/ every hyper.save_steps (state.json first, with the
step and that loss, trainer_state.json last, then the `checkpoint` event), resumes from resume_from, and writes
output_dir/result.json before `done`. It declares `checkpoint_signal: "SIGUSR1"` in `started`: on SIGUSR1 it
writes a checkpoint at the next step boundary (unless that step saves anyway) and trains on.

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
  oom_above_batch N  at step oom_at_step (int, default 1; in a resumed run the first step it trains if that is
                     later: max(resumed step + 1, oom_at_step)), when hyper.batch_size > N: an `error` of category
                     oom ("CUDA out of memory. Tried to allocate 2.00 GiB (testjob: batch_size B > oom_above_batch
                     N)") and exit 5. Fresh or resumed: it depends on the batch, so a retry with a batch <= N passes
  mb_per_sample M    at the first step trained in this process, allocate hyper.batch_size * M MiB (a number,
                     default 0) and write to every page of it, held until exit: under a per-job memory limit (a
                     cgroup) too big a batch gets a real kernel OOM kill
  nan_at_step N      from step N on the loss is NaN (written "NaN"); fresh start only (like fail_at_step), unless
                     nan_above_lr X is given: then, fresh or resumed, exactly when hyper.learning_rate > X.
                     Training goes on (the worker decides whether to stop it)
  loss_spike_at_step N  from step N on the loss is multiplied by loss_spike_factor (default 10); fresh start only
Injected NaN and spikes change only the reported loss (progress, final_loss); checkpoints' state.json keeps the
pure loss of the step.

Host faults (the environment: the same spec behaves differently on two workers, which pass their own
environment, minus secrets, to jobs):
  REFINERY_TESTJOB_CRASH_AT_STEP=N  every job crashes at step N, fresh or resumed (resumed past N: at the first
                     step it trains): an `error` of category runtime and exit 1
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
        "oom_above_batch": Param(int, None, min=0),
        "oom_at_step": Param(int, 1, min=1),
        "mb_per_sample": Param(float, 0.0, min=0.0),
        "nan_at_step": Param(int, None, min=1),
        "nan_above_lr": Param(float, None, min=0.0),
        "loss_spike_at_step": Param(int, None, min=1),
        "loss_spike_factor": Param(float, 10.0, min=0.0),
    },
)

CRASH_AT_STEP_ENV = "REFINERY_TESTJOB_CRASH_AT_STEP"
PAGE = 4096

CATEGORY_BY_CODE = {2: "config", 3: "data", 4: "unsupported"}


class TestJob:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events, self.p = cfg, events, cfg.params
        self.total = cfg.hyper.max_steps or 20
        self.save_steps = cfg.hyper.save_steps
        self.start_step = cfg.resumed_from_step or 0
        self.fresh = cfg.resume_from is None
        self.first_step = self.start_step + 1  # the first step this process trains
        self.checkpoint_request = contract.CheckpointRequest()
        self.crash_at_step = self._env_step(CRASH_AT_STEP_ENV)
        self._ballast: bytearray | None = None  # mb_per_sample's memory, held until exit

    @staticmethod
    def _env_step(name: str) -> int | None:
        raw = os.environ.get(name, "").strip()
        if not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise JobError("config", f"environment variable {name}={raw!r}: expected a step number >= 1")
        return value

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
        self.checkpoint_request.install()  # before `started` declares it
        self.events.started(total_steps=self.total, resumed_from_step=self.cfg.resumed_from_step, device="cpu",
                            checkpoint_signal=self.checkpoint_request.signal_name)

    def loss(self, step: int) -> float:
        """The pure loss of a step (what checkpoints record)."""
        return round(2.0 / (1.0 + 0.1 * step), 6)

    def reported_loss(self, step: int) -> float:
        """The loss `progress` reports: loss(step) with the injected NaN and spikes."""
        p = self.p
        if p["nan_at_step"] is not None and step >= p["nan_at_step"]:
            nan = (self.cfg.hyper.learning_rate > p["nan_above_lr"]) if p["nan_above_lr"] is not None else self.fresh
            if nan:
                return float("nan")
        loss = self.loss(step)
        if self.fresh and p["loss_spike_at_step"] is not None and step >= p["loss_spike_at_step"]:
            loss = round(loss * p["loss_spike_factor"], 6)
        return loss

    def first_step_faults(self, step: int) -> None:
        """Memory ballast (mb_per_sample) at the first trained step."""
        mib = self.cfg.hyper.batch_size * self.p["mb_per_sample"]
        if step != self.first_step or mib <= 0:
            return
        size = int(mib * (1 << 20))
        contract.log(f"allocating {mib:.1f} MiB (batch_size {self.cfg.hyper.batch_size} x mb_per_sample "
                     f"{self.p['mb_per_sample']})")
        ballast = bytearray(size)
        ballast[::PAGE] = b"\x01" * len(range(0, size, PAGE))  # write every page: resident, not just reserved
        self._ballast = ballast

    def step_faults(self, step: int) -> None:
        """Host crash (REFINERY_TESTJOB_CRASH_AT_STEP) and out of memory (oom_above_batch) before a step trains."""
        p, batch = self.p, self.cfg.hyper.batch_size
        if self.crash_at_step is not None and step == max(self.crash_at_step, self.first_step):
            self.events.error(JobError("runtime", f"testjob: {CRASH_AT_STEP_ENV}={self.crash_at_step}: host crash "
                                                  f"at step {step}"))
            os._exit(contract.EXIT_RUNTIME)
        if p["oom_above_batch"] is not None and step == max(p["oom_at_step"], self.first_step) \
                and batch > p["oom_above_batch"]:
            raise JobError("oom", f"CUDA out of memory. Tried to allocate 2.00 GiB (testjob: batch_size {batch} > "
                                  f"oom_above_batch {p['oom_above_batch']})")

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
            self.first_step_faults(step)
            self.step_faults(step)
            if p["bad_event_at_step"] == step:
                os.write(self.events.fd, b"this line is not a contract event\n")
            self.events.progress(step, self.total, loss=self.reported_loss(step),
                                 metrics={"steps_per_second": 1.0 / max(p["step_seconds"], 1e-3)})
            scheduled = bool(self.save_steps) and (step % self.save_steps == 0 or step == self.total)
            requested = self.checkpoint_request.take()  # a request on a save step is satisfied by that save
            if requested and not scheduled:
                contract.log(f"checkpoint requested ({self.checkpoint_request.signal_name}): saving at step {step}")
            if scheduled or requested:
                self.save_checkpoint(step)

    def save(self) -> dict:
        final_loss = self.reported_loss(self.total)
        result = {"steps": self.total, "final_loss": contract.json_number(final_loss), "resumed_from_step":
                  self.cfg.resumed_from_step, "run_id": self.cfg.run_id, "stage_id": self.cfg.stage_id}
        contract.write_json_atomic(os.path.join(self.cfg.output_dir, "result.json"), result)
        if self.p["dump_env"]:
            contract.write_json_atomic(os.path.join(self.cfg.output_dir, "env.json"), dict(os.environ))
        return {"steps": self.total, "final_loss": final_loss}  # `done` drops a NaN final_loss


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    job = TestJob(cfg, events)
    job.setup()
    job.train()
    return job.save()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
