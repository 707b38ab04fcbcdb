/**
 * What the training activity asks of the worker process it runs in: this host's health
 * (worker/host-health.ts: quarantine, where a retry should go) and whether the worker is draining
 * (worker/drain.ts). Interfaces only, so that activities do not depend on the worker's wiring;
 * tests and single-purpose workers may leave both out.
 */
import type { FailureKind } from '../workflows/failures.js';

export interface HostHealthView {
  /** This worker's host name as the fleet knows it (REFINERY_HOST, else the OS host name). */
  readonly host: string;
  /** Why this host is quarantined, or undefined when it is not. */
  quarantined(): string | undefined;
  /** The preflight failed: quarantine this host now. */
  preflightFailed(reason: string): Promise<void>;
  /** An attempt on this host failed by its job (crash, stall, timeout): may quarantine the host. */
  jobFailed(failure: { runId: string; stageId: string; kind: FailureKind; message: string }): Promise<void>;
  /** Whether another live, unquarantined worker on another host serves `taskQueue`. */
  anotherHostServes(taskQueue: string): Promise<boolean>;
}

export interface DrainView {
  /** Aborted when the worker starts draining: running attempts checkpoint, commit and end drained. */
  readonly signal: AbortSignal;
  /** Why the worker drains (for the attempt records), once it does. */
  readonly reason: string | undefined;
  /** How long an attempt waits for its job's checkpoint before it stops the job regardless. */
  readonly checkpointTimeoutMs: number;
  /** Counts an attempt as running until `done` settles (the worker exits when none is left). */
  track<T>(done: Promise<T>): Promise<T>;
}
