/**
 * Scheduled runs (`refinery schedule create`). A schedule starts the pipeline workflow with fixed
 * arguments, so such a run takes its id from the workflow id Temporal gives it
 * ("<scheduleId>-<RFC 3339 time>"), and with `skipIfUnchanged` it ends early, state 'unchanged',
 * when its inputs (the fingerprint from prepareRun) equal those of the pipeline's last successful
 * run: every stage skipped with a note, the status written next to the run, and the audit trail
 * naming the run it matched.
 */
import { workflowInfo } from '@temporalio/workflow';
import type { AuditLog } from './audit-log.js';
import { closeRun } from './finish.js';
import type { PipelineInput, PipelineResult, PipelineStatus, PreparedRun } from './types.js';

/** The run id: the one given, else (scheduled runs) the workflow id. */
export function runIdOf(input: PipelineInput): string {
  return input.runId || workflowInfo().workflowId;
}

/**
 * The last successful run whose inputs this one repeats, when the run may skip (else undefined).
 * Stages forced by name (e.g. `retry --from-stage` of a scheduled run) always run.
 */
export function unchangedSince(input: PipelineInput, prepared: PreparedRun): string | undefined {
  const last = prepared.lastSuccess;
  if (!input.skipIfUnchanged || (input.forceStages?.length ?? 0) > 0) return undefined;
  if (!last || !prepared.fingerprint || last.fingerprint !== prepared.fingerprint) return undefined;
  return last.runId;
}

/**
 * Ends a run whose inputs are unchanged since `previousRunId`: nothing is trained. `beforeClose`
 * runs once the status says so, before the run closes (its notifications).
 */
export async function finishUnchanged(status: PipelineStatus, previousRunId: string, storagePrefix: string, audit: AuditLog, beforeClose?: () => Promise<void>): Promise<PipelineResult> {
  status.state = 'unchanged';
  status.unchangedSince = previousRunId;
  const note = `not run: inputs unchanged since run ${previousRunId}`;
  for (const s of status.stages) Object.assign(s, { state: 'skipped', note });
  if (beforeClose) await beforeClose(); // only then: an extra await would reorder older runs' commands
  await closeRun(status, audit, storagePrefix, () => {
    audit.append('run-unchanged', { previousRunId, fingerprint: status.fingerprint ?? null });
    audit.append('run-finished', { state: status.state, error: null });
  });
  return { status, artifacts: {} };
}
