/**
 * How a job's end becomes the attempt's result (jobs/CONTRACT.md): config / data / unsupported
 * errors are non-retryable; crashes, stalls and failed checkpoint uploads are retried by Temporal
 * per the stage's policy; a cancelled job is a cancellation.
 */
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { classifyExit, type JobEvent } from './job-contract.js';
import type { JobProcessResult } from './job-process.js';

export interface JobEnd {
  result: JobProcessResult;
  sawDone: boolean;
  lastError?: Extract<JobEvent, { event: 'error' }>;
  stallMs: number;
  lastStep: number;
  /** Where the whole log of this attempt is (for the message of a crash). */
  logUri: string;
}

/** Throws the failure the attempt ends with; returns when the job succeeded. */
export function throwIfJobFailed(end: JobEnd): void {
  const { result } = end;
  if (result.reason === 'cancelled') throw new CancelledFailure('stage cancelled: job process tree terminated');
  if (result.reason === 'stalled') {
    throw ApplicationFailure.retryable(`job stalled: no progress event for ${end.stallMs} ms; killed it (last step ${end.lastStep})`, 'JobStalled');
  }
  const exitClass = classifyExit(result.exitCode, end.sawDone);
  if (exitClass === 'ok') return;
  const e = end.lastError;
  const detail = e
    ? [e.file && `${e.file}${e.line ? `:${e.line}` : ''}`, e.field, e.message].filter(Boolean).join(': ')
    : `exit code ${result.exitCode ?? 'none'}${result.exitSignal ? ` (${result.exitSignal})` : ''}; see ${end.logUri}`;
  if (exitClass === 'crash') throw ApplicationFailure.retryable(`job failed: ${detail}`, 'JobCrashed');
  throw ApplicationFailure.nonRetryable(`${exitClass} error: ${detail}`, exitClass === 'config' ? 'ConfigError' : exitClass === 'data' ? 'DataError' : 'Unsupported');
}

/** How an attempt's failure reads in its records and in `status`. */
export function attemptOutcomeOf(err: unknown): { outcome: 'failed' | 'cancelled'; reason: string } {
  if (err instanceof CancelledFailure) return { outcome: 'cancelled', reason: err.message };
  return { outcome: 'failed', reason: err instanceof Error ? err.message : String(err) };
}
