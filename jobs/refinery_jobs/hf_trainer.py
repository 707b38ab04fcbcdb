"""transformers Trainer glue shared by the Trainer-based jobs (sft, dpo, reward, grpo).

  * training_args_kwargs            TrainingArguments from `hyper` (TRL configs accept all of them)
  * events_callback                 a TrainerCallback that emits started/progress/metrics/checkpoint events,
                                    checkpoints on request (SIGUSR1) and injects test faults
  * train                           trainer.train(), resuming from cfg.resume_from (every adapter restored)
  * final_evaluate, final_metrics   the last evaluation and the `done` metrics
  * save_trained_model              the final adapter or full model in output_dir

Resuming is the Trainer's own (`trainer.train(resume_from_checkpoint=...)`, through `train`, which first restores
the adapter that transformers skips in a multi-adapter checkpoint); the checkpoint rules (TRAINER_STATE,
checkpoint_step) live in refinery_jobs.contract. transformers and peft are imported inside
the functions that need them.

Checkpoint on request: `started` declares checkpoint_signal "SIGUSR1"; on that signal the callback sets
`control.should_save` at the end of the current optimizer step, so the Trainer writes a complete checkpoint-N/
exactly like a scheduled one (on_save then emits the `checkpoint` event) and training goes on.

Resuming with another batch shape (the worker's out-of-memory retry: hyper.batch_size halved,
hyper.gradient_accumulation doubled, from the newest checkpoint) works: the Trainer restores
optimizer/scheduler/RNG from the checkpoint, keeps the new per-device batch (it only reads the checkpoint's
train_batch_size with auto_find_batch_size, which we never set), and skips global_step x gradient_accumulation
micro-batches of the new size, i.e. the same samples, because the sampler's order does not depend on the batch
size; each optimizer step then sees the same samples as before (tests/test_failures.py checks the losses).

Fault injection (tests only): the environment variable REFINERY_FAULT_OOM_ABOVE_BATCH=N makes the first training
step raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected:
REFINERY_FAULT_OOM_ABOVE_BATCH=N)") when the per-device batch size is > N; it escapes the Trainer and
contract.main reports it as category `oom` (exit 5).
"""

from __future__ import annotations

import os
from typing import Any

from refinery_jobs.config import JobConfig
from refinery_jobs.contract import TRAINER_STATE, CheckpointRequest, Events, JobError, finite_numbers, log, unsupported
from refinery_jobs.models import Device

FAULT_OOM_ENV = "REFINERY_FAULT_OOM_ABOVE_BATCH"


def fault_oom_above_batch() -> int | None:
    """REFINERY_FAULT_OOM_ABOVE_BATCH as an int (None when unset); a bad value is a config error."""
    raw = os.environ.get(FAULT_OOM_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise JobError("config", f"environment variable {FAULT_OOM_ENV}={raw!r}: expected an integer >= 0")
    return value


def injected_oom(limit: int, batch_size: int) -> BaseException:
    """The torch out-of-memory error that REFINERY_FAULT_OOM_ABOVE_BATCH injects (torch.cuda's in older torch)."""
    import torch
    cls = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    log(f"{FAULT_OOM_ENV}={limit}: injecting out of memory (per-device batch {batch_size} > {limit})")
    return cls(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected: {FAULT_OOM_ENV}={limit})")


def train_and_eval_rows(cfg: JobConfig, accepted: tuple[str, ...], fmt: str | None = None):
    """(format, train rows, eval rows or None): the eval set is datasets.eval, or val_size rows held out of train."""
    from refinery_jobs import data
    fmt, train = data.load_rows(cfg.train_path, fmt or cfg.dataset_format, accepted)
    if cfg.eval_path:
        return fmt, train, data.load_rows(cfg.eval_path, fmt, (fmt,))[1]
    if cfg.val_size:
        train, held = data.split_validation(train, cfg.val_size, cfg.hyper.seed)
        log(f"val_size {cfg.val_size}: {len(held)} of {len(train) + len(held)} rows held out as the eval set")
        return fmt, train, held
    return fmt, train, None


def precision_flags(cfg: JobConfig, device: Device) -> dict[str, bool]:
    """hyper.precision as TrainingArguments' bf16/fp16: auto = bf16 where the GPU has it, fp32 on CPU."""
    p = cfg.hyper.precision
    if p == "auto":
        return {"bf16": device.bf16, "fp16": False}
    if p in ("bf16", "fp16") and device.type != "cuda":
        raise unsupported(f"hyper.precision {p!r} needs a CUDA GPU; this job runs on {device.description} "
                                   f"(use precision auto or fp32)")
    return {"bf16": p == "bf16", "fp16": p == "fp16"}


def gradient_checkpointing(cfg: JobConfig, device: Device) -> bool:
    """hyper.gradient_checkpointing: auto = on a GPU (memory is what runs out there), off on CPU."""
    g = cfg.hyper.gradient_checkpointing
    return device.type == "cuda" if g == "auto" else bool(g)


def training_args_kwargs(cfg: JobConfig, device: Device, *, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments shared by every Trainer-based job (TRL configs accept all of them).

    Every `hyper` field of the job config reaches the trainer here (jobs/tests/test_params.py checks each).
    """
    h = cfg.hyper
    checkpointing = gradient_checkpointing(cfg, device)
    eval_steps = h.eval_steps or h.save_steps
    kwargs: dict[str, Any] = dict(
        output_dir=cfg.checkpoint_dir,
        learning_rate=h.learning_rate,
        max_steps=h.max_steps if h.max_steps is not None else -1,
        num_train_epochs=h.num_epochs if h.num_epochs is not None else 1.0,
        per_device_train_batch_size=h.batch_size,
        per_device_eval_batch_size=h.batch_size,
        gradient_accumulation_steps=h.gradient_accumulation,
        lr_scheduler_type=h.scheduler,
        # transformers 5: a float < 1 is a ratio of the total steps, an int a number of steps
        warmup_steps=h.warmup_steps if h.warmup_steps is not None else min(h.warmup_ratio, 0.9999),
        weight_decay=h.weight_decay,
        max_grad_norm=h.max_grad_norm,
        optim=h.optim,
        adam_beta1=h.adam_beta1,
        adam_beta2=h.adam_beta2,
        adam_epsilon=h.adam_epsilon,
        neftune_noise_alpha=h.neftune_noise_alpha,
        seed=h.seed,
        data_seed=h.seed,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps" if h.save_steps else "no",
        save_steps=h.save_steps or 500,
        save_total_limit=None,  # the worker prunes checkpoints once they are committed
        eval_strategy="steps" if has_eval and eval_steps else "no",
        eval_steps=eval_steps if has_eval and eval_steps else None,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
        **precision_flags(cfg, device),
        logging_nan_inf_filter=False,  # a NaN/inf loss is reported as such (the worker's divergence check)
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
    )
    return kwargs


def events_callback(events: Events, cfg: JobConfig, device: Device):
    """A TrainerCallback that turns Trainer hooks into contract events.

    started (on_train_begin, with checkpoint_signal "SIGUSR1"), progress (every training log), metrics
    (evaluation logs), checkpoint (on_save, which transformers calls after _save_checkpoint has written
    trainer_state.json, its last file). The final training summary (train_runtime, train_loss, ...) is kept in
    `summary` for `done`.
    Checkpoint on request: the SIGUSR1 handler is installed here (before `started` declares it); on_step_end
    sets control.should_save when a request is pending. Fault injection: on_step_begin of the first step raises
    the injected OOM (REFINERY_FAULT_OOM_ABOVE_BATCH).
    """
    from transformers import TrainerCallback

    resumed_from_step = cfg.resumed_from_step
    oom_above_batch = fault_oom_above_batch()
    request = CheckpointRequest().install()

    class EventsCallback(TrainerCallback):
        def __init__(self):
            self.summary: dict[str, float] = {}
            self.last_eval: dict[str, float] = {}
            self.last_eval_step: int | None = None
            self.checkpoint_request = request
            self._started = False
            self._stepped = False
            # Time training stands still while a checkpoint is written: from the end of the step (or the
            # logging and evaluation after it) to on_save. Steps between saves give the step time.
            self.saves = SaveTimes()

        def on_train_begin(self, args, state, control, **kwargs):
            # A resumed state holds the checkpoint's batch size; record the one this run trains with.
            state.train_batch_size = args.train_batch_size
            if not self._started:
                self._started = True
                events.started(total_steps=state.max_steps, resumed_from_step=resumed_from_step,
                               device=device.description, checkpoint_signal=request.signal_name)

        def on_step_begin(self, args, state, control, **kwargs):
            if not self._stepped:
                self._stepped = True
                batch = args.per_device_train_batch_size
                if oom_above_batch is not None and batch > oom_above_batch:
                    raise injected_oom(oom_above_batch, batch)

        def on_step_end(self, args, state, control, **kwargs):
            self.saves.step_ended()
            if request.take() and not control.should_save:
                log(f"checkpoint requested ({request.signal_name}): saving at step {state.global_step}")
                control.should_save = True

        def on_evaluate(self, args, state, control, **kwargs):
            self.saves.mark()

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.saves.mark()
            logs = dict(logs or {})
            if "train_runtime" in logs:
                self.summary = finite_numbers(logs)
                return
            if any(k.startswith("eval_") for k in logs):
                self.last_eval = finite_numbers(logs)
                self.last_eval_step = state.global_step
                events.metrics(logs, step=state.global_step)
                return
            loss = logs.pop("loss", None)
            logs.pop("epoch", None)
            events.progress(state.global_step, state.max_steps, loss=loss, metrics=logs)

        def on_save(self, args, state, control, **kwargs):
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            seconds = self.saves.saved()
            if os.path.isfile(os.path.join(path, TRAINER_STATE)):
                events.checkpoint(state.global_step, path, save_seconds=seconds)
            else:
                log(f"checkpoint {path} has no {TRAINER_STATE}; not reporting it")

    return EventsCallback()


def train(trainer, resume_from: str | None) -> None:
    """`trainer.train`, resuming from `resume_from` (a checkpoint-N/ folder) when given.

    A PEFT model with more than one adapter (TRL's DPO and GRPO with beta > 0 add a frozen "ref" copy of the
    trained adapter) is checkpointed by PEFT as the "default" adapter at the folder's root and each other adapter in
    a sub-folder named after it. transformers' resume (5.x, `Trainer._load_from_checkpoint`) loads only the
    sub-folders when there are any: the adapter being trained would restart from its initial weights while the
    optimizer, scheduler, RNG and data order carry on from the checkpoint (a resumed DPO run's loss jumps back to
    ln 2). So the root adapter is loaded here first; the Trainer then loads the rest as before.

    TRL's SFT and DPO trainers also count the tokens trained on (the `num_tokens` progress metric) in an attribute
    that no checkpoint holds: after a resume the count would start again from 0. It is restored from the
    checkpoint's log history (see `restore_token_count`).
    """
    if resume_from:
        restore_root_adapter(trainer.model, resume_from)
        restore_token_count(trainer, resume_from)
    trainer.train(resume_from_checkpoint=resume_from)


def restore_token_count(trainer, checkpoint: str) -> int | None:
    """Set TRL's running token count (`_total_train_tokens`, logged as `num_tokens`) to the last value the
    checkpoint's trainer_state.json logged; None when the trainer keeps no such count or nothing was logged."""
    import json
    if not hasattr(trainer, "_total_train_tokens"):
        return None
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE), encoding="utf-8") as f:
            history = json.load(f).get("log_history") or []
    except (OSError, ValueError):
        return None
    logged = [e["num_tokens"] for e in history if isinstance(e, dict) and isinstance(e.get("num_tokens"), (int, float))]
    if not logged:
        return None
    trainer._total_train_tokens = int(logged[-1])
    return trainer._total_train_tokens


def restore_root_adapter(model, checkpoint: str) -> bool:
    """Load a checkpoint's root adapter into "default" when the checkpoint also has adapter sub-folders (see `train`).
    False when there is nothing to do (not a PEFT model, a single-adapter checkpoint the Trainer restores itself)."""
    from peft import PeftModel
    if not isinstance(model, PeftModel) or "default" not in model.peft_config:
        return False
    weights = ("adapter_model.safetensors", "adapter_model.bin")
    if not any(os.path.isfile(os.path.join(checkpoint, w)) for w in weights):
        return False
    subdirs = [d for d in sorted(os.listdir(checkpoint))
               if any(os.path.isfile(os.path.join(checkpoint, d, w)) for w in weights)]
    if not subdirs:
        return False
    model.load_adapter(checkpoint, "default", is_trainable=True)
    model.set_adapter("default")
    log(f"restored the trained adapter from {checkpoint} (the Trainer restores {', '.join(subdirs)})")
    return True


def final_evaluate(trainer, callback) -> None:
    """Evaluate once more at the end unless the Trainer just did (the callback emits the `metrics` event)."""
    if trainer.eval_dataset is not None and callback.last_eval_step != trainer.state.global_step:
        trainer.evaluate()


class SaveTimes:
    """How long training stood still for its checkpoint saves, beside the time a step takes.

    The Trainer saves synchronously after a step's logging and evaluation (`_maybe_log_save_evaluate`): the save
    is the time from the last of those marks to on_save. A step is the time between two step ends without a save.
    """

    def __init__(self):
        import time
        self._clock = time.monotonic
        self._mark: float | None = None
        self._last_step_end: float | None = None
        self._saved_since_step = False
        self.step_seconds: list[float] = []
        self.save_seconds: list[float] = []

    def step_ended(self) -> None:
        now = self._clock()
        if self._last_step_end is not None and not self._saved_since_step:
            self.step_seconds.append(now - self._last_step_end)
        self._last_step_end = self._mark = now
        self._saved_since_step = False

    def mark(self) -> None:
        if self._mark is not None:
            self._mark = self._clock()

    def saved(self) -> float | None:
        if self._mark is None:
            return None
        seconds = self._clock() - self._mark
        self.save_seconds.append(seconds)
        self._saved_since_step = True
        return round(seconds, 4)

    def metrics(self) -> dict[str, float]:
        if not self.save_seconds:
            return {}
        steps = sorted(self.step_seconds)
        out = {"checkpoint_saves": float(len(self.save_seconds)), "checkpoint_save_seconds_mean": sum(self.save_seconds) / len(self.save_seconds),
               "checkpoint_save_seconds_max": max(self.save_seconds)}
        if steps:
            median = steps[len(steps) // 2]
            out["step_seconds_median"] = median
            # The save as a number of steps not taken: what a user weighs against save_steps.
            if median > 0:
                out["checkpoint_save_in_steps"] = out["checkpoint_save_seconds_mean"] / median
        return out


def final_metrics(callback, extra: dict | None = None) -> dict[str, float]:
    """`done` metrics: train_loss and runtime from the Trainer summary, last eval, the time checkpoint saves
    stopped training (SaveTimes), plus job-specific ones."""
    out = {}
    for key in ("train_loss", "train_runtime", "train_samples_per_second"):
        if key in callback.summary:
            out[key] = callback.summary[key]
    out.update(callback.saves.metrics())
    out.update(callback.last_eval)
    out.update(finite_numbers(extra))
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
