/**
 * The workflow side of notifications (docs/operations.md, "Notifications"): each event is one
 * `notify` activity on the control worker, which knows the webhooks; the workflow says only what
 * happened. Sending never holds the run up and never fails it: a notification that fails after its
 * retries is logged and recorded in the trail, and the run goes on. `settle` waits for the ones in
 * flight before the run closes, so each is recorded before `run-finished`.
 *
 * Runs started before the `notifications` patch send nothing (`enabled` false).
 */
import { CancellationScope, log } from '@temporalio/workflow';
import { notifications } from './activities.js';
import type { AuditLog } from './audit-log.js';
import { describeError } from './dag.js';
import type { Notification, NotificationEvent, NotifyResult } from './notification-events.js';
import type { PipelineStatus } from './types.js';

type Facts = Omit<Notification, 'event' | 'eventId' | 'runId' | 'pipeline' | 'at'>;

export class Notifier {
  private seq = 0;
  private readonly inFlight: Promise<void>[] = [];

  constructor(
    /** False for runs started before the patch: then no method may await anything (see `finish`). */
    readonly enabled: boolean,
    private readonly run: { runId: string; pipeline: string },
    private readonly audit: AuditLog,
  ) {}

  /** Sends `event` in the background; `settle` awaits it. */
  send(event: NotificationEvent, facts: Facts): void {
    if (!this.enabled) return;
    const seq = ++this.seq;
    const n: Notification = {
      event,
      eventId: `${this.run.runId}:${event}:${facts.stage ?? '-'}:${seq}`,
      runId: this.run.runId,
      pipeline: this.run.pipeline,
      at: new Date().toISOString(),
      ...facts,
    };
    const stage = n.stage !== undefined ? { stage: n.stage } : {};
    // Not cancellable: what happened is still true after a cancellation, and the cancelled run's own end is news.
    const sent = CancellationScope.nonCancellable(() => notifications.notify(n)).then(
      (r) => {
        if (r.webhooks > 0) this.audit.append('notification-sent', { ...stage, event, eventId: n.eventId, webhooks: r.webhooks, delivered: r.delivered, statusCodes: r.statusCodes, attempts: r.attempt });
      },
      (err: unknown) => {
        const d = failureDetails(err);
        const error = describeError(err);
        log.warn(`notification ${event} (${n.eventId}) failed: ${error}`);
        this.audit.append('notification-failed', { ...stage, event, eventId: n.eventId, webhooks: d?.webhooks ?? null, delivered: d?.delivered ?? null, statusCodes: d?.statusCodes ?? null, attempts: d?.attempt ?? null, error });
      },
    );
    this.inFlight.push(sent);
  }

  /**
   * The run's end (its state is final in `status`), then every notification in flight settled.
   * Callers skip it when disabled: even an await of nothing would reorder an old run's commands.
   */
  async finish(status: PipelineStatus): Promise<void> {
    if (!this.enabled || status.state === 'running') return;
    this.send(`run-${status.state}`, {
      state: status.state,
      ...(status.error !== undefined ? { error: status.error } : {}),
      ...(status.unchangedSince !== undefined ? { unchangedSince: status.unchangedSince } : {}),
    });
    await this.settle();
  }

  /** Waits for every notification sent so far (each is recorded in the trail when it settles). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.inFlight);
  }
}

/** NotifyFailureDetails (activities/notify.ts), when the failure is the activity's own. */
function failureDetails(err: unknown): NotifyResult | undefined {
  for (let e = err as { details?: unknown[]; cause?: unknown } | undefined; e; e = e.cause as typeof e) {
    const d = e.details?.[0] as Partial<NotifyResult> | undefined;
    if (d && typeof d.webhooks === 'number') return d as NotifyResult;
  }
  return undefined;
}
