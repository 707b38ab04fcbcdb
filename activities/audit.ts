/**
 * The audit trail's activities. Only the pipeline workflow appends, in order, so the previous
 * record is always there to link to; a retried append writes the same bytes again (idempotent).
 *   appendAuditEvent    one event (runs started before batched appends)
 *   appendAuditEvents   a batch of consecutive events in one activity: the history grows with
 *                       batches, not with events
 *   summarizeStageAttempts  what each attempt of a stage recorded for itself (storage/attempt-records.ts),
 *                       for the workflow to anchor in the trail when the stage ends
 *
 * Each record is written twice, with the same bytes: first its write-once copy into the
 * object-locked audit bucket (`If-None-Match: *`, with retention; the authority `audit verify`
 * checks against), then the copy in the main bucket that every reader uses. A retried append
 * finds its write-once copy already there with the same bytes and goes on; a copy with other
 * bytes (a forked or pre-written chain) fails the append for good, so the run's status reports
 * the trail as incomplete (docs/security.md).
 */
import { activityInfo } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { summarizeAttempts, type AttemptSummary } from '../storage/attempt-records.js';
import { auditKey, makeRecord, type AuditEvent, type AuditRecord } from '../storage/audit-chain.js';
import { layout } from '../storage/layout.js';
import { claimRunId } from '../storage/run-claim.js';
import { AuditBucketUnusable, jsonBytes, LockedCopyConflict, type ObjectStore } from '../storage/object-store.js';

/** Writes the write-once copy of a record, then the main one; the copy's own failures are not retried. */
export async function putRecordTwice(store: ObjectStore, key: string, value: unknown): Promise<void> {
  const bytes = jsonBytes(value);
  if (store.auditBucket) {
    try {
      await store.putLocked(key, bytes);
    } catch (err) {
      if (err instanceof LockedCopyConflict || err instanceof AuditBucketUnusable) throw ApplicationFailure.nonRetryable(err.message, err.name);
      throw err;
    }
  }
  await store.putBytes(key, bytes, 'application/json');
}

export function createAuditActivities(store: ObjectStore) {
  async function append(claimPrefix: string, runId: string, seq: number, event: AuditEvent, prevHash?: string | null): Promise<AuditRecord> {
    const runPrefix = layout.run(claimPrefix, runId);
    let prev = prevHash;
    if (prev === undefined) {
      prev = null;
      if (seq > 1) {
        const before = await store.getJson<AuditRecord>(auditKey(runPrefix, seq - 1));
        if (!before) throw ApplicationFailure.retryable(`audit event ${seq - 1} of ${runId} is not written yet`, 'AuditGap');
        prev = before.hash;
      }
    }
    // The first record claims the run id too (it may be written before prepareRun starts).
    const execution = activityInfo().workflowExecution;
    if (seq === 1 && execution) await claimRunId(store, claimPrefix, { runId, workflowId: execution.workflowId, workflowRunId: execution.runId });
    const record = makeRecord(seq, prev, event);
    await putRecordTwice(store, auditKey(runPrefix, seq), record);
    return record;
  }

  return {
    async appendAuditEvent(input: { storagePrefix: string; runId: string; seq: number; event: AuditEvent }): Promise<{ seq: number; hash: string }> {
      const record = await append(input.storagePrefix, input.runId, input.seq, input.event);
      return { seq: record.seq, hash: record.hash };
    },

    /** Events numbered `firstSeq`, `firstSeq + 1`, …, written in order, each linked to the one before. */
    async appendAuditEvents(input: { storagePrefix: string; runId: string; firstSeq: number; events: AuditEvent[] }): Promise<{ seq: number; hash: string }> {
      let prevHash: string | null | undefined;
      let last: AuditRecord | undefined;
      for (const [i, event] of input.events.entries()) {
        last = await append(input.storagePrefix, input.runId, input.firstSeq + i, event, prevHash);
        prevHash = last.hash;
      }
      if (!last) throw ApplicationFailure.nonRetryable('appendAuditEvents: no events', 'AuditEmptyBatch');
      return { seq: last.seq, hash: last.hash };
    },

    async summarizeStageAttempts(input: { storagePrefix: string; runId: string; stageId: string }): Promise<AttemptSummary[]> {
      return summarizeAttempts(store, input);
    },
  };
}
