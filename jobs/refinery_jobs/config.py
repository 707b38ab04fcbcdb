"""The job config (jobs/CONTRACT.md section 2): what a job declares it accepts, and the validated config it gets.

A job declares, at the top of its script, `SPEC = JobSpec(kinds=..., inputs=..., formats=..., params={...})`
with one `Param` per kind-specific setting; `load_config(path, SPEC)` (called by `contract.main`) reads the
JSON file, rejects unknown keys and bad values with a config error (exit 2) naming the field, and returns a
JobConfig. Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from refinery_jobs.contract import CONTRACT_VERSION, TRAINER_STATE, checkpoint_step, config_error, json_type
from refinery_jobs.data import FORMATS

FINETUNING_TYPES = ("lora", "full", "qlora")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")


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
    chat_template: str | None = None        # a named template or Jinja text; None: the model's own
    job_params: dict[str, Any] = field(default_factory=dict)  # free-form; only jobs with any_kind read them
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
    job_params = _object("job_params", raw.get("job_params"))
    chat_template = _check_value("chat_template", raw.get("chat_template"), str, nullable=True)
    if spec.any_kind:
        # The contract test job stands in for any trainer: its knobs come as job_params.
        params = _parse_params({**_object("params", raw.get("params")), **job_params}, spec.params)
    else:
        if job_params:
            raise config_error(f"job_params.{next(iter(job_params))}",
                               f"the built-in {kind} job takes no job_params (they are for a job of your own)")
        params = _parse_params(raw.get("params"), spec.params)

    os.makedirs(output_dir, exist_ok=True)
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
    return JobConfig(contract=contract, kind=kind, run_id=run_id, stage_id=stage_id, output_dir=output_dir,
                     checkpoint_dir=checkpoint_dir, resume_from=resume_from, inputs=inputs, train_path=train_path,
                     eval_path=eval_path, dataset_format=dataset_format, finetuning=finetuning, lora=lora,
                     hyper=hyper, params=params, chat_template=chat_template, job_params=job_params, path=path)
