"""PPO learns on the demo data (mean reward rises) and resumes exactly from a checkpoint."""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import helpers  # noqa: E402
from tests.helpers import demo, job_config, run_job, workdir  # noqa: E402


def ppo_config(work: str, **overrides) -> dict:
    return job_config("ppo", work, inputs={"model": helpers.sft_policy(), "reward_model": helpers.reward_model()},
                      datasets={"train": demo("prompts.jsonl")}, finetuning={"type": "full"},
                      hyper={"max_steps": 24, "learning_rate": 3e-4, "batch_size": 16, "save_steps": 12},
                      params={"max_new_tokens": 24, "kl_coef": 0.05}, **overrides)


class PPOTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = workdir("ppo")
        cls.cfg = ppo_config(cls.work)
        cls.result = run_job("ppo", cls.cfg)

    def test_mean_reward_rises(self):
        r = self.result
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.events[0]["event"], "started")
        rewards = [e["metrics"]["reward_mean"] for e in r.of("progress")]
        self.assertEqual(len(rewards), 24)
        first, last = sum(rewards[:4]) / 4, sum(rewards[-6:]) / 6
        self.assertGreater(last, first + 0.5, rewards)
        gaps = [e["metrics"]["logprob_gap"] for e in r.of("progress")]
        self.assertLess(max(gaps), 1e-4)  # sampling and recomputed log-probs agree (no off-by-one)
        self.assertTrue(os.path.isfile(os.path.join(self.cfg["output_dir"], "model.safetensors")))

    def test_resume_matches_uninterrupted_run(self):
        ckpt = [e for e in self.result.of("checkpoint") if e["step"] == 12][0]["path"]
        for name in ("policy", "value", "optimizer.pt", "rng_state.pth", "trainer_state.json"):
            self.assertTrue(os.path.exists(os.path.join(ckpt, name)), name)
        work = workdir("ppo-resumed")
        cfg = ppo_config(work, resume_from=ckpt)
        resumed = run_job("ppo", cfg)
        self.assertEqual(resumed.rc, 0, resumed)
        self.assertEqual(resumed.one("started")["resumed_from_step"], 12)
        straight = {e["step"]: e["metrics"]["reward_mean"] for e in self.result.of("progress")}
        again = {e["step"]: e["metrics"]["reward_mean"] for e in resumed.of("progress")}
        self.assertEqual(sorted(again), list(range(13, 25)))
        for step in again:
            self.assertAlmostEqual(again[step], straight[step], delta=1e-3)


if __name__ == "__main__":
    unittest.main()
