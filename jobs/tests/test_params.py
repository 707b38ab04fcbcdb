"""Every stage parameter reaches the trainer: validated-but-ignored is the failure these tests rule out.

The fields come from the generated job config schema (refinery_jobs/job_config.schema.json, made from the zod
spec), so a field added there without a way to the trainer fails here. Each training kind's recipe is set up
for real (tiny model, demo data) with every hyper field and every param of its kind at a non-default value,
and the trainer's arguments (or, for our own PPO loop, its optimizer and loop settings) are read back.
"""

from __future__ import annotations

import json
import os
import unittest

from refinery_jobs import config, contract, hf_trainer, models
from tests import helpers

SCHEMA = config.job_config_schema()
HYPER_FIELDS = set(SCHEMA["properties"]["hyper"]["properties"])

# Every hyper field at a value that is not its default (and that the tiny CPU runs accept).
HYPER = {
    "learning_rate": 3e-4, "num_epochs": 3.0, "max_steps": 7, "batch_size": 6, "gradient_accumulation": 2,
    "max_length": 96, "scheduler": "cosine", "warmup_steps": 2, "weight_decay": 0.01, "max_grad_norm": 0.5,
    "optim": "adafactor", "adam_beta1": 0.8, "adam_beta2": 0.99, "adam_epsilon": 1e-6, "precision": "fp32",
    "gradient_checkpointing": True, "neftune_noise_alpha": 5.0, "save_steps": 3, "eval_steps": 2, "seed": 11,
    "save_total_limit": 5,
}
# Tested apart: warmup_steps overrides it.
WARMUP_RATIO = 0.25

# How each hyper field shows in TrainingArguments (shared by every Trainer-based job).
TRAINER_ARGS = {
    "learning_rate": lambda a: a.learning_rate,
    "num_epochs": lambda a: a.num_train_epochs,
    "max_steps": lambda a: a.max_steps,
    "batch_size": lambda a: (a.per_device_train_batch_size, a.per_device_eval_batch_size),
    "gradient_accumulation": lambda a: a.gradient_accumulation_steps,
    "max_length": lambda a: a.max_length,
    "scheduler": lambda a: getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type),
    "warmup_steps": lambda a: a.warmup_steps,
    "weight_decay": lambda a: a.weight_decay,
    "max_grad_norm": lambda a: a.max_grad_norm,
    "optim": lambda a: getattr(a.optim, "value", a.optim),
    "adam_beta1": lambda a: a.adam_beta1,
    "adam_beta2": lambda a: a.adam_beta2,
    "adam_epsilon": lambda a: a.adam_epsilon,
    "precision": lambda a: "fp32" if not (a.bf16 or a.fp16) else ("bf16" if a.bf16 else "fp16"),
    "gradient_checkpointing": lambda a: a.gradient_checkpointing,
    "neftune_noise_alpha": lambda a: a.neftune_noise_alpha,
    "save_steps": lambda a: a.save_steps,
    "eval_steps": lambda a: a.eval_steps,
    "seed": lambda a: (a.seed, a.data_seed),
    # The worker's retention of committed checkpoints: it must NOT reach the trainer, which would delete
    # checkpoints the worker has not uploaded yet.
    "save_total_limit": lambda a: a.save_total_limit,
}
EXPECTED = {**HYPER, "batch_size": (6, 6), "seed": (11, 11), "save_total_limit": None}

# Each kind's params at non-default values, and how each shows in that trainer's config.
PARAMS = {
    "sft": ({"packing": True, "assistant_only_loss": False},
            {"packing": lambda a: a.packing, "assistant_only_loss": None}),
    "reward": ({"center_rewards_coefficient": 0.01},
               {"center_rewards_coefficient": lambda a: a.center_rewards_coefficient}),
    "dpo": ({"beta": 0.3, "loss_type": "ipo"},
            {"beta": lambda a: a.beta, "loss_type": lambda a: a.loss_type[0] if isinstance(a.loss_type, list) else a.loss_type}),
    "grpo": ({"num_generations": 3, "max_completion_length": 12, "temperature": 0.7, "beta": 0.02,
              "num_iterations": 2, "epsilon": 0.3},
             {k: (lambda k: lambda a: getattr(a, k))(k) for k in
              ("num_generations", "max_completion_length", "temperature", "beta", "num_iterations", "epsilon")}),
    "kto": ({"beta": 0.3, "desirable_weight": 1.5, "undesirable_weight": 0.5},
            {k: (lambda k: lambda a: getattr(a, k))(k) for k in ("beta", "desirable_weight", "undesirable_weight")}),
    "orpo": ({"beta": 0.3}, {"beta": lambda a: a.beta}),
}
DATA = {
    "sft": ("sft.jsonl", "sft_eval.jsonl"), "reward": ("preference.jsonl", "preference_eval.jsonl"),
    "dpo": ("preference.jsonl", "preference_eval.jsonl"), "orpo": ("preference.jsonl", "preference_eval.jsonl"),
    "kto": ("kto.jsonl", "kto_eval.jsonl"), "grpo": ("prompts.jsonl", "prompts.jsonl"),
    "ppo": ("prompts.jsonl", "prompts.jsonl"),
}
JOBS_SRC = os.path.join(helpers.JOBS_DIR, "refinery_jobs")


class Silent(contract.Events):
    def __init__(self):
        self.fd = -1

    def emit(self, event, **fields):
        pass


def kind_params(kind: str) -> set[str]:
    return set(config.params_schema(kind).get("properties", {}))


def load(kind: str, work: str, hyper: dict, params: dict, inputs: dict) -> config.JobConfig:
    train, evaluation = DATA[kind]
    cfg = helpers.job_config(kind, work, inputs=inputs, hyper=hyper, params=params,
                             datasets={"train": helpers.demo(train), "eval": helpers.demo(evaluation)})
    cfg["hyper"] = hyper  # exactly these, nothing left from the helper's defaults
    path = os.path.join(work, "job.json")
    os.makedirs(work, exist_ok=True)
    with open(path, "w") as f:
        json.dump(cfg, f)
    spec = __import__(f"refinery_jobs.{kind}", fromlist=["SPEC"]).SPEC
    return config.load_config(path, spec)


def recipe_for(kind: str, cfg: config.JobConfig):
    module = __import__(f"refinery_jobs.{kind}", fromlist=["x"])
    cls = next(v for k, v in vars(module).items() if k.endswith("Recipe") and isinstance(v, type))
    recipe = cls(cfg, Silent())
    recipe.setup()
    return recipe


class EveryFieldIsCovered(unittest.TestCase):
    def test_the_tables_cover_the_schema(self):
        self.assertEqual(set(HYPER) | {"warmup_ratio"}, HYPER_FIELDS, "a hyper field without a value here")
        self.assertEqual(set(TRAINER_ARGS) | {"warmup_ratio"}, HYPER_FIELDS, "a hyper field without a way to read it back")
        for kind, (values, readers) in PARAMS.items():
            self.assertEqual(set(values), kind_params(kind), kind)
            self.assertEqual(set(readers), kind_params(kind), kind)

    def test_the_dataclasses_have_the_schema_fields(self):
        import dataclasses
        self.assertEqual({f.name for f in dataclasses.fields(config.Hyper)}, HYPER_FIELDS)
        lora = SCHEMA["properties"]["finetuning"]["properties"]["lora"]["properties"]
        self.assertEqual({f.name for f in dataclasses.fields(config.LoraSettings)}, set(lora))

    def test_built_in_jobs_declare_no_params_of_their_own(self):
        for kind in ("sft", "reward", "dpo", "ppo", "grpo", "kto", "orpo", "merge", "gguf", "eval"):
            spec = __import__(f"refinery_jobs.{kind}", fromlist=["SPEC"]).SPEC
            self.assertEqual(spec.params, {}, f"{kind}: params come from the schema (spec/stage-params.ts)")


class ParamsReachTheTrainer(unittest.TestCase):
    maxDiff = None

    def check(self, kind: str, hyper: dict, *, inputs: dict) -> None:
        values, readers = PARAMS[kind]
        hyper = {k: v for k, v in hyper.items() if k not in SCHEMA["x-hyper-unused"].get(kind, ())}
        cfg = load(kind, helpers.workdir(f"params-{kind}"), hyper, values, inputs)
        args = recipe_for(kind, cfg).trainer.args
        for name, read in TRAINER_ARGS.items():
            if name not in hyper:
                continue
            with self.subTest(kind=kind, hyper=name):
                self.assertEqual(read(args), EXPECTED[name], f"{kind}: hyper.{name} does not reach the trainer")
        for name, read in readers.items():
            if read is None:
                continue  # checked by its own test below
            with self.subTest(kind=kind, param=name):
                self.assertEqual(read(args), values[name], f"{kind}: params.{name} does not reach the trainer")

    def test_sft(self):
        self.check("sft", HYPER, inputs={"model": helpers.tiny_model()})

    def test_reward(self):
        self.check("reward", HYPER, inputs={"model": helpers.tiny_model()})

    def test_dpo(self):
        self.check("dpo", HYPER, inputs={"model": helpers.tiny_model()})

    def test_orpo(self):
        self.check("orpo", HYPER, inputs={"model": helpers.tiny_model()})

    def test_kto(self):
        self.check("kto", HYPER, inputs={"model": helpers.tiny_model()})

    def test_grpo(self):
        self.check("grpo", HYPER, inputs={"model": helpers.tiny_model(), "reward_model": helpers.tiny_model()})

    def test_warmup_ratio_when_no_warmup_steps(self):
        hyper = {k: v for k, v in HYPER.items() if k != "warmup_steps"} | {"warmup_ratio": WARMUP_RATIO}
        cfg = load("sft", helpers.workdir("params-warmup"), hyper, {}, {"model": helpers.tiny_model()})
        self.assertEqual(recipe_for("sft", cfg).trainer.args.warmup_steps, WARMUP_RATIO)

    def test_assistant_only_loss_off_trains_on_every_token(self):
        cfg = load("sft", helpers.workdir("params-aol"), {"max_steps": 2}, {"assistant_only_loss": False},
                   {"model": helpers.tiny_model()})
        recipe = recipe_for("sft", cfg)
        row = recipe.trainer.train_dataset[0]
        mask = row.get("assistant_masks") or row.get("completion_mask")
        self.assertTrue(mask is None or all(mask), "assistant_only_loss false must not mask any token")

    def test_val_size_holds_out_an_eval_set_that_the_trainer_evaluates(self):
        train = helpers.demo("sft.jsonl")
        with open(train, encoding="utf-8") as f:
            total = sum(1 for line in f if line.strip())
        work = helpers.workdir("params-val-size")
        cfg = helpers.job_config("sft", work, inputs={"model": helpers.tiny_model()},
                                 datasets={"train": train, "eval": None, "val_size": 0.25}, hyper={"save_steps": 2})
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(work, "job.json"), "w") as f:
            json.dump(cfg, f)
        trainer = recipe_for("sft", config.load_config(os.path.join(work, "job.json"), __import__("refinery_jobs.sft", fromlist=["SPEC"]).SPEC)).trainer
        held = round(total * 0.25)
        self.assertEqual((len(trainer.train_dataset), len(trainer.eval_dataset)), (total - held, held))
        self.assertEqual(getattr(trainer.args.eval_strategy, "value", trainer.args.eval_strategy), "steps")

    def test_precision_maps_to_bf16_and_fp16_on_a_gpu(self):
        gpu = models.Device("cuda", "cuda:0 (test)", True)
        for precision, flags in (("bf16", {"bf16": True, "fp16": False}), ("fp16", {"bf16": False, "fp16": True}),
                                 ("fp32", {"bf16": False, "fp16": False}), ("auto", {"bf16": True, "fp16": False})):
            cfg = config.JobConfig(**{**_blank(), "hyper": config.Hyper(precision=precision)})
            self.assertEqual(hf_trainer.precision_flags(cfg, gpu), flags, precision)
        cfg = config.JobConfig(**{**_blank(), "hyper": config.Hyper(precision="bf16")})
        with self.assertRaises(contract.JobError):
            hf_trainer.precision_flags(cfg, models.Device("cpu", "cpu", False))


class PPOLoopUsesEveryField(unittest.TestCase):
    """Our own PPO loop: its optimizer and loop read back; what only the loop body uses, by its source."""

    def test_ppo(self):
        hyper = {k: v for k, v in HYPER.items() if k not in SCHEMA["x-hyper-unused"]["ppo"]}
        values = {"kl_coef": 0.2, "max_new_tokens": 9, "temperature": 0.7, "ppo_epochs": 2, "num_mini_batches": 3,
                  "clip_range": 0.3, "clip_range_value": 0.3, "vf_coef": 0.2, "gamma": 0.99, "lam": 0.9,
                  "value_learning_rate": 2e-4, "missing_eos_penalty": 1.0, "eval_max_prompts": 5}
        self.assertEqual(set(values), kind_params("ppo"))
        cfg = load("ppo", helpers.workdir("params-ppo"), hyper, values,
                   {"model": helpers.tiny_model(), "reward_model": helpers.tiny_model()})
        recipe = recipe_for("ppo", cfg)
        policy, value = recipe.optimizer.param_groups
        self.assertEqual((policy["initial_lr"], value["initial_lr"]), (3e-4, 2e-4))
        self.assertEqual((policy["betas"], policy["eps"], policy["weight_decay"]), ((0.8, 0.99), 1e-6, 0.01))
        self.assertEqual((recipe.chunk, recipe.step_batch, recipe.total_steps), (6, 12, 7))
        self.assertEqual(recipe.generator.initial_seed(), 11)
        source = _source("ppo")
        for name in values:
            with self.subTest(param=name):
                self.assertRegex(source, rf'p\["{name}"\]', f"ppo: params.{name} is never read")
        for name in ("max_length", "max_grad_norm", "scheduler", "warmup_steps", "warmup_ratio", "save_steps"):
            with self.subTest(hyper=name):
                self.assertRegex(source, rf"\b(h|hyper)\.{name}\b", f"ppo: hyper.{name} is never read")


class NonTrainingJobsReadTheirParams(unittest.TestCase):
    """merge, gguf and eval: every param of their kind is read by the job (their effects have tests of their own)."""

    def test_each_param_is_read(self):
        for kind in ("merge", "gguf", "eval"):
            source = _source(kind)
            for name in kind_params(kind):
                with self.subTest(kind=kind, param=name):
                    self.assertRegex(source, rf'(params|self\.p)(\["{name}"\]|\.get\("{name}"\))')


def _source(job: str) -> str:
    with open(os.path.join(JOBS_SRC, f"{job}.py"), encoding="utf-8") as f:
        return f.read()


def _blank() -> dict:
    return dict(contract=1, kind="sft", run_id="r", stage_id="s", output_dir="/tmp/x", checkpoint_dir=None,
                resume_from=None, inputs={}, train_path=None, eval_path=None, dataset_format=None,
                finetuning="lora", lora=config.LoraSettings(), hyper=config.Hyper(), params={})


if __name__ == "__main__":
    unittest.main()
