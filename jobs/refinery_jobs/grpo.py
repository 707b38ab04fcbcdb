"""Group-relative policy optimisation (`grpo`) with TRL's GRPOTrainer, scored by a trained reward model.

    python -m refinery_jobs.grpo --config job.json

Features
  * inputs.model: the policy (full model, or a LoRA adapter + inputs.base that keeps training)
  * inputs.reward_model: a sequence-classification directory (the reward job's output), given to TRL as
    reward_funcs=<dir> (loaded with num_labels=1 and its own tokenizer); a SEQ_CLS LoRA adapter with
    inputs.reward_model_base is merged in memory and passed as a model
  * dataset: prompts rows {"prompt"} or {"messages"} ending with a user turn
  * params.num_generations completions per prompt; hyper.batch_size * hyper.gradient_accumulation
    completions per optimizer step (must be a multiple of num_generations)
  * finetuning.type lora (default), full, qlora (CUDA + bitsandbytes)
  * checkpoint-N/ every hyper.save_steps, resume from resume_from
Output: the adapter (lora) or the full model, with the tokenizer.

Params
  num_generations        int, 4       completions per prompt (>= 2)
  max_completion_length  int, 32      tokens per completion
  temperature            number, 1.0  sampling temperature
  beta                   number, 0.0  KL coefficient (0: no reference model, TRL's default)
  num_iterations         int, 1       optimisation passes per generation batch
  epsilon                number, 0.2  clip range

Errors: config (2) incl. a batch size that is not a multiple of num_generations, data (3), unsupported (4).
"""

from __future__ import annotations

from refinery_jobs import contract, data, hf_trainer, models
from refinery_jobs.config import JobConfig, JobSpec

SPEC = JobSpec(
    kinds=("grpo",),
    inputs=("model", "reward_model"),
    optional_inputs=("base", "reward_model_base"),
    formats=("prompts",),
)


class GRPORecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events = cfg, events
        self.device = models.select_device()
        models.check_finetuning_supported(cfg, self.device)
        h, g = cfg.hyper, cfg.params["num_generations"]
        if (h.batch_size * h.gradient_accumulation) % g:
            raise contract.config_error("params.num_generations", f"hyper.batch_size * hyper.gradient_accumulation "
                                                                  f"({h.batch_size * h.gradient_accumulation}) must be "
                                                                  f"a multiple of num_generations ({g})")
        if cfg.eval_path and h.batch_size % g:
            raise contract.config_error("params.num_generations", f"evaluation needs hyper.batch_size "
                                                                  f"({h.batch_size}) to be a multiple of {g}")

    def setup(self) -> None:
        cfg, p = self.cfg, self.cfg.params
        _, train_rows = data.load_rows(cfg.train_path, "prompts", ("prompts",))
        eval_rows = data.load_rows(cfg.eval_path, "prompts", ("prompts",))[1] if cfg.eval_path else None
        contract.log(f"grpo: {len(train_rows)} prompts")

        models.seed_everything(cfg.hyper.seed)
        base, adapter = models.resolve_base(cfg)
        self.tokenizer = models.load_tokenizer(adapter, base)
        models.require_chat_template(self.tokenizer)
        self.model = models.load_causal_lm(cfg, self.device)
        contract.log(models.trainable_parameters(self.model))
        reward_dir = cfg.inputs["reward_model"]
        reward_tokenizer = models.load_tokenizer(reward_dir, cfg.inputs.get("reward_model_base"))
        reward_funcs = reward_dir
        if models.is_adapter_dir(reward_dir):  # merged in memory; TRL takes the model object
            reward_funcs = models.load_sequence_classifier(reward_dir, self.device,
                                                           base=cfg.inputs.get("reward_model_base"))
            models.set_pad_token(reward_funcs, reward_tokenizer)

        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(
            **hf_trainer.training_args_kwargs(cfg, self.device, has_eval=eval_rows is not None),
            num_generations=p["num_generations"],
            max_completion_length=p["max_completion_length"],
            temperature=p["temperature"],
            beta=p["beta"],
            num_iterations=p["num_iterations"],
            epsilon=p["epsilon"],
        )
        self.callback = hf_trainer.events_callback(self.events, cfg, self.device)
        self.trainer = GRPOTrainer(
            model=self.model, reward_funcs=reward_funcs, args=args,
            train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in train_rows]),
            eval_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in eval_rows]) if eval_rows else None,
            processing_class=self.tokenizer, reward_processing_classes=[reward_tokenizer],
            callbacks=[self.callback],
        )

    def train(self) -> None:
        hf_trainer.train(self.trainer, self.cfg.resume_from)

    def save(self) -> dict:
        hf_trainer.final_evaluate(self.trainer, self.callback)
        hf_trainer.save_trained_model(self.trainer, self.tokenizer, self.cfg.output_dir)
        return hf_trainer.final_metrics(self.callback)


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    recipe = GRPORecipe(cfg, events)
    recipe.setup()
    recipe.train()
    return recipe.save()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
