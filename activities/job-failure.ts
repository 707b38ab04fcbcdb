/**
 * How a job's end becomes the attempt's result (jobs/CONTRACT.md): config / data / unsupported
 * errors are non-retryable; out of memory (the job said so, the log says so, or the kernel's OOM
 * killer ended it) is retried with a smaller batch; a full scratch disk is the node's failure
 * (infrastructure, another host preferred); a divergence resumes before it; crashes, stalls
 * and failed checkpoint uploads are retried per the stage's policy; a cancelled job is a
 * cancellation. The failure types and their classes: workflows/failures.ts.
 */
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { classifyFailure, describeFailure, type FailureDetails } from '../workflows/failures.js';
import { classifyExit, type JobEvent } from './job-contract.js';
import { DISK_FULL_TEXT } from '../storage/local-fs-error.js';
import { OOM_TEXT } from './job-memory.js';
import type { JobProcessResult } from './job-process.js';

export interface JobEnd {
  result: JobProcessResult;
  sawDone: boolean;
  lastError?: Extract<JobEvent, { event: 'error' }>;
  stallMs: number;
  lastStep: number;
  /** Where the whole log of this attempt is (for the message of a crash). */
  logUri: string;
  /** The last lines of the job's log (an external trainer's OOM is only in its traceback). */
  logTail?: string;
  /** Sent with every failure (workflows/failures.ts FailureDetails). */
  details: FailureDetails;
}

/** Throws the failure the attempt ends with; returns when the job succeeded. */
export function throwIfJobFailed(end: JobEnd): void {
  const { result, details } = end;
  if (result.reason === 'cancelled') throw new CancelledFailure('stage cancelled: job process tree terminated');
  if (result.reason === 'stalled') {
    throw ApplicationFailure.retryable(`job stalled: no progress event for ${end.stallMs} ms; killed it (last step ${end.lastStep})`, 'JobStalled', details);
  }
  const exitClass = classifyExit(result.exitCode, end.sawDone);
  if (exitClass === 'ok') return;
  const e = end.lastError;
  const detail = e
    ? [e.file && `${e.file}${e.line ? `:${e.line}` : ''}`, e.field, e.message].filter(Boolean).join(': ')
    : `exit code ${result.exitCode ?? 'none'}${result.exitSignal ? ` (${result.exitSignal})` : ''}; see ${end.logUri}`;
  if (result.oomKilled) {
    throw ApplicationFailure.retryable(`job out of memory: killed by the kernel's OOM killer after step ${end.lastStep} (batch ${details.batchSize} x ${details.gradientAccumulation}); see ${end.logUri}`, 'JobOutOfMemory', details);
  }
  if (exitClass === 'oom' || e?.category === 'oom' || (exitClass === 'crash' && OOM_TEXT.test(`${e?.message ?? ''}\n${end.logTail ?? ''}`))) {
    throw ApplicationFailure.retryable(`job out of memory after step ${end.lastStep} (batch ${details.batchSize} x ${details.gradientAccumulation}): ${detail}`, 'JobOutOfMemory', details);
  }
  // The job could not write (its checkpoint, its output): the node's disk is full or failing, not the job broken.
  if (exitClass === 'crash' && DISK_FULL_TEXT.test(`${e?.message ?? ''}\n${end.logTail ?? ''}`)) {
    throw ApplicationFailure.retryable(`job could not write to the scratch disk after step ${end.lastStep}: ${detail}`, 'ScratchDiskFailed', details);
  }
  if (exitClass === 'crash') throw ApplicationFailure.retryable(`job failed: ${detail}`, 'JobCrashed', details);
  throw ApplicationFailure.nonRetryable(`${exitClass} error: ${detail}`, exitClass === 'config' ? 'ConfigError' : exitClass === 'data' ? 'DataError' : 'Unsupported');
}

export interface AttemptEnd {
  outcome: 'failed' | 'cancelled' | 'drained' | 'declined';
  reason: string;
  failure?: { class: string; kind: string; label: string };
}

/** How an attempt's failure reads in its records and in `status`. */
export function attemptOutcomeOf(err: unknown): AttemptEnd {
  if (err instanceof CancelledFailure) return { outcome: 'cancelled', reason: err.message };
  const c = classifyFailure(err);
  const outcome = c.kind === 'drained' ? 'drained' : c.class === 'placement' ? 'declined' : 'failed';
  return { outcome, reason: err instanceof Error ? err.message : String(err), failure: { class: c.class, kind: c.kind, label: describeFailure(c) } };
}
