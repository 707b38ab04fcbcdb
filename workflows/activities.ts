/**
 * The activities workflow code calls, as proxies with their timeouts and retry policies: one place,
 * so that the same activity never runs under two policies. (Training runs on a stage's own GPU task
 * queue with the stage's policy: workflows/stage.ts.) Options are not part of a run's history's
 * determinism: changing them here is safe for runs in flight.
 */
import { proxyActivities } from '@temporalio/workflow';
import type * as activities from '../activities/index.js';
import { NOTIFY_MAX_ATTEMPTS } from './notification-events.js';

type ControlActivities = ReturnType<typeof activities.createControlActivities>;
type AuditActivities = ReturnType<typeof activities.createAuditActivities>;
type ApprovalActivities = ReturnType<typeof activities.createApprovalActivities>;
type RegistryActivities = ReturnType<typeof activities.createRegistryActivities>;
type NotificationActivities = ReturnType<typeof activities.createNotificationActivities>;

/** Control work only needs the object store: ride out an outage of several minutes. */
const STORAGE_OUTAGE_RETRY = { maximumAttempts: 30, maximumInterval: '30s', nonRetryableErrorTypes: ['InputError'] };

/** resolveStageCache, finishRun: a few object-store calls each. */
export const control = proxyActivities<ControlActivities>({ startToCloseTimeout: '10 minutes', retry: STORAGE_OUTAGE_RETRY });

/**
 * prepareRun uploads a local base model and datasets, possibly many GB: liveness is the heartbeat
 * (it heartbeats while it hashes, validates and uploads), and a retry skips what is already there.
 */
export const preparation = proxyActivities<ControlActivities>({ startToCloseTimeout: '12 hours', heartbeatTimeout: '2 minutes', retry: STORAGE_OUTAGE_RETRY });

/** The audit trail's appends and the attempts read back when a stage ends. */
export const audit = proxyActivities<AuditActivities>({ startToCloseTimeout: '5 minutes', retry: { maximumAttempts: 30, maximumInterval: '30s' } });

/** The model registry: an eval stage's baseline alias, the promote step (a few object-store calls). */
export const registry = proxyActivities<RegistryActivities>({ startToCloseTimeout: '5 minutes', retry: { ...STORAGE_OUTAGE_RETRY, nonRetryableErrorTypes: ['InputError', 'RegistryError'] } });

/**
 * verifyApproval, while `refinery approve|reject` waits for the update's answer: a refusal is
 * final (non-retryable) and a worker that cannot answer soon makes the approver retry, not wait.
 */
export const approvals = proxyActivities<ApprovalActivities>({ startToCloseTimeout: '30 seconds', scheduleToCloseTimeout: '2 minutes', retry: { maximumAttempts: 5, maximumInterval: '10s' } });

/**
 * notify: one event to every matching webhook (activities/notify.ts). A receiver that is down gets
 * ~4 minutes of retries (1 s doubling, at most 1 min apart); a webhook's own `maxAttempts` can
 * stop sooner. Each request has its own 10 s timeout, and the webhooks are posted to in parallel.
 */
export const notifications = proxyActivities<NotificationActivities>({
  startToCloseTimeout: '1 minute',
  retry: { maximumAttempts: NOTIFY_MAX_ATTEMPTS, initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m', nonRetryableErrorTypes: ['WebhooksFileError'] },
});
