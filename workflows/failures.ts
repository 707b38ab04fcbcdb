/**
 * The failure taxonomy (docs/reliability.md, "What each failure costs"): why an attempt of a
 * stage ended, and whose budget it draws on.
 *
 *   infrastructure  the fleet failed the job: worker lost, node failure, drained for a deploy,
 *                   lease lost, storage unreachable. Its own, larger budget; never a stage attempt.
 *   placement       this host declined the attempt (quarantined, or the host that just failed it
 *                   while another can take it): retried at once elsewhere, a few times at most.
 *   job             the job failed: crash, stall, timeout, out of memory, divergence. The stage's
 *                   `retry.maximum_attempts` (out of memory: halving the batch down to a floor).
 *   config          the user's to fix (config, data, unsupported, a missing input): never retried.
 *
 * Pure data and functions, shared by the activity (which throws these types) and workflow code
 * (which reads them back from the activity's failure).
 */

export type FailureClass = 'infrastructure' | 'placement' | 'job' | 'config';

export type FailureKind =
  | 'worker-lost'
  | 'worker-shutdown'
  | 'node-failure'
  | 'drained'
  | 'lease-lost'
  | 'storage'
  | 'scratch-disk'
  | 'host-avoided'
  | 'host-quarantined'
  | 'toolchain-declined'
  | 'toolchain-mismatch'
  | 'crash'
  | 'stalled'
  | 'timeout'
  | 'oom'
  | 'diverged'
  | 'config'
  | 'data'
  | 'unsupported'
  | 'input-missing'
  | 'export-check';

export interface ClassifiedFailure {
  class: FailureClass;
  kind: FailureKind;
  message: string;
  /** The failure says it must not be retried (config errors, a failed export check). */
  nonRetryable: boolean;
  /** What the attempt reported with it (FailureDetails), when it did. */
  details?: FailureDetails;
  /** The ApplicationFailure type it came as, if any. */
  type?: string;
}

/** What an attempt's failure carries (ApplicationFailure details[0]; heartbeat details for a lost worker). */
export interface FailureDetails {
  host?: string;
  /** The step training had reached. */
  step?: number;
  lastCommittedStep?: number | null;
  /** kind 'oom': the per-device batch size and gradient accumulation it ran with. */
  batchSize?: number;
  gradientAccumulation?: number;
  /** kind 'diverged': the first step whose loss was bad, and the last good one before it. */
  firstBadStep?: number;
  lastGoodStep?: number | null;
  /** The attempt's lease epoch: the checkpoints it committed carry it. */
  epoch?: number;
}

/** ApplicationFailure types the training activity throws, by class and kind. */
export const FAILURE_TYPES: Record<string, { class: FailureClass; kind: FailureKind }> = {
  WorkerDrained: { class: 'infrastructure', kind: 'drained' },
  PreflightFailed: { class: 'infrastructure', kind: 'node-failure' },
  LeaseLost: { class: 'infrastructure', kind: 'lease-lost' },
  OutputCommitConflict: { class: 'infrastructure', kind: 'lease-lost' },
  CheckpointUploadFailed: { class: 'infrastructure', kind: 'storage' },
  StorageUnavailable: { class: 'infrastructure', kind: 'storage' },
  ScratchDiskFailed: { class: 'infrastructure', kind: 'scratch-disk' },
  HostAvoided: { class: 'placement', kind: 'host-avoided' },
  HostQuarantined: { class: 'placement', kind: 'host-quarantined' },
  ToolchainDeclined: { class: 'placement', kind: 'toolchain-declined' },
  ToolchainMismatch: { class: 'config', kind: 'toolchain-mismatch' },
  JobCrashed: { class: 'job', kind: 'crash' },
  JobStalled: { class: 'job', kind: 'stalled' },
  JobOutOfMemory: { class: 'job', kind: 'oom' },
  JobDiverged: { class: 'job', kind: 'diverged' },
  GgufCheckFailed: { class: 'job', kind: 'export-check' },
  ConfigError: { class: 'config', kind: 'config' },
  DataError: { class: 'config', kind: 'data' },
  Unsupported: { class: 'config', kind: 'unsupported' },
  InputMissing: { class: 'config', kind: 'input-missing' },
};

/** Error types no retry can fix: Temporal's own policy must not retry them either. */
export const NON_RETRYABLE_TYPES = Object.entries(FAILURE_TYPES)
  .filter(([, v]) => v.class === 'config')
  .map(([type]) => type);

/** A failure's shape as workflow code sees it (ActivityFailure → cause), without importing classes. */
interface FailureLike {
  name?: string;
  message?: string;
  type?: string | null;
  nonRetryable?: boolean;
  details?: unknown[];
  timeoutType?: unknown;
  lastHeartbeatDetails?: unknown;
  cause?: unknown;
}

const HEARTBEAT_TIMEOUT = new Set<unknown>(['HEARTBEAT', 4]);

/** How an activity's failure (as the workflow receives it) is classified. */
export function classifyFailure(err: unknown): ClassifiedFailure {
  let f = err as FailureLike | undefined;
  // ActivityFailure wraps the attempt's own failure.
  if (f?.name === 'ActivityFailure' && f.cause) f = f.cause as FailureLike;
  const message = f?.message ?? String(err);
  if (f?.name === 'TimeoutFailure') {
    const beat = f.lastHeartbeatDetails as { host?: string; step?: number; lastCommittedStep?: number | null } | undefined;
    const details: FailureDetails = { host: beat?.host, step: beat?.step, lastCommittedStep: beat?.lastCommittedStep };
    // No heartbeat in time: the worker process died, its node was lost or partitioned.
    if (HEARTBEAT_TIMEOUT.has(f.timeoutType)) return { class: 'infrastructure', kind: 'worker-lost', message: `worker lost: no heartbeat in time (${message})`, nonRetryable: false, details };
    return { class: 'job', kind: 'timeout', message: `attempt timed out (${message})`, nonRetryable: false, details };
  }
  const details = (Array.isArray(f?.details) ? f.details[0] : undefined) as FailureDetails | undefined;
  const known = f?.type ? FAILURE_TYPES[f.type] : undefined;
  if (known) return { ...known, message, nonRetryable: Boolean(f?.nonRetryable) || known.class === 'config', details, type: f!.type! };
  // A worker stopped without draining (an old worker, or a drain that timed out): the fleet's doing.
  if (/worker is shutting down/i.test(message)) return { class: 'infrastructure', kind: 'worker-shutdown', message, nonRetryable: false, details };
  return { class: 'job', kind: 'crash', message, nonRetryable: Boolean(f?.nonRetryable), details, ...(f?.type ? { type: f.type } : {}) };
}

/** What `status` and the audit trail say of a class and kind ("infrastructure: worker lost"). */
export function describeFailure(c: { class: FailureClass; kind: FailureKind }): string {
  return `${c.class}: ${c.kind.replace(/-/g, ' ')}`;
}

/** A run whose id another run owns (storage/run-claim.ts): it ends at once and writes nothing. */
export const RUN_ID_TAKEN = 'RunIdTaken';
