"""Export a merged Llama-family model to GGUF (`gguf`) with gguf-py alone (no llama.cpp checkout).

    python -m refinery_jobs.gguf --config job.json

Features
  * input: a full HF model (inputs.model; a LoRA adapter + inputs.base is merged in memory first);
    model_type llama or mistral (llama.cpp's "llama" architecture), default or linear rope scaling
  * one file per requested type in output_dir: model-f16.gguf, model-q8_0.gguf, model-q4_0.gguf, ...
    (norms stay f32; a matrix whose row width is not a multiple of 32 stays f16 in quantized files)
  * tensors renamed to llama.cpp's names, q_proj/k_proj rows permuted back to llama.cpp's rope layout
  * tokenizer: a SentencePiece-style BPE with byte_fallback (tokenizer.json), written as llama.cpp's "llama"
    vocab: tokens, scores from the merge order, token types (byte, control, unknown), bos/eos/unk/pad ids,
    add_bos/add_eos as the HF tokenizer behaves, and the chat template ({% generation %} markers removed)
Checking that llama.cpp loads the files is done by the caller (node-llama-cpp on the TypeScript side).

Params
  types   array of strings, ["f16", "q8_0", "q4_0"]   any of f32 | f16 | bf16 | q8_0 | q4_0

Errors: config (2): bad types, missing model; unsupported (4): another architecture or tokenizer kind.
"""

from __future__ import annotations

import json
import os
import re

from refinery_jobs import common
from refinery_jobs.common import JobConfig, JobSpec, Param

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# Prompts whose Hugging Face greedy continuation the worker compares with llama.cpp's.
CHECK_PROMPTS = ("What is the capital of France?", "Please tell me about the sea.", "hello")
SPEC = JobSpec(
    kinds=("gguf",),
    inputs=("model",),
    optional_inputs=("base",),
    formats=(),
    checkpoints=False,
    params={
        "types": Param(list, ["f16", "q8_0", "q4_0"]),
        "check_prompts": Param(list, list(CHECK_PROMPTS)),
        "check_new_tokens": Param(int, 16, min=1, max=256),
    },
)

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def permute_rope(w, n_head: int):
    """HF's rotate-half q/k rows back to llama.cpp's interleaved rope layout (convert_hf_to_gguf's permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(state_dict: dict, config) -> list[tuple[str, "object"]]:
    """(gguf name, float32 numpy array) for every weight, in llama.cpp's names and layout."""
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    out = []
    for name, tensor in state_dict.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        w = tensor.detach().float().cpu().numpy()
        if name == "model.embed_tokens.weight":
            out.append(("token_embd.weight", w))
        elif name == "model.norm.weight":
            out.append(("output_norm.weight", w))
        elif name == "lm_head.weight":
            if not getattr(config, "tie_word_embeddings", False):
                out.append(("output.weight", w))
        elif m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name):
            layer, rest = m.groups()
            if rest not in LAYER_TENSORS:
                raise common.unsupported(f"gguf export: unexpected tensor {name} (biases or another architecture?)")
            if rest == "self_attn.q_proj.weight":
                w = permute_rope(w, n_head)
            elif rest == "self_attn.k_proj.weight":
                w = permute_rope(w, n_kv)
            out.append((f"blk.{layer}.{LAYER_TENSORS[rest]}", w))
        else:
            raise common.unsupported(f"gguf export: unexpected tensor {name}")
    return out


def llama_vocab(model_dir: str, tokenizer, vocab_size: int) -> dict:
    """tokens / scores / types for llama.cpp's SentencePiece-style ("llama") vocab from tokenizer.json."""
    import gguf
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise common.unsupported(f"gguf export needs a tokenizer.json (fast tokenizer) in {model_dir}")
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise common.unsupported("gguf export supports SentencePiece-style BPE tokenizers with byte_fallback "
                                 f"(llama.cpp's \"llama\" vocab); got {model.get('type')} "
                                 f"byte_fallback={model.get('byte_fallback')}")
    rank: dict[str, int] = {}
    for r, merge in enumerate(model.get("merges", [])):
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank.setdefault(a + b, r)

    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    special_ids = set(tokenizer.all_special_ids)
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        token = id_to_token.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        scores.append(-float(rank[token] + 1) if token in rank else 0.0)
        if i == tokenizer.unk_token_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif BYTE_TOKEN.fullmatch(token):
            types.append(gguf.TokenType.BYTE)
        elif i in special_ids or (i in added and added[i].get("special")):
            types.append(gguf.TokenType.CONTROL)
        elif i in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return {"tokens": tokens, "scores": scores, "types": types}


class GGUFRecipe:
    def __init__(self, cfg: JobConfig, events: common.Events):
        self.cfg, self.events = cfg, events
        types = cfg.params["types"]
        if not types:
            raise common.config_error("params.types", "must name at least one type")
        for i, t in enumerate(types):
            if t not in TYPES:
                raise common.config_error(f"params.types[{i}]", f"expected one of {'|'.join(TYPES)}, got {json.dumps(t)}")
        self.types = list(dict.fromkeys(types))

    def setup(self) -> None:
        from transformers import AutoConfig
        base, adapter = common.resolve_base(self.cfg)
        config = AutoConfig.from_pretrained(base)
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise common.unsupported(f"gguf export supports {', '.join(SUPPORTED_MODEL_TYPES)} models, got "
                                     f"model_type {config.model_type!r}")
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") not in ("default", "linear"):
            raise common.unsupported(f"gguf export: rope_type {rope.get('rope_type')!r} is not supported")
        self.events.started(total_steps=len(self.types) + 1, resumed_from_step=None, device="cpu")

        self.device = common.Device("cpu", "cpu", False)
        self.tokenizer = common.load_tokenizer(adapter, base)
        self.model = common.load_causal_lm(self.cfg, self.device, train=False)
        self.config = self.model.config
        self.rope = rope
        self.vocab = llama_vocab(adapter if adapter and os.path.isfile(os.path.join(adapter, "tokenizer.json"))
                                 else base, self.tokenizer, self.config.vocab_size)
        self.tensors = gguf_tensors(self.model.state_dict(), self.config)
        self.events.progress(1, len(self.types) + 1, metrics={"tensors": len(self.tensors)})

    def write(self, qtype_name: str, path: str) -> None:
        import gguf
        import numpy as np
        c, tok = self.config, self.tokenizer
        qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                 "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
                 "q4_0": gguf.GGMLQuantizationType.Q4_0}[qtype_name]
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype_name]
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads

        w = gguf.GGUFWriter(path, "llama")
        w.add_name(f"{self.cfg.run_id}/{self.cfg.stage_id}")
        w.add_context_length(c.max_position_embeddings)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(c.num_hidden_layers)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_head_count(c.num_attention_heads)
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(float(self.rope.get("rope_theta", 10000.0)))
        if self.rope.get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(self.rope["factor"]))
        if head_dim != c.hidden_size // c.num_attention_heads:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_vocab_size(c.vocab_size)
        w.add_file_type(file_type)
        if qtype_name in ("q8_0", "q4_0"):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        w.add_tokenizer_model("llama")
        w.add_token_list(self.vocab["tokens"])
        w.add_token_scores(self.vocab["scores"])
        w.add_token_types(self.vocab["types"])
        for token_id, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                              ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
            value = getattr(tok, f"{token_id}_token_id")
            if value is not None:
                add(value)
        probe = tok("a").input_ids
        w.add_add_bos_token(bool(probe) and probe[0] == tok.bos_token_id)
        w.add_add_eos_token(bool(probe) and probe[-1] == tok.eos_token_id and len(probe) > 1)
        if tok.chat_template:
            w.add_chat_template(GENERATION_TAG.sub("", tok.chat_template))

        for name, data in self.tensors:
            if data.ndim == 1 or qtype_name == "f32":
                w.add_tensor(name, data.astype(np.float32))
            elif qtype_name == "f16" or (qtype_name in ("q8_0", "q4_0") and data.shape[-1] % 32 != 0):
                w.add_tensor(name, data.astype(np.float16))
            else:
                w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    def export(self) -> dict:
        metrics = {}
        for i, t in enumerate(self.types, start=2):
            path = os.path.join(self.cfg.output_dir, f"model-{t}.gguf")
            tmp = path + ".partial"
            self.write(t, tmp)
            os.replace(tmp, path)
            metrics[f"bytes_{t}"] = os.path.getsize(path)
            common.log(f"wrote {path} ({metrics[f'bytes_{t}']:,} bytes)")
            self.events.progress(i, len(self.types) + 1, metrics={f"bytes_{t}": metrics[f"bytes_{t}"]})
        metrics["files"] = len(self.types)
        self.write_greedy_reference()
        return metrics

    def write_greedy_reference(self) -> None:
        """greedy_reference.json: the HF model's greedy tokens on the check prompts (the worker
        loads each .gguf in llama.cpp and requires the same tokens from the f16 file)."""
        import torch
        n = self.cfg.params["check_new_tokens"]
        prompts = []
        for text in self.cfg.params["check_prompts"]:
            ids = self.tokenizer(str(text)).input_ids
            with torch.no_grad():
                out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                          max_new_tokens=n, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
            prompts.append({"text": str(text), "prompt_tokens": ids, "greedy_tokens": out[0, len(ids):].tolist()})
        common.write_json_atomic(os.path.join(self.cfg.output_dir, "greedy_reference.json"),
                                 {"max_new_tokens": n, "prompts": prompts})


def recipe_main(cfg: JobConfig, events: common.Events) -> dict:
    recipe = GGUFRecipe(cfg, events)
    recipe.setup()
    return recipe.export()


if __name__ == "__main__":
    common.main(SPEC, recipe_main)
