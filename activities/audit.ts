/**
 * appendAuditEvent: writes one event of a run's audit trail. Only the pipeline workflow appends,
 * one event at a time and in order, so the previous record is always there to link to; a retried
 * append writes the same bytes again (idempotent).
 */
import { ApplicationFailure } from '@temporalio/common';
import { auditKey, makeRecord, type AuditEvent, type AuditRecord } from '../storage/audit-chain.js';
import { layout } from '../storage/layout.js';
import type { ObjectStore } from '../storage/object-store.js';

export function createAuditActivities(store: ObjectStore) {
  return {
    async appendAuditEvent(input: { storagePrefix: string; runId: string; seq: number; event: AuditEvent }): Promise<{ seq: number; hash: string }> {
      const runPrefix = layout.run(input.storagePrefix, input.runId);
      let prevHash: string | null = null;
      if (input.seq > 1) {
        const prev = await store.getJson<AuditRecord>(auditKey(runPrefix, input.seq - 1));
        if (!prev) throw ApplicationFailure.retryable(`audit event ${input.seq - 1} of ${input.runId} is not written yet`, 'AuditGap');
        prevHash = prev.hash;
      }
      const record = makeRecord(input.seq, prevHash, input.event);
      await store.putJson(auditKey(runPrefix, input.seq), record);
      return { seq: record.seq, hash: record.hash };
    },
  };
}
