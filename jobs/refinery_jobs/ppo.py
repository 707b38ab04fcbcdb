"""PPO against a reward model (`ppo`): our own implementation (TRL 1.13 has none), resumable.

    python -m refinery_jobs.ppo --config job.json

One step = one PPO iteration on hyper.batch_size prompts:
  1. rollout   sample a response per prompt with our own loop (left padding, explicit position ids, KV
               cache, plain temperature sampling: no top-k); tokens after EOS become pad (pad != eos)
  2. score     the reward model scores prompt + response as a whole conversation (its own tokenizer and chat
               template); optional penalty when the response never reached EOS
  3. rewards   per token: -kl_coef * (log pi - log pi_ref) (k1 estimate), plus the score at the last token
  4. GAE       gamma, lambda over the response tokens; returns = advantages + values; advantages whitened
  5. update    params.ppo_epochs passes over params.num_mini_batches mini-batches: clipped policy loss,
               clipped value loss (vf_coef), gradient clipping at 1.0
Models: the policy (inputs.model; lora or full), a frozen reference (the input policy: with lora on a full
model, the same weights with adapters disabled; otherwise a second frozen copy), the frozen reward model
(inputs.reward_model, a sequence classifier such as the reward job's output; an adapter needs
inputs.reward_model_base) and a value model initialised
from the reward model (lora with a trainable score head, or full). The value model reads policy tokens,
so the reward model must share the policy's tokenizer.

checkpoint-N/ every hyper.save_steps: policy/ and value/ (adapters or full models), optimizer.pt (optimizer +
scheduler), rng_state.pth, then trainer_state.json last. resume_from restores all of it; a resumed run
follows the same data order and random stream as an uninterrupted one.
Output: output_dir holds the policy (adapter relative to the original base, or full model) + tokenizer.
progress metrics: reward_mean, reward_std, kl, non_score_reward, pg_loss, vf_loss, clipfrac, approx_kl,
entropy, response_length, eos_fraction, logprob_gap (sampling vs recomputed log-probs; ~1e-6 when correct).

Params
  kl_coef              number, 0.05   per-token KL penalty coefficient
  max_new_tokens       int, 32        response length limit (keep it above the longest expected answer)
  temperature          number, 1.0    sampling temperature of rollouts
  ppo_epochs           int, 4         passes over each rollout batch
  num_mini_batches     int, 1         mini-batches per pass
  clip_range           number, 0.2    policy ratio clip
  clip_range_value     number, 0.2    value clip
  vf_coef              number, 0.1    value loss weight
  gamma                number, 1.0    discount
  lam                  number, 0.95   GAE lambda
  value_learning_rate  number|null    value model learning rate (default hyper.learning_rate)
  missing_eos_penalty  number|null    subtracted from the score of responses that never emit EOS
  eval_max_prompts     int, 64        prompts of datasets.eval scored at the end (eval_reward_mean)

Errors: config (2), data (3), unsupported (4): qlora; a reward model with another tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import random

from refinery_jobs import contract, data, models
from refinery_jobs.config import JobConfig, JobSpec, Param

SPEC = JobSpec(
    kinds=("ppo",),
    inputs=("model", "reward_model"),
    optional_inputs=("base", "reward_model_base"),
    formats=("prompts",),
    params={
        "kl_coef": Param(float, 0.05, min=0.0),
        "max_new_tokens": Param(int, 32, min=1),
        "temperature": Param(float, 1.0, min=1e-3),
        "ppo_epochs": Param(int, 4, min=1),
        "num_mini_batches": Param(int, 1, min=1),
        "clip_range": Param(float, 0.2, min=0.0),
        "clip_range_value": Param(float, 0.2, min=0.0),
        "vf_coef": Param(float, 0.1, min=0.0),
        "gamma": Param(float, 1.0, min=0.0, max=1.0),
        "lam": Param(float, 0.95, min=0.0, max=1.0),
        "value_learning_rate": Param(float, None, min=0.0),
        "missing_eos_penalty": Param(float, None, min=0.0),
        "eval_max_prompts": Param(int, 64, min=1),
    },
)


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x, mask):
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * (var + 1e-8).rsqrt() * mask


def position_ids(attention_mask):
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def response_logprobs(model, sequences, attention_mask, prompt_len: int, temperature: float):
    """Log-probs (and entropies) of the response tokens: logits[:, prompt_len-1:-1] predict sequences[:, prompt_len:]."""
    import torch
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   use_cache=False).logits
    logits = logits[:, prompt_len - 1:-1].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, sequences[:, prompt_len:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def token_values(value_model, sequences, attention_mask, prompt_len: int):
    """Per-token values: the classifier's score head applied at every position (not only the last)."""
    inner = value_model.get_base_model() if hasattr(value_model, "get_base_model") else value_model
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(input_ids=sequences, attention_mask=attention_mask,
                      position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state
    values = inner.score(hidden).squeeze(-1).float()
    return values[:, prompt_len - 1:-1]


def sample(model, input_ids, attention_mask, *, max_new_tokens: int, eos_id: int, pad_id: int,
           temperature: float = 1.0, greedy: bool = False, generator=None):
    """Our sampling loop on left-padded prompts: (response ids [B, T] padded with pad after EOS, log-probs)."""
    import torch
    batch = input_ids.shape[0]
    pos = position_ids(attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1]
    pos = pos[:, -1:]
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    tokens, logps = [], []
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        if greedy:
            nxt = logp.argmax(-1)
        else:
            nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        tok_logp = logp.gather(-1, nxt[:, None]).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        logps.append(torch.where(done, torch.zeros_like(tok_logp), tok_logp))
        done = done | (nxt == eos_id)
        if bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=attention_mask, position_ids=pos,
                    past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


def response_mask(responses, eos_id: int):
    """1 for response tokens up to and including the first EOS, 0 after."""
    import torch
    is_eos = responses == eos_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    return (~after_eos).long(), is_eos.any(1)


class PPORecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events, self.p = cfg, events, cfg.params
        self.device = models.select_device()
        models.check_finetuning_supported(cfg, self.device, qlora_ok=False)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        import torch
        cfg, h = self.cfg, self.cfg.hyper
        _, rows = data.load_rows(cfg.train_path, "prompts", ("prompts",))
        self.prompts = [r["prompt"] for r in rows]
        self.eval_prompts = ([r["prompt"] for r in data.load_rows(cfg.eval_path, "prompts", ("prompts",))[1]]
                             if cfg.eval_path else None)
        self.batches_per_epoch = math.ceil(len(self.prompts) / h.batch_size)
        self.total_steps = h.max_steps or math.ceil(self.batches_per_epoch * (h.num_epochs or 1.0))
        if h.batch_size % self.p["num_mini_batches"]:
            raise contract.config_error("params.num_mini_batches", f"must divide hyper.batch_size ({h.batch_size})")
        contract.log(f"ppo: {len(self.prompts)} prompts, {self.total_steps} steps of {h.batch_size}")

        models.seed_everything(h.seed)
        dev = self.device.torch_device
        base, adapter = models.resolve_base(cfg)
        self.tokenizer = models.load_tokenizer(adapter, base)
        models.require_chat_template(self.tokenizer)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id == self.tokenizer.eos_token_id:
            raise contract.unsupported("ppo needs a pad token different from eos (the tokenizer uses one for both)")
        self.reward_tokenizer = models.load_tokenizer(cfg.inputs["reward_model"],
                                                      cfg.inputs.get("reward_model_base"))
        if self.reward_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise contract.unsupported("ppo initialises the value model from the reward model, so both must share "
                                       "the policy's tokenizer; inputs.reward_model has another vocabulary")
        ckpt = cfg.resume_from

        # policy (from the checkpoint when resuming) and reference
        self.policy = self._load_policy(ckpt).to(dev)
        self.shared_reference = cfg.finetuning == "lora" and adapter is None
        self.reference = None if self.shared_reference else models.load_causal_lm(cfg, self.device, train=False).to(dev)
        # frozen reward model, and the value model initialised from it
        reward_dtype = models.model_dtype(self.device, "frozen")
        self.reward_model = models.load_sequence_classifier(cfg.inputs["reward_model"], self.device,
                                                            base=cfg.inputs.get("reward_model_base"),
                                                            dtype=reward_dtype).to(dev).eval().requires_grad_(False)
        models.set_pad_token(self.reward_model, self.reward_tokenizer)
        self.value = self._load_value(ckpt).to(dev)
        models.set_pad_token(self.value, self.tokenizer)
        contract.log(f"policy: {models.trainable_parameters(self.policy)}; value: "
                     f"{models.trainable_parameters(self.value)}")

        # one optimizer, two parameter groups
        value_lr = self.p["value_learning_rate"] or h.learning_rate
        self.optimizer = torch.optim.AdamW([
            {"params": [q for q in self.policy.parameters() if q.requires_grad], "lr": h.learning_rate},
            {"params": [q for q in self.value.parameters() if q.requires_grad], "lr": value_lr},
        ], weight_decay=h.weight_decay)
        from transformers import get_scheduler
        updates = self.total_steps * self.p["ppo_epochs"] * self.p["num_mini_batches"]
        self.scheduler = get_scheduler(h.scheduler, self.optimizer, num_warmup_steps=int(h.warmup_ratio * updates),
                                       num_training_steps=updates)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(h.seed)
        self.step = 0
        self.history: list[dict] = []
        self.first_reward: float | None = None
        if ckpt:
            self._restore(ckpt)
        self.events.started(total_steps=self.total_steps, resumed_from_step=cfg.resumed_from_step,
                            device=self.device.description)

    def _load_policy(self, ckpt: str | None):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        cfg = self.cfg
        if ckpt is None:
            return models.load_causal_lm(cfg, self.device)
        path = os.path.join(ckpt, "policy")
        if models.is_adapter_dir(path):
            base, adapter = models.resolve_base(cfg)
            model = AutoModelForCausalLM.from_pretrained(base, dtype=models.model_dtype(self.device, cfg.finetuning))
            if adapter is not None and self.cfg.finetuning == "full":
                raise contract.config_error("resume_from", "checkpoint holds an adapter but finetuning.type is full")
            return PeftModel.from_pretrained(model, path, is_trainable=True)
        return AutoModelForCausalLM.from_pretrained(path, dtype=models.model_dtype(self.device, cfg.finetuning))

    def _load_value(self, ckpt: str | None):
        from peft import PeftModel, get_peft_model
        dtype = models.model_dtype(self.device, self.cfg.finetuning)
        path = os.path.join(ckpt, "value") if ckpt else None
        if path and not models.is_adapter_dir(path):
            return models.load_sequence_classifier(path, self.device, dtype=dtype)
        model = models.load_sequence_classifier(self.cfg.inputs["reward_model"], self.device,
                                                base=self.cfg.inputs.get("reward_model_base"), dtype=dtype)
        if path:
            return PeftModel.from_pretrained(model, path, is_trainable=True)
        if self.cfg.finetuning == "lora":
            return get_peft_model(model, models.lora_config(self.cfg, "SEQ_CLS"))
        return model

    # ---------------------------------------------------------------- data order
    def batch_prompts(self, step: int) -> list[list[dict]]:
        """Prompts of a step (1-based): a seeded permutation per epoch, so resume follows the same order."""
        h = self.cfg.hyper
        epoch, index = divmod(step - 1, self.batches_per_epoch)
        order = list(range(len(self.prompts)))
        random.Random(h.seed * 1000003 + epoch).shuffle(order)
        picked = order[index * h.batch_size:(index + 1) * h.batch_size]
        while len(picked) < h.batch_size:  # last partial batch: wrap around to keep shapes fixed
            picked.append(order[len(picked) % len(order)])
        return [self.prompts[i] for i in picked]

    def encode_prompts(self, prompts: list[list[dict]]):
        texts = [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        max_prompt = max(8, self.cfg.hyper.max_length - self.p["max_new_tokens"])
        self.tokenizer.truncation_side = "left"
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt,
                             add_special_tokens=False)
        return enc["input_ids"].to(self.device.torch_device), enc["attention_mask"].to(self.device.torch_device)

    # ---------------------------------------------------------------- rollouts and scores
    def reference_logprobs(self, sequences, mask, prompt_len):
        if self.shared_reference:
            with self.policy.disable_adapter():
                return response_logprobs(self.policy, sequences, mask, prompt_len, self.p["temperature"])[0]
        return response_logprobs(self.reference, sequences, mask, prompt_len, self.p["temperature"])[0]

    def scores(self, prompts, responses, has_eos):
        import torch
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        conversations = [p + [{"role": "assistant", "content": t.strip()}] for p, t in zip(prompts, texts)]
        rendered = models.render_conversations(self.reward_tokenizer, conversations)
        s = models.score_texts(self.reward_model, self.reward_tokenizer, rendered, batch_size=len(rendered),
                               max_length=self.cfg.hyper.max_length).to(responses.device)
        if self.p["missing_eos_penalty"] is not None:
            s = s - self.p["missing_eos_penalty"] * (~has_eos).float()
        return s, texts

    def rollout(self, prompts, *, greedy=False):
        """Sample responses and return everything the update needs (all without gradients)."""
        import torch
        tok, p = self.tokenizer, self.p
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        self.policy.eval()
        with torch.no_grad(), self.autocast():
            responses, sample_logp = sample(self.policy, prompt_ids, prompt_mask, max_new_tokens=p["max_new_tokens"],
                                            eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                                            temperature=p["temperature"], greedy=greedy, generator=self.generator)
            resp_mask, has_eos = response_mask(responses, tok.eos_token_id)
            responses = torch.where(resp_mask.bool(), responses, torch.full_like(responses, tok.pad_token_id))
            sequences = torch.cat([prompt_ids, responses], dim=1)
            mask = torch.cat([prompt_mask, resp_mask], dim=1)
            prompt_len = prompt_ids.shape[1]
            score, texts = self.scores(prompts, responses, has_eos)
            if greedy:
                return {"score": score, "texts": texts}
            logp, entropy = response_logprobs(self.policy, sequences, mask, prompt_len, p["temperature"])
            ref_logp = self.reference_logprobs(sequences, mask, prompt_len)
            self.value.eval()
            values = token_values(self.value, sequences, mask, prompt_len)
        m = resp_mask.float()
        return {"sequences": sequences, "mask": mask, "prompt_len": prompt_len, "resp_mask": m,
                "logp": logp * m, "ref_logp": ref_logp * m, "values": values * m, "score": score,
                "has_eos": has_eos, "entropy": masked_mean(entropy, m),
                "logprob_gap": masked_mean((sample_logp - logp).abs(), m), "texts": texts}

    def advantages(self, r):
        """Per-token rewards (KL penalty + score at the last token), GAE, returns, whitened advantages."""
        import torch
        m = r["resp_mask"]
        kl = (r["logp"] - r["ref_logp"]) * m
        rewards = -self.p["kl_coef"] * kl
        last = (m.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(last)), last] += r["score"]
        values, T = r["values"], m.shape[1]
        adv = torch.zeros_like(rewards)
        last_gae = torch.zeros_like(rewards[:, 0])
        for t in reversed(range(T)):
            next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
            delta = rewards[:, t] + self.p["gamma"] * next_value - values[:, t]
            last_gae = delta + self.p["gamma"] * self.p["lam"] * last_gae
            adv[:, t] = last_gae
        adv = adv * m
        returns = adv + values
        r.update(kl=kl, non_score_reward=(rewards * m).sum(1) - r["score"], returns=returns,
                 advantages=masked_whiten(adv, m))
        return r

    def update(self, r) -> dict:
        import torch
        p, m = self.p, r["resp_mask"]
        n = m.shape[0]
        mini = n // p["num_mini_batches"]
        stats = {"pg_loss": [], "vf_loss": [], "clipfrac": [], "approx_kl": [], "loss": []}
        self.policy.train()
        self.value.train()
        for _ in range(p["ppo_epochs"]):
            perm = torch.randperm(n, generator=self.generator)
            for start in range(0, n, mini):
                idx = perm[start:start + mini].to(m.device)
                seq, mask, mb_m = r["sequences"][idx], r["mask"][idx], m[idx]
                with self.autocast():
                    new_logp, _ = response_logprobs(self.policy, seq, mask, r["prompt_len"], p["temperature"])
                    vpred = token_values(self.value, seq, mask, r["prompt_len"])
                ratio = torch.exp((new_logp - r["logp"][idx]) * mb_m)
                adv = r["advantages"][idx]
                pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - p["clip_range"], 1 + p["clip_range"]))
                pg_loss = masked_mean(pg, mb_m)
                old_v = r["values"][idx]
                v_clipped = old_v + (vpred - old_v).clamp(-p["clip_range_value"], p["clip_range_value"])
                ret = r["returns"][idx]
                vf_loss = 0.5 * masked_mean(torch.max((vpred - ret) ** 2, (v_clipped - ret) ** 2), mb_m)
                loss = pg_loss + p["vf_coef"] * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [q for g in self.optimizer.param_groups for q in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                self.optimizer.step()
                self.scheduler.step()
                with torch.no_grad():
                    stats["pg_loss"].append(pg_loss.item())
                    stats["vf_loss"].append(vf_loss.item())
                    stats["loss"].append(loss.item())
                    stats["clipfrac"].append(masked_mean(((ratio - 1).abs() > p["clip_range"]).float(), mb_m).item())
                    stats["approx_kl"].append(masked_mean(0.5 * (new_logp - r["logp"][idx]) ** 2, mb_m).item())
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def autocast(self):
        import contextlib

        import torch
        if self.device.type == "cuda" and self.device.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        import torch
        path = os.path.join(self.cfg.checkpoint_dir, f"checkpoint-{self.step}")
        os.makedirs(path, exist_ok=True)
        self.policy.save_pretrained(os.path.join(path, "policy"))
        self.value.save_pretrained(os.path.join(path, "value"))
        self.tokenizer.save_pretrained(os.path.join(path, "policy"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   os.path.join(path, "optimizer.pt"))
        torch.save({"python": random.getstate(), "torch": torch.get_rng_state(),
                    "generator": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   os.path.join(path, "rng_state.pth"))
        contract.write_json_atomic(os.path.join(path, contract.TRAINER_STATE), {
              "global_step": self.step, "max_steps": self.total_steps, "kind": "ppo",
              "reward_mean_first": self.first_reward,
              "log_history": self.history[-self.cfg.hyper.save_steps:],
        })
        self.events.checkpoint(self.step, path)

    def _restore(self, ckpt: str) -> None:
        import torch
        state = torch.load(os.path.join(ckpt, "optimizer.pt"), map_location=self.device.torch_device,
                           weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = torch.load(os.path.join(ckpt, "rng_state.pth"), weights_only=False)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step = contract.checkpoint_step(ckpt)
        with open(os.path.join(ckpt, contract.TRAINER_STATE), encoding="utf-8") as f:
            self.first_reward = json.load(f).get("reward_mean_first")
        contract.log(f"resumed from {ckpt} at step {self.step}")

    # ---------------------------------------------------------------- loop
    def train(self) -> None:
        while self.step < self.total_steps:
            step = self.step + 1
            prompts = self.batch_prompts(step)
            r = self.advantages(self.rollout(prompts))
            stats = self.update(r)
            m = r["resp_mask"]
            metrics = {
                "reward_mean": r["score"].mean().item(), "reward_std": r["score"].std().item(),
                "kl": r["kl"].sum(1).mean().item(), "non_score_reward": r["non_score_reward"].mean().item(),
                "pg_loss": stats["pg_loss"], "vf_loss": stats["vf_loss"], "clipfrac": stats["clipfrac"],
                "approx_kl": stats["approx_kl"], "entropy": r["entropy"].item(),
                "response_length": m.sum(1).mean().item(), "eos_fraction": r["has_eos"].float().mean().item(),
                "logprob_gap": r["logprob_gap"].item(), "learning_rate": self.scheduler.get_last_lr()[0],
            }
            self.step = step
            if self.first_reward is None:
                self.first_reward = metrics["reward_mean"]
            self.history.append({"step": step, "loss": stats["loss"], **metrics})
            self.events.progress(step, self.total_steps, loss=stats["loss"], metrics=metrics)
            contract.log(f"step {step}: reward {metrics['reward_mean']:.3f} kl {metrics['kl']:.3f} "
                         f"| {r['texts'][0]!r}")
            save_steps = self.cfg.hyper.save_steps
            if save_steps and (step % save_steps == 0 or step == self.total_steps):
                self.save_checkpoint()

    def save(self) -> dict:
        import torch
        out = self.cfg.output_dir
        if hasattr(self.policy, "peft_config"):
            self.policy.save_pretrained(out, selected_adapters=["default"])
        else:
            self.policy.save_pretrained(out)
        self.tokenizer.padding_side = "right"
        self.tokenizer.save_pretrained(out)
        last = self.history[-5:]
        metrics = {}
        if last:
            metrics["reward_mean"] = sum(h["reward_mean"] for h in last) / len(last)
            metrics["kl"] = sum(h["kl"] for h in last) / len(last)
        if self.first_reward is not None:
            metrics["reward_mean_first"] = self.first_reward
        if self.eval_prompts:
            prompts = self.eval_prompts[:self.p["eval_max_prompts"]]
            scores = []
            for start in range(0, len(prompts), self.cfg.hyper.batch_size):
                scores.append(self.rollout(prompts[start:start + self.cfg.hyper.batch_size], greedy=True)["score"])
            metrics["eval_reward_mean"] = torch.cat(scores).mean().item()
            self.events.metrics({"eval_reward_mean": metrics["eval_reward_mean"]}, step=self.step)
        return metrics


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    recipe = PPORecipe(cfg, events)
    recipe.setup()
    recipe.train()
    return recipe.save()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
