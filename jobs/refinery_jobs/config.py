"""The job config (jobs/CONTRACT.md section 2): what a job declares it accepts, and the validated config it gets.

Every field's type, bounds and default is defined once, in the zod schema (spec/job-config.ts,
spec/stage-params.ts), and generated into job_config.schema.json beside this file (`npm run gen:spec`).
`load_config(path, SPEC)` (called by `contract.main`) validates the JSON file against that schema, fills in
the defaults it gives, then checks what only the job can know (its kinds, inputs and formats, paths on disk),
and returns a JobConfig; any problem is a config error (exit 2) naming the field.

A job declares, at the top of its script, `SPEC = JobSpec(kinds=..., inputs=..., formats=...)`. Its params
are those of its kind in the schema. Only a job that stands in for any trainer (`any_kind`, the contract test
job) declares params of its own (`Param`), which it reads from `job_params`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from refinery_jobs.contract import CONTRACT_VERSION, TRAINER_STATE, checkpoint_step, config_error, json_type
from refinery_jobs.data import FORMATS

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "job_config.schema.json")


@dataclass(frozen=True)
class Param:
    """One setting of an `any_kind` job (read from `job_params`): type, default and bounds."""
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
    params: dict[str, Param] = field(default_factory=dict)  # only for any_kind jobs; others: the schema's
    any_kind: bool = False                  # testjob: stands in for any stage kind


# The field names of these two are the schema's (a test keeps them in step); their defaults are too,
# filled in by load_config from the schema: the values below only serve code that builds one by hand.
@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class Hyper:
    learning_rate: float = 1e-4
    num_epochs: float | None = None
    max_steps: int | None = None
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_length: int = 512
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    precision: str = "auto"
    gradient_checkpointing: bool | str = "auto"
    neftune_noise_alpha: float | None = None
    save_steps: int | None = 50
    save_total_limit: int | None = 3  # retention of committed checkpoints: the worker's business, ignored here
    eval_steps: int | None = None
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
    chat_template: str | None = None        # a named template or Jinja text; None: the model's own
    job_params: dict[str, Any] = field(default_factory=dict)  # free-form; only jobs with any_kind read them
    val_size: float | None = None           # split this share (< 1) or this many rows (>= 1) of train off as eval
    path: str = ""

    @property
    def resumed_from_step(self) -> int | None:
        return checkpoint_step(self.resume_from) if self.resume_from else None


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object"}


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
        raise config_error(name, f"expected {_TYPE_NAMES[typ]}, got {json_type(value)} {json.dumps(value)[:60]}")
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
        raise config_error(name, f"expected an object, got {json_type(value)}")
    return value


@functools.cache
def job_config_schema() -> dict:
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        return json.load(f)


def params_schema(kind: str) -> dict | None:
    """The JSON Schema of a kind's params (None for a kind the schema does not know)."""
    return job_config_schema()["$defs"].get(f"params_{kind}")


def _field_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _schema_message(error) -> str:
    """jsonschema's message, in the words of the rest of the config errors."""
    v = error.validator
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"unknown field {', '.join(map(json.dumps, extra))} (accepted: {', '.join(sorted(error.schema.get('properties', {})))})"
    if v == "enum":
        return f"expected one of {'|'.join(map(str, error.validator_value))}, got {json.dumps(error.instance)}"
    if v in ("minimum", "exclusiveMinimum"):
        return f"must be {'>=' if v == 'minimum' else '>'} {error.validator_value}, got {error.instance}"
    if v in ("maximum", "exclusiveMaximum"):
        return f"must be {'<=' if v == 'maximum' else '<'} {error.validator_value}, got {error.instance}"
    if v == "type":
        return f"expected {error.validator_value}, got {json_type(error.instance)} {json.dumps(error.instance)[:60]}"
    return error.message


def _validate(instance: Any, schema: dict, root: dict, prefix: tuple = ()) -> None:
    """Raise a config error for the most relevant schema violation of `instance`, if any."""
    import jsonschema  # imported here: the module stays cheap for code that only builds configs

    validator = jsonschema.Draft202012Validator(schema | {"$defs": root["$defs"]} if schema is not root else schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return
    # For an anyOf (a nullable number, a union), report the branch that matched the type.
    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    path = (*prefix, *error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        path = (*path, extra[0]) if extra else path
    elif error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        path = (*path, missing[0]) if missing else path
        raise config_error(_field_path(path), "required")
    raise config_error(_field_path(path), _schema_message(error))


def _with_defaults(value: Any, schema: dict) -> Any:
    """A copy of `value` with every missing property that has a default in `schema` filled in (deeply)."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for name, prop in schema["properties"].items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = _with_defaults(out[name], prop)
    return out


def _parse_params(raw: Any, spec: dict[str, Param]) -> dict[str, Any]:
    raw = _object("params", raw)
    _check_keys("params", raw, spec)
    out = {}
    for name, p in spec.items():
        value = raw.get(name, p.default)
        value = _check_value(f"params.{name}", value, p.type, nullable=p.nullable or p.default is None,
                             choices=p.choices, lo=p.min, hi=p.max)
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

    # Types, bounds and defaults: the generated schema. The contract test job stands in for any trainer:
    # its own knobs (spec.params) may come as job_params or params; the rest of params must suit the kind.
    schema = job_config_schema()
    knobs: dict[str, Any] = {}
    if spec.any_kind:
        own = _object("params", raw.get("params"))
        knobs = {k: v for k, v in own.items() if k in spec.params}
        kind_known = params_schema(kind) is not None
        raw = {**raw, "kind": kind if kind_known else "sft",
               "params": {k: v for k, v in own.items() if k not in spec.params} if kind_known else {}}
    _validate(raw, schema, schema)
    values = _with_defaults(raw, schema)
    params = _with_defaults(values["params"], params_schema(values["kind"]))
    if spec.any_kind:
        params = _parse_params({**knobs, **values["job_params"]}, spec.params)
        values["kind"] = kind
    elif values["job_params"]:
        raise config_error(f"job_params.{next(iter(values['job_params']))}",
                           f"the built-in {kind} job takes no job_params (they are for a job of your own)")

    run_id, stage_id = values["run_id"], values["stage_id"]
    output_dir = values["output_dir"]
    checkpoint_dir = values["checkpoint_dir"]
    if checkpoint_dir is None and spec.checkpoints:
        raise config_error("checkpoint_dir", "required: this job writes checkpoints")
    resume_from = values["resume_from"]
    if resume_from is not None:
        if not spec.checkpoints:
            raise config_error("resume_from", f"a {kind} job does not checkpoint and cannot resume")
        if not os.path.isdir(resume_from):
            raise config_error("resume_from", f"directory not found: {resume_from}")
        if not os.path.isfile(os.path.join(resume_from, TRAINER_STATE)):
            raise config_error("resume_from", f"not a complete checkpoint ({TRAINER_STATE} missing): {resume_from}")
        checkpoint_step(resume_from)  # readable?

    inputs_raw = values["inputs"]
    _check_keys("inputs", inputs_raw, set(spec.inputs) | set(spec.optional_inputs))
    inputs: dict[str, str] = {}
    for name in (*spec.inputs, *spec.optional_inputs):
        value = inputs_raw.get(name)
        if value is None:
            if name in spec.inputs:
                raise config_error(f"inputs.{name}", "required")
            continue
        if not os.path.isdir(value):
            raise config_error(f"inputs.{name}", f"directory not found: {value}")
        inputs[name] = value

    datasets = values["datasets"]
    if not spec.formats:
        for key in ("train", "eval"):
            if datasets[key] is not None:
                raise config_error(f"datasets.{key}", f"a {kind} job takes no dataset")
    train_path, eval_path = datasets["train"], datasets["eval"]
    if train_path is None and spec.formats and spec.needs_train:
        raise config_error("datasets.train", "required")
    for name, p in (("datasets.train", train_path), ("datasets.eval", eval_path)):
        if p is not None and not os.path.isfile(p):
            raise config_error(name, f"file not found: {p}")
    dataset_format = values["dataset_format"]
    if dataset_format is not None and spec.formats and dataset_format not in spec.formats:
        raise config_error("dataset_format",
                           f"a {kind} job accepts {'|'.join(spec.formats)}, got {json.dumps(dataset_format)}")

    ft = values["finetuning"]
    lora = LoraSettings(**ft["lora"])
    hyper = Hyper(**values["hyper"])

    os.makedirs(output_dir, exist_ok=True)
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
    return JobConfig(contract=contract, kind=kind, run_id=run_id, stage_id=stage_id, output_dir=output_dir,
                     checkpoint_dir=checkpoint_dir, resume_from=resume_from, inputs=inputs, train_path=train_path,
                     eval_path=eval_path, dataset_format=dataset_format, finetuning=ft["type"], lora=lora,
                     hyper=hyper, params=params, chat_template=values["chat_template"],
                     job_params=values["job_params"], val_size=datasets["val_size"], path=path)
