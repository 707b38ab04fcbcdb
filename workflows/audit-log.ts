/**
 * The workflow side of the audit trail: events are numbered here and appended strictly in order
 * by a control activity, so the hash chain in the bucket never forks (storage/audit-chain.ts).
 */
import { proxyActivities } from '@temporalio/workflow';
import type * as activities from '../activities/index.js';
import type { AuditEvent } from '../storage/audit-chain.js';

const { appendAuditEvent } = proxyActivities<ReturnType<typeof activities.createAuditActivities>>({
  startToCloseTimeout: '1 minute',
  retry: { maximumAttempts: 20, maximumInterval: '30s' },
});

export class AuditLog {
  private seq = 0;
  private tail: Promise<void> = Promise.resolve();
  head: { seq: number; hash: string } | undefined;

  constructor(private readonly storagePrefix: string, private readonly runId: string) {}

  append(type: string, fields: Omit<AuditEvent, 'type' | 'at'> = {}): void {
    const seq = ++this.seq;
    const event: AuditEvent = { type, at: new Date().toISOString(), ...fields };
    this.tail = this.tail.then(async () => {
      this.head = await appendAuditEvent({ storagePrefix: this.storagePrefix, runId: this.runId, seq, event });
    });
  }

  /** Waits until every event so far is written. */
  async flush(): Promise<void> {
    await this.tail;
  }
}
