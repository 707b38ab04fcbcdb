/**
 * One stage of a pipeline, as a child workflow: reuse a committed output whose cache key matches,
 * otherwise run the stage's job on its GPU task queue with the stage's retry policy.
 */
import { ActivityCancellationType, proxyActivities } from '@temporalio/workflow';
import type * as activities from '../activities/index.js';
import { control } from './activities.js';
import type { StageOutcome, StageWorkflowInput } from './types.js';


export async function stageWorkflow(input: StageWorkflowInput): Promise<StageOutcome> {
  const { stage } = input;
  const decision = await control.resolveStageCache({
    storagePrefix: input.storagePrefix,
    stage,
    inputs: input.inputs,
    datasets: input.datasets,
    jobsVersion: input.jobsVersion,
    // A forced stage gets a key of its own, so it runs again yet stays idempotent across retries.
    salt: input.force ? `forced-by:${input.runId}` : undefined,
  });
  if (decision.committed) {
    return { ...decision.committed, reused: true, cacheKey: decision.cacheKey, resumedFromStep: null, attempt: 0 };
  }

  const training = proxyActivities<ReturnType<typeof activities.createTrainingActivities>>({
    taskQueue: stage.taskQueue,
    startToCloseTimeout: stage.timeouts.startToCloseMs,
    heartbeatTimeout: stage.timeouts.heartbeatMs,
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: {
      maximumAttempts: stage.retry.maximumAttempts,
      initialInterval: stage.retry.initialIntervalMs,
      maximumInterval: stage.retry.maximumIntervalMs,
      backoffCoefficient: stage.retry.backoffCoefficient,
      nonRetryableErrorTypes: ['ConfigError', 'DataError', 'Unsupported', 'InputMissing'],
    },
  });
  const result = await training.runStageJob({
    runId: input.runId,
    storagePrefix: input.storagePrefix,
    stage,
    cacheKey: decision.cacheKey,
    artifactPrefix: decision.artifactPrefix,
    inputs: input.inputs,
    datasets: input.datasets,
  });
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
  };
}
