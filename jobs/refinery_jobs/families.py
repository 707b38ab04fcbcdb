"""The model families `make_tiny_model --family` builds: architecture, sizes, real tokenizer and chat template.

Each family but `llama` (the demo's home-made tokenizer) takes its REAL tokenizer from one of llama.cpp's
vocab-only GGUF files (<llama.cpp>/models/ggml-vocab-<x>.gguf, with llama.cpp's tokenizer test vectors beside
them: <file>.inp / <file>.out). transformers reads such a file in about a minute on 2 cores, so the tokenizer it
makes is saved once under ~/.cache/refinery/tokenizers/<file>-<sha256 prefix>-v<build>/ and reused (written to a temporary
directory and renamed, so concurrent builds never see half a tokenizer).

Sizes: hidden 64, intermediate 128, 2 layers, 4 heads / 2 KV heads (head_dim 16): every matrix width is a
multiple of 32 so GGUF Q8_0/Q4_0 (blocks of 32) quantize every tensor. Embeddings are tied (as the small
members of these families ship) so a 150k-token vocab does not double the model.

Standard library only at import time (the table is read by tests and the CLI).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
TOKENIZER_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "refinery", "tokenizers")
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}


@dataclass(frozen=True)
class Family:
    name: str
    vocab: str | None            # llama.cpp's ggml-vocab-*.gguf; None: the home-made demo tokenizer
    config_class: str            # transformers config class
    model_class: str             # transformers model class (what config.json's "architectures" names)
    template: str                # named template (templates/<name>.jinja) used when the vocab has none
    end_of_turn: str             # the token that ends an assistant turn under the template
    sizes: dict = field(default_factory=lambda: dict(SMALL))
    extra_config: dict = field(default_factory=dict)
    tokenizer_type: str | None = None  # AutoTokenizer's tokenizer_type, where the vocab's own config does not load
    tokenizer_fixes: tuple[str, ...] = ()  # see TOKENIZER_FIXES
    about: str = ""


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama", None, "LlamaConfig", "LlamaForCausalLM", "chatml", "<|im_end|>",
           about="the demo's tiny Llama, BPE tokenizer trained on the demo data, ChatML with generation markers"),
    Family("llama3", "ggml-vocab-llama-bpe.gguf", "LlamaConfig", "LlamaForCausalLM", "llama3", "<|eot_id|>",
           extra_config={"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
           tokenizer_fixes=("ignore_merges", "bos_post_processor"),
           about="Llama 3 (128k byte-level BPE), Llama 3.1 Instruct template"),
    Family("qwen2", "ggml-vocab-qwen2.gguf", "Qwen2Config", "Qwen2ForCausalLM", "qwen", "<|im_end|>",
           extra_config={"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
           about="Qwen2 / Qwen2.5 (152k byte-level BPE), the vocab's ChatML template"),
    Family("mistral", "ggml-vocab-llama-spm.gguf", "MistralConfig", "MistralForCausalLM", "mistral", "</s>",
           extra_config={"sliding_window": None}, tokenizer_fixes=("sentencepiece_normalizer",),
           about="Mistral 7B v0.1/v0.2 (the 32k SentencePiece vocab of Llama 2), [INST] template"),
    Family("phi3", "ggml-vocab-phi-3.gguf", "Phi3Config", "Phi3ForCausalLM", "phi3", "<|end|>",
           about="Phi-3 mini (32k SentencePiece + chat tokens), the vocab's <|user|>/<|assistant|> template"),
    # transformers cannot build a config from the Gemma 4 vocab file (its per-layer KV head counts are a list),
    # so the tokenizer is read as Gemma 3's class, which converts the same vocab.
    Family("gemma", "ggml-vocab-gemma-4.gguf", "Gemma4TextConfig", "Gemma4ForCausalLM", "gemma4", "<turn|>",
           sizes={**SMALL, "global_head_dim": 32},  # full-attention layers: twice the sliding head_dim, as Gemma 4
           extra_config={"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 512,
                         "hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0,
                         "final_logit_softcapping": 30.0},
           tokenizer_type="gemma3",
           about="Gemma 4 (262k SentencePiece-style BPE), the vocab's own <|turn> template"),
)}


# The token that ends an assistant turn under each named template (generation stops there). Templates that end a
# turn with the tokenizer's eos (mistral, llama2) say "eos".
TEMPLATE_END_OF_TURN = {"chatml": "<|im_end|>", "qwen": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "eos",
                        "llama2": "eos", "phi3": "<|end|>", "gemma": "<end_of_turn>", "gemma4": "<turn|>"}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def template_names() -> list[str]:
    """The named chat templates: the file names in templates/ (TypeScript lists the same directory)."""
    return sorted(f[:-len(".jinja")] for f in os.listdir(TEMPLATES_DIR) if f.endswith(".jinja"))


def named_template(name: str) -> str:
    path = os.path.join(TEMPLATES_DIR, f"{name}.jinja")
    if name not in template_names():
        raise KeyError(name)
    with open(path, encoding="utf-8") as f:
        return f.read()


# ----------------------------------------------------------------------------------------------
# Where llama.cpp's vocab files are
# ----------------------------------------------------------------------------------------------

def llama_cpp_models_dir() -> str:
    """<llama.cpp>/models: beside the convert script the worker uses (REFINERY_LLAMA_CPP_CONVERT), else the one
    infra/bootstrap.sh recorded in <REFINERY_STATE_DIR or repo/.refinery>/toolchain.json."""
    convert = os.environ.get("REFINERY_LLAMA_CPP_CONVERT", "").strip()
    if not convert:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        state = os.environ.get("REFINERY_STATE_DIR") or os.path.join(repo, ".refinery")
        toolchain = os.path.join(state, "toolchain.json")
        if os.path.isfile(toolchain):
            with open(toolchain, encoding="utf-8") as f:
                convert = json.load(f).get("llamaCppConvert") or ""
    if not convert:
        raise FileNotFoundError("llama.cpp's models/ directory not found: set REFINERY_LLAMA_CPP_CONVERT or run "
                                "`bash infra/bootstrap.sh` (it records llamaCppConvert in .refinery/toolchain.json)")
    return os.path.join(os.path.dirname(os.path.abspath(convert)), "models")


def vocab_path(fam: Family, models_dir: str | None = None) -> str:
    path = os.path.join(models_dir or llama_cpp_models_dir(), fam.vocab)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{fam.name}: vocab file not found: {path}")
    return path


def test_vectors(fam: Family, models_dir: str | None = None) -> list[tuple[str, list[int]]]:
    """llama.cpp's own tokenizer test vectors for the family's vocab: (text, expected ids) pairs.

    <file>.inp holds the texts separated by lines of "__ggml_vocab_test__"; <file>.out one line of
    space-separated ids per text (llama.cpp's tests/test-tokenizer-0 reads them the same way)."""
    path = vocab_path(fam, models_dir)
    with open(path + ".inp", encoding="utf-8") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")
    with open(path + ".out", encoding="utf-8") as f:
        ids = f.read().split("\n")
    texts[-1] = texts[-1].removesuffix("\n__ggml_vocab_test__\n").removesuffix("\n__ggml_vocab_test__")
    if texts and texts[-1] == "":
        texts.pop()
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, ids)]


# ----------------------------------------------------------------------------------------------
# The real tokenizer, cached
# ----------------------------------------------------------------------------------------------

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fix_ignore_merges(tj: dict) -> None:
    # Llama 3's tokenizer takes a pre-token that is itself in the vocab as one token (llama.cpp does too); the
    # converted one merges it pair by pair ("Cửa Việt": 5 tokens instead of 3).
    tj["model"]["ignore_merges"] = True


def _fix_sentencepiece_normalizer(tj: dict) -> None:
    # SentencePiece prepends "▁" and turns every space into "▁" before the BPE (Llama 2's tokenizer.json does it
    # with this normalizer); the converted Metaspace pre-tokenizer differs on leading spaces (" " -> "▁" instead
    # of "▁▁"), which 15 of llama.cpp's 46 test vectors for the vocab catch.
    tj["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": "\u2581"}]}
    tj["pre_tokenizer"] = None


def _fix_bos_post_processor(tj: dict, bos: str) -> None:
    # Llama 3's tokenizer starts every encoding with <|begin_of_text|>; the converted one adds nothing. Besides
    # tokenizer(text) differing, llama.cpp's convert script tells pre-tokenizers apart by hashing
    # tokenizer.encode(<its test text>): without the BOS the hash is Smaug's ("smaug-bpe", which does not ignore
    # merges), and llama.cpp then splits "Cửa Việt" into 5 tokens instead of 3.
    bos_id = next(t["id"] for t in tj["added_tokens"] if t["content"] == bos)
    special = {"SpecialToken": {"id": bos, "type_id": 0}}
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [special, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [special, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": bos, "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


# Repairs of transformers' GGUF -> tokenizer.json conversion, so the tokenizer reproduces llama.cpp's test vectors
# for the vocab (jobs/tests/test_families.py checks every one).
TOKENIZER_FIXES = {"ignore_merges": lambda tj, bos: _fix_ignore_merges(tj),
                   "sentencepiece_normalizer": lambda tj, bos: _fix_sentencepiece_normalizer(tj),
                   "bos_post_processor": _fix_bos_post_processor}
TOKENIZER_BUILD = 3  # part of the cache key: bump when the conversion or a fix changes


def _apply_fixes(fam: Family, tokenizer_dir: str) -> None:
    if not fam.tokenizer_fixes:
        return
    path = os.path.join(tokenizer_dir, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    with open(os.path.join(tokenizer_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        bos = json.load(f).get("bos_token")
    for fix in fam.tokenizer_fixes:
        TOKENIZER_FIXES[fix](tj, bos)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)


def cached_tokenizer_dir(fam: Family, models_dir: str | None = None) -> str:
    """A saved tokenizer for the family's vocab file, built once per file content (see the module docstring)."""
    path = vocab_path(fam, models_dir)
    target = os.path.join(TOKENIZER_CACHE, f"{fam.vocab}-{_sha256(path)[:16]}-v{TOKENIZER_BUILD}")
    if os.path.isfile(os.path.join(target, "tokenizer_config.json")):
        return target
    from transformers import AutoTokenizer
    os.makedirs(TOKENIZER_CACHE, exist_ok=True)
    extra = {"tokenizer_type": fam.tokenizer_type} if fam.tokenizer_type else {}
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), **extra)
    tmp = tempfile.mkdtemp(prefix=f".{fam.vocab}-", dir=TOKENIZER_CACHE)
    try:
        tok.save_pretrained(tmp)
        _apply_fixes(fam, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.isfile(os.path.join(target, "tokenizer_config.json")):
                raise
            # another build renamed its copy first: theirs is as good as ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
