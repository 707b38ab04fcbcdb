"""The gguf job's llama.cpp exporter (params.exporter "llama.cpp") with the tools infra/bootstrap.sh builds:
convert_hf_to_gguf.py for f16 / q8_0, llama-quantize for the rest. Each file is read back with gguf-py and then
loaded in llama.cpp itself (node-llama-cpp, through the worker's own check, activities/gguf-check.ts), where the
f16 file's greedy tokens must equal the Hugging Face model's. Plus the errors a misconfigured worker gets.

The tools are found as the worker finds them: REFINERY_LLAMA_CPP_CONVERT / REFINERY_LLAMA_QUANTIZE, else
<REFINERY_STATE_DIR or repo/.refinery>/toolchain.json (`bash infra/bootstrap.sh` writes it).
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import helpers  # noqa: E402
from tests.helpers import REPO, job_config, run_job, workdir  # noqa: E402
from refinery_jobs import ollama  # noqa: E402
from tests.test_jobs import assert_contract  # noqa: E402
from tests.test_ollama import ollama_check_tool  # noqa: E402

CONVERT, QUANTIZE = "REFINERY_LLAMA_CPP_CONVERT", "REFINERY_LLAMA_QUANTIZE"
TYPES = ["f16", "q4_k_m"]  # the convert script, then llama-quantize from its f16 file
# Two prompts, 8 tokens: node-llama-cpp takes ~0.25 s a token on 2 busy cores, whatever the model's size.
CHECK = {"check_prompts": ["What is the capital of France?", "Please tell me about the sea."], "check_new_tokens": 8}
# The worker's own check (activities/gguf-check.ts): load every .gguf in llama.cpp, generate greedily, compare
# with greedy_reference.json; it throws when the f16 file's tokens differ from the HF model's. Run from a file
# (node-llama-cpp's binary self-test re-runs the process, which `tsx --eval` does not survive).
LLAMA_CHECK = """
const { checkGgufDirectory } = await import(process.env.GGUF_CHECK_MODULE);
console.log(JSON.stringify(await checkGgufDirectory(process.env.GGUF_DIR)));
"""


def llama_cpp_tools() -> dict[str, str]:
    state = os.environ.get("REFINERY_STATE_DIR") or os.path.join(REPO, ".refinery")
    recorded = {}
    if os.path.isfile(os.path.join(state, "toolchain.json")):
        with open(os.path.join(state, "toolchain.json"), encoding="utf-8") as f:
            recorded = json.load(f)
    tools = {CONVERT: os.environ.get(CONVERT) or recorded.get("llamaCppConvert"),
             QUANTIZE: os.environ.get(QUANTIZE) or recorded.get("llamaQuantize")}
    for var, path in tools.items():
        if not path or not os.path.isfile(path):
            raise AssertionError(f"{var}: llama.cpp tool not found ({path}); run `bash infra/bootstrap.sh`")
    return tools


def field(reader, name: str):
    f = reader.fields[name]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types and f.types[0].name == "STRING" else value.tolist()[0]


class LlamaCppExporterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tools = llama_cpp_tools()

    def test_export_with_llama_cpp_tools_and_check_in_llama_cpp(self):
        import gguf

        work = workdir("gguf-llamacpp")
        cfg = job_config("gguf", work, inputs={"model": helpers.tiny_model()}, checkpoint_dir=None, datasets={},
                         params={"exporter": "llama.cpp", "types": TYPES, **CHECK})
        result = run_job("gguf", cfg, env={**self.tools, ollama.CHECK_ENV: ollama_check_tool()})
        assert_contract(self, result, total_steps=1 + len(TYPES))
        self.assertEqual(result.of("progress")[-1]["step"], 1 + len(TYPES))
        # The Ollama Modelfiles beside the files (tests/test_ollama.py): Ollama renders the demo's ChatML as HF does.
        self.assertEqual(result.one("done")["metrics"]["modelfile_render_match"], 1.0)
        # The tools' own output reached the job log, one prefixed line at a time.
        self.assertIn("[convert_hf_to_gguf.py] ", result.stderr)
        self.assertIn("[llama-quantize] ", result.stderr)
        out = cfg["output_dir"]
        with open(os.path.join(helpers.tiny_model(), "config.json"), encoding="utf-8") as f:
            vocab_size = json.load(f)["vocab_size"]
        self.assertEqual(sorted(os.listdir(out)), sorted([f"model-{t}.gguf" for t in TYPES] +
                                                         [f"Modelfile.{t}" for t in TYPES] +
                                                         ["greedy_reference.json"]))
        self.assertFalse([d for d in os.listdir(work) if d.startswith("gguf-work-")], "work directory left behind")
        metrics = result.one("done")["metrics"]
        for t in TYPES:
            self.assertEqual(metrics[f"bytes_{t}"], os.path.getsize(os.path.join(out, f"model-{t}.gguf")))

        # Valid GGUF, llama metadata, the file type asked for, tensors of that type.
        expected = {"f16": (gguf.LlamaFileType.MOSTLY_F16, {gguf.GGMLQuantizationType.F16}),
                    # k-quants need rows of 256: the tiny model's 64-wide rows get llama-quantize's fallbacks
                    "q4_k_m": (gguf.LlamaFileType.MOSTLY_Q4_K_M, None)}
        for t, (file_type, matrix_types) in expected.items():
            reader = gguf.GGUFReader(os.path.join(out, f"model-{t}.gguf"))
            self.assertEqual(field(reader, "general.architecture"), "llama")
            self.assertEqual(field(reader, "general.name"), "test/gguf")
            self.assertEqual(field(reader, "general.file_type"), int(file_type), t)
            self.assertNotIn("{% generation", field(reader, "tokenizer.chat_template"))
            self.assertEqual(len(reader.fields["tokenizer.ggml.tokens"].data), vocab_size)
            kinds = {tensor.tensor_type for tensor in reader.tensors if len(tensor.shape) == 2}
            if matrix_types is not None:
                self.assertEqual(kinds, matrix_types, t)
            else:
                self.assertTrue(kinds.isdisjoint({gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32}),
                                f"{t}: matrices not quantized: {kinds}")
            norms = {tensor.tensor_type for tensor in reader.tensors if len(tensor.shape) == 1}
            self.assertEqual(norms, {gguf.GGMLQuantizationType.F32})

        # llama.cpp loads every file and generates; f16's greedy tokens equal the HF model's.
        tsx = os.path.join(REPO, "node_modules", ".bin", "tsx")
        self.assertTrue(os.path.isfile(tsx), "node_modules missing: run `bash infra/bootstrap.sh`")
        script = os.path.join(work, "gguf-check.mjs")
        with open(script, "w", encoding="utf-8") as f:
            f.write(LLAMA_CHECK)
        module = pathlib.Path(REPO, "activities", "gguf-check.ts").as_uri()
        check = subprocess.run([tsx, script], cwd=REPO, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "GGUF_DIR": out, "GGUF_CHECK_MODULE": module})
        self.assertEqual(check.returncode, 0, check.stderr[-3000:])
        checks = {c["type"]: c for c in json.loads(check.stdout.strip().splitlines()[-1])}
        self.assertEqual(sorted(checks), sorted(TYPES))
        self.assertTrue(all(c["loaded"] for c in checks.values()))
        self.assertEqual(checks["f16"]["greedyMatch"], 1)
        # Reported, not required: for a tokenizer.json-only BPE vocab llama.cpp's converter writes placeholder
        # scores (-1000), so llama.cpp may split raw text differently from HF (the check feeds HF's prompt tokens).
        self.assertTrue(0 <= checks["f16"]["tokenizerMatch"] <= 1)
        with open(os.path.join(out, "greedy_reference.json"), encoding="utf-8") as f:
            reference = json.load(f)
        self.assertEqual(len(reference["prompts"]), 2)
        self.assertTrue(all(p["greedy_tokens"] for p in reference["prompts"]))

    def test_missing_or_bad_tool_is_a_config_error_naming_the_setting(self):
        model = helpers.tiny_model()
        scratch = workdir("gguf-llamacpp-missing")
        missing = os.path.join(scratch, "nowhere", "convert_hf_to_gguf.py")
        not_executable = os.path.join(scratch, "llama-quantize")
        with open(not_executable, "w", encoding="utf-8") as f:
            f.write("not a program\n")
        os.chmod(not_executable, 0o644)
        cases = [
            ("convert unset", {CONVERT: None, QUANTIZE: None}, ["f16"], CONVERT, "is not set"),
            ("convert missing", {CONVERT: missing, QUANTIZE: None}, ["f16"], CONVERT, "no such file"),
            ("quantize unset", {CONVERT: self.tools[CONVERT], QUANTIZE: None}, ["q4_0"], QUANTIZE, "is not set"),
            ("quantize not executable", {**self.tools, QUANTIZE: not_executable}, ["q4_0"], QUANTIZE,
             "not executable"),
        ]
        for name, env, types, var, what in cases:
            with self.subTest(name):
                work = workdir(f"gguf-llamacpp-{name.replace(' ', '-')}")
                cfg = job_config("gguf", work, inputs={"model": model}, checkpoint_dir=None, datasets={},
                                 params={"exporter": "llama.cpp", "types": types})
                result = run_job("gguf", cfg, env=env)
                self.assertEqual(result.rc, 2, result)
                error = result.one("error")
                self.assertEqual(error["category"], "config")
                self.assertIn(var, error["message"])
                self.assertIn(what, error["message"])
                self.assertEqual(result.of("started"), [], "the tools are checked before the model is loaded")

        # An exporter that does not exist, and a type the exporter cannot write.
        for params, where in (({"exporter": "llamacpp"}, "params.exporter"),
                              ({"types": ["f16", "q4_k_m"]}, "params.types[1]")):
            cfg = job_config("gguf", workdir("gguf-bad-params"), inputs={"model": model}, checkpoint_dir=None,
                             datasets={}, params=params)
            result = run_job("gguf", cfg)
            self.assertEqual(result.rc, 2, result)
            self.assertIn(where, result.one("error")["message"])

    def test_a_failing_tool_fails_the_job_with_its_output(self):
        work = workdir("gguf-llamacpp-failing")
        fake = os.path.join(work, "convert_hf_to_gguf.py")
        with open(fake, "w", encoding="utf-8") as f:
            f.write("import sys\nprint('loading model', flush=True)\n"
                    "print('ERROR: Model FancyForCausalLM is not supported', file=sys.stderr)\nsys.exit(7)\n")
        os.chmod(fake, os.stat(fake).st_mode | stat.S_IXUSR)
        # q4_0 alone: the convert script is first asked for the f16 file llama-quantize would start from.
        cfg = job_config("gguf", work, inputs={"model": helpers.tiny_model()}, checkpoint_dir=None, datasets={},
                         params={"exporter": "llama.cpp", "types": ["q4_0"]})
        result = run_job("gguf", cfg, env={CONVERT: fake, QUANTIZE: self.tools[QUANTIZE]})
        self.assertEqual(result.rc, 1, result)
        self.assertEqual(result.one("started")["total_steps"], 3)
        self.assertIn("--outtype f16", result.stderr)
        message = result.one("error")["message"]
        self.assertEqual(result.one("error")["category"], "runtime")
        self.assertIn("convert_hf_to_gguf.py exited with code 7", message)
        self.assertIn("ERROR: Model FancyForCausalLM is not supported", message)
        self.assertIn("loading model", message)
        self.assertEqual(os.listdir(cfg["output_dir"]), [])
        self.assertFalse([d for d in os.listdir(work) if d.startswith("gguf-work-")], "work directory left behind")


if __name__ == "__main__":
    unittest.main()
