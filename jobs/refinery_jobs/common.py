"""Shared helpers for Refinery's jobs: the job contract (config, events, exit codes), datasets, models.

Contents, in the order a job uses them:
  * errors and exit codes           JobError, config_error, data_error, unsupported
  * events on REFINERY_EVENTS_FD    Events
  * the job config                  JobSpec, Param, JobConfig, load_config
  * the entry point                 main(spec, recipe_main)
  * datasets                        load_rows (validation with file:line:field), TRL conversions
  * torch helpers                   select_device, seed_everything, model/tokenizer loading, LoRA
  * transformers Trainer glue       training_args_kwargs, events_callback, checkpoint_step

torch, transformers and peft are imported inside the functions that need them, so that light jobs
(`testjob`) and config/data validation start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

CONTRACT_VERSION = 1

EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_UNSUPPORTED = 4
EXIT_RUNTIME = 1

MAX_LINE_BYTES = 10 * 1024 * 1024  # a JSONL line longer than this is a data error
TRAINER_STATE = "trainer_state.json"  # written last in every checkpoint-N/ (ours and transformers')

FORMATS = ("chat", "alpaca", "sharegpt", "text", "preference", "prompts")
FINETUNING_TYPES = ("lora", "full", "qlora")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")


def log(message: str) -> None:
    """Human-readable log line on stderr (the worker keeps it, never parses it)."""
    print(f"[refinery] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Errors and exit codes
# ----------------------------------------------------------------------------------------------

class JobError(Exception):
    """An error the job reports with an `error` event and a contract exit code (2, 3 or 4)."""

    EXIT_CODES = {"config": EXIT_CONFIG, "data": EXIT_DATA, "unsupported": EXIT_UNSUPPORTED, "runtime": EXIT_RUNTIME}

    def __init__(self, category: str, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        super().__init__(message)
        self.category, self.message, self.file, self.line, self.field = category, message, file, line, field

    @property
    def exit_code(self) -> int:
        return self.EXIT_CODES[self.category]


def config_error(field: str, message: str) -> JobError:
    return JobError("config", f"config field \"{field}\": {message}", field=field)


def data_error(file: str, line: int | None, field: str | None, message: str) -> JobError:
    where = f"{file}:{line}" if line is not None else file
    what = f"field \"{field}\": {message}" if field else message
    return JobError("data", f"{where}: {what}", file=file, line=line, field=field)


def unsupported(message: str) -> JobError:
    return JobError("unsupported", message)


# ----------------------------------------------------------------------------------------------
# Events
# ----------------------------------------------------------------------------------------------

def _json_number(value: Any) -> float | int | None:
    """A finite JSON number from a Python/numpy/torch scalar, or None (NaN and inf are not JSON)."""
    if isinstance(value, bool):
        return int(value)
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def numbers(metrics: dict[str, Any] | None) -> dict[str, float | int]:
    """Keep the finite numeric entries of a metrics dict (what the contract's `metrics` objects hold)."""
    out = {}
    for key, value in (metrics or {}).items():
        number = _json_number(value)
        if number is not None:
            out[str(key)] = number
    return out


class Events:
    """Writes the contract's JSON-lines events to REFINERY_EVENTS_FD (default 3), or stderr if it is not open.

    One JSON object per line, `{"event": <name>, ...fields}`, written with a single os.write and flushed.
    """

    def __init__(self, fd: int | None = None):
        if fd is None:
            raw = os.environ.get("REFINERY_EVENTS_FD", "3")
            try:
                fd = int(raw)
            except ValueError:
                log(f"REFINERY_EVENTS_FD={raw!r} is not an integer; writing events to stderr")
                fd = 2
        try:
            os.fstat(fd)
        except OSError:
            if fd != 2:
                log(f"events fd {fd} is not open; writing events to stderr")
            fd = 2
        self.fd = fd
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, allow_nan=False, separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]

    def started(self, total_steps: int, resumed_from_step: int | None, device: str) -> None:
        self.emit("started", total_steps=int(total_steps), resumed_from_step=resumed_from_step, device=device)

    def progress(self, step: int, total_steps: int, loss: Any = None, metrics: dict | None = None) -> None:
        fields: dict[str, Any] = {"step": int(step), "total_steps": int(total_steps)}
        loss = _json_number(loss)
        if loss is not None:
            fields["loss"] = loss
        metrics = numbers(metrics)
        if metrics:
            fields["metrics"] = metrics
        self.emit("progress", **fields)

    def checkpoint(self, step: int, path: str) -> None:
        self.emit("checkpoint", step=int(step), path=os.path.abspath(path))

    def metrics(self, metrics: dict, step: int | None = None) -> None:
        fields: dict[str, Any] = {"metrics": numbers(metrics)}
        if step is not None:
            fields["step"] = int(step)
        self.emit("metrics", **fields)

    def done(self, metrics: dict | None = None) -> None:
        self.emit("done", metrics=numbers(metrics))

    def error(self, err: JobError) -> None:
        fields: dict[str, Any] = {"category": err.category, "message": err.message}
        for key in ("file", "line", "field"):
            if getattr(err, key) is not None:
                fields[key] = getattr(err, key)
        self.emit("error", **fields)


# ----------------------------------------------------------------------------------------------
# The job config
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One entry of a job's `params`: type, default and bounds. `type` is float, int, bool, str or list."""
    type: type
    default: Any
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    help: str = ""


@dataclass(frozen=True)
class JobSpec:
    """What a job accepts: stage kinds, named inputs, dataset formats and params."""
    kinds: tuple[str, ...]
    inputs: tuple[str, ...] = ()            # required input directories
    optional_inputs: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()           # accepted dataset formats; () = no datasets
    needs_train: bool = True                # datasets.train is required (when formats is not empty)
    checkpoints: bool = True                # the job writes checkpoint-N/ and can resume
    params: dict[str, Param] = field(default_factory=dict)
    any_kind: bool = False                  # testjob: stands in for any stage kind


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class Hyper:
    learning_rate: float = 1e-4
    max_steps: int | None = None
    num_epochs: float | None = None
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_length: int = 512
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    save_steps: int | None = 50
    save_total_limit: int | None = None  # retention of committed checkpoints: the worker's business, ignored here
    seed: int = 42


@dataclass
class JobConfig:
    contract: int
    kind: str
    run_id: str
    stage_id: str
    output_dir: str
    checkpoint_dir: str | None
    resume_from: str | None
    inputs: dict[str, str]
    train_path: str | None
    eval_path: str | None
    dataset_format: str | None
    finetuning: str
    lora: LoraSettings
    hyper: Hyper
    params: dict[str, Any]
    path: str = ""

    @property
    def resumed_from_step(self) -> int | None:
        return checkpoint_step(self.resume_from) if self.resume_from else None


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _check_value(name: str, value: Any, typ: type, *, nullable=False, choices=None, lo=None, hi=None) -> Any:
    """Validate one config value; returns it converted (int -> float where a float is expected)."""
    if value is None:
        if nullable:
            return None
        raise config_error(name, f"expected {_TYPE_NAMES[typ]}, got null")
    ok = (isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))) or (
        typ is float and isinstance(value, int) and not isinstance(value, bool))
    if typ is int and isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if not ok:
        raise config_error(name, f"expected {_TYPE_NAMES[typ]}, got {_json_type(value)} {json.dumps(value)[:60]}")
    if typ is float:
        value = float(value)
        if not math.isfinite(value):
            raise config_error(name, f"expected a finite number, got {value}")
    if choices is not None and value not in choices:
        raise config_error(name, f"expected one of {'|'.join(map(str, choices))}, got {json.dumps(value)}")
    if lo is not None and value < lo:
        raise config_error(name, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise config_error(name, f"must be <= {hi}, got {value}")
    return value


def _check_keys(name: str, obj: dict, known: set[str] | dict) -> None:
    for key in obj:
        if key not in known:
            accepted = ", ".join(sorted(known)) or "none"
            raise config_error(f"{name}.{key}", f"unknown field (accepted: {accepted})")


def _object(name: str, value: Any, *, nullable=True) -> dict:
    if value is None and nullable:
        return {}
    if not isinstance(value, dict):
        raise config_error(name, f"expected an object, got {_json_type(value)}")
    return value


def _abs_path(name: str, value: Any, *, nullable=False) -> str | None:
    value = _check_value(name, value, str, nullable=nullable)
    if value is None:
        return None
    if not os.path.isabs(value):
        raise config_error(name, f"expected an absolute path, got {json.dumps(value)}")
    return value


def _parse_hyper(raw: Any) -> Hyper:
    raw = _object("hyper", raw)
    defaults = Hyper()
    _check_keys("hyper", raw, {f.name for f in dataclasses.fields(Hyper)})
    spec: dict[str, tuple] = {
        # name: (type, nullable, choices, lo, hi)
        "learning_rate": (float, False, None, 0.0, None),
        "max_steps": (int, True, None, 1, None),
        "num_epochs": (float, True, None, 0.0, None),
        "batch_size": (int, False, None, 1, None),
        "gradient_accumulation": (int, False, None, 1, None),
        "max_length": (int, False, None, 8, None),
        "scheduler": (str, False, SCHEDULERS, None, None),
        "warmup_ratio": (float, False, None, 0.0, 1.0),
        "weight_decay": (float, False, None, 0.0, None),
        "save_steps": (int, True, None, 1, None),
        "save_total_limit": (int, True, None, 1, None),
        "seed": (int, False, None, 0, 2**32 - 1),
    }
    values = {}
    for name, (typ, nullable, choices, lo, hi) in spec.items():
        value = raw.get(name, getattr(defaults, name))
        values[name] = _check_value(f"hyper.{name}", value, typ, nullable=nullable, choices=choices, lo=lo, hi=hi)
    hyper = Hyper(**values)
    if hyper.learning_rate <= 0 and "learning_rate" in raw:
        raise config_error("hyper.learning_rate", f"must be > 0, got {hyper.learning_rate}")
    if hyper.num_epochs is not None and hyper.num_epochs <= 0:
        raise config_error("hyper.num_epochs", f"must be > 0, got {hyper.num_epochs}")
    return hyper


def _parse_finetuning(raw: Any) -> tuple[str, LoraSettings]:
    raw = _object("finetuning", raw)
    _check_keys("finetuning", raw, {"type", "lora"})
    kind = _check_value("finetuning.type", raw.get("type", "lora"), str, choices=FINETUNING_TYPES)
    lora_raw = _object("finetuning.lora", raw.get("lora"))
    _check_keys("finetuning.lora", lora_raw, {f.name for f in dataclasses.fields(LoraSettings)})
    d = LoraSettings()
    target = lora_raw.get("target_modules", d.target_modules)
    if isinstance(target, list):
        for i, item in enumerate(target):
            _check_value(f"finetuning.lora.target_modules[{i}]", item, str)
        if not target:
            raise config_error("finetuning.lora.target_modules", "must not be empty")
    else:
        _check_value("finetuning.lora.target_modules", target, str)
    lora = LoraSettings(
        r=_check_value("finetuning.lora.r", lora_raw.get("r", d.r), int, lo=1),
        alpha=_check_value("finetuning.lora.alpha", lora_raw.get("alpha", d.alpha), float, lo=0.0),
        dropout=_check_value("finetuning.lora.dropout", lora_raw.get("dropout", d.dropout), float, lo=0.0, hi=0.99),
        target_modules=target,
    )
    return kind, lora


def _parse_params(raw: Any, spec: dict[str, Param]) -> dict[str, Any]:
    raw = _object("params", raw)
    _check_keys("params", raw, spec)
    out = {}
    for name, p in spec.items():
        value = raw.get(name, p.default)
        value = _check_value(f"params.{name}", value, p.type, nullable=p.nullable or p.default is None,
                             choices=p.choices, lo=p.min, hi=p.max)
        if p.type is list and value is not None and p.choices is None:
            pass
        out[name] = value
    return out


def load_config(path: str, spec: JobSpec) -> JobConfig:
    """Read and validate the job config; raises JobError("config", ...) naming the first bad field."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise config_error("--config", f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise config_error("--config", f"{path} is not valid JSON: {e}") from None
    raw = _object("(root)", raw, nullable=False)

    contract = raw.get("contract")
    if contract != CONTRACT_VERSION:
        raise config_error("contract", f"this job implements contract {CONTRACT_VERSION}, got {json.dumps(contract)}")
    kind = _check_value("kind", raw.get("kind"), str)
    if not spec.any_kind and kind not in spec.kinds:
        raise config_error("kind", f"expected one of {'|'.join(spec.kinds)} for this job, got {json.dumps(kind)}")
    run_id = _check_value("run_id", raw.get("run_id"), str)
    stage_id = _check_value("stage_id", raw.get("stage_id"), str)
    output_dir = _abs_path("output_dir", raw.get("output_dir"))
    checkpoint_dir = _abs_path("checkpoint_dir", raw.get("checkpoint_dir"), nullable=not spec.checkpoints)
    resume_from = _abs_path("resume_from", raw.get("resume_from"), nullable=True)
    if resume_from is not None:
        if not spec.checkpoints:
            raise config_error("resume_from", f"a {kind} job does not checkpoint and cannot resume")
        if not os.path.isdir(resume_from):
            raise config_error("resume_from", f"directory not found: {resume_from}")
        if not os.path.isfile(os.path.join(resume_from, TRAINER_STATE)):
            raise config_error("resume_from", f"not a complete checkpoint ({TRAINER_STATE} missing): {resume_from}")
        checkpoint_step(resume_from)  # readable?

    inputs_raw = _object("inputs", raw.get("inputs"))
    _check_keys("inputs", inputs_raw, set(spec.inputs) | set(spec.optional_inputs))
    inputs: dict[str, str] = {}
    for name in (*spec.inputs, *spec.optional_inputs):
        value = _abs_path(f"inputs.{name}", inputs_raw.get(name), nullable=name not in spec.inputs)
        if value is None:
            continue
        if not os.path.isdir(value):
            raise config_error(f"inputs.{name}", f"directory not found: {value}")
        inputs[name] = value

    datasets_raw = _object("datasets", raw.get("datasets"))
    _check_keys("datasets", datasets_raw, {"train", "eval"})
    if not spec.formats:
        for key, value in datasets_raw.items():
            if value is not None:
                raise config_error(f"datasets.{key}", f"a {kind} job takes no dataset")
    train_path = _abs_path("datasets.train", datasets_raw.get("train"),
                           nullable=not (spec.formats and spec.needs_train))
    eval_path = _abs_path("datasets.eval", datasets_raw.get("eval"), nullable=True)
    for name, p in (("datasets.train", train_path), ("datasets.eval", eval_path)):
        if p is not None and not os.path.isfile(p):
            raise config_error(name, f"file not found: {p}")
    dataset_format = _check_value("dataset_format", raw.get("dataset_format"), str, nullable=True,
                                  choices=FORMATS)
    if dataset_format is not None and spec.formats and dataset_format not in spec.formats:
        raise config_error("dataset_format",
                           f"a {kind} job accepts {'|'.join(spec.formats)}, got {json.dumps(dataset_format)}")

    finetuning, lora = _parse_finetuning(raw.get("finetuning"))
    hyper = _parse_hyper(raw.get("hyper"))
    params = _parse_params(raw.get("params"), spec.params)

    os.makedirs(output_dir, exist_ok=True)
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
    return JobConfig(contract=contract, kind=kind, run_id=run_id, stage_id=stage_id, output_dir=output_dir,
                     checkpoint_dir=checkpoint_dir, resume_from=resume_from, inputs=inputs, train_path=train_path,
                     eval_path=eval_path, dataset_format=dataset_format, finetuning=finetuning, lora=lora,
                     hyper=hyper, params=params, path=path)


def checkpoint_step(path: str) -> int:
    """global_step recorded in a checkpoint's trainer_state.json."""
    try:
        with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as f:
            return int(json.load(f)["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise config_error("resume_from", f"cannot read global_step from {path}/{TRAINER_STATE}: {e}") from None


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON to path via a temporary file and rename (readers never see half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def main(spec: JobSpec, recipe_main: Callable[[JobConfig, Events], dict | None], argv: list[str] | None = None):
    """Parse `--config`, run the recipe, emit `done` or `error`, and exit with the contract's code."""
    parser = argparse.ArgumentParser(description=f"Refinery job ({'|'.join(spec.kinds) or 'any kind'})")
    parser.add_argument("--config", required=True, help="path to the job config JSON (jobs/CONTRACT.md)")
    args = parser.parse_args(argv)
    for var, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
        os.environ.setdefault(var, value)

    events = Events()
    try:
        cfg = load_config(args.config, spec)
        metrics = recipe_main(cfg, events)
        events.done(metrics or {})
    except JobError as err:
        log(f"{err.category} error: {err.message}")
        events.error(err)
        sys.exit(err.exit_code)
    except Exception as exc:  # crash: retryable by the worker's policy
        traceback.print_exc()
        events.error(JobError("runtime", f"{type(exc).__name__}: {exc}"[:2000]))
        sys.exit(EXIT_RUNTIME)
    sys.exit(0)


# ----------------------------------------------------------------------------------------------
# Datasets: validation with file:line:field, normalisation, conversion to TRL columns
# ----------------------------------------------------------------------------------------------
#
# Normalised rows (what load_rows returns):
#   chat | alpaca | sharegpt -> {"messages": [{"role", "content"}, ...]}
#   text                     -> {"text": str}
#   preference               -> {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
#   prompts                  -> {"prompt": [messages]}   (ends with a user turn)

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
            raise self.fail(field, f"expected a string, got {_json_type(value)}")
        if not allow_empty and not value.strip():
            raise self.fail(field, "empty content")
        return value

    def messages(self, value: Any, field: str, roles=ROLES) -> list[dict]:
        if value is None:
            raise self.fail(field, "missing")
        if not isinstance(value, list):
            raise self.fail(field, f"expected an array of messages, got {_json_type(value)}")
        if not value:
            raise self.fail(field, "empty array of messages")
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict):
                raise self.fail(f"{field}[{i}]", f"expected an object with role and content, got {_json_type(m)}")
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
            raise r.fail("history", f"expected an array of [question, answer] pairs, got {_json_type(history)}")
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
            raise r.fail(f"conversations[{i}]", f"expected an object with from and value, got {_json_type(turn)}")
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
                raise data_error(path, lineno, None, f"expected a JSON object, got {_json_type(obj)}")
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


# ----------------------------------------------------------------------------------------------
# Torch helpers: device, seeding, models, tokenizers, LoRA
# ----------------------------------------------------------------------------------------------

@dataclass
class Device:
    type: str            # "cuda" | "cpu"
    description: str     # for the `started` event
    bf16: bool           # mixed precision in bf16

    @property
    def torch_device(self):
        import torch
        return torch.device("cuda:0" if self.type == "cuda" else "cpu")


def select_device() -> Device:
    """CUDA with bf16 when available (the worker chose the GPUs via CUDA_VISIBLE_DEVICES), else CPU fp32."""
    import torch
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(0)
        return Device("cuda", f"cuda:0 ({name}{', bf16' if bf16 else ''})", bf16)
    return Device("cpu", "cpu", False)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def check_finetuning_supported(cfg: JobConfig, device: Device, *, qlora_ok: bool = True) -> None:
    """`qlora` needs CUDA and bitsandbytes: exit 4 with a clear message otherwise."""
    if cfg.finetuning != "qlora":
        return
    if not qlora_ok:
        raise unsupported(f"a {cfg.kind} job does not support finetuning.type \"qlora\"; use lora or full")
    if device.type != "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise unsupported(f"finetuning.type \"qlora\" needs a CUDA GPU; none is available here "
                          f"(CUDA_VISIBLE_DEVICES={visible!r}). Use lora or full, or run on a GPU worker.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise unsupported("finetuning.type \"qlora\" needs the bitsandbytes package, which is not installed in "
                          "this environment. Use lora or full.") from None


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def resolve_base(cfg: JobConfig, input_name: str = "model") -> tuple[str, str | None]:
    """(base model dir, adapter dir or None) for an input that may be a full model or a LoRA adapter.

    An adapter's adapter_config.json records the base path of the machine that trained it, which is stale
    on another worker, so `inputs.base` wins; the recorded path is used only when it exists here.
    """
    path = cfg.inputs[input_name]
    if not is_adapter_dir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise config_error(f"inputs.{input_name}", f"not a model directory (no config.json or "
                                                       f"adapter_config.json): {path}")
        return path, None
    base = cfg.inputs.get("base")
    if base is None:
        with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
            recorded = json.load(f).get("base_model_name_or_path")
        if recorded and os.path.isabs(recorded) and os.path.isdir(recorded):
            base = recorded
        else:
            raise config_error("inputs.base", f"inputs.{input_name} is a LoRA adapter ({path}) and its recorded base "
                                              f"{recorded!r} is not on this machine: pass the base model directory "
                                              f"as inputs.base")
    if is_adapter_dir(base):
        raise config_error("inputs.base", f"the base of an adapter must be a full model, got another adapter: {base}")
    return base, path


def load_tokenizer(*dirs: str):
    """Tokenizer from the first directory that has one (an adapter dir usually carries it)."""
    from transformers import AutoTokenizer
    for d in dirs:
        if d and (os.path.isfile(os.path.join(d, "tokenizer.json")) or
                  os.path.isfile(os.path.join(d, "tokenizer_config.json"))):
            tok = AutoTokenizer.from_pretrained(d)
            break
    else:
        raise config_error("inputs.model", f"no tokenizer found in {', '.join(d for d in dirs if d)}")
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
        log(f"tokenizer has no pad token; using {tok.pad_token!r}")
    return tok


def model_dtype(device: Device, finetuning: str):
    """Weights in bf16 for adapters on GPU (frozen base); fp32 for full fine-tuning (bf16 autocast) and CPU."""
    import torch
    if device.type == "cuda" and device.bf16 and finetuning in ("lora", "qlora", "frozen"):
        return torch.bfloat16
    return torch.float32


def lora_config(cfg: JobConfig, task_type: str = "CAUSAL_LM"):
    """PEFT LoraConfig from `finetuning.lora`. SEQ_CLS keeps the score head trainable and saved."""
    from peft import LoraConfig
    lo = cfg.lora
    return LoraConfig(
        r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
        task_type=task_type, modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )


def _quantization_config():
    import torch
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_causal_lm(cfg: JobConfig, device: Device, input_name: str = "model", *, train: bool = True):
    """The policy/causal LM for a job, ready for training (`train=True`) or frozen.

    - full model input + lora/qlora: a new LoRA adapter (get_peft_model, so Trainer resume works)
    - adapter input + lora: the same adapter keeps training (its output stays relative to inputs.base,
      so one merge at the end of the pipeline folds everything)
    - adapter input + full, or train=False: the adapter is merged in memory
    """
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base, adapter = resolve_base(cfg, input_name)
    finetuning = cfg.finetuning if train else "frozen"
    kwargs: dict[str, Any] = {"dtype": model_dtype(device, finetuning)}
    if train and cfg.finetuning == "qlora":
        kwargs["quantization_config"] = _quantization_config()
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if train and cfg.finetuning == "qlora":
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    if adapter is not None:
        if train and cfg.finetuning in ("lora", "qlora"):
            log(f"continuing to train the LoRA adapter {adapter} (finetuning.lora settings come from it)")
            return PeftModel.from_pretrained(model, adapter, is_trainable=True)
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if train and cfg.finetuning in ("lora", "qlora"):
        model = get_peft_model(model, lora_config(cfg, "CAUSAL_LM"))
    if not train:
        model.eval().requires_grad_(False)
    return model


def load_sequence_classifier(path: str, device: Device, *, base: str | None = None, dtype=None):
    """A num_labels=1 sequence-classification model (reward/value) from a full model or a LoRA adapter dir.

    A causal-LM directory gets a fresh score head (seed first for reproducibility). A causal-LM adapter is
    merged into its base and saved to a temporary directory first (the classifier is built from full weights).
    """
    import tempfile

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"num_labels": 1}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if not is_adapter_dir(path):
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
        task = json.load(f).get("task_type")
    if base is None:
        raise config_error("inputs.base", f"{path} is a LoRA adapter: pass its base model as inputs.base")
    if task == "SEQ_CLS":
        model = AutoModelForSequenceClassification.from_pretrained(base, **kwargs)
        return PeftModel.from_pretrained(model, path).merge_and_unload()
    causal = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), path)
    with tempfile.TemporaryDirectory(prefix="refinery-merged-") as tmp:
        causal.merge_and_unload().save_pretrained(tmp)
        return AutoModelForSequenceClassification.from_pretrained(tmp, **kwargs)


def set_pad_token(model, tokenizer) -> None:
    """Sequence classifiers find the last real token through config.pad_token_id."""
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def trainable_parameters(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def require_chat_template(tokenizer, input_name: str = "model") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise config_error(f"inputs.{input_name}", "the tokenizer has no chat template, which conversational "
                                                   "datasets (chat, alpaca, sharegpt, preference, prompts) need; "
                                                   "use a model with a chat template or the text format")


def save_tokenizer(tokenizer, out_dir: str) -> None:
    tokenizer.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# transformers Trainer glue
# ----------------------------------------------------------------------------------------------

def training_args_kwargs(cfg: JobConfig, device: Device, *, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments shared by every Trainer-based job (TRL configs accept all of them)."""
    h = cfg.hyper
    kwargs: dict[str, Any] = dict(
        output_dir=cfg.checkpoint_dir,
        learning_rate=h.learning_rate,
        max_steps=h.max_steps if h.max_steps is not None else -1,
        num_train_epochs=h.num_epochs if h.num_epochs is not None else 1.0,
        per_device_train_batch_size=h.batch_size,
        per_device_eval_batch_size=h.batch_size,
        gradient_accumulation_steps=h.gradient_accumulation,
        lr_scheduler_type=h.scheduler,
        warmup_steps=min(h.warmup_ratio, 0.9999),  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=h.weight_decay,
        seed=h.seed,
        data_seed=h.seed,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps" if h.save_steps else "no",
        save_steps=h.save_steps or 500,
        save_total_limit=None,  # the worker prunes checkpoints once they are committed
        eval_strategy="steps" if has_eval and h.save_steps else "no",
        eval_steps=h.save_steps if has_eval and h.save_steps else None,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
        bf16=device.bf16,
        fp16=False,
        gradient_checkpointing=device.type == "cuda",
        gradient_checkpointing_kwargs={"use_reentrant": False} if device.type == "cuda" else None,
    )
    return kwargs


def events_callback(events: Events, cfg: JobConfig, device: Device):
    """A TrainerCallback that turns Trainer hooks into contract events.

    started (on_train_begin), progress (every training log), metrics (evaluation logs), checkpoint (on_save,
    which transformers calls after _save_checkpoint has written trainer_state.json, its last file).
    The final training summary (train_runtime, train_loss, ...) is kept in `summary` for `done`.
    """
    from transformers import TrainerCallback

    resumed_from_step = cfg.resumed_from_step

    class EventsCallback(TrainerCallback):
        def __init__(self):
            self.summary: dict[str, float] = {}
            self.last_eval: dict[str, float] = {}
            self.last_eval_step: int | None = None
            self._started = False

        def on_train_begin(self, args, state, control, **kwargs):
            if not self._started:
                self._started = True
                events.started(total_steps=state.max_steps, resumed_from_step=resumed_from_step,
                               device=device.description)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "train_runtime" in logs:
                self.summary = numbers(logs)
                return
            if any(k.startswith("eval_") for k in logs):
                self.last_eval = numbers(logs)
                self.last_eval_step = state.global_step
                events.metrics(logs, step=state.global_step)
                return
            loss = logs.pop("loss", None)
            logs.pop("epoch", None)
            events.progress(state.global_step, state.max_steps, loss=loss, metrics=logs)

        def on_save(self, args, state, control, **kwargs):
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isfile(os.path.join(path, TRAINER_STATE)):
                events.checkpoint(state.global_step, path)
            else:
                log(f"checkpoint {path} has no {TRAINER_STATE}; not reporting it")

    return EventsCallback()


def final_evaluate(trainer, callback) -> None:
    """Evaluate once more at the end unless the Trainer just did (the callback emits the `metrics` event)."""
    if trainer.eval_dataset is not None and callback.last_eval_step != trainer.state.global_step:
        trainer.evaluate()


def final_metrics(callback, extra: dict | None = None) -> dict[str, float]:
    """`done` metrics: train_loss and runtime from the Trainer summary, last eval, plus job-specific ones."""
    out = {}
    for key in ("train_loss", "train_runtime", "train_samples_per_second"):
        if key in callback.summary:
            out[key] = callback.summary[key]
    out.update(callback.last_eval)
    out.update(numbers(extra))
    return out


def save_trained_model(trainer, tokenizer, out_dir: str) -> None:
    """Final output: the trained adapter ("default" only; TRL may add a frozen "ref" copy) or the full model."""
    from peft import PeftModel
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir, selected_adapters=["default"])
    else:
        trainer.save_model(out_dir)
    tokenizer.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# Reward scoring (reward job accuracy, eval, ppo)
# ----------------------------------------------------------------------------------------------

def render_conversations(tokenizer, conversations: list[list[dict]]) -> list[str]:
    """Whole conversations (prompt + assistant reply) as the reward model saw them in training."""
    return [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]


def score_texts(model, tokenizer, texts: list[str], *, batch_size: int = 16, max_length: int = 512):
    """Scalar scores of a num_labels=1 sequence classifier for each text (a 1-D float tensor on CPU)."""
    import torch
    device = next(model.parameters()).device
    scores = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=max_length, add_special_tokens=False).to(device)
            scores.append(model(**batch).logits[:, 0].float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def preference_accuracy(model, tokenizer, rows: list[dict], *, batch_size: int = 16,
                        max_length: int = 512) -> dict[str, float]:
    """accuracy (chosen scored above rejected), mean margin and mean scores over preference rows."""
    was_training = model.training
    model.eval()
    chosen = score_texts(model, tokenizer, render_conversations(tokenizer, [r["prompt"] + r["chosen"] for r in rows]),
                         batch_size=batch_size, max_length=max_length)
    rejected = score_texts(model, tokenizer,
                           render_conversations(tokenizer, [r["prompt"] + r["rejected"] for r in rows]),
                           batch_size=batch_size, max_length=max_length)
    model.train(was_training)
    return {
        "accuracy": float((chosen > rejected).float().mean()),
        "margin": float((chosen - rejected).mean()),
        "chosen_score": float(chosen.mean()),
        "rejected_score": float(rejected.mean()),
        "pairs": len(rows),
    }
