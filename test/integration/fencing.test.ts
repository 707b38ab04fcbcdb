/**
 * Commits fenced by attempt, against the real MinIO and a real worker process: an attempt that lost
 * its stage lease without knowing it (here: a worker frozen with SIGSTOP while its job trains on,
 * past the heartbeat timeout, so that Temporal retries the stage on another worker) can neither
 * commit a checkpoint nor touch a byte of the newer attempt's checkpoints or output when it wakes.
 * Below it, the storage rules that make it so: lease epochs, epoch-scoped files, conditional markers.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { startRun } from '../../client/commands/run.js';
import { readAttemptRecords } from '../../storage/attempt-records.js';
import type { AuditRecord } from '../../storage/audit-chain.js';
import { commitCheckpoint, listCommittedSteps } from '../../storage/checkpoints.js';
import { CommitConflict, commitDirectory, readCommitted, verifyCommitted } from '../../storage/commit.js';
import { listJobLogs, readJobLog } from '../../storage/job-logs.js';
import { layout } from '../../storage/layout.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { acquireOrWait, localHolder, type StageLease } from '../../storage/stage-lease.js';
import { startTestWorkers, testClient, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { killSpawnedWorkers, spawnTrainingWorker, until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

let store: ObjectStore;
const uniq = (what: string) => `fence-${what}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;

async function localDir(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-fence-'));
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
  return dir;
}

async function acquire(prefix: string, runId: string, attempt: number): Promise<StageLease> {
  const r = await acquireOrWait(store, prefix, localHolder(runId, 'sft', attempt), { ttlMs: 5000, isDone: async () => false });
  if (r.kind !== 'acquired') throw new Error('expected to acquire');
  return r.lease;
}

describe('fenced commits (storage)', () => {
  beforeAll(() => {
    store = testStore();
  });

  it('gives every acquisition of a cache key a larger lease epoch', async () => {
    const prefix = `${uniq('epoch')}/artifacts/sft-0123abcd`;
    const first = await acquire(prefix, 'run-a', 1);
    expect(first.epoch).toBe(1);
    // A retry of the same stage takes over at once from the live earlier attempt: a new epoch.
    const retry = await acquire(prefix, 'run-a', 2);
    expect(retry.epoch).toBe(2);
    await retry.release();
    // After a release (a tombstone) the next one counts on.
    const other = await acquire(prefix, 'run-b', 1);
    expect(other.epoch).toBe(3);
    await other.release();
  });

  it('never lets a stale epoch replace or touch a newer checkpoint; a newer epoch replaces a stale one', async () => {
    const artifact = `${uniq('ckpt')}/artifacts/sft-0123abcd`;
    const newer = await commitCheckpoint(store, artifact, 10, await localDir({ 'w.bin': 'weights of epoch 2' }), { epoch: 2 });
    // The stale attempt (epoch 1) reaches step 10 later: refused, and its files went elsewhere.
    const stale = commitCheckpoint(store, artifact, 10, await localDir({ 'w.bin': 'weights of epoch 1!' }), { epoch: 1 });
    await expect(stale).rejects.toBeInstanceOf(CommitConflict);
    await expect(stale).rejects.toThrow(/a newer attempt \(lease epoch 2\) has committed here/);
    const now = (await readCommitted(store, layout.checkpoint(artifact, 10)))!;
    expect(now.epoch).toBe(2);
    expect(now.manifestSha256).toBe(newer.manifestSha256);
    expect(await verifyCommitted(store, layout.checkpoint(artifact, 10))).toEqual([]);
    expect((await store.getBytes(`${now.filesPrefix}/w.bin`))!.toString()).toBe('weights of epoch 2');

    // The other way round: a stale attempt committed step 15 before the newer one got there.
    await commitCheckpoint(store, artifact, 15, await localDir({ 'w.bin': 'stale 15' }), { epoch: 1 });
    const replaced = await commitCheckpoint(store, artifact, 15, await localDir({ 'w.bin': 'newer 15' }), { epoch: 2 });
    const at15 = (await readCommitted(store, layout.checkpoint(artifact, 15)))!;
    expect([at15.epoch, at15.manifestSha256]).toEqual([2, replaced.manifestSha256]);
    expect(await verifyCommitted(store, layout.checkpoint(artifact, 15))).toEqual([]);
    expect(await listCommittedSteps(store, artifact)).toEqual([15, 10]);
  });

  it('commits an output once: a second fenced commit is refused and leaves the first intact', async () => {
    const output = layout.output(`${uniq('out')}/artifacts/sft-0123abcd`);
    const commit = async () => commitDirectory(store, await localDir({ 'model.bin': 'the output' }), output, { by: 'epoch 3' }, { fence: { epoch: 3, marker: 'first' }, deterministic: true });
    const first = await commit();
    // The same commit again (a retry whose marker PUT had landed unheard) finds its own marker: fine.
    expect((await commit()).manifestSha256).toBe(first.manifestSha256);
    for (const epoch of [2, 4]) {
      await expect(commitDirectory(store, await localDir({ 'model.bin': `epoch ${epoch}` }), output, {}, { fence: { epoch, marker: 'first' } })).rejects.toBeInstanceOf(CommitConflict);
    }
    const now = (await readCommitted(store, output))!;
    expect([now.epoch, now.manifestSha256]).toEqual([3, first.manifestSha256]);
    expect(await verifyCommitted(store, output)).toEqual([]);
  });

  it('lets the larger epoch win when two markers race', async () => {
    const artifact = `${uniq('race')}/artifacts/sft-0123abcd`;
    for (let step = 1; step <= 8; step++) {
      const dirs = await Promise.all([localDir({ 'w.bin': `a${step}` }), localDir({ 'w.bin': `b${step}` })]);
      const results = await Promise.allSettled([commitCheckpoint(store, artifact, step, dirs[0], { epoch: 5 }), commitCheckpoint(store, artifact, step, dirs[1], { epoch: 6 })]);
      expect(results[1].status).toBe('fulfilled');
      if (results[0].status === 'rejected') expect(results[0].reason).toBeInstanceOf(CommitConflict);
      expect((await readCommitted(store, layout.checkpoint(artifact, step)))!.epoch).toBe(6);
      expect(await verifyCommitted(store, layout.checkpoint(artifact, step))).toEqual([]);
    }
  });
});

describe('a partitioned worker', () => {
  let control: TestWorkers;
  let client: Client;
  let closeClient: () => Promise<void>;

  beforeAll(async () => {
    useTestStackEnv();
    store = testStore();
    control = await startTestWorkers({ trainingQueues: [] });
    ({ client, close: closeClient } = await testClient());
  });
  afterAll(async () => {
    killSpawnedWorkers();
    await closeClient?.();
    await control?.shutdown();
  });

  it('cannot commit over the attempt that replaced it', async () => {
    const queue = `fence-${Date.now()}`;
    const prefix = uniq('run');
    const { file } = await writeTestSpec({
      name: 'fence-test',
      storage: { prefix },
      stages: [
        {
          id: 'sft',
          kind: 'sft',
          dataset: 'chats',
          hyper: { max_steps: 70, save_steps: 5, save_total_limit: 30 },
          job_params: { step_seconds: 0.1 },
          resources: { task_queue: queue },
          timeouts: { heartbeat: '3s' },
          retry: { initial_interval: '1s', maximum_attempts: 3 },
        },
      ],
    });
    const a = await spawnTrainingWorker(queue);
    const runId = `fence-${Date.now()}`;
    const { handle } = await startRun(client, file, { id: runId });
    const attemptKey = (n: number) => layout.attemptRecords(prefix, runId, 'sft', n);
    const committed = (records: AuditRecord[]) => records.filter((r) => r.event.type === 'checkpoint-committed');
    await until('attempt 1 committed two checkpoints', async () => committed(await readAttemptRecords(store, attemptKey(1))).length >= 2, 30_000, 100);

    // Freeze the worker, not its job: the job trains on and writes checkpoints nobody commits; the
    // worker neither heartbeats nor renews its lease, so Temporal retries the stage on worker b.
    a.signal('SIGSTOP');
    const frozenAt = Date.now();
    await spawnTrainingWorker(queue);
    await until('attempt 2 committed three checkpoints', async () => committed(await readAttemptRecords(store, attemptKey(2))).length >= 3, 60_000, 200);
    const second = await readAttemptRecords(store, attemptKey(2));
    const started2 = second.find((r) => r.event.type === 'attempt-started')!.event;
    const resumed2 = started2.resumedFromStep as number;
    // Wake the stale attempt while the newer one trains: it has checkpoints queued to commit.
    a.signal('SIGCONT');
    const result = await handle.result();
    expect(result.status.state).toBe('completed');
    expect(Date.now() - frozenAt).toBeGreaterThan(3000);

    const first = await readAttemptRecords(store, attemptKey(1));
    const epoch1 = first.find((r) => r.event.type === 'attempt-started')!.event.epoch as number;
    const epoch2 = started2.epoch as number;
    expect(epoch2).toBeGreaterThan(epoch1);
    // The stale attempt's job did get past the point attempt 2 resumed from (so it had something to commit)…
    const logs = await listJobLogs(store, layout.run(prefix, runId), { stage: 'sft', kind: 'events' });
    const events1 = ((await readJobLog(store, logs.find((l) => l.attempt === 1)!.key)) ?? Buffer.alloc(0)).toString('utf8');
    const announced1 = events1
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { event: string; step?: number })
      .filter((e) => e.event === 'checkpoint')
      .map((e) => e.step!);
    expect(Math.max(...announced1)).toBeGreaterThan(resumed2);
    // …but committed nothing after it: every checkpoint it committed is one attempt 2 could resume from.
    const committed1 = committed(first).map((r) => r.event.step as number);
    expect(Math.max(...committed1)).toBeLessThanOrEqual(resumed2);
    expect(first.find((r) => r.event.type === 'attempt-ended')?.event.outcome).not.toBe('completed');

    // In the bucket: every checkpoint past the resume point and the output are epoch 2's, and all verify.
    const artifact = (await store.list(`${prefix}/artifacts/`, false))[0]!.key.replace(/\/$/, '');
    for (const step of await listCommittedSteps(store, artifact)) {
      const c = (await readCommitted(store, layout.checkpoint(artifact, step)))!;
      if (step > resumed2) expect(c.epoch, `checkpoint ${step}`).toBe(epoch2);
      expect(await verifyCommitted(store, layout.checkpoint(artifact, step))).toEqual([]);
    }
    const output = (await readCommitted(store, layout.output(artifact)))!;
    expect(output.epoch).toBe(epoch2);
    expect(await verifyCommitted(store, layout.output(artifact))).toEqual([]);
  });
});
