"""Refinery's training jobs: one module per stage kind, each runnable as `python -m refinery_jobs.<kind>`.

Every job follows jobs/CONTRACT.md: `--config <file.json>` in, JSON-lines events on the file descriptor
named by REFINERY_EVENTS_FD out, and exit codes 2 (config), 3 (data), 4 (unsupported) for errors that a
retry cannot fix. Shared helpers live in `refinery_jobs.common`.
"""

__version__ = "0.1.0"
