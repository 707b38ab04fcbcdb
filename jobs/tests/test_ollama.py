"""The gguf stage's Ollama Modelfiles (refinery_jobs/ollama.py), checked with Ollama's own code: the Modelfile
parser (github.com/ollama/ollama/parser) and template renderer (.../template) in refinery-ollama-check
(infra/ollama-check, built by `bash infra/bootstrap.sh`). For every chat template Refinery translates, Ollama's
rendered prompt must equal Hugging Face's apply_chat_template(..., add_generation_prompt=True) on the check
conversations; a deliberately wrong translation must fail that check.

The tool is found as the worker finds it: REFINERY_OLLAMA_CHECK, else <REFINERY_STATE_DIR or
repo/.refinery>/toolchain.json's `ollamaCheck`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refinery_jobs import families, ollama  # noqa: E402
from tests import helpers  # noqa: E402
from tests.helpers import REPO, job_config, run_job, workdir  # noqa: E402
from tests.test_jobs import assert_contract  # noqa: E402

CHECK = {"check_prompts": ["What is the capital of France?", "hello"], "check_new_tokens": 4}
TYPES = ["f16", "q4_0"]
# The template each family's tiny model carries (make_tiny_model: the vocab's own, else the family's named one).
FAMILY_TEMPLATES = {"llama": "chatml", "llama3": "llama3.1", "qwen2": "qwen2", "mistral": "mistral", "phi3": "phi3",
                    "gemma": "gemma4"}


def ollama_check_tool() -> str:
    state = os.environ.get("REFINERY_STATE_DIR") or os.path.join(REPO, ".refinery")
    recorded = {}
    if os.path.isfile(os.path.join(state, "toolchain.json")):
        with open(os.path.join(state, "toolchain.json"), encoding="utf-8") as f:
            recorded = json.load(f)
    path = os.environ.get(ollama.CHECK_ENV) or recorded.get("ollamaCheck")
    if not path or not os.path.isfile(path):
        raise AssertionError(f"{ollama.CHECK_ENV}: refinery-ollama-check not found ({path}); run "
                             "`bash infra/bootstrap.sh ollama-check`")
    return path


def check_template(tool: str, tokenizer, t: ollama.OllamaTemplate, work: str, *, adds_bos: bool,
                   template: str | None = None) -> tuple[int, int, list[str]]:
    """Write a Modelfile with t's TEMPLATE for this tokenizer and compare Ollama's renders with HF's."""
    stop = ollama.stop_tokens(t, tokenizer.eos_token)
    text = template or ollama.fill(t, bos=tokenizer.bos_token, eos=tokenizer.eos_token, adds_bos=adds_bos)
    path = os.path.join(work, "Modelfile.f16")
    with open(path, "w", encoding="utf-8") as f:
        f.write(ollama.modelfile_text("model-f16.gguf", title="test", template=text, template_note=t.name,
                                      stop=stop, parameters=[("num_ctx", "1024")]))
    convs = ollama.check_conversations(CHECK["check_prompts"])
    return ollama.render_check(tool, path, gguf_name="model-f16.gguf", stop=stop, conversations=convs,
                               expected=ollama.hf_prompts(tokenizer, convs, adds_bos=adds_bos))


class TemplateTranslationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from transformers import AutoTokenizer
        cls.tool = ollama_check_tool()
        cls.tokenizer = AutoTokenizer.from_pretrained(helpers.tiny_model())  # bos <s>; eos <|im_end|>

    def test_every_known_template_renders_as_hf_with_and_without_runner_bos(self):
        work = workdir("ollama-templates")
        for name, sources in ollama._known_jinja().items():
            for i, jinja in enumerate(sources):
                t = ollama.recognise(jinja)
                self.assertIsNotNone(t, name)
                self.assertEqual(t.name, name)
                self.tokenizer.chat_template = jinja
                for adds_bos in (True, False):
                    with self.subTest(template=name, source=i, adds_bos=adds_bos):
                        equal, compared, problems = check_template(self.tool, self.tokenizer, t, work,
                                                                   adds_bos=adds_bos)
                        self.assertEqual(problems, [])
                        self.assertEqual((equal, compared), (len(CHECK["check_prompts"]) + 2,) * 2)

    def test_a_wrong_translation_fails_the_check(self):
        # ChatML without the newline after the role: Ollama's prompt differs from HF's on every conversation.
        work = workdir("ollama-wrong")
        t = ollama.OLLAMA_TEMPLATES["chatml"]
        self.tokenizer.chat_template = families.named_template("chatml")
        wrong = t.template.replace("{{ .Role }}\n", "{{ .Role }}")
        self.assertNotEqual(wrong, t.template)
        equal, compared, problems = check_template(self.tool, self.tokenizer, t, work, adds_bos=False,
                                                   template=wrong)
        self.assertEqual(equal, 0)
        self.assertEqual(compared, len(CHECK["check_prompts"]) + 2)
        self.assertTrue(problems and "Ollama renders" in problems[0], problems)

    def test_the_job_ships_no_template_that_fails_the_check(self):
        # The gguf job's own step (GGUFRecipe.write_modelfiles) on a stand-in recipe, with the chatml translation
        # broken: the Modelfile is rewritten without TEMPLATE and the metrics say 0 of N matched.
        import dataclasses
        import types
        from unittest import mock

        from refinery_jobs import gguf
        out = workdir("ollama-job-fallback")
        self.tokenizer.chat_template = families.named_template("chatml")
        right = ollama.OLLAMA_TEMPLATES["chatml"]
        wrong = dataclasses.replace(right, template=right.template.replace("{{ .Role }}\n", "{{ .Role }}"))
        recipe = types.SimpleNamespace(
            tokenizer=self.tokenizer, config=types.SimpleNamespace(max_position_embeddings=4096), model=None,
            types=["f16"], cfg=types.SimpleNamespace(run_id="r", stage_id="gguf", output_dir=out, params=CHECK),
            gguf_adds_bos=lambda: False, output_path=lambda t: os.path.join(out, f"model-{t}.gguf"),
            modelfile_path=lambda t: os.path.join(out, f"Modelfile.{t}"))
        with mock.patch.dict(ollama.OLLAMA_TEMPLATES, {"chatml": wrong}), \
                mock.patch.dict(os.environ, {ollama.CHECK_ENV: self.tool}):
            metrics = gguf.GGUFRecipe.write_modelfiles(recipe)
        n = len(CHECK["check_prompts"]) + 2
        self.assertEqual(metrics, {"modelfiles": 1, "modelfile_template_known": 1, "modelfile_render_checked": 1,
                                   "modelfile_render_match": 0.0})
        with open(os.path.join(out, "Modelfile.f16"), encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn('TEMPLATE """', text)
        self.assertIn(f'translation "chatml" of the model\'s chat template failed its check (0 of {n}', text)
        self.assertEqual(parse(self.tool, os.path.join(out, "Modelfile.f16"))["parameters"]["num_ctx"], 4096)

    def test_unknown_template_is_not_recognised(self):
        self.assertIsNone(ollama.recognise(None))
        self.assertIsNone(ollama.recognise(families.named_template("chatml").replace("assistant", "bot")))
        # {% generation %} markers and outer whitespace do not matter (the demo Llama's template has markers).
        self.assertEqual(ollama.recognise("\n" + families.named_template("mistral") + "  ").name, "mistral")

    def test_ollama_parser_refuses_a_broken_modelfile(self):
        path = os.path.join(workdir("ollama-broken"), "Modelfile")
        with open(path, "w", encoding="utf-8") as f:
            f.write('FROM ./model-f16.gguf\nTEMPLATE """{{ .Prompt }}\n')  # unterminated """
        with self.assertRaises(ollama.CheckToolError):
            ollama.run_check_tool(self.tool, path, [])
        with open(path, "w", encoding="utf-8") as f:
            f.write("FROM ./model-f16.gguf\nPARAMETER num_ctx many\n")  # Ollama types parameters
        with self.assertRaisesRegex(ollama.CheckToolError, "num_ctx"):
            ollama.run_check_tool(self.tool, path, [])


class FamilyTemplatesTest(unittest.TestCase):
    """Each family's real tokenizer and template (llama.cpp's vocab files, as test_families builds them); the
    demo Llama's is TemplateTranslationTest's and the job test's."""

    def test_family_templates_are_recognised_and_render_as_hf(self):
        from refinery_jobs import make_tiny_model
        from tests.test_families import selected_families  # REFINERY_FAMILIES (default qwen2, mistral; "all")
        tool = ollama_check_tool()
        work = workdir("ollama-families")
        for name in selected_families():
            expected = FAMILY_TEMPLATES[name]
            with self.subTest(name):
                tok = make_tiny_model.family_tokenizer(families.family(name))
                t = ollama.recognise(tok.chat_template)
                self.assertEqual(t and t.name, expected)
                self.assertEqual(ollama.stop_tokens(t, tok.eos_token), [families.family(name).end_of_turn])
                probe = tok("a").input_ids
                equal, compared, problems = check_template(tool, tok, t, work,
                                                           adds_bos=bool(probe) and probe[0] == tok.bos_token_id)
                self.assertEqual(problems, [])
                self.assertEqual(equal, compared)


def parse(tool: str, path: str) -> dict:
    return ollama.run_check_tool(tool, path, [])


class GgufJobModelfilesTest(unittest.TestCase):
    """The gguf job (gguf-py exporter, the demo's tiny Llama) writes and checks one Modelfile per type."""

    def test_modelfile_per_type_parsed_by_ollama_and_rendered_as_hf(self):
        tool = ollama_check_tool()
        work = workdir("gguf-ollama")
        cfg = job_config("gguf", work, inputs={"model": helpers.tiny_model()}, checkpoint_dir=None, datasets={},
                         params={"types": TYPES, **CHECK})
        result = run_job("gguf", cfg, env={ollama.CHECK_ENV: tool})
        assert_contract(self, result, total_steps=1 + len(TYPES))
        metrics = result.one("done")["metrics"]
        self.assertEqual(metrics["modelfiles"], len(TYPES))
        self.assertEqual(metrics["modelfile_template_known"], 1)
        self.assertEqual(metrics["modelfile_render_checked"], 1)
        self.assertEqual(metrics["modelfile_render_match"], 1.0)
        out = cfg["output_dir"]
        self.assertEqual(sorted(os.listdir(out)), sorted([f"model-{t}.gguf" for t in TYPES] +
                                                         [f"Modelfile.{t}" for t in TYPES] +
                                                         ["greedy_reference.json"]))
        for t in TYPES:
            parsed = parse(tool, os.path.join(out, f"Modelfile.{t}"))
            self.assertEqual(parsed["from"], f"./model-{t}.gguf")
            self.assertTrue(os.path.isfile(os.path.join(out, parsed["from"])))
            self.assertEqual(parsed["parameters"]["stop"], ["<|im_end|>"])
            self.assertEqual(parsed["parameters"]["num_ctx"], 1024)
            # The demo tokenizer adds no BOS, its template writes none: ChatML exactly.
            self.assertEqual(parsed["template"], ollama.OLLAMA_TEMPLATES["chatml"].template)

    def test_unknown_template_and_no_tool_write_modelfiles_without_claims(self):
        # A chat template Refinery does not translate, and a worker without refinery-ollama-check.
        model = os.path.join(workdir("ollama-unknown-model"), "model")
        shutil.copytree(helpers.tiny_model(), model)
        path = os.path.join(model, "tokenizer_config.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        jinja = os.path.join(model, "chat_template.jinja")
        if os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                source = f.read()
            with open(jinja, "w", encoding="utf-8") as f:
                f.write(source.replace("assistant", "bot"))
        else:
            config["chat_template"] = config["chat_template"].replace("assistant", "bot")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(config, f)
        work = workdir("gguf-ollama-unknown")
        cfg = job_config("gguf", work, inputs={"model": model}, checkpoint_dir=None, datasets={},
                         params={"types": ["f16"], **CHECK})
        result = run_job("gguf", cfg, env={ollama.CHECK_ENV: None})
        assert_contract(self, result, total_steps=2)
        metrics = result.one("done")["metrics"]
        self.assertEqual(metrics["modelfile_template_known"], 0)
        self.assertEqual(metrics["modelfile_render_checked"], 0)
        self.assertNotIn("modelfile_render_match", metrics)  # skipped is never reported as passed
        with open(os.path.join(cfg["output_dir"], "Modelfile.f16"), encoding="utf-8") as f:
            text = f.read()
        self.assertIn("FROM ./model-f16.gguf\n", text)
        self.assertNotIn("TEMPLATE \"\"\"", text)
        self.assertIn("# No TEMPLATE: the model's chat template is not one Refinery translates", text)
        parsed = parse(ollama_check_tool(), os.path.join(cfg["output_dir"], "Modelfile.f16"))
        self.assertIsNone(parsed["template"])


if __name__ == "__main__":
    unittest.main()
