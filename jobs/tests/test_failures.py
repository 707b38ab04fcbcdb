"""Failure handling through the contract: checkpoint on request (SIGUSR1), non-finite losses, out of memory
(category oom, exit 5, and the worker's retry with half the batch and double the accumulation), host crashes,
and the node preflight. The test-job cases are fast (no torch); the SFT and PPO cases train the tiny model.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import sys
import time
import unittest
from contextlib import redirect_stderr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refinery_jobs import config, contract, testjob  # noqa: E402
from tests import helpers  # noqa: E402
from tests.helpers import demo, job_config, run_job, start_job, workdir  # noqa: E402

OOM_ENV = "REFINERY_FAULT_OOM_ABOVE_BATCH"
CRASH_ENV = "REFINERY_TESTJOB_CRASH_AT_STEP"


def steps(result, event: str = "checkpoint") -> list[int]:
    return [e["step"] for e in result.of(event)]


def losses(result) -> dict[int, object]:
    return {e["step"]: e.get("loss") for e in result.of("progress")}


def testjob_config(name: str, **overrides) -> dict:
    params = {"step_seconds": 0.0, **overrides.pop("params", {})}
    hyper = {"max_steps": 6, "save_steps": 2, **overrides.pop("hyper", {})}
    return job_config("sft", workdir(name), hyper=hyper, params=params, **overrides)


def pure_loss(step: int) -> float:
    return round(2.0 / (1.0 + 0.1 * step), 6)


# ------------------------------------------------------------------------------------------------
# Checkpoint on request
# ------------------------------------------------------------------------------------------------

class SignallingTestJob(testjob.TestJob):
    """The test job, in this process, sending itself SIGUSR1 (n times) before the given steps train."""

    def __init__(self, cfg, events, signals: dict[int, int]):
        super().__init__(cfg, events)
        self.signals = signals

    def step_faults(self, step: int) -> None:
        super().step_faults(step)
        for _ in range(self.signals.get(step, 0)):
            os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.time() + 5
        while self.signals.get(step) and not self.checkpoint_request.pending and time.time() < deadline:
            time.sleep(0.001)  # the Python-level handler runs between bytecodes of the main thread


class CheckpointRequestTest(unittest.TestCase):
    def run_in_process(self, signals: dict[int, int]) -> list[dict]:
        cfg_dict = testjob_config("ckpt-request-inproc", hyper={"max_steps": 12, "save_steps": 5})
        path = cfg_dict["output_dir"] + ".json"
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cfg_dict, f)
        cfg = config.load_config(path, testjob.SPEC)
        read_fd, write_fd = os.pipe()
        previous = signal.getsignal(signal.SIGUSR1)
        try:
            job = SignallingTestJob(cfg, contract.Events(write_fd), signals)
            with redirect_stderr(io.StringIO()) as log:
                job.setup()
                job.train()
            self.assertIn("checkpoint requested (SIGUSR1)", log.getvalue())
        finally:
            signal.signal(signal.SIGUSR1, previous)
            os.close(write_fd)
        with os.fdopen(read_fd, encoding="utf-8") as f:
            return [json.loads(line) for line in f.read().splitlines()]

    def test_request_between_save_steps_checkpoints_at_the_next_boundary(self):
        events = self.run_in_process({3: 1})
        self.assertEqual(events[0]["checkpoint_signal"], "SIGUSR1")
        self.assertEqual([e["step"] for e in events if e["event"] == "checkpoint"], [3, 5, 10, 12])
        self.assertEqual([e["step"] for e in events if e["event"] == "progress"], list(range(1, 13)))

    def test_request_on_a_save_step_is_that_save_and_requests_coalesce(self):
        events = self.run_in_process({5: 1, 7: 3})
        self.assertEqual([e["step"] for e in events if e["event"] == "checkpoint"], [5, 7, 10, 12])

    def test_sigusr1_to_a_running_testjob(self):
        cfg = testjob_config("ckpt-request", hyper={"max_steps": 12, "save_steps": 5}, params={"step_seconds": 0.2})
        job = start_job("testjob", cfg)
        started = job.wait_for(lambda e: e["event"] == "started")
        self.assertEqual(started["checkpoint_signal"], "SIGUSR1")
        job.wait_for(lambda e: e["event"] == "progress" and e["step"] == 1)
        job.signal(signal.SIGUSR1)
        result = job.finish(timeout=60)
        self.assertEqual(result.rc, 0, result)
        self.assertEqual(result.events[-1]["event"], "done")
        self.assertEqual(steps(result, "progress"), list(range(1, 13)))
        extra = [s for s in steps(result) if s not in (5, 10, 12)]
        self.assertEqual(len(extra), 1, result.events)
        self.assertIn(extra[0], (1, 2, 3, 4), result.events)  # the step running when the signal came (or the next)
        self.assertEqual(sorted(steps(result)), steps(result))
        ckpt = os.path.join(cfg["checkpoint_dir"], f"checkpoint-{extra[0]}")
        with open(os.path.join(ckpt, "trainer_state.json"), encoding="utf-8") as f:
            self.assertEqual(json.load(f)["global_step"], extra[0])
        with open(os.path.join(ckpt, "state.json"), encoding="utf-8") as f:
            self.assertEqual(json.load(f), {"step": extra[0], "loss": pure_loss(extra[0])})
        cfg["resume_from"] = ckpt
        resumed = run_job("testjob", cfg)
        self.assertEqual(resumed.rc, 0, resumed)
        self.assertEqual(resumed.one("started")["resumed_from_step"], extra[0])
        self.assertEqual(steps(resumed, "progress"), list(range(extra[0] + 1, 13)))

    def test_every_checkpointing_job_declares_the_signal(self):
        """Jobs that checkpoint declare checkpoint_signal in `started` (Trainer jobs through
        hf_trainer.events_callback); merge, gguf and eval must not."""
        jobs_dir = os.path.join(helpers.JOBS_DIR, "refinery_jobs")
        declares = {}
        for kind in ("sft", "reward", "dpo", "grpo", "ppo", "testjob", "merge", "gguf", "eval"):
            with open(os.path.join(jobs_dir, f"{kind}.py"), encoding="utf-8") as f:
                source = f.read()
            declares[kind] = "checkpoint_signal=" in source or "hf_trainer.events_callback(" in source
        self.assertEqual(declares, {"sft": True, "reward": True, "dpo": True, "grpo": True, "ppo": True,
                                    "testjob": True, "merge": False, "gguf": False, "eval": False})
        with open(os.path.join(jobs_dir, "hf_trainer.py"), encoding="utf-8") as f:
            self.assertIn("checkpoint_signal=request.signal_name", f.read())


# ------------------------------------------------------------------------------------------------
# Non-finite losses, spikes, host crashes (test job)
# ------------------------------------------------------------------------------------------------

class TestJobFaultsTest(unittest.TestCase):
    def test_nan_at_step_is_written_as_NaN_on_a_fresh_start_only(self):
        cfg = testjob_config("nan", params={"nan_at_step": 4})
        result = run_job("testjob", cfg)
        self.assertEqual(result.rc, 0, result)
        got = losses(result)
        self.assertEqual({s: got[s] for s in (4, 5, 6)}, {4: "NaN", 5: "NaN", 6: "NaN"})
        self.assertEqual(got[3], pure_loss(3))
        self.assertNotIn("final_loss", result.one("done")["metrics"])  # done drops non-finite numbers
        with open(os.path.join(cfg["checkpoint_dir"], "checkpoint-4", "state.json"), encoding="utf-8") as f:
            self.assertEqual(json.load(f)["loss"], pure_loss(4))  # checkpoints keep the pure loss
        cfg["resume_from"] = os.path.join(cfg["checkpoint_dir"], "checkpoint-2")
        resumed = run_job("testjob", cfg)
        self.assertEqual(losses(resumed), {s: pure_loss(s) for s in (3, 4, 5, 6)})
        self.assertEqual(resumed.one("done")["metrics"]["final_loss"], pure_loss(6))

    def test_nan_above_lr_depends_on_the_learning_rate_fresh_or_resumed(self):
        params = {"nan_at_step": 3, "nan_above_lr": 1e-4}
        high = testjob_config("nan-lr-high", hyper={"learning_rate": 1e-3}, params=params)
        self.assertEqual(losses(run_job("testjob", high))[3], "NaN")
        high["resume_from"] = os.path.join(high["checkpoint_dir"], "checkpoint-2")
        self.assertEqual(set(losses(run_job("testjob", high)).values()), {"NaN"})  # resumed: still NaN
        low = dict(high, hyper={**high["hyper"], "learning_rate": 5e-5})  # the worker's retry with a lower lr
        result = run_job("testjob", low)
        self.assertEqual(result.rc, 0, result)
        self.assertEqual(losses(result), {s: pure_loss(s) for s in (3, 4, 5, 6)})

    def test_loss_spike_fresh_start_only(self):
        cfg = testjob_config("spike", params={"loss_spike_at_step": 3, "loss_spike_factor": 10})
        got = losses(run_job("testjob", cfg))
        self.assertEqual(got[2], pure_loss(2))
        for s in (3, 4, 5, 6):
            self.assertAlmostEqual(got[s], pure_loss(s) * 10, places=4)
        cfg["resume_from"] = os.path.join(cfg["checkpoint_dir"], "checkpoint-4")
        self.assertEqual(losses(run_job("testjob", cfg)), {5: pure_loss(5), 6: pure_loss(6)})

    def test_host_crash_from_the_environment(self):
        cfg = testjob_config("host-crash")
        crash = {CRASH_ENV: "3"}
        first = run_job("testjob", cfg, env=crash)
        self.assertEqual(first.rc, 1, first)
        err = first.one("error")
        self.assertEqual(err["category"], "runtime")
        self.assertIn(CRASH_ENV, err["message"])
        self.assertEqual((steps(first), steps(first, "progress")), ([2], [1, 2]))
        cfg["resume_from"] = first.of("checkpoint")[-1]["path"]
        again = run_job("testjob", cfg, env=crash)  # resumed before the step: it crashes there again
        self.assertEqual((again.rc, steps(again, "progress")), (1, []))
        elsewhere = run_job("testjob", cfg, env={CRASH_ENV: None})  # another host: fine
        self.assertEqual(elsewhere.rc, 0, elsewhere)
        cfg["resume_from"] = os.path.join(cfg["checkpoint_dir"], "checkpoint-4")
        past = run_job("testjob", cfg, env=crash)  # resumed past the step: at the first trained step
        self.assertEqual((past.rc, steps(past, "progress")), (1, []))
        self.assertIn("at step 5", past.one("error")["message"])
        bad = run_job("testjob", testjob_config("host-crash-bad"), env={CRASH_ENV: "soon"})
        self.assertEqual((bad.rc, bad.one("error")["category"]), (2, "config"))


# ------------------------------------------------------------------------------------------------
# Out of memory (test job)
# ------------------------------------------------------------------------------------------------

class TestJobOutOfMemoryTest(unittest.TestCase):
    def test_oom_above_batch_exits_5_and_half_the_batch_passes(self):
        cfg = testjob_config("oom", hyper={"batch_size": 8}, params={"oom_above_batch": 4})
        result = run_job("testjob", cfg)
        self.assertEqual(result.rc, contract.EXIT_OOM, result)
        err = result.one("error")
        self.assertEqual(err["category"], "oom")
        self.assertIn("CUDA out of memory", err["message"])
        self.assertIn("batch_size 8 > oom_above_batch 4", err["message"])
        self.assertEqual(result.of("progress"), [])
        cfg["hyper"] = {**cfg["hyper"], "batch_size": 4, "gradient_accumulation": 2}
        retry = run_job("testjob", cfg)
        self.assertEqual(retry.rc, 0, retry)
        self.assertEqual(retry.events[-1]["event"], "done")

    def test_oom_at_step_applies_on_resume_too(self):
        cfg = testjob_config("oom-later", hyper={"batch_size": 8}, params={"oom_above_batch": 4, "oom_at_step": 3})
        first = run_job("testjob", cfg)
        self.assertEqual((first.rc, steps(first), steps(first, "progress")), (5, [2], [1, 2]))
        cfg["resume_from"] = first.of("checkpoint")[-1]["path"]
        again = run_job("testjob", cfg)  # same batch: out of memory at the first step it trains
        self.assertEqual((again.rc, again.one("error")["category"], steps(again, "progress")), (5, "oom", []))
        cfg["hyper"] = {**cfg["hyper"], "batch_size": 4, "gradient_accumulation": 2}
        retry = run_job("testjob", cfg)
        self.assertEqual(retry.rc, 0, retry)
        self.assertEqual(steps(retry, "progress"), [3, 4, 5, 6])

    def test_mb_per_sample_memory_is_resident_and_a_memory_limit_is_oom(self):
        cfg = testjob_config("mb-per-sample", hyper={"batch_size": 4, "max_steps": 3},
                             params={"mb_per_sample": 16, "step_seconds": 0.3})
        job = start_job("testjob", cfg)
        job.wait_for(lambda e: e["event"] == "progress" and e["step"] == 1)
        with open(f"/proc/{job.proc.pid}/status", encoding="utf-8") as f:
            rss_kib = int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
        self.assertGreaterEqual(rss_kib, 64 * 1024)  # 4 x 16 MiB written, page by page
        self.assertEqual(job.finish(timeout=60).rc, 0)

        limit = 384 << 20  # an address-space limit: the allocation fails with MemoryError

        def limit_memory():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        cfg = testjob_config("mb-per-sample-limit", hyper={"batch_size": 8}, params={"mb_per_sample": 64})
        result = start_job("testjob", cfg, preexec_fn=limit_memory).finish(timeout=60)
        self.assertEqual((result.rc, result.one("error")["category"]), (5, "oom"), result)
        self.assertIn("MemoryError", result.one("error")["message"])
        cfg["hyper"] = {**cfg["hyper"], "batch_size": 2}
        self.assertEqual(start_job("testjob", cfg, preexec_fn=limit_memory).finish(timeout=60).rc, 0)


# ------------------------------------------------------------------------------------------------
# Real trainers: SFT (Trainer-based) and PPO (own loop)
# ------------------------------------------------------------------------------------------------

class SFTFailuresTest(unittest.TestCase):
    """One SFT run checkpointed by SIGUSR1 only (save_steps is far away), then resumed from that checkpoint: as
    is, and as the worker's out-of-memory retry (batch halved, accumulation doubled)."""

    MAX_STEPS = 16

    @classmethod
    def sft(cls, name: str, **overrides) -> dict:
        hyper = {"max_steps": cls.MAX_STEPS, "save_steps": 1000, "batch_size": 8, **overrides.pop("hyper", {})}
        return job_config("sft", workdir(name), inputs={"model": helpers.tiny_model()},
                          datasets={"train": demo("sft.jsonl")}, hyper=hyper, **overrides)

    @classmethod
    def setUpClass(cls):
        cls.cfg = cls.sft("sft-signal")
        job = start_job("sft", cls.cfg)
        cls.started = job.wait_for(lambda e: e["event"] == "started", timeout=600)
        job.wait_for(lambda e: e["event"] == "progress" and e["step"] >= 2, timeout=600)
        job.signal(signal.SIGUSR1)
        cls.result = job.finish(timeout=600)

    def test_sigusr1_writes_a_complete_checkpoint_and_training_goes_on(self):
        r = self.result
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(self.started["checkpoint_signal"], "SIGUSR1")
        self.assertEqual(r.events[-1]["event"], "done")
        self.assertEqual(steps(r, "progress"), list(range(1, self.MAX_STEPS + 1)))
        # the requested checkpoint, then the Trainer's end-of-training save
        self.assertEqual(len(r.of("checkpoint")), 2, r.events)
        step = steps(r)[0]
        self.assertTrue(2 <= step < self.MAX_STEPS, r.events)
        self.assertEqual(steps(r)[1], self.MAX_STEPS)
        path = r.of("checkpoint")[0]["path"]
        self.assertEqual(path, os.path.join(self.cfg["checkpoint_dir"], f"checkpoint-{step}"))
        for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                     "trainer_state.json"):
            self.assertTrue(os.path.isfile(os.path.join(path, name)), name)
        self.assertEqual(contract.checkpoint_step(path), step)
        self.assertIn("checkpoint requested (SIGUSR1)", r.stderr)

    def resume(self, name: str, hyper: dict | None = None, env: dict | None = None):
        ckpt = self.result.of("checkpoint")[0]
        cfg = self.sft(name, hyper=hyper or {}, resume_from=ckpt["path"])
        resumed = run_job("sft", cfg, env=env)
        self.assertEqual(resumed.rc, 0, resumed)
        self.assertEqual(resumed.one("started")["resumed_from_step"], ckpt["step"])
        self.assertEqual(steps(resumed, "progress"), list(range(ckpt["step"] + 1, self.MAX_STEPS + 1)))
        straight = losses(self.result)
        for step, loss in losses(resumed).items():
            self.assertAlmostEqual(loss, straight[step], delta=1e-3, msg=f"step {step}")
        return resumed

    def test_resume_from_the_requested_checkpoint(self):
        self.resume("sft-signal-resumed")

    def test_injected_oom_then_resume_with_half_the_batch(self):
        fresh = run_job("sft", self.sft("sft-oom"), env={OOM_ENV: "4"})
        self.assertEqual(fresh.rc, contract.EXIT_OOM, fresh)
        err = fresh.one("error")
        self.assertEqual(err["category"], "oom")
        self.assertTrue(err["message"].startswith("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
                        err)
        self.assertIn(f"{OOM_ENV}=4", err["message"])
        self.assertEqual(fresh.of("progress"), [])
        # The worker's retry: per-device batch 8 -> 4, accumulation 1 -> 2, from the newest checkpoint. The
        # injected fault still applies (batch 4 is not above 4), and each step sees the same samples.
        self.resume("sft-oom-retry", hyper={"batch_size": 4, "gradient_accumulation": 2}, env={OOM_ENV: "4"})


class PPOFailuresTest(unittest.TestCase):
    def ppo(self, name: str, **overrides) -> dict:
        hyper = {"max_steps": 4, "learning_rate": 3e-4, "batch_size": 8, "save_steps": 2, **overrides.pop("hyper", {})}
        return job_config("ppo", workdir(name), inputs={"model": helpers.sft_policy(),
                                                         "reward_model": helpers.reward_model()},
                          datasets={"train": demo("prompts.jsonl")}, finetuning={"type": "full"}, hyper=hyper,
                          params={"max_new_tokens": 8, "num_mini_batches": 2}, **overrides)

    def test_step_prompts_depend_on_the_step_batch_only(self):
        from refinery_jobs.ppo import PPORecipe

        def recipe(batch_size: int, accumulation: int):
            r = object.__new__(PPORecipe)
            r.cfg = config.JobConfig(contract=1, kind="ppo", run_id="r", stage_id="s", output_dir="/o",
                                     checkpoint_dir="/c", resume_from=None, inputs={}, train_path=None, eval_path=None,
                                     dataset_format=None, finetuning="full", lora=config.LoraSettings(),
                                     hyper=config.Hyper(batch_size=batch_size, gradient_accumulation=accumulation),
                                     params={})
            r.prompts = [[{"role": "user", "content": str(i)}] for i in range(60)]
            r.chunk, r.step_batch = batch_size, batch_size * accumulation
            r.batches_per_epoch = -(-len(r.prompts) // r.step_batch)
            return r
        whole, halves = recipe(8, 1), recipe(4, 2)
        for step in range(1, 20):
            self.assertEqual(whole.batch_prompts(step), halves.batch_prompts(step))
            self.assertEqual(sum(halves.chunks(halves.batch_prompts(step)), []), whole.batch_prompts(step))
            self.assertEqual({len(c) for c in halves.chunks(halves.batch_prompts(step))}, {4})

    def test_injected_oom_then_resume_with_half_the_batch(self):
        first_cfg = self.ppo("ppo-oom-first")
        first = run_job("ppo", first_cfg)
        self.assertEqual(first.rc, 0, first)
        self.assertEqual(first.one("started")["checkpoint_signal"], "SIGUSR1")
        self.assertEqual(steps(first), [2, 4])

        oom = run_job("ppo", self.ppo("ppo-oom", resume_from=first.of("checkpoint")[0]["path"]), env={OOM_ENV: "4"})
        self.assertEqual((oom.rc, oom.one("error")["category"]), (contract.EXIT_OOM, "oom"), oom)
        self.assertIn("CUDA out of memory", oom.one("error")["message"])
        self.assertEqual(oom.of("progress"), [])

        retry = run_job("ppo", self.ppo("ppo-oom-retry", hyper={"batch_size": 4, "gradient_accumulation": 2},
                                        resume_from=first.of("checkpoint")[0]["path"]), env={OOM_ENV: "4"})
        self.assertEqual(retry.rc, 0, retry)
        self.assertEqual(retry.one("started")["resumed_from_step"], 2)
        self.assertEqual(steps(retry, "progress"), [3, 4])
        self.assertEqual(steps(retry), [4])
        for event in retry.of("progress"):
            self.assertLess(event["metrics"]["logprob_gap"], 1e-4)
        with open(os.path.join(retry.of("checkpoint")[0]["path"], "trainer_state.json"), encoding="utf-8") as f:
            state = json.load(f)
        self.assertEqual((state["batch_size"], state["gradient_accumulation"]), (4, 2))


# ------------------------------------------------------------------------------------------------
# Preflight
# ------------------------------------------------------------------------------------------------

class PreflightTest(unittest.TestCase):
    def preflight(self, runtime: str, visible: str | None):
        result = helpers.run_tool("preflight", ["--runtime", runtime], env={"CUDA_VISIBLE_DEVICES": visible})
        self.assertEqual(len(result.events), 1, result)
        event = result.events[0]
        self.assertEqual((event["event"], event["runtime"]), ("preflight", runtime))
        self.assertIsInstance(event["seconds"], (int, float))
        self.assertEqual(result.rc, 0 if event["ok"] else 1, result)
        return event, result

    def test_python_runtime(self):
        for visible in ("", None):
            event, result = self.preflight("python", visible)
            self.assertEqual((event["ok"], event["devices"]), (True, ["cpu"]), result)
            self.assertNotIn("message", event)
            self.assertLess(result.seconds, 5)
        if not os.path.exists("/dev/nvidia0"):  # a GPU-less machine: GPU 0 is not there
            event, _ = self.preflight("python", "0")
            self.assertFalse(event["ok"])
            self.assertIn("/dev/nvidia0", event["message"])
            self.assertIn("CUDA_VISIBLE_DEVICES=0", event["message"])

    def test_python_matmul_check_detects_a_wrong_answer(self):
        from refinery_jobs import preflight
        preflight.python_matmul_check()
        original = preflight.PY_CHECKSUM
        try:
            preflight.PY_CHECKSUM = original + 1
            with self.assertRaises(preflight.PreflightFailed):
                preflight.python_matmul_check()
        finally:
            preflight.PY_CHECKSUM = original

    def test_torch_runtime(self):
        event, result = self.preflight("torch", "")
        self.assertEqual((event["ok"], event["devices"]), (True, ["cpu"]), result)
        import torch
        if not torch.cuda.is_available():
            event, _ = self.preflight("torch", "0")
            self.assertFalse(event["ok"])
            self.assertEqual(event["message"], "CUDA_VISIBLE_DEVICES=0 names 1 GPU but 0 are visible "
                                               "(torch.cuda.is_available() is false)")
            event, _ = self.preflight("torch", "0,1")
            self.assertIn("names 2 GPUs but 0 are visible", event["message"])

    def test_events_fall_back_to_stderr_and_exceptions_become_verdicts(self):
        from refinery_jobs import preflight
        result = helpers.run_tool("preflight", ["--runtime", "python"], env={"REFINERY_EVENTS_FD": "97",
                                                                             "CUDA_VISIBLE_DEVICES": ""})
        self.assertEqual(result.rc, 0)
        self.assertIn('{"event":"preflight","ok":true', result.stderr)
        read_fd, write_fd = os.pipe()
        original = preflight.check_python
        try:
            preflight.check_python = lambda raw, listed: 1 / 0
            self.assertFalse(preflight.run("python", contract.Events(write_fd)))
        finally:
            preflight.check_python = original
            os.close(write_fd)
        with os.fdopen(read_fd, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 1)
        event = json.loads(lines[0])
        self.assertEqual((event["ok"], event["message"]), (False, "ZeroDivisionError: division by zero"))


if __name__ == "__main__":
    unittest.main()
