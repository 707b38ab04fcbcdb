'''Ollama Modelfiles for the gguf stage's exports: one `Modelfile.<type>` beside each `model-<type>.gguf`.

    cd <gguf output> && ollama create NAME -f Modelfile.q4_0

What a Modelfile holds
  FROM ./model-<type>.gguf   relative: `ollama create` resolves it against the Modelfile's directory
  TEMPLATE """..."""         the model's chat template in Ollama's syntax (Go text/template over .Messages),
                             hand-written per known chat template (OLLAMA_TEMPLATES): Jinja -> Go template
                             translation in general is not feasible, so only templates recognised exactly are
                             translated. Recognition: the sha256 of the model's Jinja source, {% generation %}
                             markers removed and outer whitespace stripped, against the sources in KNOWN_JINJA
                             (the named templates in templates/, the demo Llama's, the family vocab files' own).
                             A template that is not recognised gets no TEMPLATE, a comment saying so, and
                             metrics modelfile_template_known 0 (Ollama then guesses from the GGUF's metadata).
  PARAMETER stop             the template's end-of-turn token (families.TEMPLATE_END_OF_TURN: "eos" = the
                             tokenizer's eos token)
  PARAMETER num_ctx          the model's max_position_embeddings, at most MAX_NUM_CTX
  PARAMETER temperature/top_p/top_k  only when the model's generation_config samples (do_sample) and sets them

The check (render_check): each Modelfile is read back with Ollama's own parser and its TEMPLATE rendered with
Ollama's own template package (infra/ollama-check, `refinery-ollama-check`; REFINERY_OLLAMA_CHECK) for the check
conversations (each check prompt as a one-turn chat, one with a system message, one multi-turn); each render
must equal Hugging Face's apply_chat_template(..., add_generation_prompt=True). BOS: Ollama's runner adds the
BOS token itself when the GGUF says tokenizer.ggml.add_bos_token, so a leading BOS in HF's text is then not in
Ollama's prompt (and the TEMPLATE leaves it out); when the GGUF does not add it, the TEMPLATE writes it. A template
that fails the check is not shipped: the Modelfiles are rewritten without TEMPLATE, with a comment saying why.

Not translated (Ollama would differ from HF there): tools and tool calls, thinking, Jinja's `| trim` of message
contents (the check prompts have no outer whitespace), and errors a Jinja template raises (roles that do not
alternate); Ollama also merges consecutive messages of one role.

Standard library only (the gguf job imports it before torch).
'''

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass

from refinery_jobs import families

CHECK_ENV = "REFINERY_OLLAMA_CHECK"
MAX_NUM_CTX = 8192  # Ollama allocates the KV cache for num_ctx up front: a long-context model's full window would
                    # not fit on the machines people run Ollama on; users raise it with `/set parameter num_ctx`
GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")
CHECK_SYSTEM = "You are a concise assistant."
CHECK_ANSWER = "Sure! Here is a short answer."


@dataclass(frozen=True)
class OllamaTemplate:
    name: str
    template: str        # Go text/template; @BOS_FIRST@ / @BOS@ / @EOS@ are filled in per model (fill)
    end_of_turn: str     # a families.TEMPLATE_END_OF_TURN key: the stop token


def _chatml(default_system: str | None = None) -> str:
    # ChatML; Qwen's templates open with a default system turn when the chat has none.
    head = ("" if default_system is None else
            '{{ if and (eq $i 0) (ne .Role "system") }}<|im_start|>system\n' + default_system + "<|im_end|>\n{{ end }}")
    return ("{{- range $i, $_ := .Messages }}" + head + "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
            "<|im_start|>assistant\n")


# A leading system message, as the Jinja templates that fold it into the first user turn test it.
_SYSTEM_FIRST = '(eq (index $.Messages 0).Role "system")'
_FIRST_USER = f"(and (eq $i 1) {_SYSTEM_FIRST})"

OLLAMA_TEMPLATES = {t.name: t for t in (
    OllamaTemplate("chatml", _chatml(), "chatml"),
    OllamaTemplate("qwen2", _chatml("You are a helpful assistant"), "qwen"),
    OllamaTemplate("qwen2.5", _chatml("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."), "qwen"),
    # Llama 3.1: a system turn always (knowledge and today's date as the Jinja's defaults), then the turns.
    OllamaTemplate("llama3.1", (
        "@BOS_FIRST@<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n"
        '{{ if and .Messages (eq (index .Messages 0).Role "system") }}{{ (index .Messages 0).Content }}{{ end }}'
        "<|eot_id|>"
        '{{ range $i, $_ := .Messages }}{{ if not (and (eq $i 0) (eq .Role "system")) }}'
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"), "llama3"),
    # Mistral v0.1/v0.2: the system message opens the first [INST]; no generation prompt of its own.
    OllamaTemplate("mistral", (
        '@BOS_FIRST@{{ range $i, $_ := .Messages }}{{ if eq .Role "user" }}[INST] '
        f"{{{{ if {_FIRST_USER} }}}}{{{{ (index $.Messages 0).Content }}}}\n\n{{{{ end }}}}"
        '{{ .Content }} [/INST]{{ else if eq .Role "assistant" }}{{ .Content }}@EOS@{{ end }}{{ end }}'), "mistral"),
    # Llama 2: BOS before every [INST]; <<SYS>> inside the first.
    OllamaTemplate("llama2", (
        '{{ range $i, $_ := .Messages }}{{ if eq .Role "user" }}'
        f"{{{{ if or (eq $i 0) {_FIRST_USER} }}}}@BOS_FIRST@{{{{ else }}}}@BOS@{{{{ end }}}}[INST] "
        f"{{{{ if {_FIRST_USER} }}}}<<SYS>>\n{{{{ (index $.Messages 0).Content }}}}\n<</SYS>>\n\n{{{{ end }}}}"
        '{{ .Content }} [/INST]{{ else if eq .Role "assistant" }} {{ .Content }} @EOS@{{ end }}{{ end }}'), "llama2"),
    # Phi-3: system messages are dropped (as its Jinja does); every user turn is followed by <|assistant|>.
    OllamaTemplate("phi3", (
        '@BOS_FIRST@{{ range .Messages }}{{ if eq .Role "user" }}<|user|>\n{{ .Content }}<|end|>\n<|assistant|>\n'
        '{{ else if eq .Role "assistant" }}{{ .Content }}<|end|>\n{{ end }}{{ end }}'), "phi3"),
    # Gemma 2/3: no system role; the system message opens the first user turn.
    OllamaTemplate("gemma", (
        '@BOS_FIRST@{{ range $i, $_ := .Messages }}{{ if eq .Role "user" }}<start_of_turn>user\n'
        f"{{{{ if {_FIRST_USER} }}}}{{{{ (index $.Messages 0).Content }}}}\n\n{{{{ end }}}}"
        '{{ .Content }}<end_of_turn>\n{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}'
        "<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n"), "gemma"),
    # Gemma 4 without tools or thinking: turns, then the model turn with an empty thought channel (thinking off).
    OllamaTemplate("gemma4", (
        '@BOS_FIRST@{{ range .Messages }}<|turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        "{{ .Content }}<turn|>\n{{ end }}<|turn>model\n<|channel>thought\n<channel|>"), "gemma4"),
)}

# The qwen2 family's template: the one in llama.cpp's ggml-vocab-qwen2.gguf (Qwen2 Instruct's), which
# make_tiny_model keeps (a vocab's own template wins over templates/qwen.jinja).
QWEN2_VOCAB_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
    "' }}{% endif %}")


def _known_jinja() -> dict[str, list[str]]:
    """Ollama template name -> the Jinja sources it translates. The phi-3 and gemma-4 vocab files' own templates
    are templates/phi3.jinja and templates/gemma4.jinja (jobs/tests/test_ollama.py checks the families)."""
    from refinery_jobs import make_tiny_model
    named = families.named_template
    return {"chatml": [named("chatml"), make_tiny_model.CHAT_TEMPLATE], "qwen2": [QWEN2_VOCAB_JINJA],
            "qwen2.5": [named("qwen")], "llama3.1": [named("llama3")], "mistral": [named("mistral")],
            "llama2": [named("llama2")], "phi3": [named("phi3")], "gemma": [named("gemma")],
            "gemma4": [named("gemma4")]}


def jinja_digest(jinja: str) -> str:
    return hashlib.sha256(GENERATION_TAG.sub("", jinja).strip().encode("utf-8")).hexdigest()


def recognise(jinja: str | None) -> OllamaTemplate | None:
    """The hand-written Ollama template for this exact chat template, or None."""
    if not jinja:
        return None
    digest = jinja_digest(jinja)
    for name, sources in _known_jinja().items():
        if any(jinja_digest(s) == digest for s in sources):
            return OLLAMA_TEMPLATES[name]
    return None


def fill(t: OllamaTemplate, *, bos: str | None, eos: str | None, adds_bos: bool) -> str:
    """The template for one model: its BOS / EOS token text, the leading BOS only when the runner does not add it."""
    text = t.template.replace("@BOS_FIRST@", "" if adds_bos else (bos or "")).replace("@BOS@", bos or "")
    return text.replace("@EOS@", eos or "")


def stop_tokens(t: OllamaTemplate, eos: str | None) -> list[str]:
    eot = families.TEMPLATE_END_OF_TURN[t.end_of_turn]
    eot = eos if eot == "eos" else eot
    return [eot] if eot else []


def default_parameters(config, generation_config) -> list[tuple[str, str]]:
    params = []
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        params.append(("num_ctx", str(min(int(positions), MAX_NUM_CTX))))
    if generation_config is not None and getattr(generation_config, "do_sample", False):
        for name in ("temperature", "top_p", "top_k"):
            value = getattr(generation_config, name, None)
            if value is not None:
                params.append((name, str(value)))
    return params


def _quote(value: str) -> str:
    # Ollama's parser strips one pair of quotes and unescapes nothing.
    if '"' in value or "\n" in value:
        raise ValueError(f"cannot write {value!r} as a Modelfile value")
    return f'"{value}"'


def modelfile_text(gguf_name: str, *, title: str, template: str | None, template_note: str, stop: list[str],
                   parameters: list[tuple[str, str]]) -> str:
    '''A Modelfile in Ollama's grammar: `# comment`, `FROM`, `TEMPLATE """..."""`, `PARAMETER name value`.'''
    lines = [f"# Ollama Modelfile for {title}: {gguf_name}, written by Refinery's gguf stage.",
             f"#   ollama create NAME -f Modelfile.{gguf_name.removeprefix('model-').removesuffix('.gguf')}"
             "    (from this directory)"]
    lines += [f"# {line}" for line in template_note.splitlines()]
    lines.append(f"FROM ./{gguf_name}")
    if template is not None:
        if '"""' in template:
            raise ValueError('an Ollama TEMPLATE cannot contain """')
        lines.append(f'TEMPLATE """{template}"""')
    for token in stop:
        lines.append(f"PARAMETER stop {_quote(token)}")
    for name, value in parameters:
        lines.append(f"PARAMETER {name} {value}")
    return "\n".join(lines) + "\n"


def write_atomic(path: str, text: str) -> None:
    """Write via a temporary file and rename (the worker's upload never sees half a Modelfile)."""
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def check_conversations(prompts: list[str]) -> list[list[dict]]:
    """Each check prompt as a one-turn chat, then one with a system message and one with two user turns."""
    convs = [[{"role": "user", "content": p}] for p in prompts]
    first, second = prompts[0], prompts[-1]
    convs.append([{"role": "system", "content": CHECK_SYSTEM}, {"role": "user", "content": first}])
    convs.append([{"role": "user", "content": first}, {"role": "assistant", "content": CHECK_ANSWER},
                  {"role": "user", "content": second}])
    return convs


def hf_prompts(tokenizer, conversations: list[list[dict]], *, adds_bos: bool) -> list[str | None]:
    """What Ollama's prompt must equal: HF's rendering, less a leading BOS the runner adds itself.
    None where the Jinja template refuses the conversation (Ollama's templates cannot refuse)."""
    out = []
    for conv in conversations:
        try:
            text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - jinja2's TemplateError, raise_exception's, ...: a refused conversation
            out.append(None)
            continue
        bos = tokenizer.bos_token
        if adds_bos and bos and text.startswith(bos):
            text = text[len(bos):]
        out.append(text)
    return out


class CheckToolError(RuntimeError):
    pass


def run_check_tool(tool: str, modelfile: str, conversations: list[list[dict]]) -> dict:
    """refinery-ollama-check: the Modelfile parsed by Ollama's parser, its TEMPLATE rendered per conversation."""
    proc = subprocess.run([tool, modelfile], input=json.dumps({"conversations": conversations}), text=True,
                          capture_output=True, timeout=60)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise CheckToolError(f"{tool} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}") from None
    if proc.returncode != 0 or "error" in out:
        raise CheckToolError(out.get("error") or f"{tool} exited {proc.returncode}")
    return out


def check_tool() -> str | None:
    """The worker's refinery-ollama-check (REFINERY_OLLAMA_CHECK), or None when it has none."""
    value = os.environ.get(CHECK_ENV, "").strip()
    if value and os.path.isfile(value) and os.access(value, os.X_OK):
        return os.path.abspath(value)
    return None


def render_check(tool: str, modelfile: str, *, gguf_name: str, stop: list[str], expected: list[str | None],
                 conversations: list[list[dict]]) -> tuple[int, int, list[str]]:
    """(renders equal to HF's, conversations compared, problems): Ollama's parser must read the file back with
    FROM ./<gguf_name> and these stop tokens, and Ollama's renderer must reproduce HF's prompts."""
    out = run_check_tool(tool, modelfile, conversations)
    problems = []
    if out["from"] != f"./{gguf_name}":
        problems.append(f"FROM is {out['from']!r}, expected './{gguf_name}'")
    got_stop = out["parameters"].get("stop", [])
    if sorted(got_stop if isinstance(got_stop, list) else [got_stop]) != sorted(stop):
        problems.append(f"stop is {got_stop!r}, expected {stop!r}")
    equal = compared = 0
    for conv, want, got in zip(conversations, expected, out["renders"]):
        if want is None:
            continue
        compared += 1
        if got == want:
            equal += 1
        elif len(problems) < 3:
            problems.append(f"{json.dumps(conv)[:200]}: Ollama renders {got!r}, HF {want!r}")
    return equal, compared, problems
