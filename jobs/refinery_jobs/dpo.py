"""Direct preference optimisation (`dpo`) with TRL's DPOTrainer (no reward model).

    python -m refinery_jobs.dpo --config job.json

Features
  * input: the policy to start from (full model, or a LoRA adapter + inputs.base)
  * dataset: preference rows {"prompt" | "messages", "chosen", "rejected"}
  * reference model = the input policy, frozen: with lora, TRL's frozen "ref" copy of the adapter it starts from
    (a new adapter on a full model: the base itself; an input adapter: that adapter); with full fine-tuning, a
    second frozen copy. A checkpoint holds both adapters and a resume restores both (hf_trainer.train)
  * finetuning.type lora (default), full, qlora (CUDA + bitsandbytes)
  * checkpoint-N/ every hyper.save_steps, resume from resume_from; eval on datasets.eval
Output: the adapter (lora; relative to the original base) or the full model, with the tokenizer.

Params
  beta        number, 0.1        KL strength (higher stays closer to the reference)
  loss_type   string, "sigmoid"  sigmoid | ipo | hinge | robust | sigmoid_norm

Errors: config (2), data (3), unsupported (4): qlora without CUDA or bitsandbytes.
"""

from __future__ import annotations

from refinery_jobs import contract, hf_trainer, models
from refinery_jobs.config import JobConfig, JobSpec

SPEC = JobSpec(
    kinds=("dpo",),
    inputs=("model",),
    optional_inputs=("base",),
    formats=("preference",),
)


class DPORecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events = cfg, events
        self.device = models.select_device()
        models.check_finetuning_supported(cfg, self.device)

    def setup(self) -> None:
        cfg = self.cfg
        _, train_rows, eval_rows = hf_trainer.train_and_eval_rows(cfg, ("preference",), "preference")
        contract.log(f"dpo: {len(train_rows)} pairs" + (f", {len(eval_rows)} eval pairs" if eval_rows else ""))

        models.seed_everything(cfg.hyper.seed)
        base, adapter = models.resolve_base(cfg)
        self.tokenizer = models.load_tokenizer(adapter, base)
        models.require_chat_template(self.tokenizer)
        self.model = models.load_causal_lm(cfg, self.device)
        ref_model = models.load_causal_lm(cfg, self.device, train=False) if cfg.finetuning == "full" else None
        contract.log(models.trainable_parameters(self.model))

        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        def columns(rows):
            return Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                                      for r in rows])

        args = DPOConfig(
            **hf_trainer.training_args_kwargs(cfg, self.device, has_eval=eval_rows is not None),
            max_length=cfg.hyper.max_length,
            beta=cfg.params["beta"],
            loss_type=[cfg.params["loss_type"]],
        )
        self.callback = hf_trainer.events_callback(self.events, cfg, self.device)
        self.trainer = DPOTrainer(model=self.model, ref_model=ref_model, args=args,
                                  train_dataset=columns(train_rows),
                                  eval_dataset=columns(eval_rows) if eval_rows else None,
                                  processing_class=self.tokenizer, callbacks=[self.callback])

    def train(self) -> None:
        hf_trainer.train(self.trainer, self.cfg.resume_from)

    def save(self) -> dict:
        hf_trainer.final_evaluate(self.trainer, self.callback)
        hf_trainer.save_trained_model(self.trainer, self.tokenizer, self.cfg.output_dir)
        return hf_trainer.final_metrics(self.callback)


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    recipe = DPORecipe(cfg, events)
    recipe.setup()
    recipe.train()
    return recipe.save()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
