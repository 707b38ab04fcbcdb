"""Build a tiny Llama and its tokenizer from local text, without any model hub (deterministic per seed).

    cd jobs && python -m refinery_jobs.make_tiny_model --out /tmp/tiny --data ../demo/data/*.jsonl [--seed 0]

Model: LlamaForCausalLM, hidden 64, intermediate 128, 2 layers, 4 heads / 2 KV heads (head_dim 16); every
matrix width is a multiple of 32 so GGUF Q8_0/Q4_0 (blocks of 32) quantize every tensor. Random init.

Tokenizer (one that llama.cpp's SentencePiece-style "llama" vocab reproduces):
  * BPE with byte_fallback, trained on every string in the --data JSONL files
  * SentencePiece-style normalizer: prepend "▁", spaces -> "▁"; words split before "▁" and around "\\n"
    so no token crosses a word boundary (llama.cpp has no pre-tokenizer for this vocab type)
  * vocab: <unk> <s> </s> <pad>, then <0x00>..<0xFF>, then the learned tokens, then <|im_start|> <|im_end|>
  * decoder: Replace "▁"->" ", ByteFallback, Fuse, Strip one leading space
  * ChatML chat template with {% generation %} markers (TRL's assistant_only_loss needs them);
    eos = <|im_end|> (ends an assistant turn), pad = <pad> (never eos)
"""

from __future__ import annotations

import argparse
import json
import os

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--data", nargs="+", required=True, help="JSONL files whose strings train the tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = build_tokenizer(corpus(args.data))
    model = build_model(tokenizer, args.seed)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny llama: {params:,} parameters, vocab {len(tokenizer)} -> {args.out}")


if __name__ == "__main__":
    main()
