"""Fold a LoRA adapter into its base model (`merge`) with PEFT's merge_and_unload.

    python -m refinery_jobs.merge --config job.json

Features
  * inputs.model: the adapter directory (a causal-LM or a SEQ_CLS reward adapter); inputs.base: its base
    model. The base path recorded in adapter_config.json is only a fallback: it is usually stale on another
    worker, so the pipeline passes inputs.base explicitly
  * a full model as inputs.model is re-saved as is (pipelines can merge unconditionally)
  * output_dir: safetensors weights, config, generation config and the tokenizer (the adapter's, else the
    base's): a standalone model for gguf, eval or a later stage
Single step, no checkpoints.

Params
  dtype   string, "auto"   auto (the base's saved dtype) | float32 | bfloat16 | float16

Errors: config (2): not a model/adapter, base missing.
"""

from __future__ import annotations

import json
import os

from refinery_jobs import contract, models
from refinery_jobs.config import JobConfig, JobSpec

SPEC = JobSpec(
    kinds=("merge",),
    inputs=("model",),
    optional_inputs=("base",),
    formats=(),
    checkpoints=False,
)


class MergeRecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events = cfg, events

    def merge(self) -> dict:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        cfg = self.cfg
        base, adapter = models.resolve_base(cfg)
        self.events.started(total_steps=2, resumed_from_step=None, device="cpu")
        dtype = "auto" if cfg.params["dtype"] == "auto" else getattr(torch, cfg.params["dtype"])

        task = None
        if adapter:
            with open(os.path.join(adapter, "adapter_config.json"), encoding="utf-8") as f:
                task = json.load(f).get("task_type")
        if task == "SEQ_CLS" or (task is None and self._is_classifier(base)):
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        if adapter:
            contract.log(f"merging adapter {adapter} into {base}")
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        else:
            contract.log(f"{base} is a full model: saving it as is")
        self.events.progress(1, 2)

        tokenizer = models.load_tokenizer(adapter, base)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(cfg.output_dir)
        tokenizer.save_pretrained(cfg.output_dir)
        self.events.progress(2, 2)
        return {"parameters": sum(p.numel() for p in model.parameters()), "merged": int(adapter is not None)}

    @staticmethod
    def _is_classifier(path: str) -> bool:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            archs = json.load(f).get("architectures") or []
        return any(a.endswith("ForSequenceClassification") for a in archs)


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    return MergeRecipe(cfg, events).merge()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
