"""Score a model (`eval`) on a dataset, to feed a pipeline gate. No training, no checkpoints.

    python -m refinery_jobs.eval --config job.json

What is measured depends on the inputs and the dataset format (datasets.train is the dataset to score):
  chat | alpaca | sharegpt | text + inputs.model          loss (mean token NLL; assistant tokens only when the
                                                          chat template marks them) and perplexity
  chat | alpaca | sharegpt + inputs.reward_model          reward_mean, reward_std of the conversations
  preference + inputs.reward_model                        accuracy (chosen scored above rejected), margin,
                                                          chosen_score, rejected_score
  prompts + inputs.model + inputs.reward_model            the policy answers each prompt (greedy unless
                                                          params.do_sample), reward_mean of the answers
inputs.model may be a LoRA adapter with inputs.base. Results: a `metrics` event and `done.metrics`.

Params
  max_rows         int|null, null   score at most this many rows (the first ones)
  max_new_tokens   int, 64          answer length for prompts
  do_sample        bool, false      sample answers (temperature 1) instead of greedy decoding
"""

from __future__ import annotations

import math

from refinery_jobs import contract, data, models
from refinery_jobs.config import JobConfig, JobSpec

SPEC = JobSpec(
    kinds=("eval",),
    inputs=(),
    optional_inputs=("model", "base", "reward_model", "reward_model_base"),
    formats=data.FORMATS,
    checkpoints=False,
)


class EvalRecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events, self.p = cfg, events, cfg.params
        if "model" not in cfg.inputs and "reward_model" not in cfg.inputs:
            raise contract.config_error("inputs", "give inputs.model, inputs.reward_model or both")
        self.device = models.select_device()

    def run(self) -> dict:
        cfg = self.cfg
        fmt, rows = data.load_rows(cfg.train_path, cfg.dataset_format, data.FORMATS)
        rows = rows[:self.p["max_rows"]] if self.p["max_rows"] else rows
        has_model, has_rm = "model" in cfg.inputs, "reward_model" in cfg.inputs
        plan = []
        if fmt in ("chat", "alpaca", "sharegpt", "text") and has_model:
            plan.append(self.loss)
        if fmt in ("chat", "alpaca", "sharegpt") and has_rm:
            plan.append(self.conversation_rewards)
        if fmt == "preference" and has_rm:
            plan.append(self.preference)
        if fmt == "prompts" and has_model and has_rm:
            plan.append(self.answer_rewards)
        if not plan:
            raise contract.config_error("inputs", f"nothing to measure for {fmt} data with inputs "
                                                  f"{sorted(cfg.inputs)} (see the eval job's docstring)")
        self.events.started(total_steps=len(plan), resumed_from_step=None, device=self.device.description)
        models.seed_everything(cfg.hyper.seed)
        metrics = {"rows": len(rows)}
        for step, measure in enumerate(plan, start=1):
            metrics.update(measure(rows))
            self.events.progress(step, len(plan), metrics=metrics)
        self.events.metrics(metrics)
        return metrics

    # ------------------------------------------------------------------------------------------
    def _policy(self):
        base, adapter = models.resolve_base(self.cfg)
        tokenizer = models.load_tokenizer(adapter, base)
        model = models.load_causal_lm(self.cfg, self.device, train=False).to(self.device.torch_device)
        return model, tokenizer

    def _reward(self):
        path = self.cfg.inputs["reward_model"]
        tokenizer = models.load_tokenizer(path)
        model = models.load_sequence_classifier(path, self.device, base=self.cfg.inputs.get("reward_model_base"))
        models.set_pad_token(model, tokenizer)
        return model.to(self.device.torch_device).eval(), tokenizer

    def loss(self, rows) -> dict:
        import torch
        model, tok = self._policy()
        total, count = 0.0, 0
        with torch.no_grad():
            for row in rows:
                if "text" in row:
                    ids = tok(row["text"] + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
                    mask = [1] * len(ids)
                else:
                    models.require_chat_template(tok)
                    out = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                                  return_assistant_tokens_mask=True)
                    ids, mask = out["input_ids"], out.get("assistant_masks") or []
                    if not any(mask):
                        mask = [1] * len(ids)
                ids, mask = ids[:self.cfg.hyper.max_length], mask[:self.cfg.hyper.max_length]
                x = torch.tensor([ids], device=self.device.torch_device)
                logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
                nll = -logp.gather(-1, x[0, 1:, None]).squeeze(-1)
                m = torch.tensor(mask[1:], dtype=torch.float, device=nll.device)
                total += float((nll * m).sum())
                count += int(m.sum())
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}

    def conversation_rewards(self, rows) -> dict:
        model, tok = self._reward()
        texts = models.render_conversations(tok, [r["messages"] for r in rows])
        s = models.score_texts(model, tok, texts, batch_size=self.cfg.hyper.batch_size,
                               max_length=self.cfg.hyper.max_length)
        return {"reward_mean": float(s.mean()), "reward_std": float(s.std()) if len(s) > 1 else 0.0}

    def preference(self, rows) -> dict:
        model, tok = self._reward()
        return models.preference_accuracy(model, tok, rows, batch_size=self.cfg.hyper.batch_size,
                                          max_length=self.cfg.hyper.max_length)

    def answer_rewards(self, rows) -> dict:
        import torch

        from refinery_jobs.ppo import response_mask, sample
        policy, tok = self._policy()
        tok.padding_side = "left"
        answers = []
        generator = torch.Generator().manual_seed(self.cfg.hyper.seed)
        bs = self.cfg.hyper.batch_size
        with torch.no_grad():
            for start in range(0, len(rows), bs):
                prompts = [r["prompt"] for r in rows[start:start + bs]]
                texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device.torch_device)
                resp, _ = sample(policy, enc["input_ids"], enc["attention_mask"],
                                 max_new_tokens=self.p["max_new_tokens"], eos_id=tok.eos_token_id,
                                 pad_id=tok.pad_token_id, greedy=not self.p["do_sample"], generator=generator)
                keep, _ = response_mask(resp, tok.eos_token_id)
                resp = torch.where(keep.bool(), resp, torch.full_like(resp, tok.pad_token_id))
                for p, t in zip(prompts, tok.batch_decode(resp, skip_special_tokens=True)):
                    answers.append(p + [{"role": "assistant", "content": t.strip()}])
        model, rtok = self._reward()
        s = models.score_texts(model, rtok, models.render_conversations(rtok, answers), batch_size=bs,
                               max_length=self.cfg.hyper.max_length)
        return {"reward_mean": float(s.mean()), "reward_std": float(s.std()) if len(s) > 1 else 0.0}


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    return EvalRecipe(cfg, events).run()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
