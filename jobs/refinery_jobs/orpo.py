"""Odds-ratio preference optimisation (`orpo`) with TRL's ORPOTrainer (trl.experimental.orpo): SFT and preference
alignment in one loss, with no reference model.

    python -m refinery_jobs.orpo --config job.json

Loss per pair = NLL of the chosen answer - beta * log sigmoid(log-odds(chosen) - log-odds(rejected)), where
log-odds(y) = log p(y) - log(1 - p(y)) on the mean per-token log-probability of the answer. No reference model is
loaded, so a LoRA run holds one adapter (half DPO's memory for full fine-tuning). ORPO was chosen over CPO/SimPO
(TRL's CPOTrainer, trl.experimental.cpo, loss_type "sigmoid" | "simpo"): all are reference-free and take the same
preference rows; ORPO also needs no SFT stage before it (its NLL term does that work), it is the method the issue
names, and TRL 1.13's ORPOTrainer trains our PEFT models, checkpoints and resumes as they are
(tests/test_learning.py, tests/test_resume.py). LLaMA-Factory offers both as losses of its dpo stage
(`pref_loss: orpo | simpo`); CPO/SimPO would be another job on trl.experimental.cpo, or a loss_type of this one.

Features
  * input: the policy to start from (full model, or a LoRA adapter + inputs.base that keeps training)
  * dataset: preference rows {"prompt" | "messages", "chosen", "rejected"} (the same as dpo)
  * finetuning.type lora (default), full, qlora (CUDA + bitsandbytes)
  * checkpoint-N/ every hyper.save_steps, resume from resume_from; eval on datasets.eval (eval_log_odds_chosen:
    mean log-odds ratio of chosen over rejected; eval_rewards/accuracies)
Output: the adapter (lora; relative to the original base) or the full model, with the tokenizer.

Params
  beta   number, 0.1   weight of the odds-ratio term against the NLL term (the paper's lambda)

Errors: config (2), data (3), unsupported (4): qlora without CUDA or bitsandbytes.
"""

from __future__ import annotations

from refinery_jobs import contract, hf_trainer, models
from refinery_jobs.config import JobConfig, JobSpec

SPEC = JobSpec(
    kinds=("orpo",),
    inputs=("model",),
    optional_inputs=("base",),
    formats=("preference",),
)


class ORPORecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events = cfg, events
        self.device = models.select_device()
        models.check_finetuning_supported(cfg, self.device)

    def setup(self) -> None:
        cfg = self.cfg
        _, train_rows, eval_rows = hf_trainer.train_and_eval_rows(cfg, ("preference",), "preference")
        contract.log(f"orpo: {len(train_rows)} pairs" + (f", {len(eval_rows)} eval pairs" if eval_rows else ""))

        models.seed_everything(cfg.hyper.seed)
        base, adapter = models.resolve_base(cfg)
        self.tokenizer = models.load_tokenizer(adapter, base)
        models.require_chat_template(self.tokenizer)
        self.model = models.load_causal_lm(cfg, self.device)  # the PEFT model (if any) is ours: no peft_config
        contract.log(models.trainable_parameters(self.model))

        from datasets import Dataset
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        def columns(rows):
            return Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                                      for r in rows])

        args = ORPOConfig(
            **hf_trainer.training_args_kwargs(cfg, self.device, has_eval=eval_rows is not None),
            max_length=cfg.hyper.max_length,
            beta=cfg.params["beta"],
            remove_unused_columns=False,  # its pair collator needs every tokenized column (TRL warns otherwise)
        )
        self.callback = hf_trainer.events_callback(self.events, cfg, self.device)
        self.trainer = ORPOTrainer(model=self.model, args=args, train_dataset=columns(train_rows),
                                   eval_dataset=columns(eval_rows) if eval_rows else None,
                                   processing_class=self.tokenizer, callbacks=[self.callback])

    def train(self) -> None:
        hf_trainer.train(self.trainer, self.cfg.resume_from)

    def save(self) -> dict:
        hf_trainer.final_evaluate(self.trainer, self.callback)
        hf_trainer.save_trained_model(self.trainer, self.tokenizer, self.cfg.output_dir)
        return hf_trainer.final_metrics(self.callback)


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    recipe = ORPORecipe(cfg, events)
    recipe.setup()
    recipe.train()
    return recipe.save()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
