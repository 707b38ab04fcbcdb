/**
 * What a run tells webhooks (docs/operations.md, "Notifications"): the event names and the facts
 * the workflow hands the control worker's `notify` activity. Facts only: which URLs hear of them is
 * the worker's configuration (config/webhooks.ts), and URLs can carry secrets, so they never become
 * workflow data. Pure (no Temporal APIs): the workflow bundle, the config parser and the payload
 * builders share it.
 */

export const NOTIFICATION_EVENTS = [
  'run-completed',
  'run-failed',
  'run-cancelled',
  'run-unchanged',
  'stage-failed',
  'approval-waiting',
  'promoted',
  'promote-stopped',
] as const;
export type NotificationEvent = (typeof NOTIFICATION_EVENTS)[number];

/**
 * Attempts a notification gets at most (the `notify` activity's retry policy, workflows/activities.ts);
 * a webhook may ask for fewer (config/webhooks.ts `maxAttempts`).
 */
export const NOTIFY_MAX_ATTEMPTS = 10;

export interface Notification {
  event: NotificationEvent;
  /** `<runId>:<event>:<stage or ->:<seq>`: the same on every retry, so receivers can drop duplicates. */
  eventId: string;
  runId: string;
  pipeline: string;
  /** The run's state; for stage-failed and approval-waiting the stage's; promoted or stopped for the promote step. */
  state: string;
  stage?: string;
  /** When it happened (workflow time, ISO 8601). */
  at: string;
  error?: string;
  /** The stage's gate: its verdict, or (promote-stopped) the gate that stopped the promotion. */
  gate?: string;
  /** approval-waiting: when the gate stops waiting. */
  approvalDeadline?: string;
  /** promoted: the alias moved (changed false: it already pointed there). */
  promoted?: { model: string; alias: string; target: string; changed: boolean };
  /** promote-stopped: the alias that was not moved. */
  promote?: { model: string; alias: string };
  /** run-unchanged: the run whose inputs this one repeats. */
  unchangedSince?: string;
}

/** What `notify` did: the `notification-sent` audit event. Never a URL. */
export interface NotifyResult {
  /** Webhooks the worker's configuration matched for this event and pipeline. */
  webhooks: number;
  delivered: number;
  /** The last HTTP status of each matched webhook, in file order (null: no answer). */
  statusCodes: (number | null)[];
  /** The activity attempt that finished the delivery. */
  attempt: number;
}
