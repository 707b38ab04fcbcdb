"""Resuming a Trainer-based job whose PEFT model holds several adapters (DPO's frozen "ref" copy) restores the
trained adapter: the resumed run's losses, token count and final weights equal an uninterrupted run's.

(transformers 5 resumes such a checkpoint by loading only its sub-folder adapters; refinery_jobs.hf_trainer.train
loads the root one first. Through the worker and MinIO, with a killed worker: test/integration/real-resume.test.ts.)
"""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import helpers  # noqa: E402
from tests.compare_weights import compare_weights  # noqa: E402
from tests.helpers import demo, job_config, run_job, workdir  # noqa: E402

LORA = {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}}


class MultiAdapterResumeTest(unittest.TestCase):
    def test_dpo_on_an_sft_adapter_resumes_exactly(self):
        sft = job_config("sft", workdir("resume-sft"), inputs={"model": helpers.tiny_model()},
                         datasets={"train": demo("sft.jsonl")}, finetuning=LORA,
                         hyper={"max_steps": 2, "save_steps": None})
        self.assertEqual(run_job("sft", sft).rc, 0)

        def dpo(name: str, resume_from=None) -> dict:
            return job_config("dpo", workdir(name), inputs={"model": sft["output_dir"], "base": helpers.tiny_model()},
                              datasets={"train": demo("preference.jsonl")}, finetuning=LORA,
                              hyper={"max_steps": 4, "save_steps": 2, "learning_rate": 3e-3},
                              resume_from=resume_from)

        straight_cfg = dpo("resume-dpo-straight")
        straight = run_job("dpo", straight_cfg)
        self.assertEqual(straight.rc, 0, straight)
        ckpt = straight.of("checkpoint")[0]["path"]
        self.assertTrue(os.path.isfile(os.path.join(ckpt, "ref", "adapter_model.safetensors")),
                        "the checkpoint should hold TRL's frozen ref adapter in a sub-folder")

        resumed_cfg = dpo("resume-dpo-resumed", resume_from=ckpt)
        resumed = run_job("dpo", resumed_cfg)
        self.assertEqual(resumed.rc, 0, resumed)
        self.assertEqual(resumed.one("started")["resumed_from_step"], 2)
        before = {e["step"]: e["loss"] for e in straight.of("progress")}
        after = {e["step"]: e["loss"] for e in resumed.of("progress")}
        self.assertEqual(sorted(after), [3, 4])
        for step in (3, 4):
            self.assertAlmostEqual(after[step], before[step], delta=1e-3, msg=f"step {step}")
        # TRL's running token count carries on from the checkpoint instead of restarting at 0.
        tokens = {e["step"]: e["metrics"]["num_tokens"] for e in straight.of("progress")}
        self.assertEqual({e["step"]: e["metrics"]["num_tokens"] for e in resumed.of("progress")},
                         {3: tokens[3], 4: tokens[4]})
        weights = compare_weights(straight_cfg["output_dir"], resumed_cfg["output_dir"], atol=1e-4)
        self.assertTrue(weights["allclose"], weights)
        self.assertIn("restored the trained adapter", resumed.stderr)


class KtoOrpoResumeTest(unittest.TestCase):
    """kto and orpo (LoRA): a run restarted from a checkpoint ends with the losses and weights of an uninterrupted
    run. kto's run is killed (SIGKILL) right after its first checkpoint and restarted from it; orpo restarts from
    the uninterrupted run's checkpoint (as the dpo test above: one job start less)."""

    def restart_matches_uninterrupted(self, kind: str, train_file: str, *, kill: bool = True) -> str:
        import signal

        def cfg(name: str, resume_from=None) -> dict:
            return job_config(kind, workdir(name), inputs={"model": helpers.tiny_model()},
                              datasets={"train": demo(train_file)}, finetuning=LORA,
                              hyper={"max_steps": 4, "save_steps": 2, "learning_rate": 3e-3},
                              resume_from=resume_from)

        straight_cfg = cfg(f"resume-{kind}-straight")
        straight = run_job(kind, straight_cfg)
        self.assertEqual(straight.rc, 0, straight)

        if kill:
            killed = helpers.start_job(kind, cfg(f"resume-{kind}-killed"))
            ckpt = killed.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 2)["path"]
            killed.signal(signal.SIGKILL)
            self.assertEqual(killed.finish().rc, -signal.SIGKILL)
        else:
            ckpt = straight.of("checkpoint")[0]["path"]

        resumed_cfg = cfg(f"resume-{kind}-resumed", resume_from=ckpt)
        resumed = run_job(kind, resumed_cfg)
        self.assertEqual(resumed.rc, 0, resumed)
        self.assertEqual(resumed.one("started")["resumed_from_step"], 2)
        before = {e["step"]: e["loss"] for e in straight.of("progress")}
        after = {e["step"]: e["loss"] for e in resumed.of("progress")}
        self.assertEqual(sorted(after), [3, 4])
        for step in (3, 4):
            self.assertAlmostEqual(after[step], before[step], delta=1e-3, msg=f"{kind} step {step}")
        tokens = {e["step"]: e["metrics"].get("num_tokens") for e in straight.of("progress")}
        if tokens[4] is not None:  # TRL's running token count carries on from the checkpoint (kto logs one)
            self.assertEqual({e["step"]: e["metrics"]["num_tokens"] for e in resumed.of("progress")},
                             {3: tokens[3], 4: tokens[4]})
        weights = compare_weights(straight_cfg["output_dir"], resumed_cfg["output_dir"], atol=1e-4)
        self.assertTrue(weights["allclose"], weights)
        if os.path.isdir(os.path.join(ckpt, "ref")):  # TRL's frozen copy of the adapter: the root one is ours
            self.assertIn("restored the trained adapter", resumed.stderr)
        return ckpt

    def test_kto_resumes_exactly_after_a_kill(self):
        ckpt = self.restart_matches_uninterrupted("kto", "kto.jsonl")
        self.assertTrue(os.path.isfile(os.path.join(ckpt, "ref", "adapter_model.safetensors")),
                        "kto's LoRA checkpoint should hold TRL's frozen ref adapter in a sub-folder")

    def test_orpo_resumes_exactly(self):
        self.restart_matches_uninterrupted("orpo", "preference.jsonl", kill=False)


if __name__ == "__main__":
    unittest.main()
