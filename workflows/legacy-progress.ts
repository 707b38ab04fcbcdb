/**
 * Progress and attempt-failure signals, as runs started before the `history-v2` patch handle them:
 * their training activities signalled the run every ~2 s and before each failed attempt, and the
 * handlers appended audit events. Kept so that those runs replay and finish on today's workers;
 * runs started since then get no such signals (progress is in heartbeat details) and ignore any.
 */
import { setHandler } from '@temporalio/workflow';
import type { AuditLog } from './audit-log.js';
import { stageAttemptFailedSignal, stageProgressSignal } from './messages.js';
import type { PipelineStatus } from './types.js';

export function handleProgressSignals(status: PipelineStatus, audit: AuditLog, legacy: boolean): void {
  if (!legacy) {
    setHandler(stageProgressSignal, () => undefined);
    setHandler(stageAttemptFailedSignal, () => undefined);
    return;
  }
  const failedAttempts = new Set<string>();
  setHandler(stageProgressSignal, ({ stageId, progress }) => {
    const s = status.stages.find((x) => x.id === stageId);
    if (!s || s.state !== 'running') return;
    if (progress.attempt > s.attempt) {
      for (let a = Math.max(1, s.attempt); a < progress.attempt; a++) {
        if (!failedAttempts.has(`${stageId}#${a}`)) audit.append('attempt-lost', { stage: stageId, attempt: a, reason: 'no result: the worker stopped heartbeating (killed, lost node) or timed out' });
      }
      audit.append('attempt-started', { stage: stageId, attempt: progress.attempt, host: progress.host, resumedFromStep: progress.resumedFromStep ?? null });
    }
    if (progress.lastCommittedStep !== null && progress.lastCommittedStep !== s.lastCommittedStep && progress.lastCommittedStep !== progress.resumedFromStep) {
      audit.append('checkpoint-committed', { stage: stageId, attempt: progress.attempt, step: progress.lastCommittedStep });
    }
    Object.assign(s, {
      attempt: progress.attempt,
      step: progress.step,
      totalSteps: progress.totalSteps,
      loss: progress.loss,
      lastCommittedStep: progress.lastCommittedStep,
      host: progress.host,
      metrics: progress.metrics ?? s.metrics,
    });
  });
  setHandler(stageAttemptFailedSignal, ({ stageId, attempt, host, reason }) => {
    failedAttempts.add(`${stageId}#${attempt}`);
    audit.append('attempt-failed', { stage: stageId, attempt, host, reason });
  });
}
