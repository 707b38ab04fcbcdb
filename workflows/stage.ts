/**
 * One stage of a pipeline, as a child workflow: reuse a committed output whose cache key matches,
 * otherwise run the stage's job on its GPU task queue, one attempt at a time, each failure
 * classified (failures.ts) and the next attempt decided by the budgets of attempt-policy.ts.
 */
import { ActivityCancellationType, ApplicationFailure, isCancellation, log, patched, proxyActivities, sleep } from '@temporalio/workflow';
import type * as activities from '../activities/index.js';
import { control } from './activities.js';
import { firstAttempt, nextAttempt, type AttemptState } from './attempt-policy.js';
import { classifyFailure, NON_RETRYABLE_TYPES } from './failures.js';
import { ATTEMPT_BUDGETS } from './patches.js';
import type { StageJobInput, StageJobResult, StageOutcome, StageWorkflowInput } from './types.js';

type TrainingActivities = ReturnType<typeof activities.createTrainingActivities>;


export async function stageWorkflow(input: StageWorkflowInput): Promise<StageOutcome> {
  const { stage } = input;
  const decision = await control.resolveStageCache({
    storagePrefix: input.storagePrefix,
    stage,
    inputs: input.inputs,
    datasets: input.datasets,
    jobsVersion: input.jobsVersion,
    ...(input.toolchain ? { toolchain: input.toolchain.digest } : {}),
    // A forced stage gets a key of its own, so it runs again yet stays idempotent across retries.
    salt: input.force ? `forced-by:${input.runId}` : undefined,
  });
  if (decision.committed) {
    return { ...decision.committed, reused: true, cacheKey: decision.cacheKey, resumedFromStep: null, attempt: 0 };
  }

  const jobInput: StageJobInput = {
    runId: input.runId,
    storagePrefix: input.storagePrefix,
    stage,
    cacheKey: decision.cacheKey,
    artifactPrefix: decision.artifactPrefix,
    inputs: input.inputs,
    datasets: input.datasets,
    ...(input.toolchain ? { toolchain: input.toolchain } : {}),
  };
  const budgets = patched(ATTEMPT_BUDGETS);
  const { result, state } = budgets ? await runAttempts(input, jobInput) : { result: await runWithTemporalRetries(input, jobInput), state: undefined };
  return {
    artifact: result.artifact,
    metrics: result.metrics,
    // Another run with the same cache key trained it while this one waited (stage-lease.ts).
    reused: Boolean(result.reusedFrom),
    reusedFrom: result.reusedFrom ?? null,
    cacheKey: decision.cacheKey,
    resumedFromStep: result.resumedFromStep,
    attempt: result.attempt,
    final: result.final,
    ...(state && state.history.length > 0 ? { failedAttempts: state.history } : {}),
    ...(state && Object.keys(state.adjustments).length > 0 ? { adjustments: state.adjustments } : {}),
  };
}

function trainingActivities(input: StageWorkflowInput, maximumAttempts: number) {
  const { stage } = input;
  return proxyActivities<TrainingActivities>({
    taskQueue: stage.taskQueue,
    startToCloseTimeout: stage.timeouts.startToCloseMs,
    heartbeatTimeout: stage.timeouts.heartbeatMs,
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: {
      maximumAttempts,
      initialInterval: stage.retry.initialIntervalMs,
      maximumInterval: stage.retry.maximumIntervalMs,
      backoffCoefficient: stage.retry.backoffCoefficient,
      nonRetryableErrorTypes: NON_RETRYABLE_TYPES,
    },
  });
}

/** Runs started before ATTEMPT_BUDGETS: Temporal retries every failure alike. */
async function runWithTemporalRetries(input: StageWorkflowInput, jobInput: StageJobInput): Promise<StageJobResult> {
  return trainingActivities(input, input.stage.retry.maximumAttempts).runStageJob(jobInput);
}

/**
 * One activity attempt at a time (Temporal retries none): each failure is classified and the
 * policy decides whether, when and how the next attempt runs. History: a few events per attempt,
 * bounded by the budgets, never by training time.
 */
async function runAttempts(input: StageWorkflowInput, jobInput: StageJobInput): Promise<{ result: StageJobResult; state: AttemptState }> {
  const training = trainingActivities(input, 1);
  let state = firstAttempt();
  for (;;) {
    try {
      const result = await training.runStageJob({ ...jobInput, attempt: state.attempt, avoidHosts: state.avoidHosts, adjustments: state.adjustments });
      return { result, state };
    } catch (err) {
      if (isCancellation(err)) throw err;
      const failure = classifyFailure(err);
      const decision = nextAttempt(input.stage, state, failure);
      if (!decision.retry) {
        // The message carries the last failure's own (describeError shows the innermost cause).
        throw ApplicationFailure.create({ message: `stage "${input.stage.id}": ${decision.message}`, type: decision.type, nonRetryable: true, details: [decision.history] });
      }
      log.info('stage attempt failed; retrying', { stage: input.stage.id, attempt: state.attempt, class: failure.class, kind: failure.kind, delayMs: decision.delayMs, note: decision.note });
      state = decision.state;
      if (decision.delayMs > 0) await sleep(decision.delayMs);
    }
  }
}
