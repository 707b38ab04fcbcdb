"""The job contract (jobs/CONTRACT.md): exit codes, JobError, events on REFINERY_EVENTS_FD, checkpoints, main().

Every job ends in `contract.main(SPEC, recipe_main)`: it reads `--config` (refinery_jobs.config), runs the
recipe, and turns its result or its JobError into a `done` or `error` event and the contract's exit code.
Contents:
  * small shared helpers            log, json_type, write_json_atomic
  * errors and exit codes           JobError, config_error, data_error, unsupported
  * events on REFINERY_EVENTS_FD    Events, numbers
  * checkpoints                     TRAINER_STATE (written last: complete-when-marked), checkpoint_step
  * the entry point                 main(spec, recipe_main)

Standard library only, so that light jobs (`testjob`) start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from refinery_jobs.config import JobConfig, JobSpec

CONTRACT_VERSION = 1

EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_UNSUPPORTED = 4
EXIT_RUNTIME = 1

TRAINER_STATE = "trainer_state.json"  # written last in every checkpoint-N/ (ours and transformers')


def log(message: str) -> None:
    """Human-readable log line on stderr (the worker keeps it, never parses it)."""
    print(f"[refinery] {message}", file=sys.stderr, flush=True)


def json_type(value: Any) -> str:
    """How an error message names a JSON value's type ("a string", "an array", "null", ...)."""
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


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON to path via a temporary file and rename (readers never see half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
# Checkpoints
# ----------------------------------------------------------------------------------------------

def checkpoint_step(path: str) -> int:
    """global_step recorded in a checkpoint's trainer_state.json."""
    try:
        with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as f:
            return int(json.load(f)["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise config_error("resume_from", f"cannot read global_step from {path}/{TRAINER_STATE}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def main(spec: JobSpec, recipe_main: Callable[[JobConfig, Events], dict | None], argv: list[str] | None = None):
    """Parse `--config`, run the recipe, emit `done` or `error`, and exit with the contract's code."""
    from refinery_jobs.config import load_config  # config imports this module, so not at the top
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
