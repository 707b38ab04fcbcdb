/**
 * Runs of the same spec started together (a nightly schedule plus a manual trigger is enough) share
 * their stages' cache keys, so their artifacts' bucket prefix. One attempt at a time trains a cache
 * key (the stage lease, storage/stage-lease.ts): the others wait and reuse its committed output,
 * and when the trainer's worker is killed, a waiting run takes over from its newest checkpoint.
 * On the real stack with training workers as separate processes, each with its own scratch dir.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { verifyRun } from '../../client/commands/audit.js';
import { runStatus } from '../../client/commands/manage.js';
import { startRun } from '../../client/commands/run.js';
import { listCommittedSteps } from '../../storage/checkpoints.js';
import { readLease } from '../../storage/stage-lease.js';
import type { PipelineResult } from '../../workflows/types.js';
import { startTestWorkers, testClient, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { killSpawnedWorkers, spawnTrainingWorker, until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

let control: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;

beforeAll(async () => {
  useTestStackEnv();
  control = await startTestWorkers({ trainingQueues: [] });
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  killSpawnedWorkers();
  await closeClient?.();
  await control?.shutdown();
});

async function artifactPrefixOf(prefix: string, kind: string): Promise<string> {
  const objects = await testStore().list(`${prefix}/artifacts/`, false);
  return objects.map((o) => o.key.replace(/\/$/, '')).find((k) => k.includes(`/${kind}-`))!;
}

function spec(name: string, queue: string, params: Record<string, unknown>) {
  return writeTestSpec({
    name,
    storage: { prefix: `it-same-${name}` },
    stages: [
      { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 20, save_steps: 4 }, job_params: params, resources: { task_queue: queue }, timeouts: { heartbeat: '8s' }, retry: { maximum_attempts: 4, initial_interval: '1s' } },
      { id: 'merge', kind: 'merge', from: 'sft', resources: { task_queue: queue } },
    ],
  });
}

describe('identical runs at once', () => {
  it('ten runs of one spec on two workers: one trains each stage, the others reuse it; every artifact verifies', async () => {
    const queue = `same10-${Date.now()}`;
    await Promise.all([spawnTrainingWorker(queue), spawnTrainingWorker(queue)]);
    const { file } = await spec('ten', queue, { step_seconds: 0.1 });
    const started = await Promise.all(Array.from({ length: 10 }, (_, i) => startRun(client, file, { id: `same10-${i}-${Date.now()}` })));
    const results: PipelineResult[] = await Promise.all(started.map((s) => s.handle.result()));
    expect(results.map((r) => r.status.state)).toEqual(Array(10).fill('completed'));
    // One artifact per stage for all ten runs.
    for (const stage of ['sft', 'merge']) expect(new Set(results.map((r) => r.artifacts[stage]!.manifestSha256)).size).toBe(1);
    // Exactly one run trained sft; the others reused it (from the cache or after waiting for it).
    const trained = results.filter((r) => r.status.stages[0]!.state === 'completed');
    expect(trained).toHaveLength(1);
    expect(results.filter((r) => r.status.stages[0]!.state === 'reused')).toHaveLength(9);
    // Nobody pruned anybody's checkpoints: the trainer's last committed checkpoints are all there.
    expect(await listCommittedSteps(testStore(), await artifactPrefixOf('it-same-ten', 'sft'))).toEqual([20, 16, 12]);
    for (const s of started) expect((await verifyRun({ runId: s.runId, prefix: 'it-same-ten', store: testStore() })).problems).toEqual([]);
  });

  it('kill the worker of the run that trains: the waiting run takes over from its newest checkpoint', async () => {
    const queue = `samekill-${Date.now()}`;
    const workers = await Promise.all([spawnTrainingWorker(queue), spawnTrainingWorker(queue)]);
    const { file } = await spec('kill', queue, { step_seconds: 0.4 });
    const [a, b] = await Promise.all([0, 1].map((i) => startRun(client, file, { id: `samekill-${i}-${Date.now()}` })));
    const stageOf = async (runId: string) => (await runStatus(client, runId)).stages[0]!;
    // One run trains, the other waits for it.
    const trainer = await until('one run training past a checkpoint, the other waiting', async () => {
      const [sa, sb] = await Promise.all([stageOf(a!.runId), stageOf(b!.runId)]);
      if (sa.phase === 'training' && (sa.lastCommittedStep ?? 0) >= 8 && sb.phase === 'waiting') return { trainer: a!, waiter: b! };
      if (sb.phase === 'training' && (sb.lastCommittedStep ?? 0) >= 8 && sa.phase === 'waiting') return { trainer: b!, waiter: a! };
      return undefined;
    }, 60_000, 300);
    const prefix = await artifactPrefixOf('it-same-kill', 'sft');
    const lease = (await readLease(testStore(), prefix))!;
    expect(lease.record.holder.runId).toBe(trainer.trainer.runId);
    const killedStep = (await listCommittedSteps(testStore(), prefix))[0]!;
    // SIGKILL the trainer's worker (the lease names its pid); no new worker until the waiter has taken over.
    const victim = workers.find((w) => w.pid === lease.record.holder.pid)!;
    expect(victim).toBeDefined();
    victim.signal('SIGKILL');
    await until('the waiting run to take over and train', async () => {
      const s = await stageOf(trainer.waiter.runId);
      return s.phase === 'training' && s.resumedFromStep !== null;
    }, 60_000, 300);
    await spawnTrainingWorker(queue); // the killed run's retry needs a worker
    const [rw, rt] = (await Promise.all([trainer.waiter.handle.result(), trainer.trainer.handle.result()])) as [PipelineResult, PipelineResult];
    expect(rw.status.state).toBe('completed');
    expect(rt.status.state).toBe('completed');
    const waiterSft = rw.status.stages[0]!;
    expect(waiterSft.state).toBe('completed');
    expect(waiterSft.resumedFromStep).toBeGreaterThanOrEqual(killedStep);
    const trainerSft = rt.status.stages[0]!;
    expect(trainerSft.state).toBe('reused');
    expect(trainerSft.note).toContain(trainer.waiter.runId);
    expect(trainerSft.attempts!.map((x) => x.outcome)).toEqual(['lost', 'reused']);
    expect(rw.artifacts.sft).toEqual(rt.artifacts.sft);
    for (const r of [a!, b!]) expect((await verifyRun({ runId: r.runId, prefix: 'it-same-kill', store: testStore() })).problems).toEqual([]);
  });
});
