"""Kahneman-Tversky optimisation (`kto`) with TRL's KTOTrainer: preference learning from unpaired examples.

    python -m refinery_jobs.kto --config job.json

KTO needs no pairs: each example is one answer labelled desirable or undesirable (LLaMA-Factory's kto_tag).
Its loss pushes the policy's log-ratio to the reference up on desirable answers and down on undesirable ones,
measured against a batch-level KL estimate (TRL computes it from each prompt paired with another example's
answer in the same batch, which is why the batch must hold more than one example).

Features
  * input: the policy to start from (full model, or a LoRA adapter + inputs.base)
  * dataset: kto rows {"prompt" | "messages", "completion", "label": true | false}
  * reference model = the input policy, frozen: with lora, TRL's frozen "ref" copy of the adapter it starts from
    (also for a new adapter, whose initial weights leave the base unchanged); with full fine-tuning, a second
    frozen copy. A lora checkpoint holds both adapters (ref/ in a sub-folder) and a resume restores both
    (hf_trainer.train; tests/test_resume.py kills a run and checks it)
  * finetuning.type lora (default), full, qlora (CUDA + bitsandbytes)
  * checkpoint-N/ every hyper.save_steps, resume from resume_from; eval on datasets.eval (eval_rewards/margins:
    mean implicit reward of desirable minus undesirable eval answers)
  * the data is read in file order (TRL's sequential sampler: the KL estimate pairs neighbours), so a dataset
    should mix both labels along the file, as make_demo_data's kto.jsonl does
Output: the adapter (lora; relative to the original base) or the full model, with the tokenizer.

Params
  beta                number, 0.1    KL strength (higher stays closer to the reference)
  desirable_weight    number, 1.0    weight of desirable examples' losses (raise it when they are the fewer)
  undesirable_weight  number, 1.0    weight of undesirable examples' losses

Errors: config (2) incl. hyper.batch_size 1 (the KL estimate needs a second example), data (3), unsupported (4):
qlora without CUDA or bitsandbytes.
"""

from __future__ import annotations

from refinery_jobs import contract, hf_trainer, models
from refinery_jobs.config import JobConfig, JobSpec

SPEC = JobSpec(
    kinds=("kto",),
    inputs=("model",),
    optional_inputs=("base",),
    formats=("kto",),
)


class KTORecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events = cfg, events
        self.device = models.select_device()
        models.check_finetuning_supported(cfg, self.device)
        # TRL refuses this only after the models are loaded; say it up front, naming the field.
        if cfg.hyper.batch_size < 2:
            raise contract.config_error("hyper.batch_size", "kto estimates its KL term from other examples in the "
                                                            "same batch: hyper.batch_size must be >= 2")

    def setup(self) -> None:
        cfg, p = self.cfg, self.cfg.params
        _, train_rows, eval_rows = hf_trainer.train_and_eval_rows(cfg, ("kto",), "kto")
        desirable = sum(r["label"] for r in train_rows)
        contract.log(f"kto: {len(train_rows)} examples ({desirable} desirable, {len(train_rows) - desirable} "
                     f"undesirable)" + (f", {len(eval_rows)} eval examples" if eval_rows else ""))
        if desirable in (0, len(train_rows)):
            contract.log("kto: every training example has the same label; KTO learns little from one side alone")

        models.seed_everything(cfg.hyper.seed)
        base, adapter = models.resolve_base(cfg)
        self.tokenizer = models.load_tokenizer(adapter, base)
        models.require_chat_template(self.tokenizer)
        self.model = models.load_causal_lm(cfg, self.device)
        ref_model = models.load_causal_lm(cfg, self.device, train=False) if cfg.finetuning == "full" else None
        contract.log(models.trainable_parameters(self.model))

        from datasets import Dataset
        from trl import KTOConfig, KTOTrainer

        def columns(rows):
            return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
                                      for r in rows])

        args = KTOConfig(
            **hf_trainer.training_args_kwargs(cfg, self.device, has_eval=eval_rows is not None),
            max_length=cfg.hyper.max_length,
            beta=p["beta"],
            desirable_weight=p["desirable_weight"],
            undesirable_weight=p["undesirable_weight"],
        )
        self.callback = hf_trainer.events_callback(self.events, cfg, self.device)
        self.trainer = KTOTrainer(model=self.model, ref_model=ref_model, args=args,
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
    recipe = KTORecipe(cfg, events)
    recipe.setup()
    recipe.train()
    return recipe.save()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
