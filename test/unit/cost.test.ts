// What a run cost (workflows/cost.ts): attempts' own time from their records, GPU time held, wall time.
import { describe, expect, it } from 'vitest';
import { applyCosts, stageCost } from '../../workflows/cost.js';
import type { AttemptStatus, PipelineStatus, StageStatus } from '../../workflows/types.js';

const attempt = (n: number, outcome: AttemptStatus['outcome'], startedAt: string | null, endedAt: string | null): AttemptStatus => ({
  attempt: n, host: 'gpu-a', outcome, reason: null, resumedFromStep: null, checkpoints: 0, lastCheckpointStep: null, skippedCheckpoints: [], contractViolations: 0, startedAt, endedAt,
});
const stage = (over: Partial<StageStatus>): StageStatus => ({ id: 's', kind: 'sft', state: 'completed', attempt: 1, step: 0, totalSteps: null, loss: null, metrics: {}, lastCommittedStep: null, resumedFromStep: null, ...over });

describe('cost', () => {
  it('GPU time is GPUs × the attempts own time; a lost attempt counts to its last record; waits count in wall time only', () => {
    const s = stage({
      gpus: 8,
      startedAt: '2026-12-01T00:00:00Z',
      endedAt: '2026-12-01T03:00:00Z', // an hour of it waiting at an approval gate
      attempts: [attempt(1, 'lost', '2026-12-01T00:00:00Z', '2026-12-01T00:30:00Z'), attempt(2, 'completed', '2026-12-01T00:31:00Z', '2026-12-01T02:00:00Z')],
    });
    expect(stageCost(s)).toEqual({ wallSeconds: 10_800, attempts: 2, attemptSeconds: 1800 + 5340, gpuSeconds: 8 * (1800 + 5340) });
  });

  it('a reused stage and one that never ran cost nothing; an attempt without times adds none', () => {
    expect(stageCost(stage({ state: 'reused', gpus: 4, attempts: [] }))).toEqual({ wallSeconds: null, attempts: 0, attemptSeconds: 0, gpuSeconds: 0 });
    expect(stageCost(stage({ gpus: 1, attempts: [attempt(1, 'declined', null, null)] }))).toMatchObject({ attempts: 1, attemptSeconds: 0 });
  });

  it('the run: totals of its stages, wall time from its start', () => {
    const status: PipelineStatus = {
      runId: 'r', pipeline: 'p', state: 'completed', startedAt: '2026-12-01T00:00:00Z',
      stages: [
        stage({ id: 'a', gpus: 2, startedAt: '2026-12-01T00:00:00Z', endedAt: '2026-12-01T00:10:00Z', attempts: [attempt(1, 'completed', '2026-12-01T00:00:05Z', '2026-12-01T00:10:00Z')] }),
        stage({ id: 'b', gpus: 0, startedAt: '2026-12-01T00:10:00Z', endedAt: '2026-12-01T00:11:00Z', attempts: [attempt(1, 'completed', '2026-12-01T00:10:00Z', '2026-12-01T00:11:00Z')] }),
      ],
    };
    applyCosts(status, new Date('2026-12-01T00:12:00Z'));
    expect(status.cost).toEqual({ wallSeconds: 720, attempts: 2, attemptSeconds: 595 + 60, gpuSeconds: 2 * 595 });
    expect(status.stages.map((s) => s.cost?.gpuSeconds)).toEqual([1190, 0]);
  });
});
