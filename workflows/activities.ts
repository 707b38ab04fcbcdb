/**
 * The activities workflow code calls, as proxies with their timeouts and retry policies: one place,
 * so that the same activity never runs under two policies. (Training runs on a stage's own GPU task
 * queue with the stage's policy: workflows/stage.ts.) Options are not part of a run's history's
 * determinism: changing them here is safe for runs in flight.
 */
import { proxyActivities } from '@temporalio/workflow';
import type * as activities from '../activities/index.js';

type ControlActivities = ReturnType<typeof activities.createControlActivities>;
type AuditActivities = ReturnType<typeof activities.createAuditActivities>;
type ApprovalActivities = ReturnType<typeof activities.createApprovalActivities>;
type RegistryActivities = ReturnType<typeof activities.createRegistryActivities>;

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
