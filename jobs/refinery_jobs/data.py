"""The dataset formats: readers that validate every row (errors name file:line:field) and normalise it.

The same rules as spec/datasets.ts (which checks a dataset before a run starts and commits it in the
canonical form below); keep the two in step. `load_rows(path, fmt, accepted)` returns (format, rows),
detecting the format from the first row's keys when `fmt` is None. Files: JSON Lines, a JSON array
(LLaMA-Factory's usual .json; read as a stream, one element at a time) or .txt (one text per line).
`split_validation` holds out an eval set as LLaMA-Factory's val_size does. Standard library only.

Normalised (canonical) rows, what load_rows returns:
  chat | alpaca | sharegpt -> {"messages": [{"role", "content", "tool_calls"?}, ...], "tools"?: [...]}
  text                     -> {"text": str}
  preference               -> {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
  prompts                  -> {"prompt": [messages]}   (ends with a user turn)
  kto                      -> {"prompt": [messages], "completion": [assistant messages], "label": bool}

Roles: system, user, assistant, tool. An assistant message that calls tools has
"tool_calls": [{"type": "function", "function": {"name", "arguments": {...}}}] (its content may be empty);
"tool" messages hold a tool's result; a chat row's "tools" are [{"type": "function", "function": {...}}],
as transformers' chat templates take them. Runs prepared before canonical datasets committed rows in
their own format (alpaca, sharegpt, prompts as a string ...): those read as before.
"""

from __future__ import annotations

import codecs
import json
import random
from typing import Any, Callable, Iterator

from refinery_jobs.contract import JobError, data_error, json_type

FORMATS = ("chat", "alpaca", "sharegpt", "text", "preference", "prompts", "kto")
MAX_LINE_BYTES = 10 * 1024 * 1024  # a record (JSONL line, JSON array element) longer than this is a data error

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system",
                  "function_call": "assistant", "observation": "tool"}


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
                # "tool" messages come from tool-call data; the message names the roles people write.
                main = [x for x in roles if x != "tool"]
                raise self.fail(f"{field}[{i}].role",
                                f"expected one of {'|'.join(main)}, got {json.dumps(role)[:60]}")
            if role == "system" and i != 0:
                raise self.fail(f"{field}[{i}].role", "\"system\" is only allowed as the first message")
            calls = m.get("tool_calls")
            if calls is not None and role != "assistant":
                raise self.fail(f"{field}[{i}].tool_calls", "only assistant messages call tools")
            # A tool call's text and a tool's result may be empty; nothing else may.
            content = self.text(m.get("content"), f"{field}[{i}].content",
                                allow_empty=calls is not None or role == "tool")
            msg = {"role": role, "content": content}
            if calls is not None:
                msg["tool_calls"] = self.tool_calls(calls, f"{field}[{i}].tool_calls")
            out.append(msg)
        return out

    def tool_calls(self, value: Any, field: str) -> list[dict]:
        if not isinstance(value, list) or not value:
            raise self.fail(field, f"expected a non-empty array of tool calls, got {json_type(value)}")
        out = []
        for i, call in enumerate(value):
            fn = call.get("function") if isinstance(call, dict) and call.get("type") == "function" else None
            if not isinstance(fn, dict):
                raise self.fail(f"{field}[{i}]", "expected {\"type\": \"function\", \"function\": {name, arguments}}")
            name = self.text(fn.get("name"), f"{field}[{i}].function.name")
            args = fn.get("arguments", {})
            if not isinstance(args, dict):
                raise self.fail(f"{field}[{i}].function.arguments", f"expected an object, got {json_type(args)}")
            out.append({"type": "function", "function": {"name": name, "arguments": args}})
        return out

    def tools(self, value: Any, field: str) -> list[dict] | None:
        """Function schemas: canonical [{type: function, function}], or LLaMA-Factory's JSON string of bare schemas."""
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise self.fail(field, "expected a JSON array of function schemas") from None
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(field, f"expected an array of function schemas, got {json_type(value)}")
        out = []
        for i, tool in enumerate(value):
            if not isinstance(tool, dict):
                raise self.fail(f"{field}[{i}]", f"expected a function schema object, got {json_type(tool)}")
            fn = tool["function"] if tool.get("type") == "function" and isinstance(tool.get("function"), dict) else tool
            self.text(fn.get("name"), f"{field}[{i}].name")
            out.append({"type": "function", "function": fn})
        return out or None


def _with_tools(r: _Row, row: dict) -> dict:
    tools = r.tools(r.obj.get("tools"), "tools")
    if tools:
        row["tools"] = tools
    return row


def _chat(r: _Row) -> dict:
    msgs = r.messages(r.obj.get("messages"), "messages")
    if not any(m["role"] == "assistant" for m in msgs):
        raise r.fail("messages", "no assistant message to learn from")
    return _with_tools(r, {"messages": msgs})


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
        value_field = f"conversations[{i}].value"
        if who == "function_call":
            msgs.append({"role": "assistant", "content": "", "tool_calls": _function_call(r, turn.get("value"), value_field)})
        else:
            msgs.append({"role": SHAREGPT_ROLES[who],
                         "content": r.text(turn.get("value"), value_field, allow_empty=who == "observation")})
    if not any(m["role"] == "assistant" for m in msgs):
        raise r.fail("conversations", "no gpt turn to learn from")
    return _with_tools(r, {"messages": msgs})


def _function_call(r: _Row, value: Any, field: str) -> list[dict]:
    """A sharegpt function_call turn: JSON {"name", "arguments"} (or an array of them) as canonical tool calls."""
    try:
        parsed = json.loads(r.text(value, field))
    except json.JSONDecodeError:
        raise r.fail(field, "a function call holds JSON: {\"name\": ..., \"arguments\": {...}}") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for call in calls:
        if not isinstance(call, dict):
            raise r.fail(field, f"expected a {{\"name\", \"arguments\"}} object, got {json_type(call)}")
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                raise r.fail(field, "\"arguments\" is a string that is not JSON") from None
        out.append({"type": "function", "function": {"name": r.text(call.get("name"), field), "arguments": args}})
    return r.tool_calls(out, field)


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


def _kto(r: _Row) -> dict:
    """One unpaired example (TRL's KTO): a prompt, one answer, and whether the answer is desirable."""
    label = r.obj.get("label")
    if label is None:
        raise r.fail("label", "missing")
    if not isinstance(label, bool):
        raise r.fail("label", f"expected true or false, got {json_type(label)}")
    return {"prompt": _prompt(r), "completion": _response(r, "completion"), "label": label}


VALIDATORS: dict[str, Callable[[_Row], dict]] = {
    "chat": _chat, "alpaca": _alpaca, "sharegpt": _sharegpt, "text": _text,
    "preference": _preference, "prompts": _prompts, "kto": _kto,
}


def detect_format(obj: dict, accepted: tuple[str, ...]) -> str | None:
    """Guess a row's format from its keys, among the formats a job accepts."""
    keys = set(obj)
    if "label" in keys and "completion" in keys:
        guess = "kto"
    elif "chosen" in keys or "rejected" in keys:
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


def _open(path: str):
    try:
        return open(path, "rb")
    except OSError as e:
        raise data_error(path, None, None, f"cannot open: {e}") from None


def _read_records(path: str) -> Iterator[tuple[int, Any]]:
    """Yield (line where the record starts, record) for a dataset file of any layout.

    .txt: each non-blank line is {"text": line}. Otherwise JSON: an array if its first non-blank byte
    is "[" (read element by element), else JSON Lines (HF datasets' json loader takes both as .json).
    """
    if path.lower().endswith(".txt"):
        yield from _read_text_lines(path)
        return
    with _open(path) as f:
        head = f.read(4096)
        while head.lstrip(b"\xef\xbb\xbf \t\r\n") == b"" and len(head) > 0:
            more = f.read(4096)
            if not more:
                break
            head += more
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        yield from _read_json_array(path)
    else:
        yield from _read_jsonl(path)


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its ending) in bounded memory; a line over MAX_LINE_BYTES is a data error."""
    with _open(path) as f:
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
            yield lineno, content


def _decode(path: str, lineno: int, content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise data_error(path, lineno, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _read_text_lines(path: str) -> Iterator[tuple[int, dict]]:
    for lineno, content in _lines(path):
        if content.strip():
            yield lineno, {"text": _decode(path, lineno, content)}


def _read_jsonl(path: str):
    """Yield (line number, parsed object) for each non-blank line; data errors for bad lines."""
    for lineno, content in _lines(path):
        if not content.strip():
            continue
        text = _decode(path, lineno, content)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise data_error(path, lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise data_error(path, lineno, None, f"expected a JSON object, got {json_type(obj)}")
        yield lineno, obj


_DECODER = json.JSONDecoder()
_BLANKS = " \t\r\n"
_CHUNK = 1 << 20


def _read_json_array(path: str) -> Iterator[tuple[int, Any]]:
    """Yield (line where it starts, element) for each element of a top-level JSON array, as a stream.

    The text buffer holds the unread rest of one chunk plus the element being read: an element that
    does not parse is retried with more text until it does, the file ends, or it passes
    MAX_LINE_BYTES (refused by its size), so memory stays bounded by that limit plus one chunk.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    with _open(path) as f:
        buf = ""
        pos = 0
        line = 1  # line of buf[pos]
        eof = False

        def more() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            raw = f.read(_CHUNK)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise data_error(path, line, None, f"not valid UTF-8 ({e.reason})") from None
            if not raw:
                eof = True
            buf = buf[pos:] + text
            pos = 0
            return bool(raw) or bool(text)

        def skip_blanks() -> None:
            nonlocal pos, line
            while True:
                start = pos
                while pos < len(buf) and buf[pos] in _BLANKS:
                    pos += 1
                line += buf.count("\n", start, pos)
                if pos < len(buf) or not more():
                    return

        def expect(what: str, after: str) -> str:
            skip_blanks()
            if pos >= len(buf):
                raise data_error(path, line, None, "the JSON array is not closed (\"]\") at the end of the file")
            c = buf[pos]
            if c not in what:
                raise data_error(path, line, None, f"expected {' or '.join(json.dumps(x) for x in what)} {after}, got {json.dumps(c)}")
            return c

        more()
        if buf.startswith("\ufeff"):
            buf = buf[1:]
        if expect("[", "at the start of a JSON array") == "[":
            pos += 1
        first = True
        while True:
            skip_blanks()
            if first and pos < len(buf) and buf[pos] == "]":
                pos += 1
                break
            if pos >= len(buf):
                raise data_error(path, line, None, "the JSON array is not closed (\"]\") at the end of the file")
            start_line = line
            while True:
                try:
                    value, end = _DECODER.raw_decode(buf, pos)
                    # A number at the end of the buffer may go on in the next chunk.
                    if end < len(buf) or eof:
                        break
                except json.JSONDecodeError as e:
                    if eof or len(buf) - pos > MAX_LINE_BYTES:
                        if len(buf) - pos > MAX_LINE_BYTES:
                            raise data_error(path, start_line, None,
                                             f"record longer than {MAX_LINE_BYTES // (1024 * 1024)} MB") from None
                        raise data_error(path, start_line + buf.count("\n", pos, e.pos) if e.pos >= pos else start_line,
                                         None, f"invalid JSON: {e.msg}") from None
                if not more():
                    eof = True
            if end - pos > MAX_LINE_BYTES:
                raise data_error(path, start_line, None, f"record longer than {MAX_LINE_BYTES // (1024 * 1024)} MB")
            line += buf.count("\n", pos, end)
            pos = end
            yield start_line, value
            first = False
            c = expect(",]", f"after the record that starts on line {start_line}")
            pos += 1
            if c == "]":
                break
        skip_blanks()
        if pos < len(buf):
            raise data_error(path, line, None, f"unexpected {json.dumps(buf[pos])} after the end of the JSON array")


def load_rows(path: str, fmt: str | None, accepted: tuple[str, ...]) -> tuple[str, list[dict]]:
    """Validate every record of a dataset file and return (format, normalised rows).

    `fmt` None means: detect it from the first row, among `accepted`. Raises JobError("data") at the
    first bad line, e.g. `train.jsonl:17: field "messages[2].role": expected one of system|user|assistant, got "bot"`.
    """
    rows: list[dict] = []
    for lineno, obj in _read_records(path):
        if not isinstance(obj, dict):
            raise data_error(path, lineno, None, f"expected a JSON object, got {json_type(obj)}")
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


def split_validation(rows: list, val_size: float | int | None, seed: int) -> tuple[list, list]:
    """Hold out an eval set as LLaMA-Factory's val_size does: < 1 a fraction of the rows, >= 1 a row count.

    Deterministic for a seed (the same rows in the same order); train rows keep their file order.
    At least one row stays on each side, or it is a data error (too small to split).
    """
    if not val_size:
        return list(rows), []
    if val_size < 0 or (val_size >= 1 and int(val_size) != val_size):
        raise JobError("config", f"val_size must be a fraction below 1 or a whole number of rows, got {val_size}")
    n = len(rows)
    count = int(val_size) if val_size >= 1 else max(1, round(n * val_size))
    if count >= n:
        raise JobError("data", f"val_size {val_size} holds out {count} of {n} rows: nothing left to train on")
    held = set(random.Random(seed).sample(range(n), count))
    return ([r for i, r in enumerate(rows) if i not in held],
            [rows[i] for i in sorted(held)])
