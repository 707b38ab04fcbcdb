"""PPO against a reward model (`ppo`): our own implementation (TRL 1.13 has none), resumable.

    python -m refinery_jobs.ppo --config job.json

One step = one PPO iteration on hyper.batch_size x hyper.gradient_accumulation prompts (the step batch), handled
hyper.batch_size prompts at a time (a chunk: what one forward pass holds in memory):
  1. rollout   per chunk, sample a response per prompt with our own loop (left padding, explicit position ids, KV
               cache, plain temperature sampling: no top-k); tokens after EOS become pad (pad != eos)
  2. score     the reward model scores prompt + response as a whole conversation (its own tokenizer and chat
               template); optional penalty when the response never reached EOS
  3. rewards   per token: -kl_coef * (log pi - log pi_ref) (k1 estimate), plus the score at the last token
  4. GAE       gamma, lambda over the response tokens; returns = advantages + values; advantages whitened
               over the whole step batch
  5. update    params.ppo_epochs passes over params.num_mini_batches mini-batches of the step batch (one
               optimizer step each; a mini-batch's rows are forwarded chunk by chunk, gradients accumulated):
               clipped policy loss, clipped value loss (vf_coef), gradient clipping at 1.0
Models: the policy (inputs.model; lora or full), a frozen reference (the input policy: with lora on a full
model, the same weights with adapters disabled; otherwise a second frozen copy), the frozen reward model
(inputs.reward_model, a sequence classifier such as the reward job's output; an adapter needs
inputs.reward_model_base) and a value model initialised
from the reward model (lora with a trainable score head, or full). The value model reads policy tokens,
so the reward model must share the policy's tokenizer.

checkpoint-N/ every hyper.save_steps, and at the next step boundary on SIGUSR1 (`started` declares
checkpoint_signal "SIGUSR1"): policy/ and value/ (adapters or full models), optimizer.pt (optimizer +
scheduler), rng_state.pth, then trainer_state.json last. resume_from restores all of it; a resumed run
follows the same data order and random stream as an uninterrupted one.

Batch shape and resume: the data order depends only on the step batch (batch_size x gradient_accumulation): a
seeded permutation of the prompts per epoch, cut in step batches. The optimizer and scheduler count updates
(total_steps x ppo_epochs x num_mini_batches), not rows. So a checkpoint resumes with another split of the same
step batch, e.g. the worker's out-of-memory retry (batch_size halved, gradient_accumulation doubled): each step
trains on the same prompts with the same number of updates, with half the rows per forward pass. Only the
sampling stream differs from an uninterrupted run with the old split (responses are sampled chunk by chunk),
so such a resume is equivalent, not bit-identical. A different step batch also resumes (the data order is then
that of the new step batch from the resumed step on).
params.num_mini_batches must divide the step batch.
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

Errors: config (2), data (3), unsupported (4): qlora; a reward model with another tokenizer; oom (5).

Fault injection (tests only): the environment variable REFINERY_FAULT_OOM_ABOVE_BATCH=N makes the first training
step raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected:
REFINERY_FAULT_OOM_ABOVE_BATCH=N)") when hyper.batch_size > N (contract.main: category oom, exit 5).
"""

from __future__ import annotations

import json
import math
import os
import random

from refinery_jobs import contract, data, hf_trainer, models
from refinery_jobs.config import JobConfig, JobSpec

SPEC = JobSpec(
    kinds=("ppo",),
    inputs=("model", "reward_model"),
    optional_inputs=("base", "reward_model_base"),
    formats=("prompts",),
)


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
        self.chunk = h.batch_size                                  # rows per forward pass
        self.step_batch = h.batch_size * h.gradient_accumulation   # prompts per step
        self.batches_per_epoch = math.ceil(len(self.prompts) / self.step_batch)
        self.total_steps = h.max_steps or math.ceil(self.batches_per_epoch * (h.num_epochs or 1.0))
        if self.step_batch % self.p["num_mini_batches"]:
            raise contract.config_error("params.num_mini_batches", "must divide hyper.batch_size x "
                                        f"hyper.gradient_accumulation ({self.step_batch})")
        self.oom_above_batch = hf_trainer.fault_oom_above_batch()
        contract.log(f"ppo: {len(self.prompts)} prompts, {self.total_steps} steps of {self.step_batch} "
                     f"({h.gradient_accumulation} x {h.batch_size})")

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
        ], weight_decay=h.weight_decay, betas=(h.adam_beta1, h.adam_beta2), eps=h.adam_epsilon)
        from transformers import get_scheduler
        updates = self.total_steps * self.p["ppo_epochs"] * self.p["num_mini_batches"]
        warmup = h.warmup_steps * self.p["ppo_epochs"] * self.p["num_mini_batches"] if h.warmup_steps is not None \
            else int(h.warmup_ratio * updates)
        self.scheduler = get_scheduler(h.scheduler, self.optimizer, num_warmup_steps=warmup,
                                       num_training_steps=updates)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(h.seed)
        self.step = 0
        self.history: list[dict] = []
        self.first_reward: float | None = None
        if ckpt:
            self._restore(ckpt)
        self.checkpoint_request = contract.CheckpointRequest().install()  # before `started` declares it
        self.events.started(total_steps=self.total_steps, resumed_from_step=cfg.resumed_from_step,
                            device=self.device.description, checkpoint_signal=self.checkpoint_request.signal_name)

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
        """Prompts of a step (1-based): a seeded permutation per epoch cut in step batches (batch_size x
        gradient_accumulation), so resume follows the same order, whichever split of the step batch it uses."""
        h, size = self.cfg.hyper, self.step_batch
        epoch, index = divmod(step - 1, self.batches_per_epoch)
        order = list(range(len(self.prompts)))
        random.Random(h.seed * 1000003 + epoch).shuffle(order)
        picked = order[index * size:(index + 1) * size]
        while len(picked) < size:  # last partial batch: wrap around to keep shapes fixed
            picked.append(order[len(picked) % len(order)])
        return [self.prompts[i] for i in picked]

    def chunks(self, prompts: list) -> list[list]:
        return [prompts[i:i + self.chunk] for i in range(0, len(prompts), self.chunk)]

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
                "has_eos": has_eos, "entropy_sum": (entropy * m).sum(),
                "logprob_gap_sum": ((sample_logp - logp).abs() * m).sum(), "texts": texts}

    def advantages(self, r):
        """Per-token rewards (KL penalty + score at the last token), GAE, returns; advantages not yet whitened
        (whiten_advantages does that over the whole step batch)."""
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
        r.update(kl=kl, non_score_reward=(rewards * m).sum(1) - r["score"], returns=returns, raw_advantages=adv)
        return r

    @staticmethod
    def whiten_advantages(rollouts: list[dict]) -> None:
        """masked_whiten over all chunks of the step batch together (the same numbers as one big batch)."""
        count = sum(r["resp_mask"].sum() for r in rollouts).clamp(min=1)
        mean = sum((r["raw_advantages"] * r["resp_mask"]).sum() for r in rollouts) / count
        var = sum((((r["raw_advantages"] - mean) ** 2) * r["resp_mask"]).sum() for r in rollouts) / count
        for r in rollouts:
            r["advantages"] = (r["raw_advantages"] - mean) * (var + 1e-8).rsqrt() * r["resp_mask"]

    def update(self, rollouts: list[dict]) -> dict:
        """PPO epochs over the step batch; each mini-batch is one optimizer step, its rows forwarded per chunk."""
        import torch
        p = self.p
        n = sum(r["resp_mask"].shape[0] for r in rollouts)
        mini = n // p["num_mini_batches"]
        stats = {"pg_loss": [], "vf_loss": [], "clipfrac": [], "approx_kl": [], "loss": []}
        self.policy.train()
        self.value.train()
        params = [q for g in self.optimizer.param_groups for q in g["params"]]
        for _ in range(p["ppo_epochs"]):
            perm = torch.randperm(n, generator=self.generator)
            for start in range(0, n, mini):
                picked = perm[start:start + mini]
                # rows of the mini-batch, grouped by the chunk that holds them (order kept within a chunk)
                groups = []
                for c, r in enumerate(rollouts):
                    local = picked[(picked // self.chunk) == c] - c * self.chunk
                    if len(local):
                        groups.append((r, local.to(r["resp_mask"].device)))
                total = sum(r["resp_mask"][idx].sum() for r, idx in groups).clamp(min=1)
                self.optimizer.zero_grad(set_to_none=True)
                sums = {"pg_loss": 0.0, "vf_loss": 0.0, "loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0}
                for r, idx in groups:
                    seq, mask, mb_m = r["sequences"][idx], r["mask"][idx], r["resp_mask"][idx]
                    with self.autocast():
                        new_logp, _ = response_logprobs(self.policy, seq, mask, r["prompt_len"], p["temperature"])
                        vpred = token_values(self.value, seq, mask, r["prompt_len"])
                    ratio = torch.exp((new_logp - r["logp"][idx]) * mb_m)
                    adv = r["advantages"][idx]
                    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - p["clip_range"], 1 + p["clip_range"]))
                    pg_loss = (pg * mb_m).sum() / total
                    old_v = r["values"][idx]
                    v_clipped = old_v + (vpred - old_v).clamp(-p["clip_range_value"], p["clip_range_value"])
                    ret = r["returns"][idx]
                    vf_loss = 0.5 * ((torch.max((vpred - ret) ** 2, (v_clipped - ret) ** 2) * mb_m).sum() / total)
                    loss = pg_loss + p["vf_coef"] * vf_loss
                    loss.backward()  # gradients accumulate over the chunks of the mini-batch
                    with torch.no_grad():
                        sums["pg_loss"] += pg_loss.item()
                        sums["vf_loss"] += vf_loss.item()
                        sums["loss"] += loss.item()
                        sums["clipfrac"] += ((((ratio - 1).abs() > p["clip_range"]).float() * mb_m).sum()
                                             / total).item()
                        sums["approx_kl"] += ((0.5 * (new_logp - r["logp"][idx]) ** 2 * mb_m).sum() / total).item()
                if self.cfg.hyper.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, self.cfg.hyper.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                for key, value in sums.items():
                    stats[key].append(value)
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def autocast(self):
        import contextlib

        import torch
        flags = hf_trainer.precision_flags(self.cfg, self.device)
        if flags["bf16"] or flags["fp16"]:
            return torch.autocast("cuda", dtype=torch.bfloat16 if flags["bf16"] else torch.float16)
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
              "log_history": self.history[-(self.cfg.hyper.save_steps or len(self.history) or 1):],
              "batch_size": self.cfg.hyper.batch_size, "gradient_accumulation": self.cfg.hyper.gradient_accumulation,
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
        import torch
        first = True
        while self.step < self.total_steps:
            step = self.step + 1
            if first and self.oom_above_batch is not None and self.cfg.hyper.batch_size > self.oom_above_batch:
                raise hf_trainer.injected_oom(self.oom_above_batch, self.cfg.hyper.batch_size)
            first = False
            rollouts = [self.advantages(self.rollout(chunk)) for chunk in self.chunks(self.batch_prompts(step))]
            self.whiten_advantages(rollouts)
            stats = self.update(rollouts)

            def cat(key):
                return torch.cat([r[key] for r in rollouts])
            score, masks = cat("score"), [r["resp_mask"] for r in rollouts]
            count = sum(m.sum() for m in masks).clamp(min=1)
            metrics = {
                "reward_mean": score.mean().item(), "reward_std": score.std().item(),
                "kl": torch.cat([r["kl"].sum(1) for r in rollouts]).mean().item(),
                "non_score_reward": cat("non_score_reward").mean().item(),
                "pg_loss": stats["pg_loss"], "vf_loss": stats["vf_loss"], "clipfrac": stats["clipfrac"],
                "approx_kl": stats["approx_kl"], "entropy": (sum(r["entropy_sum"] for r in rollouts) / count).item(),
                "response_length": torch.cat([m.sum(1) for m in masks]).mean().item(),
                "eos_fraction": cat("has_eos").float().mean().item(),
                "logprob_gap": (sum(r["logprob_gap_sum"] for r in rollouts) / count).item(),
                "learning_rate": self.scheduler.get_last_lr()[0],
            }
            self.step = step
            if self.first_reward is None:
                self.first_reward = metrics["reward_mean"]
            self.history.append({"step": step, "loss": stats["loss"], **metrics})
            self.events.progress(step, self.total_steps, loss=stats["loss"], metrics=metrics)
            contract.log(f"step {step}: reward {metrics['reward_mean']:.3f} kl {metrics['kl']:.3f} "
                         f"| {rollouts[0]['texts'][0]!r}")
            save_steps = self.cfg.hyper.save_steps
            scheduled = bool(save_steps) and (step % save_steps == 0 or step == self.total_steps)
            requested = self.checkpoint_request.take()  # a request on a save step is satisfied by that save
            if requested and not scheduled:
                contract.log(f"checkpoint requested ({self.checkpoint_request.signal_name}): saving at step {step}")
            if scheduled or requested:
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
