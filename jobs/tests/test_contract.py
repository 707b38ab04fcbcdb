"""Fast tests (no torch): config validation, dataset validation with file:line:field, events, testjob."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import tempfile
import time
import unittest
from contextlib import redirect_stderr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refinery_jobs import config, contract, data  # noqa: E402
from tests import helpers  # noqa: E402


def write_jsonl(lines: list[str | dict]) -> str:
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


CHAT_OK = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


class DatasetValidationTest(unittest.TestCase):
    def assertDataError(self, lines, fmt, accepted, line, field, fragment):
        path = write_jsonl(lines)
        with self.assertRaises(contract.JobError) as ctx:
            data.load_rows(path, fmt, accepted)
        err = ctx.exception
        self.assertEqual(err.category, "data")
        self.assertEqual(err.exit_code, 3)
        self.assertEqual((err.file, err.line, err.field), (path, line, field))
        self.assertIn(fragment, err.message)
        self.assertTrue(err.message.startswith(f"{path}:{line}:" if line else path), err.message)
        return err

    def test_unknown_role_names_file_line_and_field(self):
        bad = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                            {"role": "bot", "content": "c"}]}
        err = self.assertDataError([CHAT_OK] * 16 + [bad], "chat", ("chat",), 17, "messages[2].role",
                                   'expected one of system|user|assistant, got "bot"')
        self.assertTrue(err.message.endswith(':17: field "messages[2].role": expected one of '
                                             'system|user|assistant, got "bot"'), err.message)

    def test_invalid_json(self):
        self.assertDataError([CHAT_OK, '{"messages": [', CHAT_OK], "chat", ("chat",), 2, None, "invalid JSON")

    def test_empty_content(self):
        bad = {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "b"}]}
        self.assertDataError([bad], "chat", ("chat",), 1, "messages[0].content", "empty content")

    def test_missing_chosen_and_rejected(self):
        self.assertDataError([{"prompt": "q", "rejected": "r"}], "preference", ("preference",), 1, "chosen",
                             "missing")
        self.assertDataError([{"prompt": "q", "chosen": "c"}], "preference", ("preference",), 1, "rejected",
                             "missing")

    def test_over_long_line(self):
        path = write_jsonl([{"text": "short"}])
        with open(path, "a", encoding="utf-8") as f:
            f.write('{"text": "' + "x" * (data.MAX_LINE_BYTES + 10) + '"}\n')
        with self.assertRaises(contract.JobError) as ctx:
            data.load_rows(path, "text", ("text",))
        self.assertEqual((ctx.exception.line, ctx.exception.category), (2, "data"))
        self.assertIn("longer than 10 MB", ctx.exception.message)

    def test_sharegpt_alpaca_prompts_errors(self):
        self.assertDataError([{"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}],
                             "sharegpt", ("sharegpt",), 1, "conversations[1].from", "human|gpt|system")
        self.assertDataError([{"instruction": "do", "output": ""}], "alpaca", ("alpaca",), 1, "output",
                             "empty content")
        self.assertDataError([{"instruction": "do", "output": "x", "history": [["q"]]}], "alpaca", ("alpaca",), 1,
                             "history[0]", "pair")
        self.assertDataError([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
                             "prompts", ("prompts",), 1, "messages[1].role", "end with a user turn")

    def test_every_format_normalises(self):
        cases = {
            "chat": CHAT_OK,
            "alpaca": {"instruction": "Add", "input": "1 and 2", "output": "3", "history": [["hi", "hello"]]},
            "sharegpt": {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                           {"from": "gpt", "value": "a"}]},
            "text": {"text": "raw"},
            "preference": {"prompt": "q", "chosen": "good", "rejected": "bad"},
            "prompts": {"messages": [{"role": "user", "content": "q"}]},
        }
        for fmt, row in cases.items():
            detected, rows = data.load_rows(write_jsonl([row, "", row]), None, data.FORMATS)
            self.assertEqual(detected, fmt)
            self.assertEqual(len(rows), 2)
        _, rows = data.load_rows(write_jsonl([cases["alpaca"]]), "alpaca", ("alpaca",))
        self.assertEqual([m["role"] for m in rows[0]["messages"]], ["user", "assistant", "user", "assistant"])
        self.assertEqual(rows[0]["messages"][2]["content"], "Add\n\n1 and 2")
        _, rows = data.load_rows(write_jsonl([cases["preference"]]), "preference", ("preference",))
        self.assertEqual(rows[0]["chosen"], [{"role": "assistant", "content": "good"}])

    def test_demo_data_is_valid(self):
        expected = {"sft.jsonl": "chat", "sft_eval.jsonl": "chat", "preference.jsonl": "preference",
                    "preference_eval.jsonl": "preference", "prompts.jsonl": "prompts", "alpaca.jsonl": "alpaca",
                    "sharegpt.jsonl": "sharegpt", "text.jsonl": "text"}
        total = 0
        for name, fmt in expected.items():
            detected, rows = data.load_rows(helpers.demo(name), None, data.FORMATS)
            self.assertEqual(detected, fmt, name)
            total += os.path.getsize(helpers.demo(name))
        self.assertLess(total, 1024 * 1024)


class ConfigTest(unittest.TestCase):
    SPEC = config.JobSpec(kinds=("sft",), inputs=("model",), formats=("chat",),
                          params={"packing": config.Param(bool, False)})

    def load(self, **overrides):
        work = tempfile.mkdtemp()
        cfg = helpers.job_config("sft", work, inputs={"model": work}, datasets={"train": helpers.demo("sft.jsonl")})
        cfg.update(overrides)
        path = os.path.join(work, "c.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return config.load_config(path, self.SPEC)

    def assertConfigError(self, field, **overrides):
        with self.assertRaises(contract.JobError) as ctx:
            self.load(**overrides)
        self.assertEqual((ctx.exception.category, ctx.exception.field, ctx.exception.exit_code), ("config", field, 2))
        return ctx.exception

    def test_valid_config(self):
        cfg = self.load()
        self.assertEqual((cfg.kind, cfg.finetuning, cfg.hyper.max_steps, cfg.params["packing"]), ("sft", "lora", 4,
                                                                                                  False))

    def test_errors_name_the_field(self):
        self.assertConfigError("contract", contract=2)
        self.assertConfigError("kind", kind="ppo")
        self.assertConfigError("inputs.model", inputs={"model": "/does/not/exist"})
        self.assertConfigError("inputs.model", inputs={})
        self.assertConfigError("inputs.extra", inputs={"model": "/tmp", "extra": "/tmp"})
        self.assertConfigError("datasets.train", datasets={"train": "/nope.jsonl"})
        self.assertConfigError("hyper.batch_size", hyper={"batch_size": 0})
        self.assertConfigError("hyper.learning_rate", hyper={"learning_rate": "fast"})
        self.assertConfigError("hyper.schedule", hyper={"schedule": "linear"})
        self.assertConfigError("params.pack", params={"pack": True})
        self.assertConfigError("finetuning.type", finetuning={"type": "adapters"})
        self.assertConfigError("dataset_format", dataset_format="preference")
        self.assertConfigError("output_dir", output_dir="relative/out")
        err = self.assertConfigError("resume_from", resume_from=tempfile.mkdtemp())
        self.assertIn("trainer_state.json", err.message)


def read_events(emit) -> list[str]:
    """The event lines that emit(events) writes."""
    read_fd, write_fd = os.pipe()
    try:
        emit(contract.Events(write_fd))
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as f:
        return f.read().splitlines()


class EventsTest(unittest.TestCase):
    def test_events_are_json_lines_on_the_fd(self):
        def emit(events):
            events.progress(3, 10, loss=0.25, metrics={"kl": 0.5, "text": "x", "flag": True})
            events.checkpoint(3, "/tmp/x/checkpoint-3")
        lines = read_events(emit)
        self.assertEqual(json.loads(lines[0]), {"event": "progress", "step": 3, "total_steps": 10, "loss": 0.25,
                                                "metrics": {"kl": 0.5, "flag": 1}})
        self.assertEqual(json.loads(lines[1])["path"], "/tmp/x/checkpoint-3")

    def test_non_finite_numbers_are_strings_except_in_done(self):
        nan, inf = float("nan"), float("inf")

        def emit(events):
            events.progress(3, 10, loss=nan, metrics={"kl": 0.5, "bad": inf, "worse": -inf, "text": "x"})
            events.progress(4, 10, loss=inf)
            events.metrics({"eval_loss": nan, "accuracy": 1.0}, step=4)
            events.done({"final_loss": nan, "eval_loss": -inf, "accuracy": 0.5})
        lines = read_events(emit)
        self.assertIn('"loss":"NaN"', lines[0])
        self.assertEqual(json.loads(lines[0]), {"event": "progress", "step": 3, "total_steps": 10, "loss": "NaN",
                                                "metrics": {"kl": 0.5, "bad": "Infinity", "worse": "-Infinity"}})
        self.assertEqual(json.loads(lines[1])["loss"], "Infinity")
        self.assertEqual(json.loads(lines[2])["metrics"], {"eval_loss": "NaN", "accuracy": 1.0})
        self.assertEqual(json.loads(lines[3])["metrics"], {"accuracy": 0.5})
        for line in lines:  # strict JSON: no bare NaN / Infinity tokens
            json.loads(line, parse_constant=lambda c: self.fail(f"bare {c} in {line}"))
        self.assertEqual({k: contract.NON_FINITE[v] for k, v in (("i", "Infinity"), ("m", "-Infinity"))},
                         {"i": inf, "m": -inf})

    def test_started_declares_the_checkpoint_signal_only_when_given(self):
        lines = read_events(lambda e: (e.started(10, None, "cpu"), e.started(10, 4, "cpu", checkpoint_signal="SIGUSR1")))
        self.assertNotIn("checkpoint_signal", json.loads(lines[0]))
        self.assertEqual(json.loads(lines[1]), {"event": "started", "total_steps": 10, "resumed_from_step": 4,
                                                "device": "cpu", "checkpoint_signal": "SIGUSR1"})

    def test_falls_back_to_stderr_when_fd_is_closed(self):
        os.environ["REFINERY_EVENTS_FD"] = "987"
        try:
            buf = io.StringIO()
            with redirect_stderr(buf):
                events = contract.Events()
            self.assertEqual(events.fd, 2)
        finally:
            del os.environ["REFINERY_EVENTS_FD"]


class CheckpointRequestTest(unittest.TestCase):
    def test_sigusr1_sets_a_flag_that_take_consumes_once(self):
        previous = signal.getsignal(signal.SIGUSR1)
        try:
            request = contract.CheckpointRequest().install()
            self.assertEqual(request.signal_name, "SIGUSR1")
            self.assertFalse(request.take())
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.time() + 5
            while request.count < 2 and time.time() < deadline:
                time.sleep(0.001)
            self.assertEqual(request.count, 2)
            self.assertTrue(request.pending)
            self.assertTrue(request.take())   # two requests before a boundary: one checkpoint
            self.assertFalse(request.take())
        finally:
            signal.signal(signal.SIGUSR1, previous)


class MainErrorMappingTest(unittest.TestCase):
    """contract.main turns a recipe's exception into the `error` event and exit code (out of memory: 5)."""

    SPEC = config.JobSpec(kinds=("merge",), formats=(), checkpoints=False)

    def run_main(self, exc: BaseException) -> tuple[int, dict]:
        work = helpers.workdir("main-errors")
        path = os.path.join(work, "job.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(helpers.job_config("merge", work, checkpoint_dir=None, datasets={}), f)

        def recipe(cfg, events):
            raise exc
        read_fd, write_fd = os.pipe()
        os.environ["REFINERY_EVENTS_FD"] = str(write_fd)
        try:
            with redirect_stderr(io.StringIO()), self.assertRaises(SystemExit) as ctx:
                contract.main(self.SPEC, recipe, ["--config", path])
        finally:
            del os.environ["REFINERY_EVENTS_FD"]
            os.close(write_fd)
        with os.fdopen(read_fd) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 1, lines)
        return ctx.exception.code, json.loads(lines[0])

    def test_out_of_memory_errors_are_category_oom_exit_5(self):
        class OutOfMemoryError(RuntimeError):  # what torch.OutOfMemoryError / torch.cuda.OutOfMemoryError are named
            pass

        class AcceleratorOutOfMemoryError(OutOfMemoryError):  # a subclass of one
            pass
        cuda = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which "
                "1.2 GiB is free. " + "x" * 1000)
        cases = [
            (RuntimeError(cuda), "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"),
            (RuntimeError("HIP out of memory. Tried to allocate 20.00 MiB"), "RuntimeError: HIP out of memory"),
            (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), "RuntimeError: MPS backend out of"),
            (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
             "RuntimeError: CUDA error: out of memory"),
            (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                          "tried to allocate 1000000 bytes"), "RuntimeError: [enforce fail"),
            (OutOfMemoryError("CUDA out of memory (the class)"), "OutOfMemoryError: CUDA out of memory (the class)"),
            (AcceleratorOutOfMemoryError("no room"), "AcceleratorOutOfMemoryError: no room"),
            (MemoryError(), "MemoryError: out of memory"),
        ]
        for exc, prefix in cases:
            code, event = self.run_main(exc)
            self.assertEqual((code, event["event"], event["category"]), (contract.EXIT_OOM, "error", "oom"), exc)
            self.assertTrue(event["message"].startswith(prefix), event["message"])
        _, event = self.run_main(RuntimeError(cuda))
        self.assertEqual(event["message"], "RuntimeError: " + cuda[:500])  # the original text, first 500 chars

    def test_an_oom_behind_another_error_is_oom(self):
        class OutOfMemoryError(RuntimeError):
            pass
        try:
            try:
                raise OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
            except OutOfMemoryError as inner:
                raise ValueError("the forward pass failed") from inner
        except ValueError as outer:
            code, event = self.run_main(outer)
        self.assertEqual((code, event["category"]), (5, "oom"))
        self.assertEqual(event["message"], "OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB")

    def test_other_errors_stay_runtime_or_their_category(self):
        for exc in (RuntimeError("shape mismatch"), ValueError("out of memory"), KeyError("x")):
            code, event = self.run_main(exc)
            self.assertEqual((code, event["category"]), (1, "runtime"), exc)
        code, event = self.run_main(contract.JobError("oom", "testjob: CUDA out of memory"))
        self.assertEqual((code, event["category"], event["message"]), (5, "oom", "testjob: CUDA out of memory"))
        self.assertEqual(contract.JobError("oom", "x").exit_code, 5)


class TestJobTest(unittest.TestCase):
    def test_fail_once_then_resume(self):
        work = helpers.workdir("testjob")
        cfg = helpers.job_config("sft", work, hyper={"max_steps": 6, "save_steps": 2},
                                 params={"step_seconds": 0.0, "fail_at_step": 5})
        first = helpers.run_job("testjob", cfg)
        self.assertEqual(first.rc, 1)
        self.assertEqual([e["step"] for e in first.of("checkpoint")], [2, 4])
        self.assertEqual(first.events[-1]["event"], "error")
        ckpt = first.of("checkpoint")[-1]["path"]
        self.assertTrue(os.path.isfile(os.path.join(ckpt, "trainer_state.json")))
        cfg["resume_from"] = ckpt
        second = helpers.run_job("testjob", cfg)
        self.assertEqual(second.rc, 0, second)
        self.assertEqual(second.one("started")["resumed_from_step"], 4)
        self.assertEqual([e["step"] for e in second.of("progress")], [5, 6])
        self.assertEqual(second.events[-1]["event"], "done")
        self.assertLess(second.seconds, 5)

    def test_exit_codes(self):
        for code, category in ((2, "config"), (3, "data"), (4, "unsupported"), (17, "runtime")):
            work = helpers.workdir(f"testjob-exit-{code}")
            result = helpers.run_job("testjob", helpers.job_config("sft", work, params={"exit_code": code}))
            self.assertEqual(result.rc, code)
            self.assertEqual(result.one("error")["category"], category)
        result = helpers.run_job("testjob", helpers.job_config("sft", helpers.workdir("t0"), params={"exit_code": 0}))
        self.assertEqual((result.rc, result.of("done")), (0, []))

    def test_bad_param_is_a_config_error(self):
        result = helpers.run_job("testjob", helpers.job_config("sft", helpers.workdir("t-bad"),
                                                               params={"step_secs": 1}))
        self.assertEqual(result.rc, 2)
        self.assertEqual(result.one("error")["field"], "params.step_secs")


if __name__ == "__main__":
    unittest.main()
