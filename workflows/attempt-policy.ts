/**
 * What a stage does after an attempt fails: the budgets of the failure taxonomy (failures.ts), the
 * host the next attempt avoids, and what it changes (out of memory: half the per-device batch,
 * twice the gradient accumulation; divergence: resume before it began, optionally a lower learning
 * rate). Pure: the stage workflow runs the loop (stage.ts), this decides each turn.
 */
import { DEFAULT_INFRASTRUCTURE_ATTEMPTS, type PlannedStage } from '../spec/plan-types.js';
import type { ClassifiedFailure, FailureClass, FailureKind } from './failures.js';
import { describeFailure } from './failures.js';

/** Placement declines (avoided or quarantined host) a stage accepts before it stops avoiding hosts. */
export const MAX_PLACEMENT_DECLINES = 10;

/** What the next attempt runs with instead of the stage's own settings. */
export interface AttemptAdjustments {
  batchSize?: number;
  gradientAccumulation?: number;
  learningRate?: number;
  /**
   * Checkpoints a diverged attempt left that no retry may resume from: those at step ≥ fromStep
   * committed by epochs ≤ throughEpoch (later attempts' checkpoints of the same steps are good).
   */
  discard?: { fromStep: number; throughEpoch: number }[];
}

export interface AttemptState {
  /** The next attempt's number (1-based, across every class). */
  attempt: number;
  jobFailures: number;
  infrastructureFailures: number;
  oomRetries: number;
  placementDeclines: number;
  avoidHosts: string[];
  adjustments: AttemptAdjustments;
  /** Every failed attempt, in order: what `status` and the stage's error say. */
  history: { attempt: number; class: FailureClass; kind: FailureKind; host: string | null; message: string }[];
}

export type AttemptDecision = { retry: true; delayMs: number; state: AttemptState; note?: string } | { retry: false; message: string; type: string; history: AttemptState['history'] };

export function firstAttempt(): AttemptState {
  return { attempt: 1, jobFailures: 0, infrastructureFailures: 0, oomRetries: 0, placementDeclines: 0, avoidHosts: [], adjustments: {}, history: [] };
}

type RetryPlan = PlannedStage['retry'];

/** Backoff of the n-th job failure (1-based): the stage's retry policy. */
function jobBackoffMs(retry: RetryPlan, n: number): number {
  return Math.min(retry.initialIntervalMs * retry.backoffCoefficient ** (n - 1), retry.maximumIntervalMs);
}

/** Infrastructure: at once when the attempt's end already took its time (drain, lost worker), else a short wait. */
function infrastructureDelayMs(kind: FailureKind, n: number): number {
  if (kind === 'drained' || kind === 'worker-lost' || kind === 'worker-shutdown') return 0;
  return Math.min(1000 * 2 ** Math.min(n - 1, 5), 30_000);
}

/** The per-device batch must stay a multiple of this: GRPO groups `num_generations` completions of a prompt in one batch. */
function batchMultiple(stage: Partial<Pick<PlannedStage, 'kind' | 'params'>>): number {
  const n = stage.kind === 'grpo' ? stage.params?.num_generations : undefined;
  return typeof n === 'number' && Number.isInteger(n) && n > 1 ? n : 1;
}

/** The smallest per-device batch the kind's job can train with: KTO's KL estimate needs a second row. */
function batchMinimum(stage: Partial<Pick<PlannedStage, 'kind'>>): number {
  return stage.kind === 'kto' ? 2 : 1;
}

export function nextAttempt(
  stage: Pick<PlannedStage, 'id' | 'hyper' | 'retry' | 'divergence'> & Partial<Pick<PlannedStage, 'kind' | 'params'>>,
  state: AttemptState,
  failure: ClassifiedFailure,
): AttemptDecision {
  const retry = stage.retry;
  const host = failure.details?.host ?? null;
  const history = [...state.history, { attempt: state.attempt, class: failure.class, kind: failure.kind, host, message: failure.message }];
  const base: AttemptState = { ...state, attempt: state.attempt + 1, history, adjustments: { ...state.adjustments } };
  const what = describeFailure(failure);
  // The user's to fix, or said to be final: the failure as it came.
  if (failure.class === 'config' || failure.nonRetryable) return { retry: false, message: failure.message, type: failure.type ?? 'StageFailed', history };

  if (failure.class === 'placement') {
    const declines = state.placementDeclines + 1;
    // Only workers of the keyed toolchain may train the stage: avoiding no host helps the others.
    if (failure.kind === 'toolchain-declined' && declines >= MAX_PLACEMENT_DECLINES) {
      return { retry: false, message: `${declines} workers declined the stage: none has the toolchain it was keyed with (run it again to key it with the fleet's toolchain); last: ${failure.message}`, type: 'ToolchainMismatch', history };
    }
    // Every other host may be busy or gone: after a few declines, any host will do.
    const avoidHosts = declines >= MAX_PLACEMENT_DECLINES ? [] : state.avoidHosts;
    return { retry: true, delayMs: 1000, state: { ...base, placementDeclines: declines, avoidHosts } };
  }

  if (failure.class === 'infrastructure') {
    const n = state.infrastructureFailures + 1;
    const budget = retry.infrastructureAttempts ?? DEFAULT_INFRASTRUCTURE_ATTEMPTS;
    if (n > budget) return { retry: false, message: `${n} attempts lost to infrastructure failures (retry.infrastructure_attempts: ${budget}); last: ${what}: ${failure.message}`, type: 'InfrastructureBudgetExhausted', history };
    // A node that failed its preflight, or whose scratch disk is full, is avoided; a drained or
    // lost worker is going away anyway.
    const avoidHosts = (failure.kind === 'node-failure' || failure.kind === 'scratch-disk') && host ? [host] : state.avoidHosts;
    return { retry: true, delayMs: infrastructureDelayMs(failure.kind, n), state: { ...base, infrastructureFailures: n, avoidHosts, placementDeclines: 0 } };
  }

  // Job failures: the retry avoids the host that just failed it (when another host can take it).
  const avoidHosts = host ? [host] : [];
  if (failure.kind === 'oom') {
    const multiple = batchMultiple(stage);
    const minimum = batchMinimum(stage);
    const floor = Math.max(retry.oomMinBatchSize ?? 1, multiple, minimum);
    const batch = failure.details?.batchSize ?? state.adjustments.batchSize ?? stage.hyper.batch_size ?? 1;
    const accumulation = failure.details?.gradientAccumulation ?? state.adjustments.gradientAccumulation ?? stage.hyper.gradient_accumulation ?? 1;
    if (batch <= floor) {
      return {
        retry: false,
        history,
        message: `out of memory at per-device batch size ${batch} (gradient accumulation ${accumulation}), the floor (${multiple > 1 && floor === multiple ? `params.num_generations: ${multiple}` : minimum > 1 && floor === minimum ? `a ${stage.kind} job trains on at least ${minimum} rows per batch` : `retry.oom_min_batch_size: ${floor}`}): the model does not fit this worker's memory; use fewer trainable parameters (LoRA, qlora), a shorter max_length, or a larger device. Last: ${failure.message}`,
        type: 'OutOfMemory',
      };
    }
    const halved = Math.max(floor, Math.floor(batch / 2 / multiple) * multiple);
    // Same effective batch: per-device batch × accumulation stays (up to rounding at odd sizes).
    const adjustments = { ...base.adjustments, batchSize: halved, gradientAccumulation: Math.ceil((accumulation * batch) / halved) };
    return {
      retry: true,
      delayMs: 0,
      state: { ...base, oomRetries: state.oomRetries + 1, avoidHosts: [], adjustments },
      note: `out of memory at batch ${batch} x ${accumulation}: retrying at ${adjustments.batchSize} x ${adjustments.gradientAccumulation}`,
    };
  }
  const n = state.jobFailures + 1;
  if (n >= retry.maximumAttempts) {
    return { retry: false, message: `the job failed ${n} time(s) (retry.maximum_attempts: ${retry.maximumAttempts}); last: ${what}: ${failure.message}`, type: 'StageFailed', history };
  }
  const adjustments = { ...base.adjustments };
  if (failure.kind === 'diverged') {
    // A checkpoint is known good only if a loss logged after it was: resume strictly before the
    // last good step (no good step in that attempt: from the start).
    const fromStep = failure.details?.lastGoodStep ?? 0;
    const throughEpoch = failure.details?.epoch ?? Number.MAX_SAFE_INTEGER;
    adjustments.discard = [...(adjustments.discard ?? []), { fromStep, throughEpoch }];
    const factor = stage.divergence?.lrFactor;
    if (factor !== undefined && factor !== 1) adjustments.learningRate = (adjustments.learningRate ?? stage.hyper.learning_rate ?? 1e-4) * factor;
  }
  return { retry: true, delayMs: jobBackoffMs(retry, n), state: { ...base, jobFailures: n, avoidHosts, adjustments } };
}
