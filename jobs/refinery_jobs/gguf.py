"""Export a merged model to GGUF (`gguf`), with gguf-py alone or with the worker's llama.cpp tools.

    python -m refinery_jobs.gguf --config job.json

Features
  * input: a full HF model (inputs.model; a LoRA adapter + inputs.base is merged in memory first)
  * one file per requested type in output_dir: model-f16.gguf, model-q8_0.gguf, model-q4_0.gguf, ... (the same
    names whichever exporter wrote them), plus greedy_reference.json: the HF model's greedy tokens on the check
    prompts. The worker then loads every file in llama.cpp (node-llama-cpp) and generates; for f16 (or f32) the
    greedy tokens must equal the HF model's, or the export is not committed
  * Modelfile.<type> beside each file, for `ollama create NAME -f Modelfile.<type>`: FROM ./model-<type>.gguf, the
    chat template translated to Ollama's syntax when it is one refinery_jobs/ollama.py knows (recognised by the
    sha256 of its Jinja source; otherwise no TEMPLATE, a comment and metrics modelfile_template_known 0), the
    end-of-turn stop token and num_ctx. With the worker's refinery-ollama-check (REFINERY_OLLAMA_CHECK, built by
    infra/bootstrap.sh) each Modelfile is parsed by Ollama's own parser and its TEMPLATE rendered by Ollama's own
    template code for the check prompts: metrics modelfile_render_match (share equal to HF's apply_chat_template;
    a translation that fails is not shipped); without the tool modelfile_render_checked 0, never a match
  * events: started, one progress per step (model loaded, then one per file written) and, while a llama.cpp tool
    runs, the same progress again every 30 s so a long conversion is not taken for a stalled job

Exporters (params.exporter)
  gguf-py    (default) no llama.cpp checkout needed; Llama-only: model_type llama or mistral (llama.cpp's "llama"
             architecture), default or linear rope scaling; a SentencePiece-style BPE tokenizer.json with
             byte_fallback. Anything else (Qwen2, Phi-3, Gemma, Llama 3's byte-level BPE) is an unsupported error
             that names params.exporter "llama.cpp". Tensors renamed to llama.cpp's names, q_proj/k_proj rows permuted to llama.cpp's rope
             layout, norms kept f32, a matrix whose row width is not a multiple of 32 kept f16 in quantized files;
             the vocab written as llama.cpp's "llama" vocab with the chat template ({% generation %} markers removed).
  llama.cpp  llama.cpp's own converter: any architecture and tokenizer its convert_hf_to_gguf.py knows. The
             merged model is saved to a work directory beside output_dir (chat template without {% generation %}
             markers), the convert script writes f32 / f16 / bf16 / q8_0 directly, and llama-quantize makes every
             other type from the f16 file (converted to the work directory when f16 itself was not requested).
             The tools' output goes to the job log; a tool that fails fails the job with the tail of its output.
             What the tools decide stays theirs: k-quants need rows that are multiples of 256 and llama-quantize
             falls back (q5_0, q8_0) for narrower tensors, saying so in the log. A SentencePiece-style
             tokenizer.json (BPE with byte_fallback: Llama 2, Mistral, Phi-3, the demo's Llama) without a
             tokenizer.model gets one written beside it, with scores from the merge order (as gguf-py writes them):
             the converter reads SentencePiece scores only from that file (else it writes placeholders and llama.cpp
             splits text differently from HF), and Phi-3's converter needs it. Byte-level BPE vocabularies (Llama 3,
             Qwen2) and Gemma 4's are converted from tokenizer.json as they are. Every family of
             refinery_jobs/families.py converts; jobs/tests/test_families.py checks each in llama.cpp.
             The tools' versions are not part of the stage's cache key: after changing them, `--force-stage`.
             Where the tools are is the worker's configuration, never the spec's (a spec does not choose programs
             to run on a worker, and paths differ between workers):
               REFINERY_LLAMA_CPP_CONVERT  path to convert_hf_to_gguf.py (run as `<python> <script> <model dir>
                                           --outtype T --outfile F --model-name N`, with the gguf-py beside it)
               REFINERY_LLAMA_QUANTIZE     path to the llama-quantize binary (only needed for types it makes)
               REFINERY_LLAMA_CPP_PYTHON   the Python that runs the convert script (default: this job's; the script
                                           imports torch, transformers, numpy and sentencepiece)
             `bash infra/bootstrap.sh` builds both tools, and the worker passes them to gguf jobs by default
             (.refinery/toolchain.json) unless its own environment sets these variables.

Params
  exporter          string, "gguf-py"                 gguf-py | llama.cpp
  types             array of strings, ["f16", "q8_0", "q4_0"]
                      gguf-py:   f32 | f16 | bf16 | q8_0 | q4_0
                      llama.cpp: f32 | f16 | bf16 | q8_0 (convert script) | q4_0 | q4_1 | q5_0 | q5_1 | q2_k |
                                 q3_k_s | q3_k_m | q3_k_l | q4_k_s | q4_k_m | q5_k_s | q5_k_m | q6_k (llama-quantize)
  check_prompts     array of strings                  prompts for greedy_reference.json
  check_new_tokens  integer, 16                       greedy tokens per check prompt

Errors: config (2): bad exporter or types, missing model, a llama.cpp tool not configured or not found (the message
names the variable); unsupported (4): gguf-py with another architecture or tokenizer kind; a llama.cpp tool that
exits non-zero is a runtime error (retried per the stage's policy) carrying the tail of its output.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading

from refinery_jobs import contract, models, ollama
from refinery_jobs.config import JobConfig, JobSpec

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")  # gguf-py
# llama.cpp: what convert_hf_to_gguf.py writes itself, and what llama-quantize makes from f16 without an imatrix.
CONVERT_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZE_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                  "q5_k_s", "q5_k_m", "q6_k")
EXPORTER_TYPES = {"gguf-py": TYPES, "llama.cpp": CONVERT_TYPES + QUANTIZE_TYPES}
CONVERT_ENV = "REFINERY_LLAMA_CPP_CONVERT"
QUANTIZE_ENV = "REFINERY_LLAMA_QUANTIZE"
PYTHON_ENV = "REFINERY_LLAMA_CPP_PYTHON"
TOOL_KEEPALIVE_S = 30.0  # a progress event this often while a tool runs (the worker's stall timer)
TOOL_TAIL_LINES = 25     # lines of a failed tool's output in the error message
# Prompts whose Hugging Face greedy continuation the worker compares with llama.cpp's.
TOP_K = 5  # greedy_reference.json's top_tokens per position (margins: its top-1 minus top-2 logit there)
CHECK_PROMPTS = ("What is the capital of France?", "Please tell me about the sea.", "hello")
SPEC = JobSpec(
    kinds=("gguf",),
    inputs=("model",),
    optional_inputs=("base",),
    formats=(),
    checkpoints=False,
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
                raise contract.unsupported(f"gguf export: unexpected tensor {name} (biases or another architecture?)")
            if rest == "self_attn.q_proj.weight":
                w = permute_rope(w, n_head)
            elif rest == "self_attn.k_proj.weight":
                w = permute_rope(w, n_kv)
            out.append((f"blk.{layer}.{LAYER_TENSORS[rest]}", w))
        else:
            raise contract.unsupported(f"gguf export: unexpected tensor {name}")
    return out


def llama_vocab(model_dir: str, tokenizer, vocab_size: int) -> dict:
    """tokens / scores / types for llama.cpp's SentencePiece-style ("llama") vocab from tokenizer.json."""
    import gguf
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise contract.unsupported(f"gguf export needs a tokenizer.json (fast tokenizer) in {model_dir}")
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise contract.unsupported("gguf export with gguf-py supports SentencePiece-style BPE tokenizers with "
                                   f"byte_fallback (llama.cpp's \"llama\" vocab); got {model.get('type')} "
                                   f"byte_fallback={model.get('byte_fallback')} (params.exporter \"llama.cpp\" "
                                   "converts the tokenizers llama.cpp's convert script knows)")
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


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # protobuf writes a negative int32 as its 64-bit two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value) -> bytes:
    """One protobuf field: bytes/str (length-delimited), float (32-bit), bool/int (varint)."""
    import struct
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(int(value))


def sentencepiece_model(vocab: dict, *, unk_id: int, bos_id: int | None, eos_id: int | None) -> bytes:
    """A SentencePiece BPE model (tokenizer.model) with llama_vocab's pieces, scores and types.

    llama.cpp's convert script reads a SentencePiece vocab's scores only from tokenizer.model; without one it
    writes placeholder scores and llama.cpp then splits text differently from the HF tokenizer (measured: 30 of
    llama.cpp's 46 test vectors for the Llama 2 vocab), and Phi-3's converter refuses outright. Scores from the
    merge order (llama_vocab) make llama.cpp's score-greedy merging take the merges HF's BPE takes. The protobuf
    is written by hand (field numbers of sentencepiece_model.proto): the protobuf package is not a dependency.
    gguf.TokenType and SentencePiece's piece types share their numbers (NORMAL 1 ... BYTE 6)."""
    pieces = b"".join(_field(1, _field(1, t) + _field(2, float(score)) + _field(3, int(kind)))
                      for t, score, kind in zip(vocab["tokens"], vocab["scores"], vocab["types"]))
    trainer = (_field(3, 2) + _field(4, len(vocab["tokens"])) + _field(35, True) + _field(40, unk_id)
               + _field(41, -1 if bos_id is None else bos_id) + _field(42, -1 if eos_id is None else eos_id)
               + _field(43, -1))
    normalizer = _field(1, "identity") + _field(3, True) + _field(4, False) + _field(5, True)
    return pieces + _field(2, trainer) + _field(3, normalizer)


def tool_setting(var: str, what: str, *, executable: bool, default: str | None = None) -> str:
    """An absolute path from the worker's environment, or a config error naming the variable."""
    value = os.environ.get(var, "").strip() or default
    how = ("set it in the worker's environment (`bash infra/bootstrap.sh` builds llama.cpp's tools and the worker "
           "passes them from .refinery/toolchain.json)")
    if not value:
        raise contract.JobError("config", f"{var} is not set: params.exporter \"llama.cpp\" needs {what}; {how}")
    path = os.path.abspath(value)
    if not os.path.isfile(path):
        raise contract.JobError("config", f"{var}={value}: no such file ({what} expected); {how}")
    if executable and not os.access(path, os.X_OK):
        raise contract.JobError("config", f"{var}={value}: not executable ({what} expected)")
    return path


def run_tool(name: str, argv: list[str], keepalive) -> None:
    """Run a tool (an argv, no shell), copy its output line by line to the job log, call `keepalive` every
    TOOL_KEEPALIVE_S seconds while it runs; a non-zero exit is a runtime error carrying its last lines."""
    contract.log(f"running {name}: {shlex.join(argv)}")
    tail: collections.deque[str] = collections.deque(maxlen=TOOL_TAIL_LINES)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except OSError as e:
        raise contract.JobError("config", f"cannot start {name} ({argv[0]}): {e}") from None
    finished = threading.Event()

    def beat():
        while not finished.wait(TOOL_KEEPALIVE_S):
            keepalive()

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # universal newlines: progress bars' "\r" updates arrive as lines too
            line = line.rstrip()
            if line:
                print(f"[{name}] {line}", file=sys.stderr, flush=True)
                tail.append(line)
        rc = proc.wait()
    finally:
        finished.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        last = "\n".join(tail)[-4000:] or "(no output)"
        raise contract.JobError("runtime", f"{name} {how}: {shlex.join(argv)}\n{last}")


class GGUFRecipe:
    def __init__(self, cfg: JobConfig, events: contract.Events):
        self.cfg, self.events = cfg, events
        self.exporter = cfg.params["exporter"]
        allowed = EXPORTER_TYPES[self.exporter]
        types = cfg.params["types"]
        if not types:
            raise contract.config_error("params.types", "must name at least one type")
        for i, t in enumerate(types):
            if t not in allowed:
                raise contract.config_error(f"params.types[{i}]", f"expected one of {'|'.join(allowed)} with exporter "
                                                                   f"{self.exporter}, got {json.dumps(t)}")
        self.types = list(dict.fromkeys(types))
        self.steps = len(self.types) + 1  # model loaded (+ prepared), then one per file
        if self.exporter == "llama.cpp":
            # Checked before any model is loaded: a worker without the tools fails in a second, not after minutes.
            self.convert = tool_setting(CONVERT_ENV, "the path of llama.cpp's convert_hf_to_gguf.py", executable=False)
            self.convert_python = tool_setting(PYTHON_ENV, "a Python to run the convert script with", executable=True,
                                               default=sys.executable)
            self.quantize = None
            if any(t in QUANTIZE_TYPES for t in self.types):
                self.quantize = tool_setting(QUANTIZE_ENV, "the path of llama.cpp's llama-quantize binary",
                                             executable=True)
                if "f16" not in self.types:
                    self.steps += 1  # the f16 file llama-quantize starts from
        self.step = 0

    def progress(self, metrics: dict | None = None, *, advance: bool = True) -> None:
        self.step += 1 if advance else 0
        self.events.progress(self.step, self.steps, metrics=metrics)

    def setup(self) -> None:
        from transformers import AutoConfig
        base, adapter = models.resolve_base(self.cfg)
        config = AutoConfig.from_pretrained(base)
        rope = getattr(config, "rope_parameters", None) or {}
        if self.exporter == "gguf-py":
            if config.model_type not in SUPPORTED_MODEL_TYPES:
                raise contract.unsupported(f"gguf export with gguf-py supports {', '.join(SUPPORTED_MODEL_TYPES)} "
                                           f"models, got model_type {config.model_type!r} (params.exporter "
                                           f"\"llama.cpp\" converts what llama.cpp's convert script knows)")
            if rope.get("rope_type", "default") not in ("default", "linear"):
                raise contract.unsupported(f"gguf export with gguf-py: rope_type {rope.get('rope_type')!r} is not "
                                           f"supported")
        self.events.started(total_steps=self.steps, resumed_from_step=None, device="cpu")

        self.device = models.Device("cpu", "cpu", False)
        self.tokenizer = models.load_tokenizer(adapter, base)
        self.model = models.load_causal_lm(self.cfg, self.device, train=False)
        self.config = self.model.config
        self.rope = rope
        if self.exporter == "gguf-py":
            self.vocab = llama_vocab(adapter if adapter and os.path.isfile(os.path.join(adapter, "tokenizer.json"))
                                     else base, self.tokenizer, self.config.vocab_size)
            self.tensors = gguf_tensors(self.model.state_dict(), self.config)
            self.progress({"tensors": len(self.tensors)})
        else:
            self.progress()

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
        if self.exporter == "gguf-py":
            for t in self.types:
                path = self.output_path(t)
                self.write(t, path + ".partial")
                metrics.update(self.finish_file(t, path))
        else:
            metrics.update(self.export_llama_cpp())
        metrics["files"] = len(self.types)
        self.write_greedy_reference()
        metrics.update(self.write_modelfiles())
        return metrics

    def output_path(self, qtype: str) -> str:
        return os.path.join(self.cfg.output_dir, f"model-{qtype}.gguf")

    def finish_file(self, qtype: str, path: str) -> dict:
        """Rename <path>.partial to <path> (readers never see half a file) and report its size."""
        os.replace(path + ".partial", path)
        size = os.path.getsize(path)
        contract.log(f"wrote {path} ({size:,} bytes)")
        self.progress({f"bytes_{qtype}": size})
        return {f"bytes_{qtype}": size}

    def export_llama_cpp(self) -> dict:
        """Merged model -> HF directory -> convert_hf_to_gguf.py (f32/f16/bf16/q8_0) -> llama-quantize (the rest)."""
        metrics = {}

        def keepalive():
            self.progress(advance=False)

        # The work directory sits beside output_dir (the worker's scratch disk), not in it: only the exports
        # are committed.
        with tempfile.TemporaryDirectory(prefix="gguf-work-", dir=os.path.dirname(self.cfg.output_dir)) as work:
            hf_dir = os.path.join(work, "hf")
            self.model.save_pretrained(hf_dir)
            if self.tokenizer.chat_template:  # llama.cpp's template engine knows no {% generation %}
                self.tokenizer.chat_template = GENERATION_TAG.sub("", self.tokenizer.chat_template)
            self.tokenizer.save_pretrained(hf_dir)
            self.write_sentencepiece_vocab(hf_dir)

            converted = [t for t in self.types if t in CONVERT_TYPES]
            quantized = [t for t in self.types if t in QUANTIZE_TYPES]
            f16 = self.output_path("f16") if "f16" in self.types else os.path.join(work, "model-f16.gguf")
            if quantized and "f16" not in self.types:
                converted.insert(0, "f16")
            for t in converted:
                path = self.output_path(t) if t in self.types else f16
                run_tool("convert_hf_to_gguf.py", [self.convert_python, self.convert, hf_dir, "--outtype", t,
                                                   "--outfile", path + ".partial",
                                                   "--model-name", f"{self.cfg.run_id}/{self.cfg.stage_id}"],
                         keepalive)
                if not os.path.isfile(path + ".partial"):
                    raise contract.JobError("runtime", f"convert_hf_to_gguf.py exited 0 but wrote no {path}.partial")
                if t in self.types:
                    metrics.update(self.finish_file(t, path))
                else:
                    os.replace(path + ".partial", path)
                    self.progress({"bytes_f16_intermediate": os.path.getsize(path)})
            for t in quantized:
                path = self.output_path(t)
                run_tool("llama-quantize", [self.quantize, f16, path + ".partial", t.upper()], keepalive)
                if not os.path.isfile(path + ".partial"):
                    raise contract.JobError("runtime", f"llama-quantize exited 0 but wrote no {path}.partial")
                metrics.update(self.finish_file(t, path))
        return metrics

    def write_sentencepiece_vocab(self, hf_dir: str) -> None:
        """tokenizer.model for a SentencePiece-style tokenizer.json (BPE with byte_fallback and an unk token) that
        has none, so the convert script takes real scores (see sentencepiece_model). Byte-level BPE vocabularies
        (Llama 3, Qwen2) are converted from tokenizer.json's merges and need none."""
        tok = self.tokenizer
        if os.path.isfile(os.path.join(hf_dir, "tokenizer.model")) or tok.unk_token_id is None:
            return
        with open(os.path.join(hf_dir, "tokenizer.json"), encoding="utf-8") as f:
            model = json.load(f)["model"]
        if model.get("type") != "BPE" or not model.get("byte_fallback"):
            return
        vocab = llama_vocab(hf_dir, tok, self.config.vocab_size)
        with open(os.path.join(hf_dir, "tokenizer.model"), "wb") as f:
            f.write(sentencepiece_model(vocab, unk_id=tok.unk_token_id, bos_id=tok.bos_token_id,
                                        eos_id=tok.eos_token_id))
        contract.log(f"wrote tokenizer.model ({len(vocab['tokens'])} pieces, scores from the merge order) for "
                     f"llama.cpp's convert script")

    def gguf_adds_bos(self) -> bool:
        """Whether llama.cpp (and so Ollama's runner) adds BOS itself: the exported file's add_bos_token, else (a
        file without the key) the HF tokenizer's habit, the rule gguf-py's writer follows."""
        import gguf
        reader = gguf.GGUFReader(self.output_path(self.types[0]))
        field = reader.fields.get("tokenizer.ggml.add_bos_token")
        if field is not None:
            return bool(field.parts[field.data[0]][0])
        probe = self.tokenizer("a").input_ids
        adds = bool(probe) and probe[0] == self.tokenizer.bos_token_id
        # Ollama's default for a file without the key differs between its model implementations: say so.
        contract.log(f"{self.output_path(self.types[0])} has no tokenizer.ggml.add_bos_token; the Modelfile "
                     f"assumes the runner {'adds' if adds else 'does not add'} BOS, as the HF tokenizer does")
        return adds

    def write_modelfiles(self) -> dict:
        """Modelfile.<type> beside each model-<type>.gguf for `ollama create`, and the check of its TEMPLATE with
        Ollama's own parser and renderer against HF's chat template (refinery_jobs/ollama.py)."""
        tok = self.tokenizer
        known = ollama.recognise(tok.chat_template)
        tool = ollama.check_tool()
        parameters = ollama.default_parameters(self.config, getattr(self.model, "generation_config", None))
        metrics = {"modelfiles": len(self.types), "modelfile_template_known": int(known is not None),
                   "modelfile_render_checked": 0}
        title = f"{self.cfg.run_id}/{self.cfg.stage_id}"

        def write_all(template, note, stop):
            for t in self.types:
                name = os.path.basename(self.output_path(t))
                text = ollama.modelfile_text(name, title=title, template=template, template_note=note, stop=stop,
                                             parameters=parameters)
                ollama.write_atomic(self.modelfile_path(t), text)

        if known is None:
            why = ("the model's chat template is not one Refinery translates" if tok.chat_template
                   else "the model has no chat template")
            note = (f"No TEMPLATE: {why} (refinery_jobs/ollama.py knows {', '.join(ollama.OLLAMA_TEMPLATES)}).\n"
                    "Ollama then uses what it makes of the GGUF's tokenizer.chat_template: check `ollama show "
                    "--template NAME`.")
            write_all(None, note, [])
            contract.log(f"Modelfiles written without TEMPLATE: {why}")
            return metrics

        adds_bos = self.gguf_adds_bos()
        template = ollama.fill(known, bos=tok.bos_token, eos=tok.eos_token, adds_bos=adds_bos)
        stop = ollama.stop_tokens(known, tok.eos_token)
        digest = ollama.jinja_digest(tok.chat_template)[:16]
        note = (f"TEMPLATE: Refinery's Ollama translation \"{known.name}\" of the model's chat template (sha256 "
                f"{digest}...)")
        if "@BOS_FIRST@" in known.template:  # the Jinja opens with bos_token
            note += f"; its leading BOS {'is added by the runner' if adds_bos else 'is in the TEMPLATE'}"
        note += "."
        write_all(template, note, stop)
        if tool is None:
            contract.log(f"Modelfiles written (TEMPLATE {known.name}); render check skipped: {ollama.CHECK_ENV} is "
                         f"not set (`bash infra/bootstrap.sh` builds refinery-ollama-check)")
            return metrics

        prompts = [str(p) for p in (self.cfg.params.get("check_prompts") or CHECK_PROMPTS)]
        conversations = ollama.check_conversations(prompts)
        expected = ollama.hf_prompts(tok, conversations, adds_bos=adds_bos)
        equal = compared = 0
        problems: list[str] = []
        for t in self.types:
            try:
                e, c, p = ollama.render_check(tool, self.modelfile_path(t),
                                              gguf_name=os.path.basename(self.output_path(t)), stop=stop,
                                              expected=expected, conversations=conversations)
            except (ollama.CheckToolError, OSError, subprocess.SubprocessError) as err:
                e, c, p = 0, len([x for x in expected if x is not None]), [f"refinery-ollama-check: {err}"]
            equal, compared = equal + e, compared + c
            problems += [f"Modelfile.{t}: {x}" for x in p]
        metrics["modelfile_render_checked"] = 1
        metrics["modelfile_render_match"] = equal / compared if compared else 0.0
        if problems:
            # Never ship a TEMPLATE that renders differently from the model's own: without one, Ollama at least
            # does what it does for any GGUF, and the metrics say the translation failed.
            for problem in problems:
                contract.log(f"Ollama check failed: {problem}")
            write_all(None, f"No TEMPLATE: Refinery's translation \"{known.name}\" of the model's chat template "
                            f"failed its check ({equal} of {compared} renders equal to Hugging Face's).\n"
                            "Ollama then uses what it makes of the GGUF's tokenizer.chat_template.", stop)
        else:
            contract.log(f"Modelfiles: TEMPLATE {known.name}, Ollama's render equals HF's chat template on "
                         f"{compared} check conversations")
        return metrics

    def modelfile_path(self, qtype: str) -> str:
        return os.path.join(self.cfg.output_dir, f"Modelfile.{qtype}")

    def write_greedy_reference(self) -> None:
        """greedy_reference.json: the HF model's greedy tokens on the check prompts (the worker
        loads each .gguf in llama.cpp and requires the same tokens from the f16 file), and its argmax after each
        prefix (argmax_tokens[i] predicts token i+1 of prompt + greedy: quantized files must agree enough)."""
        import torch
        n = self.cfg.params["check_new_tokens"]
        prompts = []
        for text in self.cfg.params.get("check_prompts") or CHECK_PROMPTS:
            ids = self.tokenizer(str(text)).input_ids
            with torch.no_grad():
                out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                          max_new_tokens=n, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
                # The argmax after every prefix of prompt + continuation (teacher forcing): what a quantized file
                # is compared with, on the prompt's natural text too, not only on a tiny model's repetitive
                # continuation (which a broken file can still echo).
                # top_tokens: its 5 likeliest there, because a tiny random model's next-token distribution over a
                # 150k-262k vocabulary is nearly flat, and honest rounding flips near-ties.
                logits = self.model(out[:, :-1]).logits[0].float()
                # margins: top-1 minus top-2 logit (nats) at each position, so the worker can judge agreement where
                # the HF model is confident (a flipped near-tie is rounding; a flipped confident choice is not).
                argmax = logits.argmax(-1).tolist()
                best = logits.topk(max(TOP_K, 2), dim=-1)
                top = best.indices[:, :TOP_K].tolist()
                margins = [round(m, 4) for m in (best.values[:, 0] - best.values[:, 1]).tolist()]
            prompts.append({"text": str(text), "prompt_tokens": ids, "greedy_tokens": out[0, len(ids):].tolist(),
                            "argmax_tokens": argmax, "top_tokens": top, "margins": margins})
        contract.write_json_atomic(os.path.join(self.cfg.output_dir, "greedy_reference.json"),
                                   {"max_new_tokens": n, "prompts": prompts})


def recipe_main(cfg: JobConfig, events: contract.Events) -> dict:
    recipe = GGUFRecipe(cfg, events)
    recipe.setup()
    return recipe.export()


if __name__ == "__main__":
    contract.main(SPEC, recipe_main)
