"""Shared fixtures for the job tests: run a job as the worker does, and build (once per test process)
the tiny model, an SFT policy and a reward model on the demo data.

Jobs run as subprocesses (`python -m refinery_jobs.<kind> --config ...`) with the events pipe on fd 3,
exactly like the worker. Torch runs on at most 2 threads.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

JOBS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(JOBS_DIR)
DEMO = os.path.join(REPO, "demo", "data")
PYTHON = sys.executable

_ROOT = tempfile.mkdtemp(prefix="refinery-jobs-tests-")
atexit.register(shutil.rmtree, _ROOT, True)


def workdir(name: str) -> str:
    path = os.path.join(_ROOT, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def demo(name: str) -> str:
    return os.path.join(DEMO, name)


def job_config(kind: str, work: str, **overrides) -> dict:
    cfg = {
        "contract": 1, "kind": kind, "run_id": "test", "stage_id": kind,
        "output_dir": os.path.join(work, "output"), "checkpoint_dir": os.path.join(work, "checkpoints"),
        "resume_from": None, "inputs": {}, "datasets": {"train": None, "eval": None}, "dataset_format": None,
        "finetuning": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}},
        "hyper": {"learning_rate": 1e-3, "max_steps": 4, "num_epochs": None, "batch_size": 8,
                  "gradient_accumulation": 1, "max_length": 128, "scheduler": "linear", "warmup_ratio": 0.0,
                  "weight_decay": 0.0, "save_steps": 2, "seed": 7},
        "params": {},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict) and key != "inputs":
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class JobResult:
    def __init__(self, rc: int, events: list[dict], stderr: str, seconds: float):
        self.rc, self.events, self.stderr, self.seconds = rc, events, stderr, seconds

    def of(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    def one(self, name: str) -> dict:
        found = self.of(name)
        assert len(found) == 1, f"expected one {name} event, got {len(found)}: {self.events}\n{self.stderr[-3000:]}"
        return found[0]

    def __repr__(self) -> str:
        return f"JobResult(rc={self.rc}, events={self.events[-3:]}, stderr=...{self.stderr[-2000:]})"


def _launch_job(module: str, cfg: dict, env: dict[str, str | None] | None, preexec_fn=None):
    """Write cfg next to its output dir and start `python -m refinery_jobs.<module> --config <file>` with an events
    pipe (REFINERY_EVENTS_FD), as the worker does. `env` adds variables (None removes one). Returns
    (process, read end of the events pipe, start time)."""
    import time
    path = os.path.join(cfg["output_dir"] + ".config.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    read_fd, write_fd = os.pipe()
    env_vars = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
                "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "REFINERY_EVENTS_FD": str(write_fd),
                "PYTHONPATH": JOBS_DIR}
    for key, value in (env or {}).items():
        if value is None:
            env_vars.pop(key, None)
        else:
            env_vars[key] = value
    start = time.time()
    proc = subprocess.Popen([PYTHON, "-m", f"refinery_jobs.{module}", "--config", path], cwd=JOBS_DIR, env=env_vars,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, pass_fds=(write_fd,),
                            preexec_fn=preexec_fn)
    os.close(write_fd)
    return proc, read_fd, start


def run_job(module: str, cfg: dict, *, timeout: float = 300, env: dict[str, str | None] | None = None) -> JobResult:
    """Run `python -m refinery_jobs.<module> --config <file>` with an events pipe (REFINERY_EVENTS_FD) and
    parse every event line, as the worker does. `env` adds variables to the job's environment (None removes one)."""
    import time
    proc, read_fd, start = _launch_job(module, cfg, env)
    return _wait_for_result(proc, read_fd, start, timeout)


def _wait_for_result(proc, read_fd: int, start: float, timeout: float) -> JobResult:
    """Read every event from the pipe while the process runs, and return its JobResult."""
    import time
    lines: list[str] = []

    def read_events():
        with os.fdopen(read_fd, encoding="utf-8") as events_pipe:
            lines.extend(events_pipe.read().splitlines())

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    _, stderr = proc.communicate(timeout=timeout)
    reader.join(timeout=10)
    events = [json.loads(line) for line in lines if line.strip()]
    return JobResult(proc.returncode, events, stderr, time.time() - start)


@functools.lru_cache(maxsize=None)
def tiny_model() -> str:
    """The tiny Llama + tokenizer, built from the demo data."""
    out = os.path.join(_ROOT, "tiny")
    data = sorted(os.path.join(DEMO, f) for f in os.listdir(DEMO) if f.endswith(".jsonl"))
    subprocess.run([PYTHON, "-m", "refinery_jobs.make_tiny_model", "--out", out, "--data", *data, "--seed", "0"],
                   cwd=JOBS_DIR, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": JOBS_DIR})
    return out


@functools.lru_cache(maxsize=None)
def sft_policy() -> str:
    """A full-fine-tuned SFT policy that answers the demo questions coherently (both styles)."""
    work = workdir("sft-policy")
    cfg = job_config("sft", work, inputs={"model": tiny_model()}, datasets={"train": demo("sft.jsonl")},
                     finetuning={"type": "full"},
                     hyper={"max_steps": 200, "learning_rate": 3e-3, "batch_size": 16, "save_steps": None})
    result = run_job("sft", cfg, timeout=1800)  # ~35 s alone; generous for a loaded CI machine
    assert result.rc == 0, result
    return cfg["output_dir"]


@functools.lru_cache(maxsize=None)
def reward_model() -> str:
    work = workdir("reward-model")
    cfg = job_config("reward", work, inputs={"model": sft_policy()},
                     datasets={"train": demo("preference.jsonl"), "eval": demo("preference_eval.jsonl")},
                     hyper={"max_steps": 30, "save_steps": None})
    result = run_job("reward", cfg)
    assert result.rc == 0, result
    reward_model.result = result
    return cfg["output_dir"]


class RunningJob:
    """A job started with `start_job`: its events arrive while it runs (`wait_for`), it can be signalled
    (`signal`), and `finish` waits for the exit and returns the JobResult."""

    def __init__(self, proc: subprocess.Popen, read_fd: int, start: float):
        self.proc, self.start = proc, start
        self.events: list[dict] = []
        self._lines = threading.Condition()
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read_events, args=(read_fd,), daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_reader.start()

    def _read_stderr(self) -> None:
        with self.proc.stderr:
            self._stderr.append(self.proc.stderr.read())

    def _read_events(self, read_fd: int) -> None:
        with os.fdopen(read_fd, encoding="utf-8") as events_pipe:
            for line in events_pipe:
                if line.strip():
                    with self._lines:
                        self.events.append(json.loads(line))
                        self._lines.notify_all()
        with self._lines:
            self._lines.notify_all()

    def wait_for(self, predicate, timeout: float = 120) -> dict:
        """The first event for which predicate(event) holds, waiting for it (AssertionError on timeout or exit)."""
        import time
        deadline = time.time() + timeout
        seen = 0
        with self._lines:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                if not self._reader.is_alive():
                    raise AssertionError(f"job ended without the awaited event: {self.events[-3:]}")
                if time.time() >= deadline:
                    raise AssertionError(f"timed out waiting for an event: {self.events[-3:]}")
                self._lines.wait(timeout=min(1.0, max(0.01, deadline - time.time())))

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)  # the job's main process only, as the worker does

    def finish(self, timeout: float = 300) -> JobResult:
        import time
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        self._err_reader.join(timeout=10)
        return JobResult(self.proc.returncode, list(self.events), "".join(self._stderr), time.time() - self.start)


def start_job(module: str, cfg: dict, *, env: dict[str, str | None] | None = None,
              preexec_fn=None) -> RunningJob:
    """Like run_job, but returns at once with a RunningJob (events read as they come). `preexec_fn` runs in the
    child before the job starts (e.g. resource limits)."""
    proc, read_fd, start = _launch_job(module, cfg, env, preexec_fn)
    return RunningJob(proc, read_fd, start)


def run_tool(module: str, args: list[str] = (), *, env: dict[str, str | None] | None = None,
             timeout: float = 300) -> JobResult:
    """Run `python -m refinery_jobs.<module> <args>` (not a job: no --config, e.g. preflight) with an events pipe."""
    import time
    read_fd, write_fd = os.pipe()
    env_vars = {**os.environ, "PYTHONUNBUFFERED": "1", "REFINERY_EVENTS_FD": str(write_fd), "PYTHONPATH": JOBS_DIR}
    for key, value in (env or {}).items():
        if value is None:
            env_vars.pop(key, None)
        else:
            env_vars[key] = value
    start = time.time()
    proc = subprocess.Popen([PYTHON, "-m", f"refinery_jobs.{module}", *args], cwd=JOBS_DIR, env=env_vars,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, pass_fds=(write_fd,))
    os.close(write_fd)
    return _wait_for_result(proc, read_fd, start, timeout)


# ----------------------------------------------------------------------------------------------
# Learning checks (tests/test_learning.py): what a policy makes of held-out preference pairs
# ----------------------------------------------------------------------------------------------

def load_policy(model_dir: str, base: str | None = None):
    """(model, tokenizer) of a job's output, frozen on the CPU: a full model, or a LoRA adapter merged into `base`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(2)
    if os.path.isfile(os.path.join(model_dir, "adapter_config.json")):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), model_dir).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def answer_logprobs(model, tokenizer, prompts: list[list[dict]], answers: list[list[dict]]):
    """Per row: (summed log-prob of the answer's tokens given the prompt, number of answer tokens), the answer
    rendered by the chat template as an assistant turn (its end-of-turn token included)."""
    import torch
    out = []
    with torch.no_grad():
        for prompt, answer in zip(prompts, answers):
            prefix = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            whole = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
            assert whole.startswith(prefix), (prefix, whole)
            prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
            assert ids[:len(prefix_ids)] == prefix_ids, "the prompt's tokens change when the answer follows"
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            answer_logp = logp[len(prefix_ids) - 1:]
            out.append((float(answer_logp.sum()), len(answer_logp)))
    return out


def preference_margins(model_dir: str, rows: list[dict], base: str | None = None) -> dict[str, float]:
    """How a policy separates the chosen from the rejected answer of each pair (rows as data.load_rows gives them):
      logp_margin      mean of log p(chosen) - log p(rejected), summed over answer tokens: what DPO and KTO move
                       (after minus before = DPO's implicit reward margin / beta)
      log_odds_margin  mean of log-odds(chosen) - log-odds(rejected) on the mean per-token log-prob: what ORPO moves
    and, per pair, the summed log-prob difference (`per_pair`) for accuracies against a reference."""
    import math
    model, tok = load_policy(model_dir, base)
    prompts = [r["prompt"] for r in rows]
    chosen = answer_logprobs(model, tok, prompts, [r["chosen"] for r in rows])
    rejected = answer_logprobs(model, tok, prompts, [r["rejected"] for r in rows])

    def log_odds(logp_sum: float, n: int) -> float:
        mean = logp_sum / n
        return mean - math.log(-math.expm1(mean))

    per_pair = [c[0] - r[0] for c, r in zip(chosen, rejected)]
    return {
        "logp_margin": sum(per_pair) / len(rows),
        "log_odds_margin": sum(log_odds(*c) - log_odds(*r) for c, r in zip(chosen, rejected)) / len(rows),
        "per_pair": per_pair,
    }


@functools.lru_cache(maxsize=None)
def family_model(family: str, seed: int = 0) -> str:
    """A tiny random-initialised model of a real family with its real tokenizer (make_tiny_model --family), once
    per test process; the tokenizer itself is cached across processes (~/.cache/refinery/tokenizers)."""
    if family == "llama":
        return tiny_model()
    out = os.path.join(_ROOT, f"tiny-{family}")
    subprocess.run([PYTHON, "-m", "refinery_jobs.make_tiny_model", "--family", family, "--out", out,
                    "--seed", str(seed)], cwd=JOBS_DIR, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": JOBS_DIR, "HF_HUB_OFFLINE": "1"})
    return out
