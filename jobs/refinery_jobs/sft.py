"""Supervised fine-tuning (`sft`) and continued pre-training (`cpt`) with TRL's SFTTrainer.

    python -m refinery_jobs.sft --config job.json

Features
  * datasets: chat, alpaca, sharegpt (converted to chat messages) or text; `cpt` takes text only
  * loss on assistant turns only for chat data: every assistant turn's tokens and its end-of-turn token, under any
    prefix-stable chat template (models.assistant_token_mask renders the conversation's prefixes and maps the
    turns' character spans onto tokens); the rows reach TRL pre-tokenized (input_ids + assistant_masks)
  * the chat template: the model's own, or the job's override (chat_template: a name or Jinja text), saved with
    the output tokenizer
  * finetuning.type lora (default; a new adapter, or an input adapter keeps training), full, qlora (CUDA +
    bitsandbytes)
  * checkpoint-N/ every hyper.save_steps in checkpoint_dir, resume from resume_from
  * eval loss on datasets.eval at every checkpoint and at the end
Output: output_dir holds the adapter (lora) or the full model, with the tokenizer.

Params
  packing               bool, false   pack several rows per max_length block
  assistant_only_loss   bool, true    chat data: loss on assistant tokens only

Errors: config (2) bad field / missing input / tokenizer without chat template for chat data / assistant-only loss
under a template that is not prefix-stable;
data (3) bad dataset line; unsupported (4) qlora without CUDA or bitsandbytes.
"""

from __future__ import annotations

from refinery_jobs import contract, hf_trainer, models
from refinery_jobs.config import JobConfig, JobSpec

SPEC = JobSpec(
    kinds=("sft", "cpt"),
    inputs=("model",),
    optional_inputs=("base",),
    formats=("chat", "alpaca", "sharegpt", "text"),
)


class SFTRecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events = cfg, events
        self.device = models.select_device()
        models.check_finetuning_supported(cfg, self.device)
        if cfg.kind == "cpt" and cfg.dataset_format not in (None, "text"):
            raise contract.config_error("dataset_format", f"cpt trains on raw text, got {cfg.dataset_format!r}")

    def setup(self) -> None:
        cfg = self.cfg
        accepted = ("text",) if cfg.kind == "cpt" else SPEC.formats
        self.fmt, train_rows, eval_rows = hf_trainer.train_and_eval_rows(cfg, accepted)
        contract.log(f"{cfg.kind}: {len(train_rows)} {self.fmt} rows"
                     + (f", {len(eval_rows)} eval rows" if eval_rows else ""))

        models.seed_everything(cfg.hyper.seed)
        base, adapter = models.resolve_base(cfg)
        self.tokenizer = models.load_tokenizer(adapter, base)
        if self.fmt != "text":
            models.require_chat_template(self.tokenizer)
        self.model = models.load_causal_lm(cfg, self.device)
        contract.log(models.trainable_parameters(self.model))

        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        assistant_only = self.fmt != "text" and cfg.params["assistant_only_loss"]
        train_ds = Dataset.from_list(self._columns(train_rows, assistant_only))
        eval_ds = Dataset.from_list(self._columns(eval_rows, assistant_only)) if eval_rows else None

        args = SFTConfig(
            **hf_trainer.training_args_kwargs(cfg, self.device, has_eval=eval_ds is not None),
            max_length=cfg.hyper.max_length,
            packing=cfg.params["packing"],
            assistant_only_loss=False,  # the masks come with the rows (assistant_masks), whatever the template
            dataset_num_proc=None,
        )
        self.callback = hf_trainer.events_callback(self.events, cfg, self.device)
        self.trainer = SFTTrainer(model=self.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                  processing_class=self.tokenizer, callbacks=[self.callback])

    def _columns(self, rows: list[dict], assistant_only: bool) -> list[dict]:
        """TRL's columns: text, messages (loss on every token) or, for assistant-only loss, pre-tokenized
        input_ids + assistant_masks (TRL builds labels from the mask: -100 where it is 0)."""
        if self.fmt == "text":
            return [{"text": r["text"]} for r in rows]
        if not assistant_only:
            # TRL renders a row's `tools` with its messages (tool-call conversations); every row gets the column
            if any(r.get("tools") for r in rows):
                return [{"messages": r["messages"], "tools": r.get("tools")} for r in rows]
            return [{"messages": r["messages"]} for r in rows]
        columns = []
        for r in rows:
            input_ids, mask = models.assistant_token_mask(self.tokenizer, r["messages"], r.get("tools"))
            columns.append({"input_ids": input_ids, "assistant_masks": mask})
        return columns

    def train(self) -> None:
        hf_trainer.train(self.trainer, self.cfg.resume_from)

    def save(self) -> dict:
        hf_trainer.final_evaluate(self.trainer, self.callback)
        self.trainer.save_model(self.cfg.output_dir)
        self.tokenizer.save_pretrained(self.cfg.output_dir)
        return hf_trainer.final_metrics(self.callback)


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    recipe = SFTRecipe(cfg, events)
    recipe.setup()
    recipe.train()
    return recipe.save()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
