"""Refinery's training jobs: one module per stage kind, each runnable as `python -m refinery_jobs.<kind>`.

Every job follows jobs/CONTRACT.md: `--config <file.json>` in, JSON-lines events on the file descriptor
named by REFINERY_EVENTS_FD out, and exit codes 2 (config), 3 (data), 4 (unsupported) for errors that a
retry cannot fix. Shared helpers: `contract` (events, exit codes, main), `config` (JobSpec, load_config),
`data` (dataset formats), `models` (device, model/tokenizer loading), `hf_trainer` (Trainer glue).
"""

__version__ = "0.1.0"
