/**
 * Drain and out-of-memory retry with a real trainer (the SFT job: transformers + TRL + PEFT on the
 * tiny Llama), in real worker processes against the real stack:
 *   - SIGTERM to the worker mid-stage: the job checkpoints on the contract's signal (not a scheduled
 *     save), the attempt ends drained, another worker resumes at that step; maximum_attempts 1.
 *   - the job raises torch.OutOfMemoryError (REFINERY_FAULT_OOM_ABOVE_BATCH, jobs/refinery_jobs/
 *     hf_trainer.py) while its per-device batch is above 2: the retry runs at half the batch and
 *     twice the accumulation, and the stage completes.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { runStatus } from '../../client/commands/manage.js';
import { startRun } from '../../client/commands/run.js';
import { jobsPython } from '../../config/worker.js';
import { writeTinyModelFixture, type TinyModelFixture } from '../../infra/harness/specs.js';
import { summarizeAttempts } from '../../storage/attempt-records.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { startTestWorkers, testClient, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { attemptEvents } from '../helpers/job-events.js';
import { killSpawnedWorkers, spawnTrainingWorker, until } from '../helpers/processes.js';

let store: ObjectStore;
let control: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
let fixture: TinyModelFixture;
const python = jobsPython();
const sft = (): [string, ...string[]] => [python, '-m', 'refinery_jobs.sft'];
const uniq = (what: string) => `${what}-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  control = await startTestWorkers({ trainingQueues: [] });
  ({ client, close: closeClient } = await testClient());
  fixture = await writeTinyModelFixture({ python });
}, 120_000);
afterAll(async () => {
  killSpawnedWorkers();
  await closeClient?.();
  await control?.shutdown();
});

async function sftSpec(o: { prefix: string; queue: string; hyper: Record<string, unknown> }): Promise<string> {
  const file = path.join(fixture.dir, `${o.prefix}.yaml`);
  await writeFile(
    file,
    stringify({
      name: 'fleet-real',
      base_model: fixture.baseModel,
      storage: { prefix: o.prefix },
      datasets: { chats: { path: fixture.data.sft, format: 'chat' } },
      stages: [
        {
          id: 'sft',
          kind: 'sft',
          dataset: 'chats',
          finetuning: { type: 'lora', lora: { r: 8, alpha: 16 } },
          hyper: { max_length: 128, seed: 3, ...o.hyper },
          resources: { task_queue: o.queue },
          timeouts: { heartbeat: '10s', stall: '5m' },
          retry: { maximum_attempts: 1, initial_interval: '1s' },
        },
      ],
    }),
  );
  return file;
}

describe('a real trainer', () => {
  it('drains on SIGTERM: checkpoint on the signal, commit, resume elsewhere at that step, no attempt used', async () => {
    const queue = uniq('real-drain');
    const prefix = uniq('real-drain-run');
    const file = await sftSpec({ prefix, queue, hyper: { max_steps: 200, save_steps: 1000, batch_size: 4 } });
    // Both workers up before the run: the SIGTERM follows the progress at once (the real job is
    // fast enough to finish 80 steps while a worker starts), to whichever worker took attempt 1.
    const hosts = [uniq('host-a'), uniq('host-b')];
    const workers = [await spawnTrainingWorker(queue, { REFINERY_HOST: hosts[0]! }, sft()), await spawnTrainingWorker(queue, { REFINERY_HOST: hosts[1]! }, sft())];
    const { runId, handle } = await startRun(client, file, { id: uniq('real-drain') });
    let host: string | undefined;
    await until('the real job past step 15', async () => {
      const s = (await runStatus(client, runId)).stages[0]!;
      host = s.host;
      return s.step >= 15 && host !== undefined;
    }, 180_000, 200);
    const a = workers[hosts.indexOf(host!)]!;
    const b = workers[1 - hosts.indexOf(host!)]!;
    a.signal('SIGTERM');
    expect((await a.exited).code).toBe(0);
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    const [first, second] = await summarizeAttempts(store, { storagePrefix: prefix, runId, stageId: 'sft' });
    expect(first).toMatchObject({ outcome: 'drained', failureClass: 'infrastructure' });
    expect(first!.checkpoints).toHaveLength(1); // the signal's, not a scheduled one (save_steps 1000)
    const drained = first!.checkpoints[0]!;
    expect(drained).toBeGreaterThanOrEqual(15);
    expect(second).toMatchObject({ outcome: 'completed', resumedFromStep: drained });
    // Steps lost: trained by attempt 1 after its drain checkpoint (redone by attempt 2).
    const events = await attemptEvents(store, { prefix, runId, stage: 'sft', attempt: 1 });
    const steps = events.filter((e) => e.event === 'progress').map((e) => e.step as number);
    expect(Math.max(...steps) - drained).toBeLessThanOrEqual(2);
    await b.stop();
  }, 300_000);

  it('out of memory: the retry halves the per-device batch and doubles accumulation, and completes', async () => {
    const queue = uniq('real-oom');
    const prefix = uniq('real-oom-run');
    const file = await sftSpec({ prefix, queue, hyper: { max_steps: 6, save_steps: 3, batch_size: 4, gradient_accumulation: 1 } });
    const w = await spawnTrainingWorker(queue, { REFINERY_HOST: uniq('host-oom'), REFINERY_FAULT_OOM_ABOVE_BATCH: '2' }, sft());
    const { runId, handle } = await startRun(client, file, { id: uniq('real-oom') });
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    const attempts = await summarizeAttempts(store, { storagePrefix: prefix, runId, stageId: 'sft' });
    expect(attempts.map((a) => [a.outcome, a.failureKind ?? null, a.adjustments?.batchSize ?? 4, a.adjustments?.gradientAccumulation ?? 1])).toEqual([
      ['failed', 'oom', 4, 1],
      ['completed', null, 2, 2],
    ]);
    expect(attempts[0]!.reason).toMatch(/out of memory/i);
    await w.stop();
  }, 300_000);
});
