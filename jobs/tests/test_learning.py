"""Learning checks that can fail: each method, run for real on the tiny model, moves the quantity it optimises on
held-out data by a stated amount, on demo data where length carries no signal (make_demo_data: in the held-out
pairs the rejected answer is always the longer one).

  reward  accuracy >= 0.9 on held-out pairs whose rejected answer is the longer one; a length-only scorer < 0.5
  dpo     held-out log p(chosen) - log p(rejected) rises by >= DPO_MIN_RISE nats
  kto     the same held-out margin rises by >= KTO_MIN_RISE nats (KTO trains on the pairs unpaired)
  orpo    held-out log-odds(chosen) - log-odds(rejected) rises by >= ORPO_MIN_RISE
  grpo    mean reward of the last 5 of 20 steps >= the first 5's + GRPO_MIN_RISE (reward model units)
  ppo     final KL with kl_coef 1 < half the final KL with kl_coef 0 (which must exceed 0.5 nat: a real drift);
          the value loss of the last 3 steps < 0.6 x the first 3's

The checks fail when nothing learns: REFINERY_LEARNING_LR=1e-12 sets every learning rate of these jobs (the reward
model's too) to ~0, and every check but the length-only scorer's then fails (docs/methods.md has the figures).
REFINERY_LONG_TESTS=1 runs the policy checks on three seeds instead of one (each seed must pass).
Figures: docs/methods.md (`HF_HUB_OFFLINE=1 python -m unittest tests.test_learning -v` prints them).
"""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refinery_jobs import data  # noqa: E402
from tests import helpers  # noqa: E402
from tests.helpers import demo, job_config, run_job, workdir  # noqa: E402

LONG = os.environ.get("REFINERY_LONG_TESTS") == "1"
LR_OVERRIDE = os.environ.get("REFINERY_LEARNING_LR")  # e.g. 1e-12: shows that every check can fail
SEEDS = (7, 1, 2) if LONG else (7,)

REWARD_MIN_ACCURACY = 0.9
DPO_MIN_RISE = 2.0
KTO_MIN_RISE = 2.0
ORPO_MIN_RISE = 0.3
GRPO_MIN_RISE = 0.4
PPO_MIN_FREE_KL = 0.5
PPO_KL_RATIO = 0.5
PPO_VF_RATIO = 0.6


def lr(value: float) -> float:
    return float(LR_OVERRIDE) if LR_OVERRIDE else value


def report(name: str, **figures) -> None:
    """One line per check on stderr: the figures docs/methods.md quotes."""
    text = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[learning] {name}: {text}", file=sys.stderr, flush=True)


def eval_pairs() -> list[dict]:
    return data.load_rows(demo("preference_eval.jsonl"), "preference", ("preference",))[1]


def longer_wins(row: dict) -> bool:
    """The length-only scorer: it prefers the longer answer."""
    return len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"])


class RewardLearnsToneNotLength(unittest.TestCase):
    def test_the_demo_data_defeats_a_length_scorer(self):
        held_out = eval_pairs()
        train = data.load_rows(demo("preference.jsonl"), "preference", ("preference",))[1]
        self.assertTrue(all(len(r["rejected"][0]["content"]) > len(r["chosen"][0]["content"]) for r in held_out))
        length_accuracy = sum(map(longer_wins, held_out)) / len(held_out)
        train_chosen_longer = sum(map(longer_wins, train)) / len(train)
        report("length-only scorer", eval_accuracy=length_accuracy, train_chosen_longer=train_chosen_longer)
        self.assertLess(length_accuracy, 0.5)
        self.assertAlmostEqual(train_chosen_longer, 0.5, delta=0.05)  # no length signal to learn in training

    def test_reward_accuracy_where_the_rejected_answer_is_longer(self):
        if LR_OVERRIDE:
            work = workdir("learning-reward")
            cfg = job_config("reward", work, inputs={"model": helpers.sft_policy()},
                             datasets={"train": demo("preference.jsonl"), "eval": demo("preference_eval.jsonl")},
                             hyper={"max_steps": 30, "save_steps": 30, "learning_rate": lr(1e-3)})
            result = run_job("reward", cfg)
        else:
            helpers.reward_model()  # the shared one (tests/helpers.py): LoRA, 30 steps on preference.jsonl
            result = helpers.reward_model.result
        self.assertEqual(result.rc, 0, result)
        metrics = result.one("done")["metrics"]
        report("reward", eval_accuracy=metrics["accuracy"], eval_margin=metrics["margin"], pairs=metrics["pairs"])
        self.assertGreaterEqual(metrics["accuracy"], REWARD_MIN_ACCURACY, metrics)


class PreferenceMarginsRise(unittest.TestCase):
    """dpo, kto and orpo from the SFT policy (full fine-tuning), margins measured on held-out pairs before/after."""

    @classmethod
    def setUpClass(cls):
        cls.rows = eval_pairs()
        cls.before = helpers.preference_margins(helpers.sft_policy(), cls.rows)

    def train(self, kind: str, seed: int, *, steps: int, learning_rate: float, params: dict) -> str:
        train, held_out = (("kto.jsonl", "kto_eval.jsonl") if kind == "kto" else
                           ("preference.jsonl", "preference_eval.jsonl"))
        cfg = job_config(kind, workdir(f"learning-{kind}-{seed}"), inputs={"model": helpers.sft_policy()},
                         datasets={"train": demo(train), "eval": demo(held_out)}, finetuning={"type": "full"},
                         hyper={"max_steps": steps, "save_steps": steps, "learning_rate": lr(learning_rate),
                                "seed": seed},
                         params=params)
        result = run_job(kind, cfg)
        self.assertEqual(result.rc, 0, result)
        return cfg["output_dir"]

    def rise(self, kind: str, out_dir: str, key: str, seed: int) -> float:
        after = helpers.preference_margins(out_dir, self.rows)
        # implicit-reward accuracy: the pair's log-prob difference grew against the SFT policy's (the reference)
        accuracy = sum(a > b for a, b in zip(after["per_pair"], self.before["per_pair"])) / len(self.rows)
        report(kind, seed=seed, before=self.before[key], after=after[key], rise=after[key] - self.before[key],
               implicit_reward_accuracy=accuracy)
        return after[key] - self.before[key]

    def test_dpo_held_out_margin_rises(self):
        for seed in SEEDS:
            out = self.train("dpo", seed, steps=20, learning_rate=1e-4, params={"beta": 0.1})
            self.assertGreaterEqual(self.rise("dpo", out, "logp_margin", seed), DPO_MIN_RISE)

    def test_kto_held_out_margin_rises(self):
        for seed in SEEDS:
            out = self.train("kto", seed, steps=10, learning_rate=2e-4, params={"beta": 0.1})
            self.assertGreaterEqual(self.rise("kto", out, "logp_margin", seed), KTO_MIN_RISE)

    def test_orpo_held_out_log_odds_rise(self):
        for seed in SEEDS:
            out = self.train("orpo", seed, steps=10, learning_rate=6e-4, params={"beta": 0.1})
            self.assertGreaterEqual(self.rise("orpo", out, "log_odds_margin", seed), ORPO_MIN_RISE)


class OnlineRLLearns(unittest.TestCase):
    """grpo and ppo from the SFT policy against the shared reward model (which pays for the polite tone)."""

    def test_grpo_mean_reward_rises_over_20_steps(self):
        for seed in SEEDS:
            cfg = job_config("grpo", workdir(f"learning-grpo-{seed}"),
                             inputs={"model": helpers.sft_policy(), "reward_model": helpers.reward_model()},
                             datasets={"train": demo("prompts.jsonl")}, finetuning={"type": "full"},
                             hyper={"max_steps": 20, "save_steps": 20, "learning_rate": lr(1e-3), "batch_size": 32,
                                    "seed": seed},
                             params={"num_generations": 4, "max_completion_length": 24})
            result = run_job("grpo", cfg)
            self.assertEqual(result.rc, 0, result)
            rewards = [e["metrics"]["reward"] for e in result.of("progress")]
            self.assertEqual(len(rewards), 20)
            first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
            report("grpo", seed=seed, first5=first, last5=last, rise=last - first)
            self.assertGreaterEqual(last - first, GRPO_MIN_RISE, rewards)

    def ppo(self, kl_coef: float, seed: int):
        cfg = job_config("ppo", workdir(f"learning-ppo-{kl_coef}-{seed}"),
                         inputs={"model": helpers.sft_policy(), "reward_model": helpers.reward_model()},
                         datasets={"train": demo("prompts.jsonl")}, finetuning={"type": "full"},
                         hyper={"max_steps": 12, "save_steps": 12, "learning_rate": lr(3e-4), "batch_size": 16,
                                "seed": seed},
                         params={"max_new_tokens": 24, "kl_coef": kl_coef})
        result = run_job("ppo", cfg)
        self.assertEqual(result.rc, 0, result)
        return [e["metrics"] for e in result.of("progress")]

    def test_ppo_kl_coefficient_bounds_the_drift_and_the_value_loss_falls(self):
        def mean(values):
            return sum(values) / len(values)

        for seed in SEEDS:
            free, held = self.ppo(0.0, seed), self.ppo(1.0, seed)
            kl_free, kl_held = mean([m["kl"] for m in free[-3:]]), mean([m["kl"] for m in held[-3:]])
            vf_first, vf_last = mean([m["vf_loss"] for m in free[:3]]), mean([m["vf_loss"] for m in free[-3:]])
            report("ppo", seed=seed, kl_coef0_final_kl=kl_free, kl_coef1_final_kl=kl_held,
                   vf_loss_first3=vf_first, vf_loss_last3=vf_last)
            self.assertGreater(kl_free, PPO_MIN_FREE_KL, "without a KL penalty the policy should drift away")
            self.assertLess(kl_held, PPO_KL_RATIO * kl_free)
            self.assertLess(vf_last, PPO_VF_RATIO * vf_first)


if __name__ == "__main__":
    unittest.main()
