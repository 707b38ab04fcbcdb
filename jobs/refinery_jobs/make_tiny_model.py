"""Build a tiny random-initialised model of a real family with its tokenizer, without any model hub.

    cd jobs && python -m refinery_jobs.make_tiny_model --out /tmp/tiny --data ../demo/data/*.jsonl [--seed 0]
    cd jobs && python -m refinery_jobs.make_tiny_model --family qwen2 --out /tmp/tiny-qwen2 [--seed 0]

--family llama (the default) is the demo's model below. Every other family (llama3, qwen2, mistral, phi3, gemma:
refinery_jobs/families.py) gets that family's architecture class at the same tiny sizes and its REAL tokenizer,
special tokens and chat template from llama.cpp's vocab file (see build_family_model). Deterministic per seed.

--family llama model: LlamaForCausalLM, hidden 64, intermediate 128, 2 layers, 4 heads / 2 KV heads (head_dim 16); every
matrix width is a multiple of 32 so GGUF Q8_0/Q4_0 (blocks of 32) quantize every tensor. Random init.

Tokenizer (one that llama.cpp's SentencePiece-style "llama" vocab reproduces):
  * BPE with byte_fallback, trained on every string in the --data JSONL files
  * SentencePiece-style normalizer: prepend "▁", spaces -> "▁"; words split before "▁" and around "\\n"
    so no token crosses a word boundary (llama.cpp has no pre-tokenizer for this vocab type)
  * vocab: <unk> <s> </s> <pad>, then <0x00>..<0xFF>, then the learned tokens, then <|im_start|> <|im_end|>
  * decoder: Replace "▁"->" ", ByteFallback, Fuse, Strip one leading space
  * ChatML chat template with {% generation %} markers (TRL's own assistant_only_loss reads them; the sft job
    computes its masks from the template's prefixes, so it needs none);
    eos = <|im_end|> (ends an assistant turn), pad = <pad> (never eos)
"""

from __future__ import annotations

import argparse
import json
import os

from refinery_jobs import families

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2
MAX_POSITIONS = 1024
VOCAB_TARGET = 1024  # learned BPE vocabulary (before byte tokens and chat tokens)

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus(paths: list[str]) -> list[str]:
    """Every string value in the JSONL files, in file order (deterministic)."""
    texts: list[str] = []

    def walk(value):
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    walk(json.loads(line))
    return texts


def build_tokenizer(texts: list[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def configure(tok: Tokenizer) -> Tokenizer:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split("▁", behavior="merged_with_next"),
            pre_tokenizers.Split("\n", behavior="isolated"),
        ])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        return tok

    # 1. learn merges
    learner = configure(Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True)))
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_TARGET, special_tokens=SPECIALS, min_frequency=2,
                                  show_progress=False)
    learner.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    learned_vocab = sorted(learned["vocab"].items(), key=lambda kv: kv[1])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]

    # 2. rebuild with the llama layout: specials, 256 byte tokens, learned tokens
    vocab: dict[str, int] = {}
    for token in SPECIALS + [f"<0x{b:02X}>" for b in range(256)]:
        vocab[token] = len(vocab)
    for token, _ in learned_vocab:
        if token not in vocab:
            vocab[token] = len(vocab)
    tok = configure(Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                         fuse_unk=True)))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS + CHAT_TOKENS])

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE, padding_side="right",
        add_bos_token=False, add_eos_token=False, model_max_length=MAX_POSITIONS,
    )


def build_model(tokenizer, seed: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        head_dim=HIDDEN // HEADS, max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model


# ----------------------------------------------------------------------------------------------
# Real families (llama3, qwen2, mistral, phi3, gemma)
# ----------------------------------------------------------------------------------------------

# Pad must differ from the end-of-turn token (ppo replaces tokens after EOS with pad and reads the last real token).
# llama3: id 128004, which Llama 3.1 names <|finetune_right_pad_id|> (this Llama 3.0 vocab: a reserved token).
PAD_TOKENS = {"llama3": "<|reserved_special_token_2|>", "qwen2": "<|endoftext|>", "mistral": "<unk>",
              "phi3": "<|endoftext|>", "gemma": "<pad>"}


def family_tokenizer(fam: families.Family):
    """The family's real tokenizer with its chat template; eos = the template's end-of-turn token.

    Instruct models ship so (Llama 3.1 Instruct: <|eot_id|>, Qwen2.5 Instruct: <|im_end|>): generation, ppo's
    sampling and llama.cpp then stop where an assistant turn ends. The vocab's own template wins; a vocab without
    one gets the family's named template (templates/<name>.jinja)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(families.cached_tokenizer_dir(fam))
    if not tok.chat_template:
        tok.chat_template = families.named_template(fam.template)
    for token in (fam.end_of_turn, PAD_TOKENS[fam.name]):
        if token not in tok.get_vocab():  # setting it would silently add a token the vocab file does not have
            raise ValueError(f"{fam.name}: token {token!r} is not in {fam.vocab}")
    tok.eos_token = fam.end_of_turn
    tok.pad_token = PAD_TOKENS[fam.name]
    tok.padding_side = "right"
    tok.model_max_length = MAX_POSITIONS
    return tok


def family_config(fam: families.Family, tokenizer):
    import transformers
    config_class = getattr(transformers, fam.config_class)
    kwargs = dict(fam.sizes)
    kwargs.update(fam.extra_config)
    # Every id the vocab file defines must have a row (some ids are reserved tokens transformers does not list).
    vocab_size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    return config_class(
        vocab_size=vocab_size, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.02, architectures=[fam.model_class], **kwargs,
    )


def stop_token_ids(tokenizer, original_eos: int | None) -> list[int]:
    """generation_config eos: the end-of-turn token first, then the vocab's own end-of-text token."""
    ids = [tokenizer.eos_token_id]
    if original_eos is not None and original_eos not in ids:
        ids.append(original_eos)
    return ids


def build_family_model(fam: families.Family, seed: int):
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = family_tokenizer(fam)
    original_eos = AutoTokenizer.from_pretrained(families.cached_tokenizer_dir(fam)).eos_token_id
    config = family_config(fam, tokenizer)
    torch.manual_seed(seed)
    model = getattr(transformers, fam.model_class)(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=stop_token_ids(tokenizer, original_eos),
                                               pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--family", default="llama", choices=list(families.FAMILIES),
                        help="model family (default llama: the demo's tiny Llama with a tokenizer trained on --data)")
    parser.add_argument("--data", nargs="+", help="llama: JSONL files whose strings train the tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fam = families.family(args.family)
    if fam.vocab is None:
        if not args.data:
            parser.error("--family llama needs --data (the text its tokenizer is trained on)")
        tokenizer = build_tokenizer(corpus(args.data))
        model = build_model(tokenizer, args.seed)
    else:
        model, tokenizer = build_family_model(fam, args.seed)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny {fam.name} ({type(model).__name__}): {params:,} parameters, vocab {len(tokenizer)} -> {args.out}")


if __name__ == "__main__":
    main()
