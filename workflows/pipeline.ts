/**
 * A pipeline run. Workflow id = run id. Prepares the run (datasets validated and stored, base
 * model stored, run manifest written), then runs every stage as a child workflow as soon as the
 * stages it consumes have completed (independent stages run in parallel), applying each stage's
 * gate before its dependants start. Answers `status`; takes approvals; cancels cleanly.
 *
 * The history grows with stages, attempts and gate decisions only (invariant 9, docs/operations.md):
 * live progress is in the training activity's heartbeat details, and each attempt's checkpoints are
 * in the attempt's own records in the bucket, anchored here once per attempt when the stage ends.
 */
import { ApplicationFailure, CancellationScope, condition, executeChild, isCancellation, patched, setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import type { PlannedStage } from '../spec/plan-types.js';
import { RUN_ID_TAKEN } from './failures.js';
import { audit as auditActivities, preparation, registry } from './activities.js';
import { handleApproval } from './approvals.js';
import { AuditLog } from './audit-log.js';
import { describeError, failureType, runInDependencyOrder, stageModelInputs } from './dag.js';
import { closeRun } from './finish.js';
import { evaluateMetricGate } from './gates.js';
import { handleProgressSignals } from './legacy-progress.js';
import { approvalUpdate, inputQuery, statusQuery } from './messages.js';
import { Notifier } from './notifier.js';
import { BASELINES_AND_PROMOTE, HISTORY_V2, NOTIFICATIONS, TOOLCHAIN_KEYS } from './patches.js';
import { finishUnchanged, runIdOf, unchangedSince } from './scheduled.js';
import { SEARCH_ATTRIBUTES } from './search-attributes.js';
import { stageWorkflow } from './stage.js';
import { describeRunToolchains, fingerprintWithToolchains, type RunToolchains } from './toolchains.js';
import { applyAttempts, applyOutcome, initialStatus, markFinished, stageOf } from './status.js';
import type { ApprovalDecision, ArtifactRef, ModelInputs, PipelineInput, PipelineResult, PipelineStatus, PreparedRun, StageOutcome } from './types.js';

export type { PipelineResult } from './types.js';

export async function pipelineWorkflow(pipelineInput: PipelineInput): Promise<PipelineResult> {
  // Runs started before this patch keep their old behaviour on replay (workflows/patches.ts).
  const v2 = patched(HISTORY_V2);
  const notifying = patched(NOTIFICATIONS);
  const input = { ...pipelineInput, runId: runIdOf(pipelineInput) }; // scheduled runs: the workflow id
  const { plan } = input;
  const status = initialStatus(input.runId, plan);
  const approvals = new Map<string, ApprovalDecision>();
  const audit = new AuditLog(plan.storage.prefix, input.runId, v2);
  const notifier = new Notifier(notifying, { runId: input.runId, pipeline: plan.name }, audit);
  audit.append('run-started', {
    pipeline: plan.name,
    requestedBy: input.requestedBy,
    specSha256: plan.specSha256,
    resumeFrom: input.resumeFrom ?? null,
    forceStages: input.forceStages ?? [],
    scheduleId: input.scheduleId ?? null,
  });

  setHandler(statusQuery, () => ({ ...status, ...(audit.error ? { auditError: audit.error } : {}) }));
  setHandler(inputQuery, () => input);
  handleProgressSignals(status, audit, !v2);
  setHandler(
    approvalUpdate,
    // Verified on the control worker before it counts, since the signed-approvals patch (workflows/approvals.ts).
    (decision) => handleApproval(decision, { runId: input.runId, pipeline: plan.name, status, approvals, audit }),
    {
      validator: (decision) => {
        const s = status.stages.find((x) => x.id === decision.stageId);
        if (!s) throw new Error(`no stage "${decision.stageId}" in this run`);
        if (s.state !== 'awaiting-approval') throw new Error(`stage "${decision.stageId}" is not awaiting approval (it is ${s.state})`);
        if (!decision.by.trim()) throw new Error('say who decides (--by)');
        const earlier = approvals.get(decision.stageId);
        if (earlier) throw new Error(`stage "${decision.stageId}" was already ${earlier.approved ? 'approved' : 'rejected'} by ${earlier.by}`);
      },
    },
  );
  upsertSearchAttributes({ [SEARCH_ATTRIBUTES.pipeline]: [plan.name], [SEARCH_ATTRIBUTES.state]: ['running'] });

  const outcomes = new Map<string, StageOutcome>();
  const storagePrefix = plan.storage.prefix;
  let prepared: PreparedRun;
  try {
    prepared = await preparation.prepareRun({ runId: input.runId, plan, requestedBy: input.requestedBy, resumeFrom: input.resumeFrom, scheduleId: input.scheduleId });
  } catch (err) {
    // Another run owns this run id (storage/run-claim.ts): this one writes nothing under it, not even its end.
    if (failureType(err) === RUN_ID_TAKEN) throw ApplicationFailure.nonRetryable(describeError(err), RUN_ID_TAKEN);
    return finish(status, outcomes, err, storagePrefix, audit, notifier);
  }
  audit.append('run-prepared', {
    baseModel: { uri: prepared.baseModel.uri, manifestSha256: prepared.baseModel.manifestSha256 },
    datasets: Object.fromEntries(Object.entries(prepared.datasets).map(([k, d]) => [k, { uri: d.uri, sha256: d.sha256, manifestSha256: d.manifestSha256, source: d.source ?? null, sourceKey: d.sourceKey ?? null, ...(d.sourceSha256 !== undefined ? { sourceSha256: d.sourceSha256 } : {}), ...(d.mix !== undefined ? { mix: d.mix } : {}) }])),
    jobsVersion: prepared.jobsVersion,
    fingerprint: prepared.fingerprint ?? null,
  });

  // What each stage would be trained with: in its cache key, and in the run's fingerprint.
  let toolchains: RunToolchains | undefined;
  if (patched(TOOLCHAIN_KEYS)) {
    try {
      toolchains = await describeRunToolchains(plan);
    } catch (err) {
      return finish(status, outcomes, err, storagePrefix, audit, notifier);
    }
    prepared = { ...prepared, fingerprint: fingerprintWithToolchains(prepared.fingerprint, toolchains) };
    audit.append('toolchains', { byQueue: toolchains.byQueue, fingerprint: prepared.fingerprint });
  }

  // Scheduled runs (skipIfUnchanged) end here when the inputs equal the last successful run's.
  status.fingerprint = prepared.fingerprint;
  const sameAs = unchangedSince(input, prepared);
  if (sameAs !== undefined) return finishUnchanged(status, sameAs, storagePrefix, audit, notifier.enabled ? () => notifier.finish(status) : undefined);

  /** Anchors what each attempt recorded for itself in the run's trail: one event per attempt. */
  const recordAttempts = (stageId: string) =>
    CancellationScope.nonCancellable(async () => {
      const attempts = await auditActivities.summarizeStageAttempts({ storagePrefix, runId: input.runId, stageId });
      applyAttempts(stageOf(status, stageId), attempts);
      for (const a of attempts) {
        audit.append('attempt', {
          stage: stageId,
          attempt: a.attempt,
          host: a.host,
          outcome: a.outcome,
          reason: a.reason,
          ...(a.failureClass ? { failureClass: a.failureClass, failureKind: a.failureKind ?? null } : {}),
          ...(a.adjustments ? { adjustments: a.adjustments } : {}),
          resumedFromStep: a.resumedFromStep,
          checkpoints: a.checkpoints,
          skippedCheckpoints: a.skippedCheckpoints,
          contractViolations: a.contractViolations,
          startedAt: a.startedAt,
          endedAt: a.endedAt,
          records: { count: a.records, head: a.head, problems: a.problems },
        });
      }
    });

  /**
   * An eval stage's baseline: what its alias points at now, downloaded beside the candidate (an
   * adapter baseline rests on this run's base model). Recorded in the trail; its manifest is in
   * the stage's cache key, so a new production model is scored again.
   */
  const resolveBaseline = async (stage: PlannedStage): Promise<ModelInputs | undefined> => {
    const want = stage.baseline!;
    const s = stageOf(status, stage.id);
    const resolved = await registry.resolveAlias({ storagePrefix, model: want.model, alias: want.alias });
    audit.append('baseline', { stage: stage.id, model: want.model, alias: want.alias, target: resolved.target, ifMissing: want.ifMissing });
    if (!resolved.target) {
      s.baseline = `${want.model}@${want.alias} points at no model yet`;
      if (want.ifMissing === 'fail') {
        throw ApplicationFailure.nonRetryable(`stage "${stage.id}": ${s.baseline} (promote one: refinery promote RUN --stage S --alias ${want.alias}; or set baseline.if_missing: pass)`, 'BaselineMissing');
      }
      s.baseline += ': scored alone, gates on relative metrics pass';
      return undefined;
    }
    const t = resolved.target;
    s.baseline = `${want.model}@${want.alias} -> ${t.runId ?? '?'}/${t.stage ?? '?'} (${t.manifestSha256.slice(0, 12)})`;
    return { baseline: { uri: t.uri, prefix: t.prefix, manifestSha256: t.manifestSha256 }, baseline_base: prepared.baseModel };
  };

  const runStage = async (stage: PlannedStage): Promise<void> => {
    const s = stageOf(status, stage.id);
    s.state = 'running';
    s.startedAt = new Date().toISOString();
    audit.append('stage-started', { stage: stage.id, kind: stage.kind });
    let inputs = stageModelInputs(plan, stage, prepared.baseModel, outcomes);
    const baseline = stage.baseline && patched(BASELINES_AND_PROMOTE) ? await resolveBaseline(stage) : undefined;
    if (baseline) inputs = { ...inputs, ...baseline };
    let outcome: StageOutcome;
    try {
      outcome = await executeChild(stageWorkflow, {
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
            ...(toolchains ? { toolchain: toolchains.byStage[stage.id] } : {}),
          },
        ],
      });
    } catch (err) {
      if (v2) await recordAttempts(stage.id); // a failed or cancelled stage ran attempts too
      throw err;
    }
    // The outcome first, so that `status` never shows a finished stage's step going back while the
    // attempts are read; a cache hit ran no attempt.
    applyOutcome(s, outcome);
    if (v2 && !(outcome.reused && outcome.attempt === 0)) await recordAttempts(stage.id);

    audit.append(outcome.reused ? 'stage-reused' : 'stage-completed', {
      stage: stage.id,
      cacheKey: outcome.cacheKey,
      artifact: { uri: outcome.artifact.uri, prefix: outcome.artifact.prefix, manifestSha256: outcome.artifact.manifestSha256 },
      metrics: outcome.metrics,
      attempt: outcome.attempt,
      resumedFromStep: outcome.resumedFromStep,
      ...(outcome.reusedFrom ? { reusedFrom: outcome.reusedFrom } : {}),
    });
    if (stage.gate) {
      const verdict = evaluateMetricGate(stage.gate.metrics, outcome.metrics, { withoutBaseline: stage.baseline !== undefined && !baseline });
      if (stage.gate.metrics.length > 0) audit.append('gate', { stage: stage.id, passed: verdict.passed, reason: verdict.reason });
      if (!verdict.passed) {
        s.gate = verdict.reason;
        throw ApplicationFailure.nonRetryable(`gate after stage "${stage.id}" failed: ${verdict.reason}`, 'GateFailed');
      }
      if (stage.gate.approvalTimeoutMs !== undefined) {
        s.state = 'awaiting-approval';
        notifier.send('approval-waiting', {
          stage: stage.id,
          state: s.state,
          ...(stage.gate.metrics.length > 0 ? { gate: verdict.reason } : {}),
          approvalDeadline: new Date(Date.now() + stage.gate.approvalTimeoutMs).toISOString(),
        });
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

  const firstError = await runInDependencyOrder(
    plan.stages,
    async (stage) => {
      try {
        await runStage(stage);
      } catch (err) {
        const s = stageOf(status, stage.id);
        s.state = isCancellation(err) ? 'cancelled' : 'failed';
        s.error = describeError(err);
        s.endedAt = new Date().toISOString();
        audit.append(s.state === 'cancelled' ? 'stage-cancelled' : 'stage-failed', { stage: stage.id, error: s.error });
        if (s.state === 'failed') notifier.send('stage-failed', { stage: stage.id, state: s.state, error: s.error, ...(s.gate ? { gate: s.gate } : {}) });
        throw err;
      }
    },
    (stage) => {
      stageOf(status, stage.id).state = 'skipped';
    },
  );
  if (firstError === undefined && plan.promote && patched(BASELINES_AND_PROMOTE)) {
    try {
      await promoteOutput(input.runId, input.requestedBy, plan, outcomes, status, audit);
    } catch (err) {
      notifyPromoteStopped(notifier, plan, status, err);
      return finish(status, outcomes, err, storagePrefix, audit, notifier);
    }
    const p = status.promoted;
    if (p) notifier.send('promoted', { stage: p.stage, state: 'promoted', promoted: { model: p.model, alias: p.alias, target: p.target.uri, changed: p.changed } });
  } else if (firstError !== undefined && plan.promote) {
    notifyPromoteStopped(notifier, plan, status, firstError);
  }
  return finish(status, outcomes, firstError, storagePrefix, audit, notifier);
}

/** The promote step: every stage completed, so every gate passed and every approval was given. */
async function promoteOutput(runId: string, requestedBy: string, plan: PipelineInput['plan'], outcomes: Map<string, StageOutcome>, status: PipelineStatus, audit: AuditLog): Promise<void> {
  const p = plan.promote!;
  const gates = status.stages.filter((s) => s.gate).map((s) => `${s.id}: ${s.gate}`);
  const promoted = await registry.promoteStageOutput({
    storagePrefix: plan.storage.prefix,
    runId,
    stage: p.stage,
    model: p.model,
    alias: p.alias,
    target: outcomes.get(p.stage)!.artifact,
    by: `${requestedBy} (run ${runId})`,
    reason: p.reason ?? (gates.length ? `every gate passed (${gates.join('; ')})` : 'every stage completed'),
  });
  status.promoted = promoted;
  audit.append('promoted', { ...promoted });
}

/** A run with a promote step that failed or was stopped by a gate did not promote: say why (not for cancelled runs). */
function notifyPromoteStopped(notifier: Notifier, plan: PipelineInput['plan'], status: PipelineStatus, err: unknown): void {
  if (!plan.promote || isCancellation(err)) return;
  const gated = status.stages.find((s) => s.state === 'failed' && s.gate);
  notifier.send('promote-stopped', {
    stage: plan.promote.stage,
    state: 'stopped',
    promote: { model: plan.promote.model, alias: plan.promote.alias },
    ...(gated ? { gate: `stage "${gated.id}": ${gated.gate}` } : { error: describeError(err) }),
  });
}

async function finish(status: PipelineStatus, outcomes: Map<string, StageOutcome>, err: unknown, storagePrefix: string, audit: AuditLog, notifier: Notifier): Promise<PipelineResult> {
  const cancelled = err !== undefined && isCancellation(err);
  markFinished(status, err === undefined ? 'completed' : cancelled ? 'cancelled' : 'failed', err === undefined ? undefined : describeError(err));
  // Told before the run closes, so that each notification's outcome is in the trail before run-finished.
  if (notifier.enabled) await notifier.finish(status);
  await closeRun(status, audit, storagePrefix, () => audit.append('run-finished', { state: status.state, error: status.error ?? null }));
  if (cancelled) throw err;
  if (err !== undefined) {
    throw ApplicationFailure.nonRetryable(`run ${status.runId} failed: ${status.error}`, 'PipelineFailed', status);
  }
  const artifacts: Record<string, ArtifactRef> = {};
  for (const [id, o] of outcomes) artifacts[id] = o.artifact;
  return { status, artifacts };
}
