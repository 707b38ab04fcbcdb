/**
 * A run's status as people see it: the workflow's own status (stages, attempts, gates), with the
 * live step / loss / phase of each running stage merged in from its training activity's heartbeat
 * details (a describe of the stage workflow: no history event, no worker needed). A finished run
 * needs no worker at all: its status comes from the workflow's result or the bucket.
 */
import { WorkflowFailedError, type Client } from '@temporalio/client';
import { decodeFromPayloadsAtIndex } from '@temporalio/common/lib/internal-non-workflow/index.js';
import { summarizeAttempts } from '../storage/attempt-records.js';
import { layout } from '../storage/layout.js';
import { toAttemptStatus } from '../workflows/status.js';
import type { ObjectStore } from '../storage/object-store.js';
import { statusQuery } from '../workflows/messages.js';
import type { PipelineInput, PipelineResult, PipelineStatus, StageJobResult, StageProgress, StageStatus } from '../workflows/types.js';

export interface LiveProgress extends StageProgress {
  /** When the server last received a heartbeat from the attempt. */
  lastHeartbeatTime?: string;
  /** The activity's attempt (from the server, even before the attempt's first heartbeat). */
  activityAttempt: number;
  /** Why the previous attempt failed, when this is a retry. */
  lastFailure?: string;
}

/** The running training activity of a stage workflow, from its pending activity; undefined when there is none. */
export async function stageLiveProgress(client: Client, stageWorkflowId: string): Promise<LiveProgress | undefined> {
  const description = await client.workflow.getHandle(stageWorkflowId).describe();
  const pending = description.raw.pendingActivities?.find((a) => a.activityType?.name === 'runStageJob');
  if (!pending) return finishedTraining(client, stageWorkflowId);
  const details = pending.heartbeatDetails?.payloads?.length
    ? await decodeFromPayloadsAtIndex<StageProgress>(client.options.loadedDataConverter, 0, pending.heartbeatDetails.payloads)
    : undefined;
  const seconds = pending.lastHeartbeatTime?.seconds;
  return {
    ...(details ?? { phase: 'downloading', step: 0, totalSteps: null, loss: null, lastCommittedStep: null, attempt: pending.attempt ?? 1, host: '' }),
    activityAttempt: pending.attempt ?? 1,
    ...(seconds != null ? { lastHeartbeatTime: new Date(Number(seconds) * 1000 + Math.floor((pending.lastHeartbeatTime?.nanos ?? 0) / 1e6)).toISOString() } : {}),
    ...(pending.lastFailure?.message ? { lastFailure: pending.lastFailure.message } : {}),
  };
}

/**
 * Between the training activity's completion and the pipeline marking the stage done (a workflow
 * task or two; longer on a loaded server) there is no pending activity: where training ended comes
 * from the newest events of the stage workflow's history — its result, or the activity's — read
 * newest first, a page of a few events. Undefined when training has not ended (between attempts).
 */
async function finishedTraining(client: Client, stageWorkflowId: string): Promise<LiveProgress | undefined> {
  const res = await client.workflowService.getWorkflowExecutionHistoryReverse({
    namespace: client.options.namespace,
    execution: { workflowId: stageWorkflowId },
    maximumPageSize: 8,
  });
  for (const event of res.history?.events ?? []) {
    const payloads = event.workflowExecutionCompletedEventAttributes?.result?.payloads ?? event.activityTaskCompletedEventAttributes?.result?.payloads;
    if (event.activityTaskFailedEventAttributes || event.activityTaskTimedOutEventAttributes) return undefined;
    if (!payloads?.length) continue;
    const ended = await decodeFromPayloadsAtIndex<Pick<StageJobResult, 'final' | 'attempt'> & { host?: string }>(client.options.loadedDataConverter, 0, payloads);
    if (!ended?.final) return undefined;
    const { step, totalSteps, loss, lastCommittedStep } = ended.final;
    return { phase: 'committing', step, totalSteps, loss, lastCommittedStep, attempt: ended.attempt, activityAttempt: ended.attempt, host: ended.host ?? '' };
  }
  return undefined;
}

/** Merges a running stage's live progress into its status (in place). */
export function mergeLiveProgress(s: StageStatus, live: LiveProgress): void {
  // A retry that has not heartbeated yet still shows the attempt number the server knows.
  const attempt = Math.max(live.attempt, live.activityAttempt);
  Object.assign(s, {
    phase: live.phase,
    attempt,
    step: live.step,
    totalSteps: live.totalSteps,
    loss: live.loss,
    lastCommittedStep: live.lastCommittedStep,
    resumedFromStep: live.resumedFromStep ?? s.resumedFromStep,
    metrics: live.metrics ?? s.metrics,
    ...(live.host ? { host: live.host } : {}),
    ...(live.waitingFor ? { waitingFor: live.waitingFor } : {}),
    ...(live.progressAt ? { progressAt: live.progressAt } : {}),
    ...(live.skippedCheckpoints?.length ? { skippedCheckpoints: live.skippedCheckpoints } : {}),
    ...(live.contractViolations ? { contractViolations: live.contractViolations } : {}),
  });
  if (live.lastFailure && attempt > live.attempt) s.error = `attempt ${attempt - 1} failed: ${live.lastFailure}`;
}

/** The workflow's status with every running stage's live progress merged in. */
export async function withLiveProgress(client: Client, status: PipelineStatus): Promise<PipelineStatus> {
  await Promise.all(
    status.stages
      .filter((s) => s.state === 'running')
      .map(async (s) => {
        const live = await stageLiveProgress(client, `${status.runId}--${s.id}`).catch(() => undefined);
        if (live) mergeLiveProgress(s, live);
      }),
  );
  return status;
}

/** A closed run's final status, without a worker: its result, its failure's details, or the bucket. */
export async function finishedRunStatus(client: Client, runId: string, store?: ObjectStore): Promise<PipelineStatus> {
  const handle = client.workflow.getHandle(runId);
  try {
    return ((await handle.result()) as PipelineResult).status;
  } catch (err) {
    const fromFailure = statusFromFailure(err);
    if (fromFailure) return fromFailure;
    // Cancelled or terminated: finishRun wrote the status next to the run (cancelled), if it got there.
    const prefix = await storagePrefixOf(client, runId).catch(() => undefined);
    const stored = prefix && store ? await store.getJson<PipelineStatus>(`${layout.run(prefix, runId)}/status.json`).catch(() => undefined) : undefined;
    const description = await handle.describe();
    const state = description.status.name === 'CANCELLED' ? 'cancelled' : 'failed';
    if (stored) return stored;
    return { runId, pipeline: '?', state, stages: [], error: `${description.status.name.toLowerCase()}: ${(err as Error).message}` };
  }
}

/**
 * The run's status now: for an open run, the workflow's status query (a worker replays it) plus
 * live progress; for a closed one, `finishedRunStatus` (no worker needed).
 */
export async function currentRunStatus(client: Client, runId: string, store?: ObjectStore): Promise<PipelineStatus> {
  const description = await client.workflow.getHandle(runId).describe();
  if (description.status.name !== 'RUNNING') return finishedRunStatus(client, runId, store);
  const status = await client.workflow.getHandle(runId).query(statusQuery);
  await withLiveProgress(client, status);
  return store ? withRunningAttempts(client, status, store) : status;
}

/**
 * The attempts a running stage has ended so far, from their own records in the bucket (the
 * workflow reads them only when the stage ends): how each ended and whose failure it was, and the
 * attempt number of the one running now.
 */
async function withRunningAttempts(client: Client, status: PipelineStatus, store: ObjectStore): Promise<PipelineStatus> {
  const running = status.stages.filter((s) => s.state === 'running');
  if (running.length === 0) return status;
  const prefix = await storagePrefixOf(client, status.runId).catch(() => undefined);
  if (!prefix) return status;
  await Promise.all(
    running.map(async (s) => {
      const attempts = await summarizeAttempts(store, { storagePrefix: prefix, runId: status.runId, stageId: s.id }).catch(() => []);
      const ended = attempts.filter((a) => a.records > 0 && (a.outcome !== 'lost' || a.attempt < Math.max(...attempts.map((x) => x.attempt))));
      if (ended.length === 0) return;
      s.attempts = ended.map(toAttemptStatus);
      s.attempt = Math.max(s.attempt, ...attempts.map((a) => a.attempt));
    }),
  );
  return status;
}

/** A failed run carries its status as the failure's details; a cancelled or terminated one does not. */
export function statusFromFailure(err: unknown): PipelineStatus | undefined {
  let e = err as { cause?: unknown; details?: unknown[] } | undefined;
  if (err instanceof WorkflowFailedError) e = err.cause as typeof e;
  while (e) {
    const details = e.details?.[0] as PipelineStatus | undefined;
    if (details?.stages) return details;
    e = e.cause as typeof e;
  }
  return undefined;
}

/** The run's storage prefix, from the input it was started with (the first history event). */
async function storagePrefixOf(client: Client, runId: string): Promise<string | undefined> {
  const res = await client.workflowService.getWorkflowExecutionHistory({ namespace: client.options.namespace, execution: { workflowId: runId }, maximumPageSize: 1 });
  const started = res.history?.events?.[0]?.workflowExecutionStartedEventAttributes;
  if (!started?.input?.payloads?.length) return undefined;
  const input = await decodeFromPayloadsAtIndex<PipelineInput>(client.options.loadedDataConverter, 0, started.input.payloads);
  return input.plan.storage.prefix;
}
