/**
 * The failure taxonomy and the attempt budgets (workflows/failures.ts, workflows/attempt-policy.ts):
 * which failures cost a stage attempt, which draw on the infrastructure budget, what the next
 * attempt changes. The same decisions run inside the stage workflow; the integration tests
 * (test/integration/fleet-failures.test.ts) show them on the real stack.
 */
import { ApplicationFailure } from '@temporalio/common';
import { describe, expect, it } from 'vitest';
import { DivergenceWatch } from '../../activities/divergence-watch.js';
import { attemptOutcomeOf } from '../../activities/job-failure.js';
import type { PlannedStage } from '../../spec/plan-types.js';
import { firstAttempt, MAX_PLACEMENT_DECLINES, nextAttempt, type AttemptDecision, type AttemptState } from '../../workflows/attempt-policy.js';
import { classifyFailure, type ClassifiedFailure } from '../../workflows/failures.js';

const stage: Pick<PlannedStage, 'id' | 'hyper' | 'retry' | 'divergence'> = {
  id: 'sft',
  hyper: { batch_size: 16, gradient_accumulation: 2, learning_rate: 1e-4 },
  retry: { maximumAttempts: 3, initialIntervalMs: 1000, maximumIntervalMs: 4000, backoffCoefficient: 2, infrastructureAttempts: 4, oomMinBatchSize: 2 },
  divergence: { window: 20, lrFactor: 0.5 },
};

function failure(type: string, details: Record<string, unknown> = { host: 'gpu-a' }): ClassifiedFailure {
  return classifyFailure(ApplicationFailure.retryable(`${type} happened`, type, details));
}

function retried(d: AttemptDecision): Extract<AttemptDecision, { retry: true }> {
  if (!d.retry) throw new Error(`expected a retry, got: ${d.message}`);
  return d;
}

describe('classifyFailure', () => {
  it.each([
    ['WorkerDrained', 'infrastructure', 'drained'],
    ['PreflightFailed', 'infrastructure', 'node-failure'],
    ['LeaseLost', 'infrastructure', 'lease-lost'],
    ['StorageUnavailable', 'infrastructure', 'storage'],
    ['ScratchDiskFailed', 'infrastructure', 'scratch-disk'],
    ['HostAvoided', 'placement', 'host-avoided'],
    ['HostQuarantined', 'placement', 'host-quarantined'],
    ['JobCrashed', 'job', 'crash'],
    ['JobOutOfMemory', 'job', 'oom'],
    ['JobDiverged', 'job', 'diverged'],
    ['ConfigError', 'config', 'config'],
    ['DataError', 'config', 'data'],
    ['SomethingNew', 'job', 'crash'],
  ])('%s is %s: %s', (type, cls, kind) => {
    const c = failure(type);
    expect([c.class, c.kind]).toEqual([cls, kind]);
    expect(c.details?.host).toBe('gpu-a');
  });

  it('a heartbeat timeout is a lost worker (infrastructure), with the host of its last heartbeat', () => {
    const timeout = { name: 'TimeoutFailure', message: 'activity Heartbeat timeout', timeoutType: 'HEARTBEAT', lastHeartbeatDetails: { host: 'gpu-b', step: 40, lastCommittedStep: 30 } };
    const c = classifyFailure({ name: 'ActivityFailure', message: 'activity failed', cause: timeout });
    expect([c.class, c.kind, c.details?.host, c.details?.lastCommittedStep]).toEqual(['infrastructure', 'worker-lost', 'gpu-b', 30]);
    expect(classifyFailure({ name: 'ActivityFailure', cause: { ...timeout, timeoutType: 'START_TO_CLOSE' } }).kind).toBe('timeout');
  });

  it("a worker's shutdown without drain is the fleet's doing, not the job's", () => {
    expect(classifyFailure(new Error('Worker is shutting down and this activity did not complete in time')).class).toBe('infrastructure');
  });

  it("an attempt's records say which class and kind it ended with", () => {
    expect(attemptOutcomeOf(ApplicationFailure.retryable('x', 'WorkerDrained'))).toMatchObject({ outcome: 'drained', failure: { class: 'infrastructure', kind: 'drained' } });
    expect(attemptOutcomeOf(ApplicationFailure.retryable('x', 'HostAvoided'))).toMatchObject({ outcome: 'declined', failure: { class: 'placement' } });
    expect(attemptOutcomeOf(ApplicationFailure.retryable('x', 'JobOutOfMemory'))).toMatchObject({ outcome: 'failed', failure: { class: 'job', kind: 'oom', label: 'job: oom' } });
  });
});

describe('nextAttempt', () => {
  it('infrastructure failures never use a stage attempt, and have a budget of their own', () => {
    let state: AttemptState = firstAttempt();
    for (let i = 1; i <= 4; i++) {
      const d = retried(nextAttempt(stage, state, failure(i % 2 ? 'WorkerDrained' : 'LeaseLost')));
      expect(d.state.jobFailures).toBe(0);
      state = d.state;
    }
    expect(state.infrastructureFailures).toBe(4);
    const exhausted = nextAttempt(stage, state, failure('WorkerDrained'));
    expect(exhausted.retry).toBe(false);
    expect(!exhausted.retry && exhausted.message).toMatch(/5 attempts lost to infrastructure failures \(retry.infrastructure_attempts: 4\)/);
  });

  it('a drain or a lost worker retries at once; job failures back off per the stage policy', () => {
    expect(retried(nextAttempt(stage, firstAttempt(), failure('WorkerDrained'))).delayMs).toBe(0);
    const first = retried(nextAttempt(stage, firstAttempt(), failure('JobCrashed')));
    expect(first.delayMs).toBe(1000);
    expect(retried(nextAttempt(stage, first.state, failure('JobCrashed'))).delayMs).toBe(2000);
  });

  it('job failures use the stage attempts: maximum_attempts job failures fail the stage, whatever infrastructure did in between', () => {
    let state = retried(nextAttempt(stage, firstAttempt(), failure('JobCrashed'))).state;
    state = retried(nextAttempt(stage, state, failure('WorkerDrained'))).state;
    state = retried(nextAttempt(stage, state, failure('JobStalled'))).state;
    const last = nextAttempt(stage, state, failure('JobCrashed'));
    expect(last.retry).toBe(false);
    expect(!last.retry && last.message).toMatch(/the job failed 3 time\(s\) \(retry.maximum_attempts: 3\); last: job: crash/);
    expect(!last.retry && last.history.map((h) => h.kind)).toEqual(['crash', 'drained', 'stalled', 'crash']);
  });

  it('the retry after a job failure or a failed preflight avoids that host; a drain avoids nobody', () => {
    expect(retried(nextAttempt(stage, firstAttempt(), failure('JobCrashed', { host: 'gpu-a' }))).state.avoidHosts).toEqual(['gpu-a']);
    expect(retried(nextAttempt(stage, firstAttempt(), failure('PreflightFailed', { host: 'gpu-a' }))).state.avoidHosts).toEqual(['gpu-a']);
    const full = retried(nextAttempt(stage, firstAttempt(), failure('ScratchDiskFailed', { host: 'gpu-a' }))).state;
    expect([full.avoidHosts, full.jobFailures, full.infrastructureFailures]).toEqual([['gpu-a'], 0, 1]);
    expect(retried(nextAttempt(stage, firstAttempt(), failure('WorkerDrained', { host: 'gpu-a' }))).state.avoidHosts).toEqual([]);
  });

  it('placement declines cost nothing, and after a few the stage takes any host', () => {
    let state = retried(nextAttempt(stage, firstAttempt(), failure('JobCrashed', { host: 'gpu-a' }))).state;
    for (let i = 1; i < MAX_PLACEMENT_DECLINES; i++) {
      state = retried(nextAttempt(stage, state, failure('HostAvoided'))).state;
      expect(state.avoidHosts).toEqual(['gpu-a']);
    }
    state = retried(nextAttempt(stage, state, failure('HostAvoided'))).state;
    expect([state.avoidHosts, state.jobFailures, state.infrastructureFailures]).toEqual([[], 1, 0]);
  });

  it('out of memory halves the per-device batch and doubles accumulation, down to the floor, then fails clearly', () => {
    const d1 = retried(nextAttempt(stage, firstAttempt(), failure('JobOutOfMemory', { host: 'gpu-a', batchSize: 16, gradientAccumulation: 2 })));
    expect(d1.state.adjustments).toEqual({ batchSize: 8, gradientAccumulation: 4 });
    expect([d1.state.jobFailures, d1.delayMs]).toEqual([0, 0]);
    let state = d1.state;
    for (const [b, g] of [[8, 4], [4, 8]] as const) state = retried(nextAttempt(stage, state, failure('JobOutOfMemory', { batchSize: b, gradientAccumulation: g }))).state;
    expect(state.adjustments).toEqual({ batchSize: 2, gradientAccumulation: 16 }); // 16 x 2 = 2 x 16
    const floor = nextAttempt(stage, state, failure('JobOutOfMemory', { batchSize: 2, gradientAccumulation: 16 }));
    expect(floor.retry).toBe(false);
    expect(!floor.retry && floor.message).toMatch(/out of memory at per-device batch size 2 \(gradient accumulation 16\), the floor \(retry.oom_min_batch_size: 2\)/);
  });

  it("GRPO's batch stays a multiple of num_generations", () => {
    const grpo = { ...stage, kind: 'grpo' as const, params: { num_generations: 4 }, hyper: { batch_size: 12, gradient_accumulation: 1 } };
    const d = retried(nextAttempt(grpo, firstAttempt(), failure('JobOutOfMemory', { batchSize: 12, gradientAccumulation: 1 })));
    expect(d.state.adjustments).toMatchObject({ batchSize: 4, gradientAccumulation: 3 });
    const floor = nextAttempt(grpo, d.state, failure('JobOutOfMemory', { batchSize: 4, gradientAccumulation: 3 }));
    expect(!floor.retry && floor.message).toMatch(/the floor \(params.num_generations: 4\)/);
  });

  it('KTO keeps at least 2 rows per batch (its KL estimate needs a second row)', () => {
    const kto = { ...stage, kind: 'kto' as const, hyper: { batch_size: 4, gradient_accumulation: 1 } };
    const d = retried(nextAttempt(kto, firstAttempt(), failure('JobOutOfMemory', { batchSize: 4, gradientAccumulation: 1 })));
    expect(d.state.adjustments).toMatchObject({ batchSize: 2, gradientAccumulation: 2 });
    const floor = nextAttempt(kto, d.state, failure('JobOutOfMemory', { batchSize: 2, gradientAccumulation: 2 }));
    expect(!floor.retry && floor.message).toMatch(/the floor \(a kto job trains on at least 2 rows per batch\)/);
  });

  it('a divergence resumes before the last good step, discarding what the diverged epoch took after it, at a lower learning rate', () => {
    const d = retried(nextAttempt(stage, firstAttempt(), failure('JobDiverged', { host: 'gpu-a', firstBadStep: 35, lastGoodStep: 34, epoch: 7 })));
    expect(d.state.adjustments).toEqual({ discard: [{ fromStep: 34, throughEpoch: 7 }], learningRate: 5e-5 });
    expect(d.state.jobFailures).toBe(1);
  });

  it('config and data errors are never retried, and keep their type', () => {
    const d = nextAttempt(stage, firstAttempt(), failure('DataError'));
    expect(d.retry).toBe(false);
    expect(!d.retry && d.type).toBe('DataError');
  });
});

describe('DivergenceWatch', () => {
  it('a NaN loss diverges at once, naming the last good step', () => {
    const w = new DivergenceWatch({ window: 5 });
    for (let s = 1; s <= 9; s++) expect(w.observe(s, 2 / s)).toBeUndefined();
    expect(w.observe(10, 'NaN')).toEqual({ reason: 'loss is NaN', firstBadStep: 10, lastGoodStep: 9 });
  });

  it('a spike over the median of the window diverges only when configured, and only after a full window', () => {
    const off = new DivergenceWatch({ window: 3 });
    const on = new DivergenceWatch({ window: 3, lossSpikeFactor: 3 });
    expect(on.observe(1, 1)).toBeUndefined();
    expect(on.observe(2, 10)).toBeUndefined(); // the window is not full yet
    for (const [s, l] of [[3, 1], [4, 1], [5, 1.1]] as const) expect(on.observe(s, l)).toBeUndefined();
    expect(on.observe(6, 3.5)?.reason).toMatch(/above 3 x the median 1.000 of the last 3 logged losses/);
    for (let s = 1; s <= 6; s++) expect(off.observe(s, s === 6 ? 100 : 1)).toBeUndefined();
  });

  it('a kl above divergence.max_kl diverges', () => {
    const w = new DivergenceWatch({ window: 20, maxKl: 5 });
    expect(w.observe(1, 0.5, { kl: 1 })).toBeUndefined();
    expect(w.observe(2, 0.5, { kl: 9 })).toMatchObject({ firstBadStep: 2, lastGoodStep: 1 });
  });
});
