/**
 * A pipeline run. Workflow id = run id. Prepares the run (datasets validated and stored, base
 * model stored, run manifest written), then runs every stage as a child workflow as soon as the
 * stages it consumes have completed (independent stages run in parallel), applying each stage's
 * gate before its dependants start. Answers `status`; takes approvals; cancels cleanly.
 */
import {
  allHandlersFinished,
  ApplicationFailure,
  CancellationScope,
  condition,
  executeChild,
  isCancellation,
  proxyActivities,
  setHandler,
  upsertSearchAttributes,

} from '@temporalio/workflow';
import type * as activities from '../activities/index.js';
import type { ModelRef, PlannedStage } from '../spec/plan-types.js';
import { approvalUpdate, inputQuery, stageAttemptFailedSignal, stageProgressSignal, statusQuery } from './messages.js';
import { AuditLog } from './audit-log.js';
import { stageWorkflow } from './stage.js';
import type { ApprovalDecision, ArtifactRef, ModelInputs, PipelineInput, PipelineStatus, PreparedRun, StageOutcome, StageStatus } from './types.js';
import { evaluateMetricGate } from './gates.js';
import { SEARCH_ATTRIBUTES } from './search-attributes.js';
import { finishUnchanged, runIdOf, unchangedSince } from './scheduled.js';

const control = proxyActivities<ReturnType<typeof activities.createControlActivities>>({
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '2 minutes',
  // Control work only needs the object store: ride out an outage of several minutes.
  retry: { maximumAttempts: 30, maximumInterval: '30s', nonRetryableErrorTypes: ['InputError'] },
});

export interface PipelineResult {
  status: PipelineStatus;
  artifacts: Record<string, ArtifactRef>;
}

export async function pipelineWorkflow(pipelineInput: PipelineInput): Promise<PipelineResult> {
  const input = { ...pipelineInput, runId: runIdOf(pipelineInput) }; // scheduled runs: the workflow id
  const { plan } = input;
  const status: PipelineStatus = {
    runId: input.runId,
    pipeline: plan.name,
    state: 'running',
    stages: plan.stages.map((s) => ({
      id: s.id,
      kind: s.kind,
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
  const stageStatus = (id: string): StageStatus => status.stages.find((s) => s.id === id)!;
  const approvals = new Map<string, ApprovalDecision>();
  const audit = new AuditLog(plan.storage.prefix, input.runId);
  const failedAttempts = new Set<string>();
  audit.append('run-started', {
    pipeline: plan.name,
    requestedBy: input.requestedBy,
    specSha256: plan.specSha256,
    resumeFrom: input.resumeFrom ?? null,
    forceStages: input.forceStages ?? [],
    scheduleId: input.scheduleId ?? null,
  });

  setHandler(statusQuery, () => status);
  setHandler(inputQuery, () => input);
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
  setHandler(
    approvalUpdate,
    (decision) => {
      approvals.set(decision.stageId, decision);
      audit.append('approval', { stage: decision.stageId, approved: decision.approved, by: decision.by, reason: decision.reason });
      return `${decision.approved ? 'approved' : 'rejected'} ${decision.stageId}`;
    },
    {
      validator: (decision) => {
        const s = status.stages.find((x) => x.id === decision.stageId);
        if (!s) throw new Error(`no stage "${decision.stageId}" in this run`);
        if (s.state !== 'awaiting-approval') throw new Error(`stage "${decision.stageId}" is not awaiting approval (it is ${s.state})`);
        if (!decision.by.trim()) throw new Error('say who decides (--by)');
      },
    },
  );
  upsertSearchAttributes({ [SEARCH_ATTRIBUTES.pipeline]: [plan.name], [SEARCH_ATTRIBUTES.state]: ['running'] });

  const outcomes = new Map<string, StageOutcome>();
  const storagePrefix = plan.storage.prefix;
  let prepared: PreparedRun;
  try {
    prepared = await control.prepareRun({ runId: input.runId, plan, requestedBy: input.requestedBy, resumeFrom: input.resumeFrom, scheduleId: input.scheduleId });
  } catch (err) {
    return finish(status, outcomes, err, plan.storage.prefix, audit);
  }
  audit.append('run-prepared', {
    baseModel: { uri: prepared.baseModel.uri, manifestSha256: prepared.baseModel.manifestSha256 },
    datasets: Object.fromEntries(Object.entries(prepared.datasets).map(([k, d]) => [k, { uri: d.uri, sha256: d.sha256, manifestSha256: d.manifestSha256, source: d.source ?? null, sourceKey: d.sourceKey ?? null }])),
    jobsVersion: prepared.jobsVersion,
    fingerprint: prepared.fingerprint ?? null,
  });

  // Scheduled runs (skipIfUnchanged) end here when the inputs equal the last successful run's.
  status.fingerprint = prepared.fingerprint;
  const sameAs = unchangedSince(input, prepared);
  if (sameAs !== undefined) return finishUnchanged(status, sameAs, storagePrefix, audit);

  // A LoRA stage's output is an adapter over the full model its own input rests on.
  const modelOf = (ref: ModelRef): { model: ArtifactRef; base?: ArtifactRef } => {
    if ('base' in ref) return { model: prepared.baseModel };
    const upstream = plan.stages.find((s) => s.id === ref.stage)!;
    const artifact = outcomes.get(ref.stage)!.artifact;
    if (!upstream.producesAdapter) return { model: artifact };
    const input = modelOf(upstream.inputs.model);
    return { model: artifact, base: input.base ?? input.model };
  };

  const runStage = async (stage: PlannedStage): Promise<void> => {
    const s = stageStatus(stage.id);
    s.state = 'running';
    s.startedAt = new Date().toISOString();
    audit.append('stage-started', { stage: stage.id, kind: stage.kind });
    const policy = modelOf(stage.inputs.model);
    const inputs: ModelInputs = { model: policy.model, base: policy.base };
    if (stage.inputs.reward_model) {
      const rm = modelOf(stage.inputs.reward_model);
      Object.assign(inputs, { reward_model: rm.model, reward_model_base: rm.base });
    }
    const outcome = await executeChild(stageWorkflow, {
      workflowId: `${input.runId}--${stage.id}`,
      args: [
        {
          runId: input.runId,
          storagePrefix,
          stage,
          inputs,
          datasets: {
            train: stage.dataset ? prepared.datasets[stage.dataset.name] : undefined,
            eval: stage.evalDataset ? prepared.datasets[stage.evalDataset.name] : undefined,
          },
          jobsVersion: prepared.jobsVersion,
          force: input.forceStages?.includes(stage.id) ?? false,
        },
      ],
    });
    Object.assign(s, {
      artifact: outcome.artifact,
      metrics: { ...s.metrics, ...outcome.metrics },
      resumedFromStep: outcome.resumedFromStep,
      attempt: outcome.attempt,
    });
    if (!outcome.reused && s.totalSteps !== null) s.step = s.totalSteps;

    audit.append(outcome.reused ? 'stage-reused' : 'stage-completed', {
      stage: stage.id,
      cacheKey: outcome.cacheKey,
      artifact: { uri: outcome.artifact.uri, prefix: outcome.artifact.prefix, manifestSha256: outcome.artifact.manifestSha256 },
      metrics: outcome.metrics,
      attempt: outcome.attempt,
      resumedFromStep: outcome.resumedFromStep,
    });
    if (stage.gate) {
      const verdict = evaluateMetricGate(stage.gate.metrics, outcome.metrics);
      if (stage.gate.metrics.length > 0) audit.append('gate', { stage: stage.id, passed: verdict.passed, reason: verdict.reason });
      if (!verdict.passed) {
        s.gate = verdict.reason;
        throw ApplicationFailure.nonRetryable(`gate after stage "${stage.id}" failed: ${verdict.reason}`, 'GateFailed');
      }
      if (stage.gate.approvalTimeoutMs !== undefined) {
        s.state = 'awaiting-approval';
        const decided = await condition(() => approvals.has(stage.id), stage.gate.approvalTimeoutMs);
        const decision = approvals.get(stage.id);
        if (!decided || !decision) {
          s.gate = `no approval within ${stage.gate.approvalTimeoutMs} ms`;
          throw ApplicationFailure.nonRetryable(`stage "${stage.id}": ${s.gate}`, 'ApprovalTimedOut');
        }
        s.gate = `${decision.approved ? 'approved' : 'rejected'} by ${decision.by}: ${decision.reason}`;
        if (!decision.approved) throw ApplicationFailure.nonRetryable(`stage "${stage.id}" ${s.gate}`, 'ApprovalRejected');
      } else if (stage.gate.metrics.length > 0) {
        s.gate = verdict.reason;
      }
    }
    outcomes.set(stage.id, outcome);
    s.state = outcome.reused ? 'reused' : 'completed';
    s.endedAt = new Date().toISOString();
  };

  // Each stage starts when all its dependencies have completed; a failed dependency skips it.
  const done = new Map<string, Promise<void>>();
  let firstError: unknown;
  for (const stage of plan.stages) {
    done.set(
      stage.id,
      (async () => {
        try {
          await Promise.all(stage.deps.map((d) => done.get(d)!));
        } catch (err) {
          stageStatus(stage.id).state = 'skipped';
          throw err;
        }
        try {
          await runStage(stage);
        } catch (err) {
          const s = stageStatus(stage.id);
          s.state = isCancellation(err) ? 'cancelled' : 'failed';
          s.error = describe(err);
          s.endedAt = new Date().toISOString();
          audit.append(s.state === 'cancelled' ? 'stage-cancelled' : 'stage-failed', { stage: stage.id, error: s.error });
          firstError ??= err;
          throw err;
        }
      })(),
    );
  }
  await Promise.allSettled(done.values());
  return finish(status, outcomes, firstError, plan.storage.prefix, audit);
}

async function finish(status: PipelineStatus, outcomes: Map<string, StageOutcome>, err: unknown, storagePrefix: string, audit: AuditLog): Promise<PipelineResult> {
  const cancelled = err !== undefined && isCancellation(err);
  status.state = err === undefined ? 'completed' : cancelled ? 'cancelled' : 'failed';
  if (err !== undefined) status.error = describe(err);
  for (const s of status.stages) if (s.state === 'pending') s.state = 'skipped';
  await CancellationScope.nonCancellable(async () => {
    upsertSearchAttributes({ [SEARCH_ATTRIBUTES.state]: [status.state] });
    audit.append('run-finished', { state: status.state, error: status.error ?? null });
    await audit.flush();
    status.auditHead = audit.head;
    await control.finishRun({ runId: status.runId, status, storagePrefix });
  });
  await condition(allHandlersFinished);
  if (cancelled) throw err;
  if (err !== undefined) {
    throw ApplicationFailure.nonRetryable(`run ${status.runId} failed: ${status.error}`, 'PipelineFailed', status);
  }
  const artifacts: Record<string, ArtifactRef> = {};
  for (const [id, o] of outcomes) artifacts[id] = o.artifact;
  return { status, artifacts };
}

/** The innermost cause's message: what a person needs to read. */
function describe(err: unknown): string {
  let e = err as { message?: string; cause?: unknown } | undefined;
  while (e?.cause) e = e.cause as typeof e;
  return e?.message ?? String(err);
}


