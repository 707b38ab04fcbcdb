"""Real model families (refinery_jobs/families.py): each one's tiny model with its real tokenizer and chat template
goes through the real jobs, sft (LoRA and full) -> dpo -> merge -> gguf (llama.cpp exporter), and the worker's
llama.cpp check (activities/gguf-check.ts) passes: tokenizer match 1 on the check prompts and on llama.cpp's own
tokenizer test vectors for the vocab, f16 greedy match 1, q8_0 / q4_0 above their stated token agreement (and a
corrupted q4_0 file below it). Plus the assistant-only loss masks under each family's template, multi-turn.

Families: REFINERY_FAMILIES (comma list, or "all"); default qwen2,mistral (one byte-level BPE vocab, one
SentencePiece vocab), which CI runs. `npm run test:families` runs all of them.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refinery_jobs import families, ollama  # noqa: E402
from tests import helpers  # noqa: E402
from tests.helpers import REPO, demo, job_config, run_job, workdir  # noqa: E402
from tests.test_gguf_llamacpp import llama_cpp_tools  # noqa: E402
from tests.test_jobs import assert_contract  # noqa: E402
from tests.test_ollama import ollama_check_tool  # noqa: E402

DEFAULT_FAMILIES = ("qwen2", "mistral")
TYPES = ["f16", "q8_0", "q4_0"]
# Few steps, short rows, small batches: the 150k-262k-token vocabularies make every logit row expensive on a CPU.
# A small learning rate: a few large steps collapse a random tiny model onto one token ("????"), and a reference
# that is one token everywhere cannot tell a broken quantization from an honest one.
HYPER = {"max_steps": 2, "batch_size": 4, "max_length": 96, "save_steps": None, "learning_rate": 5e-4}
# Gemma 4's tiny model (262k-token vocabulary, hidden 64) is nearly flat after 2 steps: no check position where
# the HF model is confident, so a quantization cannot be judged on it. It trains longer (long suite only).
FAMILY_HYPER = {"gemma": {"max_steps": 30, "learning_rate": 1e-3}}
CHECK = {"check_prompts": ["What is the capital of France?", "Please tell me about the sea.", "hello"],
         "check_new_tokens": 12}
# A multi-turn conversation with a system message: every assistant turn, and nothing else, must be trained.
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Good question! The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome. Happy to help!"},
]
# The worker's check, run from a file (node-llama-cpp's binary self-test re-runs the process).
LLAMA_CHECK = """
const { checkGgufDirectory, readTokenizerVectors } = await import(process.env.GGUF_CHECK_MODULE);
const tokenizerVectors = await readTokenizerVectors(process.env.GGUF_VECTORS);
try {
  console.log(JSON.stringify({ checks: await checkGgufDirectory(process.env.GGUF_DIR, { tokenizerVectors }) }));
} catch (err) {
  console.log(JSON.stringify({ error: String(err.message) }));
}
"""


def selected_families() -> list[str]:
    value = os.environ.get("REFINERY_FAMILIES", "").strip()
    if value == "all":
        return [name for name, fam in families.FAMILIES.items() if fam.vocab is not None]
    names = [v.strip() for v in value.split(",") if v.strip()] or list(DEFAULT_FAMILIES)
    for name in names:
        families.family(name)  # an unknown name fails here, with the known ones
    return names


def trained_runs(tokenizer, input_ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of consecutive trained tokens (label != -100)."""
    runs, current = [], []
    for token, label in zip(input_ids, labels):
        if label != -100:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def expected_turns(tokenizer, messages: list[dict]) -> list[str]:
    eos = tokenizer.eos_token  # make_tiny_model: eos = the template's end-of-turn token
    return [m["content"] + eos for m in messages if m["role"] == "assistant"]


def llama_check(gguf_dir: str, vocab_file: str, work: str) -> dict:
    script = os.path.join(work, "gguf-check.mjs")
    with open(script, "w", encoding="utf-8") as f:
        f.write(LLAMA_CHECK)
    tsx = os.path.join(REPO, "node_modules", ".bin", "tsx")
    module = pathlib.Path(REPO, "activities", "gguf-check.ts").as_uri()
    check = subprocess.run([tsx, script], cwd=REPO, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "GGUF_DIR": gguf_dir, "GGUF_CHECK_MODULE": module,
                                "GGUF_VECTORS": vocab_file})
    assert check.returncode == 0, check.stderr[-3000:]
    return json.loads(check.stdout.strip().splitlines()[-1])


def corrupt_matrices(path: str, seed: int = 0) -> None:
    """Overwrite every matrix's quantized data with random bytes (a quantizer that writes garbage blocks and scales):
    the file still loads, its numbers are wrong. Shuffling blocks instead was not always caught: a barely trained
    tiny model that answers "????" to everything can keep answering it."""
    import gguf
    import numpy as np
    reader = gguf.GGUFReader(path)
    rng = np.random.default_rng(seed)
    patches = [(t.data_offset, rng.integers(0, 256, t.n_bytes, dtype=np.uint8).tobytes())
               for t in reader.tensors if len(t.shape) >= 2]
    del reader
    with open(path, "r+b") as f:
        for offset, data in patches:
            f.seek(offset)
            f.write(data)


class FamilyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tools = llama_cpp_tools()
        cls.families = selected_families()

    def test_assistant_masks_train_every_assistant_turn_and_nothing_else(self):
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        from refinery_jobs import models
        with open(demo("sft.jsonl"), encoding="utf-8") as f:
            demo_rows = [json.loads(line)["messages"] for line in f][:3]
        conversations = [CONVERSATION, CONVERSATION[1:], *demo_rows]
        for name in self.families:
            with self.subTest(name):
                model_dir = helpers.family_model(name)
                tok = AutoTokenizer.from_pretrained(model_dir)
                rows = []
                for messages in conversations:
                    input_ids, mask = models.assistant_token_mask(tok, messages)
                    rows.append({"input_ids": input_ids, "assistant_masks": mask})
                # TRL turns the masks into labels, as in the sft job.
                args = SFTConfig(output_dir=workdir(f"masks-{name}"), use_cpu=True, bf16=False, report_to="none",
                                 gradient_checkpointing=False, max_length=512, assistant_only_loss=False)
                trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                                     train_dataset=Dataset.from_list(rows), processing_class=tok)
                prepared = {tuple(r["input_ids"]): r["labels"] for r in trainer.train_dataset}
                for messages, row in zip(conversations, rows):
                    labels = prepared[tuple(row["input_ids"])]
                    self.assertEqual([t.strip() for t in trained_runs(tok, row["input_ids"], labels)],
                                     [t.strip() for t in expected_turns(tok, messages)], messages)

    def test_tool_call_conversations_train_the_calls_and_answers_not_the_results(self):
        """A tool-call conversation (canonical form: assistant tool_calls, a tool message, the row's tools) under
        a template with tool support: the call and the final answer are trained; the question, the tool's result
        and the function schemas the template renders are not."""
        from transformers import AutoTokenizer

        from refinery_jobs import models
        if "qwen2" not in self.families:
            self.skipTest("needs qwen2")
        tok = AutoTokenizer.from_pretrained(helpers.family_model("qwen2"))
        # The vocab's own template is plain ChatML; the named `qwen` one (Qwen2.5 Instruct's) renders tools.
        tok.chat_template = models.resolve_chat_template("qwen")
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                                   "parameters": {"type": "object", "properties": {
                                                       "city": {"type": "string"}}, "required": ["city"]}}}]
        messages = [
            {"role": "user", "content": "Is it raining in Oslo?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "content": "{\"rain\": true, \"celsius\": 4}"},
            {"role": "assistant", "content": "Yes, it is raining in Oslo (4 degrees)."},
        ]
        input_ids, mask = models.assistant_token_mask(tok, messages, tools)
        trained = tok.decode([t for t, m in zip(input_ids, mask) if m])
        untrained = tok.decode([t for t, m in zip(input_ids, mask) if not m])
        self.assertIn("get_weather", trained)
        self.assertIn('"Oslo"', trained)
        self.assertIn("Yes, it is raining in Oslo (4 degrees).", trained)
        for text in ("Is it raining in Oslo?", '"rain": true', "Current weather of a city"):
            self.assertNotIn(text, trained)
            self.assertIn(text, untrained)

    def test_hf_tokenizer_reproduces_llama_cpp_test_vectors(self):
        from transformers import AutoTokenizer
        for name in self.families:
            with self.subTest(name):
                tok = AutoTokenizer.from_pretrained(helpers.family_model(name))
                vectors = families.test_vectors(families.family(name))
                self.assertGreater(len(vectors), 10)
                wrong = [(text, ids, tok(text, add_special_tokens=False).input_ids) for text, ids in vectors
                         if tok(text, add_special_tokens=False).input_ids != ids]
                self.assertEqual(wrong, [], f"{len(wrong)} of {len(vectors)} vectors differ")

    def test_chat_template_override_unknown_name_and_missing_template(self):
        from transformers import AutoTokenizer

        from refinery_jobs import contract, models
        name = self.families[0]
        with self.assertRaises(contract.JobError) as caught:
            models.resolve_chat_template("qwen7")
        self.assertEqual(caught.exception.category, "config")
        for template in families.template_names():
            self.assertIn(template, str(caught.exception))
        self.assertEqual(models.resolve_chat_template("{{ x }}"), "{{ x }}")  # Jinja text is used as given

        stripped = workdir(f"{name}-no-template")
        shutil.copytree(helpers.family_model(name), stripped, dirs_exist_ok=True)
        os.remove(os.path.join(stripped, "chat_template.jinja"))  # make_tiny_model saves the template there
        with self.assertRaises(contract.JobError) as caught:
            models.require_chat_template(AutoTokenizer.from_pretrained(stripped))
        self.assertIn("set `template`", str(caught.exception))
        chats = {"train": demo("sft.jsonl")}

        # A named template: used, saved with the output tokenizer, and its end-of-turn token becomes eos.
        named = job_config("sft", workdir(f"{name}-template-named"), inputs={"model": stripped}, datasets=chats,
                           chat_template="chatml", hyper={**HYPER, "max_steps": 1})
        assert_contract(self, run_job("sft", named), total_steps=1)
        out = AutoTokenizer.from_pretrained(named["output_dir"])
        self.assertEqual(out.chat_template, families.named_template("chatml"))
        if "<|im_end|>" in out.get_vocab():
            self.assertEqual(out.eos_token, "<|im_end|>")

    def test_gguf_py_exporter_refuses_other_architectures_naming_llama_cpp(self):
        # qwen2: another architecture (refused before the model loads); llama3: Llama, but a byte-level BPE vocab.
        for name in [n for n in ("qwen2", "llama3") if n in self.families] or ["qwen2"]:
            with self.subTest(name):
                cfg = job_config("gguf", workdir(f"{name}-gguf-py"), inputs={"model": helpers.family_model(name)},
                                 checkpoint_dir=None, datasets={}, params={"exporter": "gguf-py", "types": ["f16"]})
                result = run_job("gguf", cfg)
                self.assertEqual(result.rc, 4, result)
                error = result.one("error")
                self.assertEqual(error["category"], "unsupported")
                self.assertIn('params.exporter "llama.cpp"', error["message"])

    def test_chain_sft_dpo_merge_gguf_and_llama_cpp_check(self):
        # Two families at a time: the jobs spend most of their time starting (imports), one core each.
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=2) as pool:
            chains = {name: pool.submit(self.run_chain, name) for name in self.families}
        for name, chain in chains.items():
            with self.subTest(name):
                chain.result()  # re-raises the chain's failure here, under its family's name

    def run_chain(self, name: str) -> None:
        import time
        started, seconds = time.time(), {}

        def timed(label: str, result):
            seconds[label] = result.seconds
            return result

        base = helpers.family_model(name)
        # sft with LoRA (trains, saves an adapter) ...
        work = workdir(f"{name}-sft-lora")
        cfg = job_config("sft", work, inputs={"model": base}, datasets={"train": demo("sft.jsonl")},
                         hyper={**HYPER, "max_steps": 1})
        assert_contract(self, timed("sft-lora", run_job("sft", cfg)), total_steps=1)
        self.assertTrue(os.path.isfile(os.path.join(cfg["output_dir"], "adapter_model.safetensors")))
        # ... and full; dpo trains a LoRA adapter on the full sft model, merge folds it in, gguf exports.
        work = workdir(f"{name}-sft-full")
        hyper = {**HYPER, **FAMILY_HYPER.get(name, {})}
        sft = job_config("sft", work, inputs={"model": base}, datasets={"train": demo("sft.jsonl")},
                         finetuning={"type": "full"}, hyper=hyper)
        assert_contract(self, timed("sft-full", run_job("sft", sft)), total_steps=hyper["max_steps"])
        work = workdir(f"{name}-dpo")
        dpo = job_config("dpo", work, inputs={"model": sft["output_dir"]},
                         datasets={"train": demo("preference.jsonl")}, hyper=HYPER)
        assert_contract(self, timed("dpo", run_job("dpo", dpo)), total_steps=HYPER["max_steps"])
        work = workdir(f"{name}-merge")
        merge = job_config("merge", work, inputs={"model": dpo["output_dir"], "base": sft["output_dir"]},
                           checkpoint_dir=None, datasets={}, finetuning={"type": "full"})
        assert_contract(self, timed("merge", run_job("merge", merge)))
        work = workdir(f"{name}-gguf")
        gguf = job_config("gguf", work, inputs={"model": merge["output_dir"]}, checkpoint_dir=None, datasets={},
                          params={"exporter": "llama.cpp", "types": TYPES, **CHECK})
        exported = timed("gguf", run_job("gguf", gguf, env={**self.tools, ollama.CHECK_ENV: ollama_check_tool()}))
        assert_contract(self, exported, total_steps=1 + len(TYPES))
        # The Ollama Modelfiles: the family's template translated, and Ollama's render equal to HF's (test_ollama).
        done = exported.one("done")["metrics"]
        self.assertEqual((done["modelfile_template_known"], done.get("modelfile_render_match")), (1, 1.0), done)

        vocab_file = families.vocab_path(families.family(name))
        out = gguf["output_dir"]
        required = TYPES
        result = llama_check(subset(out, required, workdir(f"{name}-gguf-required")), vocab_file, work)
        self.assertNotIn("error", result, result)
        checks = {c["type"]: c for c in result["checks"]}
        print(f"\n{name} ({time.time() - started:.0f} s; "
              + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + "): "
              + ", ".join(f"{t} greedy {c['greedyMatch']:.2f} agreement {c['tokenAgreement']:.3f} "
                          f"top-5 {c['top5Agreement']:.3f} confident {c.get('confidentAgreement', -1):.3f} "
                          f"of {c.get('confidentPositions')}" for t, c in checks.items()), file=sys.stderr)
        self.assertEqual(sorted(checks), sorted(required))
        self.assertEqual(checks["f16"]["greedyMatch"], 1)
        for t, c in checks.items():
            self.assertEqual(c["tokenizerMatch"], 1, t)
            self.assertEqual(c["vectorMatch"], 1, t)
        for t in ("q8_0", "q4_0"):  # judged on the positions where HF is confident, every family
            self.assertIn("confidentAgreement", checks[t], t)

        # A broken quantization fails the check: every matrix's data random.
        broken_type = "q4_0"
        broken = subset(out, ["f16", broken_type], workdir(f"{name}-gguf-broken"))
        corrupt_matrices(os.path.join(broken, f"model-{broken_type}.gguf"))
        result = llama_check(broken, vocab_file, broken)
        print(f"{name}, {broken_type} with random matrices: {result.get('error')}", file=sys.stderr)
        self.assertIn(f"model-{broken_type}.gguf", result.get("error", ""), result)
        self.assertIn("below the", result["error"])


def subset(gguf_dir: str, types: list[str], into: str) -> str:
    """A copy of an export with only these types' files (and the reference)."""
    for f in ["greedy_reference.json", *(f"model-{t}.gguf" for t in types)]:
        shutil.copyfile(os.path.join(gguf_dir, f), os.path.join(into, f))
    return into

if __name__ == "__main__":
    unittest.main()
