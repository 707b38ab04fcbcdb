"""The job contract (jobs/CONTRACT.md): exit codes, JobError, events on REFINERY_EVENTS_FD, checkpoints, main().

Every job ends in `contract.main(SPEC, recipe_main)`: it reads `--config` (refinery_jobs.config), runs the
recipe, and turns its result or its JobError into a `done` or `error` event and the contract's exit code.
Contents:
  * small shared helpers            log, json_type, write_json_atomic
  * errors and exit codes           JobError, config_error, data_error, unsupported, out_of_memory
  * events on REFINERY_EVENTS_FD    Events, numbers (non-finite as "NaN"/"Infinity"), finite_numbers (`done`)
  * checkpoints                     TRAINER_STATE (written last: complete-when-marked), checkpoint_step,
                                    CheckpointRequest (SIGUSR1: checkpoint at the next step boundary)
  * the entry point                 main(spec, recipe_main): out-of-memory errors become category `oom`

Standard library only, so that light jobs (`testjob`) start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
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
EXIT_OOM = 5
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
    """An error the job reports with an `error` event and a contract exit code (2, 3, 4, 5 or 1)."""

    EXIT_CODES = {"config": EXIT_CONFIG, "data": EXIT_DATA, "unsupported": EXIT_UNSUPPORTED, "oom": EXIT_OOM,
                  "runtime": EXIT_RUNTIME}

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


OOM_CLASS_NAMES = ("OutOfMemoryError", "MemoryError")  # torch.OutOfMemoryError (= torch.cuda.OutOfMemoryError), ...
OOM_MESSAGES = ("out of memory",             # CUDA / HIP / MPS: "CUDA out of memory. Tried to allocate ..."
                "cublas_status_alloc_failed",  # cuBLAS could not allocate its workspace
                "can't allocate memory")      # torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory"
OOM_MESSAGE_CHARS = 500


def out_of_memory(exc: BaseException) -> BaseException | None:
    """The out-of-memory error behind `exc`, or None: recognised without importing torch, by class name
    (OutOfMemoryError, MemoryError, or a subclass of one) or a RuntimeError whose text says it ran out of memory.
    Follows the exception's cause/context chain (an OOM re-raised as another error is still an OOM)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        if any(cls.__name__ in OOM_CLASS_NAMES for cls in type(current).__mro__):
            return current
        if isinstance(current, RuntimeError) and any(m in str(current).lower() for m in OOM_MESSAGES):
            return current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def oom_error(exc: BaseException) -> JobError:
    """JobError("oom") whose message keeps the original error's text (first OOM_MESSAGE_CHARS characters)."""
    text = str(exc)[:OOM_MESSAGE_CHARS] or "out of memory"
    return JobError("oom", f"{type(exc).__name__}: {text}")


# ----------------------------------------------------------------------------------------------
# Events
# ----------------------------------------------------------------------------------------------

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}  # how events write them


def json_number(value: Any, *, finite: bool = False) -> float | int | str | None:
    """An event number from a Python/numpy/torch scalar, or None when it is not a number.

    NaN, +inf and -inf (not JSON numbers) become the strings "NaN", "Infinity", "-Infinity"; with finite=True
    (the `done` event) they are dropped (None) instead.
    """
    if isinstance(value, bool):
        return int(value)
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if finite:
            return None
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return None


def numbers(metrics: dict[str, Any] | None) -> dict[str, float | int | str]:
    """The numeric entries of a metrics dict (`progress.metrics`, `metrics.metrics`): non-finite values are kept
    as "NaN" / "Infinity" / "-Infinity", anything that is not a number is dropped."""
    out = {}
    for key, value in (metrics or {}).items():
        number = json_number(value)
        if number is not None:
            out[str(key)] = number
    return out


def finite_numbers(metrics: dict[str, Any] | None) -> dict[str, float | int]:
    """The finite numeric entries of a metrics dict (`done.metrics`: NaN and infinities are dropped)."""
    out = {}
    for key, value in (metrics or {}).items():
        number = json_number(value, finite=True)
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

    def started(self, total_steps: int, resumed_from_step: int | None, device: str,
                checkpoint_signal: str | None = None) -> None:
        """`checkpoint_signal` ("SIGUSR1"): the job checkpoints on request (CheckpointRequest); omit it otherwise."""
        fields: dict[str, Any] = {"total_steps": int(total_steps), "resumed_from_step": resumed_from_step,
                                  "device": device}
        if checkpoint_signal is not None:
            fields["checkpoint_signal"] = checkpoint_signal
        self.emit("started", **fields)

    def progress(self, step: int, total_steps: int, loss: Any = None, metrics: dict | None = None) -> None:
        fields: dict[str, Any] = {"step": int(step), "total_steps": int(total_steps)}
        loss = json_number(loss)
        if loss is not None:
            fields["loss"] = loss
        metrics = numbers(metrics)
        if metrics:
            fields["metrics"] = metrics
        self.emit("progress", **fields)

    def checkpoint(self, step: int, path: str, save_seconds: float | None = None) -> None:
        fields: dict[str, Any] = {"step": int(step), "path": os.path.abspath(path)}
        if save_seconds is not None:
            fields["save_seconds"] = float(save_seconds)
        self.emit("checkpoint", **fields)

    def metrics(self, metrics: dict, step: int | None = None) -> None:
        fields: dict[str, Any] = {"metrics": numbers(metrics)}
        if step is not None:
            fields["step"] = int(step)
        self.emit("metrics", **fields)

    def done(self, metrics: dict | None = None) -> None:
        self.emit("done", metrics=finite_numbers(metrics))

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


CHECKPOINT_SIGNAL = "SIGUSR1"  # what a job that checkpoints on request declares in `started.checkpoint_signal`


class CheckpointRequest:
    """Checkpoint on request (CONTRACT.md, "Checkpoint on request"): the worker sends SIGUSR1 to the job's main
    process (a drain, a preemption notice); the job saves a complete checkpoint at the next step boundary and goes on.

    `install()` (main thread, before the `started` event that declares CHECKPOINT_SIGNAL: SIGUSR1's default action
    kills the process) sets a handler that only sets a flag; the training loop calls `take()` at every step boundary
    and saves when it returns True. A request while the step is a scheduled save step is satisfied by that save
    (take() it there too). Several requests before a boundary make one checkpoint.
    """

    signal_name = CHECKPOINT_SIGNAL

    def __init__(self) -> None:
        self._requested = False
        self.count = 0  # requests received (for logs)

    def install(self) -> CheckpointRequest:
        signal.signal(getattr(signal, self.signal_name), self._handler)
        return self

    def _handler(self, signum, frame) -> None:  # only sets flags: safe whatever the main thread was doing
        self._requested = True
        self.count += 1

    @property
    def pending(self) -> bool:
        return self._requested

    def take(self) -> bool:
        """True once per request (then cleared): save a checkpoint at this step boundary."""
        if self._requested:
            self._requested = False
            return True
        return False


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
    except Exception as exc:  # out of memory (exit 5) or a crash (exit 1): retryable by the worker's policy
        traceback.print_exc()
        oom = out_of_memory(exc)
        err = oom_error(oom) if oom is not None else JobError("runtime", f"{type(exc).__name__}: {exc}"[:2000])
        log(f"{err.category} error: {err.message}")
        events.error(err)
        sys.exit(err.exit_code)
    sys.exit(0)
