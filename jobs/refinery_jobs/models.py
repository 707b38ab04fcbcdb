"""Torch-side helpers: device and seeding, model and tokenizer loading (full models or LoRA adapters), scoring.

Contents:
  * device and seeding              Device, select_device, seed_everything, check_finetuning_supported
  * models and tokenizers           resolve_base, load_tokenizer, load_causal_lm, load_sequence_classifier,
                                    lora_config, model_dtype, set_pad_token
  * chat templates                  resolve_chat_template, use_job_chat_template, require_chat_template,
                                    assistant_token_mask
  * reward scoring                  render_conversations, score_texts, preference_accuracy

torch, transformers and peft are imported inside the functions that need them, so that importing this module
(and config/data validation) stays fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from refinery_jobs import families
from refinery_jobs.config import JobConfig
from refinery_jobs.contract import config_error, log, unsupported


# ----------------------------------------------------------------------------------------------
# Device and seeding
# ----------------------------------------------------------------------------------------------

@dataclass
class Device:
    type: str            # "cuda" | "cpu"
    description: str     # for the `started` event
    bf16: bool           # mixed precision in bf16

    @property
    def torch_device(self):
        import torch
        return torch.device("cuda:0" if self.type == "cuda" else "cpu")


def select_device() -> Device:
    """CUDA with bf16 when available (the worker chose the GPUs via CUDA_VISIBLE_DEVICES), else CPU fp32."""
    import torch
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(0)
        return Device("cuda", f"cuda:0 ({name}{', bf16' if bf16 else ''})", bf16)
    return Device("cpu", "cpu", False)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def check_finetuning_supported(cfg: JobConfig, device: Device, *, qlora_ok: bool = True) -> None:
    """`qlora` needs CUDA and bitsandbytes: exit 4 with a clear message otherwise."""
    if cfg.finetuning != "qlora":
        return
    if not qlora_ok:
        raise unsupported(f"a {cfg.kind} job does not support finetuning.type \"qlora\"; use lora or full")
    if device.type != "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise unsupported(f"finetuning.type \"qlora\" needs a CUDA GPU; none is available here "
                          f"(CUDA_VISIBLE_DEVICES={visible!r}). Use lora or full, or run on a GPU worker.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise unsupported("finetuning.type \"qlora\" needs the bitsandbytes package, which is not installed in "
                          "this environment. Use lora or full.") from None


# ----------------------------------------------------------------------------------------------
# Models, tokenizers, LoRA
# ----------------------------------------------------------------------------------------------

def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def resolve_base(cfg: JobConfig, input_name: str = "model") -> tuple[str, str | None]:
    """(base model dir, adapter dir or None) for an input that may be a full model or a LoRA adapter.

    An adapter's adapter_config.json records the base path of the machine that trained it, which is stale
    on another worker, so `inputs.base` wins; the recorded path is used only when it exists here.
    """
    use_job_chat_template(cfg)
    path = cfg.inputs[input_name]
    if not is_adapter_dir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise config_error(f"inputs.{input_name}", f"not a model directory (no config.json or "
                                                       f"adapter_config.json): {path}")
        return path, None
    # Each model input has its own base (`baseline_base` for `baseline`); `base` is the model's.
    base = cfg.inputs.get("base" if input_name == "model" else f"{input_name}_base") or cfg.inputs.get("base")
    if base is None:
        with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
            recorded = json.load(f).get("base_model_name_or_path")
        if recorded and os.path.isabs(recorded) and os.path.isdir(recorded):
            base = recorded
        else:
            raise config_error("inputs.base", f"inputs.{input_name} is a LoRA adapter ({path}) and its recorded base "
                                              f"{recorded!r} is not on this machine: pass the base model directory "
                                              f"as inputs.base")
    if is_adapter_dir(base):
        raise config_error("inputs.base", f"the base of an adapter must be a full model, got another adapter: {base}")
    return base, path


def load_tokenizer(*dirs: str):
    """Tokenizer from the first directory that has one (an adapter dir usually carries it), with the job's chat
    template override (cfg.chat_template, see use_job_chat_template) in place of the model's own."""
    from transformers import AutoTokenizer
    for d in dirs:
        if d and (os.path.isfile(os.path.join(d, "tokenizer.json")) or
                  os.path.isfile(os.path.join(d, "tokenizer_config.json"))):
            tok = AutoTokenizer.from_pretrained(d)
            break
    else:
        raise config_error("inputs.model", f"no tokenizer found in {', '.join(d for d in dirs if d)}")
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
        log(f"tokenizer has no pad token; using {tok.pad_token!r}")
    if _job_template is not None:
        tok.chat_template = _job_template
        _use_end_of_turn_as_eos(tok)
    return tok


def _use_end_of_turn_as_eos(tok) -> None:
    """Under a named template, eos becomes the template's end-of-turn token (as LLaMA-Factory's templates do):
    the trained answers end with it, so generation, ppo's sampling and llama.cpp must stop there. Only a token
    the vocab already has (a new one would need a new embedding row)."""
    eot = families.TEMPLATE_END_OF_TURN.get(_job_template_name or "", "eos")
    if eot == "eos" or tok.eos_token == eot:
        return
    if eot not in tok.get_vocab():
        log(f"chat template {_job_template_name}: its end-of-turn token {eot!r} is not in the vocabulary; "
            f"eos stays {tok.eos_token!r}")
        return
    log(f"chat template {_job_template_name}: eos {tok.eos_token!r} -> {eot!r} (its end-of-turn token)")
    tok.eos_token = eot


def model_dtype(device: Device, finetuning: str):
    """Weights in bf16 for adapters on GPU (frozen base); fp32 for full fine-tuning (bf16 autocast) and CPU."""
    import torch
    if device.type == "cuda" and device.bf16 and finetuning in ("lora", "qlora", "frozen"):
        return torch.bfloat16
    return torch.float32


def lora_config(cfg: JobConfig, task_type: str = "CAUSAL_LM"):
    """PEFT LoraConfig from `finetuning.lora`. SEQ_CLS keeps the score head trainable and saved."""
    from peft import LoraConfig
    lo = cfg.lora
    return LoraConfig(
        r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
        task_type=task_type, modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )


def _quantization_config():
    import torch
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_causal_lm(cfg: JobConfig, device: Device, input_name: str = "model", *, train: bool = True):
    """The policy/causal LM for a job, ready for training (`train=True`) or frozen.

    - full model input + lora/qlora: a new LoRA adapter (get_peft_model, so Trainer resume works)
    - adapter input + lora: the same adapter keeps training (its output stays relative to inputs.base,
      so one merge at the end of the pipeline folds everything)
    - adapter input + full, or train=False: the adapter is merged in memory
    """
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base, adapter = resolve_base(cfg, input_name)
    finetuning = cfg.finetuning if train else "frozen"
    kwargs: dict[str, Any] = {"dtype": model_dtype(device, finetuning)}
    if train and cfg.finetuning == "qlora":
        kwargs["quantization_config"] = _quantization_config()
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if train and cfg.finetuning == "qlora":
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    if adapter is not None:
        if train and cfg.finetuning in ("lora", "qlora"):
            log(f"continuing to train the LoRA adapter {adapter} (finetuning.lora settings come from it)")
            return PeftModel.from_pretrained(model, adapter, is_trainable=True)
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if train and cfg.finetuning in ("lora", "qlora"):
        model = get_peft_model(model, lora_config(cfg, "CAUSAL_LM"))
    if not train:
        model.eval().requires_grad_(False)
    return model


def load_sequence_classifier(path: str, device: Device, *, base: str | None = None, dtype=None):
    """A num_labels=1 sequence-classification model (reward/value) from a full model or a LoRA adapter dir.

    A causal-LM directory gets a fresh score head (seed first for reproducibility). A causal-LM adapter is
    merged into its base and saved to a temporary directory first (the classifier is built from full weights).
    """
    import tempfile

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"num_labels": 1}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if not is_adapter_dir(path):
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
        task = json.load(f).get("task_type")
    if base is None:
        raise config_error("inputs.base", f"{path} is a LoRA adapter: pass its base model as inputs.base")
    if task == "SEQ_CLS":
        model = AutoModelForSequenceClassification.from_pretrained(base, **kwargs)
        return PeftModel.from_pretrained(model, path).merge_and_unload()
    causal = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), path)
    with tempfile.TemporaryDirectory(prefix="refinery-merged-") as tmp:
        causal.merge_and_unload().save_pretrained(tmp)
        return AutoModelForSequenceClassification.from_pretrained(tmp, **kwargs)


def set_pad_token(model, tokenizer) -> None:
    """Sequence classifiers find the last real token through config.pad_token_id."""
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def trainable_parameters(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def save_tokenizer(tokenizer, out_dir: str) -> None:
    tokenizer.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# Chat templates: the job's override, the check that there is one, assistant-token masks
# ----------------------------------------------------------------------------------------------

# The chat template override of this process's job (one job per process): resolve_base records it from the job's
# config, which every job calls before it loads a tokenizer, so every job (and every tokenizer it loads, the reward
# model's included) gets the spec's `template` without passing it around.
_job_template: str | None = None
_job_template_name: str | None = None  # the name, when the override is a named template


def resolve_chat_template(value: str | None) -> str | None:
    """cfg.chat_template as Jinja text: None (the model's own), Jinja text as given (it contains "{%" or "{{"),
    or a named template (refinery_jobs/templates/<name>.jinja); an unknown name is a config error listing them."""
    if value is None or "{%" in value or "{{" in value:
        return value
    try:
        return families.named_template(value)
    except KeyError:
        raise config_error("chat_template", f"unknown chat template {value!r}; named templates: "
                                            f"{', '.join(families.template_names())} (or give Jinja text)") from None


def use_job_chat_template(cfg: JobConfig) -> None:
    global _job_template, _job_template_name
    _job_template = resolve_chat_template(cfg.chat_template)
    _job_template_name = cfg.chat_template if _job_template not in (None, cfg.chat_template) else None
    if _job_template is not None:
        log(f"chat template {_job_template_name or '(Jinja text)'} from the job config, in place of the model's own")


def require_chat_template(tokenizer, input_name: str = "model") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise config_error("chat_template", f"the tokenizer of inputs.{input_name} has no chat template, which "
                                            "conversational datasets (chat, alpaca, sharegpt, preference, prompts) "
                                            "need: set `template` in the pipeline spec (or the stage) to one of "
                                            f"{', '.join(families.template_names())} or to Jinja text, or use the "
                                            "text format")


def _render(tokenizer, messages: list[dict], *, generation_prompt: bool, tools: list | None = None) -> str:
    # tools: the function schemas of a tool-call conversation, rendered where the template puts them
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def assistant_spans(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn in it, end-of-turn token included.

    Rendered by prefixes: turn i starts where messages[:i] rendered with the generation prompt ends (what the model
    sees when it answers) and ends where messages[:i+1] rendered ends, less the whitespace a template puts after the
    turn's end token (formatting, not the answer). This needs the template to be prefix-stable: each rendering of
    messages[:i+1] is a prefix of the whole conversation's, or the error says so (e.g. templates that drop earlier
    turns' reasoning). A generation prompt that is not a prefix of the rendered turn (Gemma 4 opens an empty thought
    channel when asked to answer) is cut back to their common prefix: the answer is trained as the history renders
    it."""
    full = _render(tokenizer, messages, generation_prompt=False, tools=tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        upto = _render(tokenizer, messages[:i + 1], generation_prompt=False, tools=tools)
        if not full.startswith(upto.rstrip()):
            raise config_error("chat_template", "the chat template is not prefix-stable (rendering the conversation up "
                                                f"to assistant turn {i} is not a prefix of the whole conversation), so "
                                                "assistant-only loss masks cannot be computed; use another template "
                                                "or params.assistant_only_loss false")
        prompt = _render(tokenizer, messages[:i], generation_prompt=True, tools=tools) if i > 0 else ""
        start = _common_prefix_length(prompt, upto)
        end = len(upto.rstrip())
        if end > start:
            spans.append((start, end))
    return full, spans


def assistant_token_mask(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, mask) of the rendered conversation: mask 1 on every token of every assistant turn (its end-of-turn
    token included), 0 elsewhere. A token belongs to a turn when it starts inside the turn's span, so a token that
    straddles the prompt/answer boundary (the prompt's last characters merged with the answer's first) is not
    trained: at inference the prompt is tokenized on its own and the model never emits that token there."""
    full, spans = assistant_spans(tokenizer, messages, tools)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= a < e for s, e in spans) and b > a) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


# ----------------------------------------------------------------------------------------------
# Reward scoring (reward job accuracy, eval, ppo)
# ----------------------------------------------------------------------------------------------

def render_conversations(tokenizer, conversations: list[list[dict]]) -> list[str]:
    """Whole conversations (prompt + assistant reply) as the reward model saw them in training."""
    return [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]


def score_texts(model, tokenizer, texts: list[str], *, batch_size: int = 16, max_length: int = 512):
    """Scalar scores of a num_labels=1 sequence classifier for each text (a 1-D float tensor on CPU)."""
    import torch
    device = next(model.parameters()).device
    scores = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=max_length, add_special_tokens=False).to(device)
            scores.append(model(**batch).logits[:, 0].float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def preference_accuracy(model, tokenizer, rows: list[dict], *, batch_size: int = 16,
                        max_length: int = 512) -> dict[str, float]:
    """accuracy (chosen scored above rejected), mean margin and mean scores over preference rows."""
    was_training = model.training
    model.eval()
    chosen = score_texts(model, tokenizer, render_conversations(tokenizer, [r["prompt"] + r["chosen"] for r in rows]),
                         batch_size=batch_size, max_length=max_length)
    rejected = score_texts(model, tokenizer,
                           render_conversations(tokenizer, [r["prompt"] + r["rejected"] for r in rows]),
                           batch_size=batch_size, max_length=max_length)
    model.train(was_training)
    return {
        "accuracy": float((chosen > rejected).float().mean()),
        "margin": float((chosen - rejected).mean()),
        "chosen_score": float(chosen.mean()),
        "rejected_score": float(rejected.mean()),
        "pairs": len(rows),
    }
