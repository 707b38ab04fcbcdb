"""Reward model (`reward`) on preference pairs with TRL's RewardTrainer (Bradley-Terry loss).

    python -m refinery_jobs.reward --config job.json

Features
  * input: a causal LM (full model, or a LoRA adapter + inputs.base); it gets a fresh one-output score head
  * dataset: preference rows {"prompt" | "messages", "chosen", "rejected"}, scored as whole conversations
  * finetuning.type lora (SEQ_CLS adapter; the score head is trained fully and saved: modules_to_save) or full
  * checkpoint-N/ every hyper.save_steps, resume from resume_from
  * accuracy (chosen scored above rejected) on datasets.eval (or the train set when there is none) in
    `done.metrics.accuracy`, with margin, chosen_score and rejected_score
Output: a standalone sequence-classification model (LoRA merged) + tokenizer, loadable with
AutoModelForSequenceClassification (num_labels=1): what ppo, grpo and eval consume.

Params
  center_rewards_coefficient   number|null, null   pull mean reward toward 0 (TRL RewardConfig)

Errors: config (2), data (3), unsupported (4): qlora (not supported for reward models).
"""

from __future__ import annotations

from refinery_jobs import contract, hf_trainer, models
from refinery_jobs.config import JobConfig, JobSpec

SPEC = JobSpec(
    kinds=("reward",),
    inputs=("model",),
    optional_inputs=("base",),
    formats=("preference",),
)


class RewardRecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events = cfg, events
        self.device = models.select_device()
        models.check_finetuning_supported(cfg, self.device, qlora_ok=False)

    def setup(self) -> None:
        cfg = self.cfg
        _, self.train_rows, self.eval_rows = hf_trainer.train_and_eval_rows(cfg, ("preference",), "preference")
        contract.log(f"reward: {len(self.train_rows)} pairs" +
                     (f", {len(self.eval_rows)} eval pairs" if self.eval_rows else ""))

        models.seed_everything(cfg.hyper.seed)  # the score head is initialised at random
        base, adapter = models.resolve_base(cfg)
        self.tokenizer = models.load_tokenizer(adapter, base)
        models.require_chat_template(self.tokenizer)
        model = models.load_sequence_classifier(cfg.inputs["model"], self.device, base=base if adapter else None,
                                                dtype=models.model_dtype(self.device, cfg.finetuning))
        models.set_pad_token(model, self.tokenizer)
        if cfg.finetuning == "lora":
            from peft import get_peft_model
            model = get_peft_model(model, models.lora_config(cfg, "SEQ_CLS"))
        self.model = model
        contract.log(models.trainable_parameters(model))

        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        def columns(rows):
            return Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                                      for r in rows])

        args = RewardConfig(
            **hf_trainer.training_args_kwargs(cfg, self.device, has_eval=self.eval_rows is not None),
            max_length=cfg.hyper.max_length,
            center_rewards_coefficient=cfg.params["center_rewards_coefficient"],
        )
        self.callback = hf_trainer.events_callback(self.events, cfg, self.device)
        self.trainer = RewardTrainer(model=model, args=args, train_dataset=columns(self.train_rows),
                                     eval_dataset=columns(self.eval_rows) if self.eval_rows else None,
                                     processing_class=self.tokenizer, callbacks=[self.callback])

    def train(self) -> None:
        hf_trainer.train(self.trainer, self.cfg.resume_from)

    def save(self) -> dict:
        hf_trainer.final_evaluate(self.trainer, self.callback)
        rows = self.eval_rows or self.train_rows
        accuracy = models.preference_accuracy(self.trainer.model, self.tokenizer, rows,
                                              batch_size=self.cfg.hyper.batch_size * 2,
                                              max_length=self.cfg.hyper.max_length)
        if not self.eval_rows:
            contract.log("no datasets.eval: accuracy is measured on the training pairs")
        self.events.metrics(accuracy, step=self.trainer.state.global_step)

        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.config.pad_token_id = self.tokenizer.pad_token_id
        model.save_pretrained(self.cfg.output_dir)
        self.tokenizer.save_pretrained(self.cfg.output_dir)
        return hf_trainer.final_metrics(self.callback, accuracy)


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    recipe = RewardRecipe(cfg, events)
    recipe.setup()
    recipe.train()
    return recipe.save()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
