/**
 * The workflow side of the audit trail: events are numbered here and appended strictly in order
 * by a control activity, so the hash chain in the bucket never forks (storage/audit-chain.ts).
 *
 * Batched (runs started since the `history-v2` patch): while one append is in flight, new events
 * queue up and go out together in the next one, so the history grows with batches, not events.
 * Runs started earlier keep one activity per event (their recorded histories replay as before).
 */
import { CancellationScope } from '@temporalio/workflow';
import type { AuditEvent } from '../storage/audit-chain.js';
import { audit } from './activities.js';

const { appendAuditEvent, appendAuditEvents } = audit;

export class AuditLog {
  private seq = 0;
  private tail: Promise<void> = Promise.resolve();
  private queued: { seq: number; event: AuditEvent }[] = [];
  head: { seq: number; hash: string } | undefined;
  /** Set when an append failed for good; the run's status then says the trail is incomplete. */
  broken: unknown;

  constructor(
    private readonly storagePrefix: string,
    private readonly runId: string,
    /** Batched appends (runs since history-v2): an event appended beside others costs no activity of its own. */
    readonly batched = false,
  ) {}

  append(type: string, fields: Omit<AuditEvent, 'type' | 'at'> = {}): void {
    const seq = ++this.seq;
    const event: AuditEvent = { type, at: new Date().toISOString(), ...fields };
    if (this.batched) {
      this.queued.push({ seq, event });
      if (this.queued.length > 1) return; // the write already chained below takes this one too
    }
    // Not cancellable: a cancelled run still records what happened, including its cancellation.
    this.tail = this.tail.then(() =>
      CancellationScope.nonCancellable(async () => {
        if (this.batched) {
          const batch = this.queued;
          this.queued = [];
          if (this.broken) return; // never write past a gap: the chain would not verify anyway
          try {
            this.head = await appendAuditEvents({ storagePrefix: this.storagePrefix, runId: this.runId, firstSeq: batch[0]!.seq, events: batch.map((b) => b.event) });
          } catch (err) {
            this.broken = err;
          }
          return;
        }
        if (this.broken) return;
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

  /** Why the trail is incomplete, for the run's status (undefined while it is whole). */
  get error(): string | undefined {
    if (!this.broken) return undefined;
    const e = this.broken as { cause?: { message?: string }; message?: string };
    return `audit trail incomplete after event ${this.head?.seq ?? 0}: ${e.cause?.message ?? e.message ?? String(this.broken)}`;
  }
}
