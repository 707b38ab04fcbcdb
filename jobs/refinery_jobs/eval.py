"""Score a model (`eval`) on a dataset, to feed a pipeline gate; with a baseline (the model in production,
by registry alias), score both the same way, so gates can be relative. No training, no checkpoints.

    python -m refinery_jobs.eval --config job.json

What is measured depends on the inputs and the dataset format (datasets.train is the dataset to score):
  chat | alpaca | sharegpt | text + inputs.model          loss (mean token NLL; assistant tokens only when the
                                                          chat template marks them) and perplexity
      + inputs.baseline                                   baseline_loss, baseline_perplexity, loss_delta
                                                          (candidate - baseline), perplexity_ratio
  chat | alpaca | sharegpt + inputs.reward_model          reward_mean, reward_std of the conversations
  preference + inputs.reward_model                        accuracy (chosen scored above rejected), margin,
                                                          chosen_score, rejected_score
  prompts + inputs.model                                  the model answers each prompt (greedy unless
                                                          params.do_sample): answer_length_mean (tokens)
      + inputs.reward_model                               reward_mean, reward_std of the answers
      + inputs.baseline                                   the baseline answers too: baseline_answer_length_mean,
                                                          length_ratio; with a reward model baseline_reward_mean,
                                                          reward_delta and win_rate (share of prompts whose
                                                          answer scores above the baseline's; ties count 1/2)
      + inputs.reference (default: inputs.baseline)       kl: KL(candidate || reference) summed over each
                                                          answer's tokens (exact over the vocabulary), mean
                                                          over answers
A length_ratio far above 1 beside a reward gain is the signature of reward hacking by length.
inputs.model, inputs.baseline and inputs.reference may be LoRA adapters with inputs.base,
inputs.baseline_base, inputs.reference_base. Results: a `metrics` event and `done.metrics`.

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
    optional_inputs=("model", "base", "reward_model", "reward_model_base", "baseline", "baseline_base",
                     "reference", "reference_base"),
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
        if fmt == "prompts" and has_model:
            plan.append(self.answers)
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
    def _causal_lm(self, input_name: str = "model"):
        model = models.load_causal_lm(self.cfg, self.device, input_name, train=False)
        return model.to(self.device.torch_device)

    def _tokenizer(self):
        """The candidate's tokenizer serves the baseline and reference too (they share a base family)."""
        base, adapter = models.resolve_base(self.cfg)
        return models.load_tokenizer(adapter, base)

    def _reward(self):
        path = self.cfg.inputs["reward_model"]
        tokenizer = models.load_tokenizer(path)
        model = models.load_sequence_classifier(path, self.device, base=self.cfg.inputs.get("reward_model_base"))
        models.set_pad_token(model, tokenizer)
        return model.to(self.device.torch_device).eval(), tokenizer

    def loss(self, rows) -> dict:
        tok = self._tokenizer()
        out = self._mean_nll(self._causal_lm(), tok, rows)
        if "baseline" in self.cfg.inputs:
            base = self._mean_nll(self._causal_lm("baseline"), tok, rows)
            out.update({"baseline_loss": base["loss"], "baseline_perplexity": base["perplexity"],
                        "loss_delta": out["loss"] - base["loss"],
                        "perplexity_ratio": out["perplexity"] / max(base["perplexity"], 1e-12)})
        return out

    def _mean_nll(self, model, tok, rows) -> dict:
        import torch
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

    def answers(self, rows) -> dict:
        """Candidate (and baseline) answers to the prompts, their lengths, rewards, win rate and KL."""
        inputs = self.cfg.inputs
        tok = self._tokenizer()
        tok.padding_side = "left"
        prompts = [r["prompt"] for r in rows]
        policy = self._causal_lm()
        mine = self._generate(policy, tok, prompts)
        out = {"answer_length_mean": _mean([len(a) for a in mine])}
        reference = "reference" if "reference" in inputs else "baseline" if "baseline" in inputs else None
        theirs = None
        if "baseline" in inputs:
            baseline = self._causal_lm("baseline")
            theirs = self._generate(baseline, tok, prompts)
            out["baseline_answer_length_mean"] = _mean([len(a) for a in theirs])
            out["length_ratio"] = out["answer_length_mean"] / max(out["baseline_answer_length_mean"], 1e-12)
            if reference == "baseline":
                out["kl"] = self._kl(policy, baseline, tok, prompts, mine)
            del baseline
        if reference == "reference":
            out["kl"] = self._kl(policy, self._causal_lm("reference"), tok, prompts, mine)
        del policy
        if "reward_model" in inputs:
            model, rtok = self._reward()
            score = lambda answers: models.score_texts(  # noqa: E731
                model, rtok, models.render_conversations(rtok, [p + [{"role": "assistant", "content": tok.decode(a, skip_special_tokens=True).strip()}] for p, a in zip(prompts, answers)]),
                batch_size=self.cfg.hyper.batch_size, max_length=self.cfg.hyper.max_length)
            s = score(mine)
            out.update({"reward_mean": float(s.mean()), "reward_std": float(s.std()) if len(s) > 1 else 0.0})
            if theirs is not None:
                b = score(theirs)
                out.update({"baseline_reward_mean": float(b.mean()), "reward_delta": float(s.mean() - b.mean()),
                            "win_rate": float(((s > b).float() + 0.5 * (s == b).float()).mean())})
        return out

    def _generate(self, model, tok, prompts) -> list[list[int]]:
        """Each prompt's answer as token ids, up to and including the first end-of-turn token."""
        import torch

        from refinery_jobs.ppo import response_mask, sample
        generator = torch.Generator().manual_seed(self.cfg.hyper.seed)
        bs, answers = self.cfg.hyper.batch_size, []
        with torch.no_grad():
            for start in range(0, len(prompts), bs):
                texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts[start:start + bs]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device.torch_device)
                resp, _ = sample(model, enc["input_ids"], enc["attention_mask"],
                                 max_new_tokens=self.p["max_new_tokens"], eos_id=tok.eos_token_id,
                                 pad_id=tok.pad_token_id, greedy=not self.p["do_sample"], generator=generator)
                keep, _ = response_mask(resp, tok.eos_token_id)
                answers += [r[:int(k.sum())].tolist() for r, k in zip(resp, keep)]
        return answers

    def _kl(self, model, reference, tok, prompts, answers) -> float:
        """Mean over answers of sum_t KL(model(.|prefix_t) || reference(.|prefix_t)) on the model's own answers."""
        import torch
        per_answer = []
        with torch.no_grad():
            for prompt, answer in zip(prompts, answers):
                text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                ids = tok(text, add_special_tokens=False)["input_ids"]  # as _generate tokenized it
                if not answer:
                    per_answer.append(0.0)
                    continue
                x = torch.tensor([ids + answer], device=self.device.torch_device)
                span = slice(len(ids) - 1, len(ids) - 1 + len(answer))  # the logits that predict the answer
                p = torch.log_softmax(model(input_ids=x).logits[0, span].float(), -1)
                q = torch.log_softmax(reference(input_ids=x).logits[0, span].float(), -1)
                per_answer.append(float((p.exp() * (p - q)).sum()))
        return _mean(per_answer)


def _mean(values) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    return EvalRecipe(cfg, events).run()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
