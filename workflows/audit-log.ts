/**
 * The workflow side of the audit trail: events are numbered here and appended strictly in order
 * by a control activity, so the hash chain in the bucket never forks (storage/audit-chain.ts).
 */
import { CancellationScope, proxyActivities } from '@temporalio/workflow';
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
  /** Set when an append failed for good; the run's status then says the trail is incomplete. */
  broken: unknown;

  constructor(private readonly storagePrefix: string, private readonly runId: string) {}

  append(type: string, fields: Omit<AuditEvent, 'type' | 'at'> = {}): void {
    const seq = ++this.seq;
    const event: AuditEvent = { type, at: new Date().toISOString(), ...fields };
    // Not cancellable: a cancelled run still records what happened, including its cancellation.
    this.tail = this.tail.then(() =>
      CancellationScope.nonCancellable(async () => {
        if (this.broken) return; // never write past a gap: the chain would not verify anyway
        try {
          this.head = await appendAuditEvent({ storagePrefix: this.storagePrefix, runId: this.runId, seq, event });
        } catch (err) {
          this.broken = err;
        }
      }),
    );
  }

  /** Waits until every event so far is written. */
  async flush(): Promise<void> {
    await this.tail;
  }
}
