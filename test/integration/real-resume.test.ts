/**
 * Kill and resume with the real trainers (infra/harness/real-resume.ts): the training worker process
 * is killed with SIGKILL right after the target stage's second committed checkpoint, a second worker
 * process resumes the stage from it, and the per-step losses after the resume and the final weights
 * equal an uninterrupted run's. SFT (LoRA) always runs; DPO, PPO and GRPO too with
 *
 *   REFINERY_REAL_RESUME_ALL=1 npx vitest run test/integration/real-resume.test.ts
 */
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { jobsPython } from '../../config/worker.js';
import { runKillAndResume, type KillAndResumeResult, type RealTrainer } from '../../infra/harness/real-resume.js';
import { writeTinyModelFixture, type TinyModelFixture } from '../../infra/harness/specs.js';
import { stack, startTestWorkers, testClient, type TestWorkers } from '../helpers/env.js';

const ALL = process.env.REFINERY_REAL_RESUME_ALL === '1';
const log = (line: string) => console.log(`[real-resume] ${line}`);

function expectEquivalent(r: KillAndResumeResult): void {
  expect(r.problems).toEqual([]);
  expect(r.attempts[0]).toMatchObject({ attempt: 1, outcome: 'lost' });
  expect(r.attempts.at(-1)).toMatchObject({ outcome: 'completed' });
  expect(r.attempts.length).toBeGreaterThanOrEqual(2);
  // Killed after the second committed checkpoint, resumed from the newest one committed.
  expect(r.checkpointsAtKill.length).toBeGreaterThanOrEqual(2);
  expect(r.resumeStep).toBeGreaterThanOrEqual(2 * r.saveSteps);
  expect(r.resumeStep).toBe(r.checkpointsAtKill.at(-1));
  expect(r.attempts.at(-1)!.resumedFromStep).toBe(r.resumeStep);
  // Every step after the resume, compared with the uninterrupted run.
  expect(r.stepsCompared).toBe(r.totalSteps - r.resumeStep);
  expect(r.maxLossDelta).toBeLessThanOrEqual(1e-3);
  expect(r.weights.tensors).toBeGreaterThan(0);
  expect(r.weights.allclose).toBe(true);
  expect(r.weights.maxAbsDiff).toBeLessThanOrEqual(1e-4);
}

function report(r: KillAndResumeResult): void {
  const t = r.timings;
  console.log(
    `[real-resume] ${r.trainer}: killed at step ${r.stepAtKill} (checkpoints ${r.checkpointsAtKill.join(',')}), resumed from ${r.resumeStep}; ` +
      `${r.stepsCompared} steps compared, max |Δloss| ${r.maxLossDelta.toExponential(2)}; weights: ${r.weights.tensors} tensors, max |Δ| ${r.weights.maxAbsDiff.toExponential(2)}; ` +
      `metrics max |Δ| ${JSON.stringify(r.metricDeltas)}; ` +
      `reference ${(t.referenceMs / 1000).toFixed(1)} s, killed run ${(t.killedRunMs / 1000).toFixed(1)} s (kill → resumed job started ${t.killToResumeMs === null ? '?' : (t.killToResumeMs / 1000).toFixed(1)} s), total ${(t.totalMs / 1000).toFixed(1)} s`,
  );
}

describe('real trainers: kill -9 after the second checkpoint, resume on another worker', () => {
  it('SFT (LoRA): losses after the resume and the final adapter equal an uninterrupted run', async () => {
    // Standalone: the harness starts its own control worker and client on the test stack.
    const r = await runKillAndResume({ stack: stack(), trainer: 'sft', python: jobsPython(), log });
    report(r);
    expectEquivalent(r);
  });
});

describe.runIf(ALL)('real trainers with REFINERY_REAL_RESUME_ALL=1: DPO, PPO, GRPO', () => {
  let control: TestWorkers;
  let client: Client;
  let close: () => Promise<void>;
  let fixture: TinyModelFixture;

  beforeAll(async () => {
    // One control worker, client and tiny model for the three (how the fault suite reuses its stack).
    control = await startTestWorkers({ trainingQueues: [] });
    ({ client, close } = await testClient());
    fixture = await writeTinyModelFixture({ python: jobsPython() });
  });
  afterAll(async () => {
    await close?.();
    await control?.shutdown();
    if (fixture) await rm(fixture.dir, { recursive: true, force: true });
  });

  for (const trainer of ['dpo', 'ppo', 'grpo'] as RealTrainer[]) {
    it(`${trainer.toUpperCase()}: losses after the resume and the final weights equal an uninterrupted run`, async () => {
      const r = await runKillAndResume({ stack: stack(), trainer, python: jobsPython(), control, client, fixture, log });
      report(r);
      expectEquivalent(r);
    });
  }
});
