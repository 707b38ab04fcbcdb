/**
 * A run id is claimed by the first Temporal execution that writes under it. Scheduled runs take
 * their id from the schedule's id and the fire time to the second, so two fires in one second (a
 * manual trigger beside the cron's) would otherwise share `runs/<id>/` and the second would write
 * over the first's manifest, trail and status. The first writer (prepareRun or the trail's first
 * append) puts `claim.json` with If-None-Match; any other execution finds it and writes nothing.
 */
import { ApplicationFailure } from '@temporalio/common';
import { layout } from './layout.js';
import type { ObjectStore } from './object-store.js';
import { RUN_ID_TAKEN } from '../workflows/failures.js';

export interface RunClaim {
  runId: string;
  /** The Temporal workflow execution (run id) that owns the run id. */
  workflowRunId: string;
  workflowId: string;
  at: string;
}

export { RUN_ID_TAKEN };

export const runClaimKey = (prefix: string, runId: string) => `${layout.run(prefix, runId)}/claim.json`;

/** Claims the run id for this execution, or throws RunIdTaken (non-retryable) if another has it. */
export async function claimRunId(store: ObjectStore, prefix: string, claim: Omit<RunClaim, 'at'>): Promise<void> {
  const key = runClaimKey(prefix, claim.runId);
  const mine: RunClaim = { ...claim, at: new Date().toISOString() };
  if ((await store.putIfAbsent(key, JSON.stringify(mine))) !== 'exists') return;
  const held = await store.getJson<RunClaim>(key);
  if (held?.workflowRunId === claim.workflowRunId) return; // a retry, or this run's other first writer
  throw ApplicationFailure.nonRetryable(
    `run id ${claim.runId} is taken by an earlier run (workflow ${held?.workflowId ?? '?'}, Temporal run ${held?.workflowRunId ?? '?'}, since ${held?.at ?? '?'}); nothing of this run was written. Two schedule fires in the same second share an id: trigger again.`,
    RUN_ID_TAKEN,
  );
}
