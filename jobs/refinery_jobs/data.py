"""The dataset formats: JSONL readers that validate every row (errors name file:line:field) and normalise it.

The same rules as spec/datasets.ts (which checks a dataset before a run starts); keep the two in step.
`load_rows(path, fmt, accepted)` returns (format, rows), detecting the format from the first row's keys
when `fmt` is None. Standard library only.

Normalised rows (what load_rows returns):
  chat | alpaca | sharegpt -> {"messages": [{"role", "content"}, ...]}
  text                     -> {"text": str}
  preference               -> {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
  prompts                  -> {"prompt": [messages]}   (ends with a user turn)
"""

from __future__ import annotations

import json
from typing import Any, Callable

from refinery_jobs.contract import JobError, data_error, json_type

FORMATS = ("chat", "alpaca", "sharegpt", "text", "preference", "prompts")
MAX_LINE_BYTES = 10 * 1024 * 1024  # a JSONL line longer than this is a data error

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


class _Row:
    """One JSONL row being validated; `fail` raises a data error naming file, line and field."""

    def __init__(self, file: str, line: int, obj: dict):
        self.file, self.line, self.obj = file, line, obj

    def fail(self, field: str | None, message: str) -> JobError:
        return data_error(self.file, self.line, field, message)

    def text(self, value: Any, field: str, *, allow_empty=False) -> str:
        if value is None:
            raise self.fail(field, "missing")
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {json_type(value)}")
        if not allow_empty and not value.strip():
            raise self.fail(field, "empty content")
        return value

    def messages(self, value: Any, field: str, roles=ROLES) -> list[dict]:
        if value is None:
            raise self.fail(field, "missing")
        if not isinstance(value, list):
            raise self.fail(field, f"expected an array of messages, got {json_type(value)}")
        if not value:
            raise self.fail(field, "empty array of messages")
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict):
                raise self.fail(f"{field}[{i}]", f"expected an object with role and content, got {json_type(m)}")
            role = m.get("role")
            if role not in roles:
                raise self.fail(f"{field}[{i}].role",
                                f"expected one of {'|'.join(roles)}, got {json.dumps(role)[:60]}")
            if role == "system" and i != 0:
                raise self.fail(f"{field}[{i}].role", "\"system\" is only allowed as the first message")
            out.append({"role": role, "content": self.text(m.get("content"), f"{field}[{i}].content")})
        return out


def _chat(r: _Row) -> dict:
    msgs = r.messages(r.obj.get("messages"), "messages")
    if not any(m["role"] == "assistant" for m in msgs):
        raise r.fail("messages", "no assistant message to learn from")
    return {"messages": msgs}


def _alpaca(r: _Row) -> dict:
    o = r.obj
    msgs = []
    if o.get("system") is not None:
        msgs.append({"role": "system", "content": r.text(o["system"], "system")})
    history = o.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise r.fail("history", f"expected an array of [question, answer] pairs, got {json_type(history)}")
        for i, pair in enumerate(history):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise r.fail(f"history[{i}]", "expected a [question, answer] pair")
            msgs.append({"role": "user", "content": r.text(pair[0], f"history[{i}][0]")})
            msgs.append({"role": "assistant", "content": r.text(pair[1], f"history[{i}][1]")})
    instruction = r.text(o.get("instruction"), "instruction")
    extra = r.text(o.get("input", ""), "input", allow_empty=True) if "input" in o else ""
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    msgs.append({"role": "user", "content": prompt})
    msgs.append({"role": "assistant", "content": r.text(o.get("output"), "output")})
    return {"messages": msgs}


def _sharegpt(r: _Row) -> dict:
    conv = r.obj.get("conversations")
    if conv is None:
        raise r.fail("conversations", "missing")
    if not isinstance(conv, list) or not conv:
        raise r.fail("conversations", "expected a non-empty array of {from, value} turns")
    msgs = []
    if r.obj.get("system") is not None:
        msgs.append({"role": "system", "content": r.text(r.obj["system"], "system")})
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise r.fail(f"conversations[{i}]", f"expected an object with from and value, got {json_type(turn)}")
        who = turn.get("from")
        if who not in SHAREGPT_ROLES:
            raise r.fail(f"conversations[{i}].from",
                         f"expected one of {'|'.join(SHAREGPT_ROLES)}, got {json.dumps(who)[:60]}")
        if who == "system" and msgs:
            raise r.fail(f"conversations[{i}].from", "\"system\" is only allowed as the first turn")
        msgs.append({"role": SHAREGPT_ROLES[who], "content": r.text(turn.get("value"), f"conversations[{i}].value")})
    if not any(m["role"] == "assistant" for m in msgs):
        raise r.fail("conversations", "no gpt turn to learn from")
    return {"messages": msgs}


def _text(r: _Row) -> dict:
    return {"text": r.text(r.obj.get("text"), "text")}


def _prompt(r: _Row) -> list[dict]:
    """The prompt of a preference or prompts row: "prompt" (string) or "messages" ending with a user turn."""
    if "prompt" in r.obj and r.obj["prompt"] is not None:
        p = r.obj["prompt"]
        if isinstance(p, list):
            msgs = r.messages(p, "prompt")
            field_name = "prompt"
        else:
            return [{"role": "user", "content": r.text(p, "prompt")}]
    elif "messages" in r.obj:
        msgs = r.messages(r.obj["messages"], "messages")
        field_name = "messages"
    else:
        raise r.fail("prompt", "missing (give \"prompt\" or \"messages\")")
    if msgs[-1]["role"] != "user":
        raise r.fail(f"{field_name}[{len(msgs) - 1}].role", f"the prompt must end with a user turn, got "
                                                             f"{json.dumps(msgs[-1]['role'])}")
    return msgs


def _response(r: _Row, key: str) -> list[dict]:
    value = r.obj.get(key)
    if value is None:
        raise r.fail(key, "missing")
    if isinstance(value, list):
        return r.messages(value, key, roles=("assistant",))
    return [{"role": "assistant", "content": r.text(value, key)}]


def _preference(r: _Row) -> dict:
    return {"prompt": _prompt(r), "chosen": _response(r, "chosen"), "rejected": _response(r, "rejected")}


def _prompts(r: _Row) -> dict:
    return {"prompt": _prompt(r)}


VALIDATORS: dict[str, Callable[[_Row], dict]] = {
    "chat": _chat, "alpaca": _alpaca, "sharegpt": _sharegpt, "text": _text,
    "preference": _preference, "prompts": _prompts,
}


def detect_format(obj: dict, accepted: tuple[str, ...]) -> str | None:
    """Guess a row's format from its keys, among the formats a job accepts."""
    keys = set(obj)
    if "chosen" in keys or "rejected" in keys:
        guess = "preference"
    elif "conversations" in keys:
        guess = "sharegpt"
    elif "instruction" in keys or "output" in keys:
        guess = "alpaca"
    elif "text" in keys:
        guess = "text"
    elif "messages" in keys:
        msgs = obj["messages"]
        ends_with_user = isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and \
            msgs[-1].get("role") == "user"
        guess = "prompts" if "prompts" in accepted and (ends_with_user or "chat" not in accepted) else "chat"
    elif "prompt" in keys:
        guess = "prompts"
    else:
        return None
    return guess


def _read_jsonl(path: str):
    """Yield (line number, parsed object) for each non-blank line; data errors for bad lines."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise data_error(path, None, None, f"cannot open: {e}") from None
    with f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            content = raw.rstrip(b"\r\n")
            if len(content) > MAX_LINE_BYTES:
                raise data_error(path, lineno, None, f"line longer than {MAX_LINE_BYTES // (1024 * 1024)} MB")
            if lineno == 1 and content.startswith(b"\xef\xbb\xbf"):
                content = content[3:]
            if not content.strip():
                continue
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as e:
                raise data_error(path, lineno, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise data_error(path, lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(obj, dict):
                raise data_error(path, lineno, None, f"expected a JSON object, got {json_type(obj)}")
            yield lineno, obj


def load_rows(path: str, fmt: str | None, accepted: tuple[str, ...]) -> tuple[str, list[dict]]:
    """Validate every line of a JSONL dataset and return (format, normalised rows).

    `fmt` None means: detect it from the first row, among `accepted`. Raises JobError("data") at the
    first bad line, e.g. `train.jsonl:17: field "messages[2].role": expected one of system|user|assistant, got "bot"`.
    """
    rows: list[dict] = []
    for lineno, obj in _read_jsonl(path):
        if fmt is None:
            fmt = detect_format(obj, accepted)
            if fmt is None or fmt not in accepted:
                raise data_error(path, lineno, None,
                                 f"cannot tell the dataset format from the keys {sorted(obj)}; expected "
                                 f"{'|'.join(accepted)} (set dataset_format)")
        rows.append(VALIDATORS[fmt](_Row(path, lineno, obj)))
    if not rows:
        raise data_error(path, None, None, "the dataset has no rows")
    return fmt, rows
