/**
 * The run's status as the workflow keeps it (the `status` query): stage states, attempts, gates,
 * artifacts. Pure functions over plain data. Live step/loss is not here: it travels in heartbeat
 * details and the CLI merges it in (client/live-progress.ts).
 */
import type { AttemptSummary } from '../storage/attempt-records.js';
import type { PipelinePlan } from '../spec/plan-types.js';
import type { AttemptStatus, PipelineStatus, StageOutcome, StageStatus } from './types.js';

export function initialStatus(runId: string, plan: PipelinePlan): PipelineStatus {
  return {
    runId,
    pipeline: plan.name,
    state: 'running',
    startedAt: new Date().toISOString(),
    stages: plan.stages.map((s) => ({
      id: s.id,
      kind: s.kind,
      gpus: s.gpus,
      state: 'pending',
      attempt: 0,
      step: 0,
      totalSteps: null,
      loss: null,
      metrics: {},
      lastCommittedStep: null,
      resumedFromStep: null,
    })),
  };
}

export function stageOf(status: PipelineStatus, id: string): StageStatus {
  const s = status.stages.find((x) => x.id === id);
  if (!s) throw new Error(`no stage ${id}`);
  return s;
}

/** A stage's job returned (or its output was reused). */
export function applyOutcome(s: StageStatus, outcome: StageOutcome): void {
  Object.assign(s, {
    artifact: outcome.artifact,
    metrics: { ...s.metrics, ...outcome.metrics },
    resumedFromStep: outcome.resumedFromStep,
    attempt: outcome.attempt,
  });
  if (outcome.final) {
    Object.assign(s, { step: outcome.final.step, totalSteps: outcome.final.totalSteps, loss: outcome.final.loss, lastCommittedStep: outcome.final.lastCommittedStep });
  }
  if (!outcome.reused && s.totalSteps !== null) s.step = s.totalSteps;
  if (outcome.reusedFrom) s.note = `output trained by run ${outcome.reusedFrom} (same cache key), reused`;
}

export function toAttemptStatus(a: AttemptSummary): AttemptStatus {
  return {
    attempt: a.attempt,
    host: a.host,
    outcome: a.outcome,
    reason: a.reason,
    resumedFromStep: a.resumedFromStep,
    checkpoints: a.checkpoints.length,
    lastCheckpointStep: a.checkpoints.at(-1) ?? null,
    skippedCheckpoints: a.skippedCheckpoints.map((c) => c.step),
    ...(a.supersededCheckpoints?.length ? { supersededCheckpoints: a.supersededCheckpoints.length } : {}),
    contractViolations: a.contractViolations,
    startedAt: a.startedAt,
    endedAt: a.endedAt,
    ...(a.failureClass ? { failureClass: a.failureClass, failureKind: a.failureKind } : {}),
    ...(a.adjustments ? { adjustments: a.adjustments } : {}),
  };
}

/** What the stage's attempts recorded for themselves, read when the stage ended. */
export function applyAttempts(s: StageStatus, attempts: AttemptSummary[]): void {
  s.attempts = attempts.map(toAttemptStatus);
  s.skippedCheckpoints = attempts.flatMap((a) => a.skippedCheckpoints.map((c) => c.step));
  s.contractViolations = attempts.reduce((n, a) => n + a.contractViolations, 0);
  const last = attempts.at(-1);
  if (last) {
    s.attempt = Math.max(s.attempt, last.attempt);
    if (last.host) s.host = last.host;
    if (s.lastCommittedStep === null && last.checkpoints.length > 0) s.lastCommittedStep = last.checkpoints.at(-1)!;
  }
}

/** The run ended: pending stages never ran. */
export function markFinished(status: PipelineStatus, state: PipelineStatus['state'], error?: string): void {
  status.state = state;
  if (error !== undefined) status.error = error;
  for (const s of status.stages) if (s.state === 'pending') s.state = 'skipped';
}
