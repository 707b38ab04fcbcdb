/**
 * The commit protocol and checkpoints against real MinIO: nothing uncommitted is read, a corrupt
 * checkpoint is skipped for the previous one (also inside a real retry), retention keeps the newest,
 * and a stage whose output is committed is never run again by a retry.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import type { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTrainingActivities } from '../../activities/run-stage-job.js';
import { startRun } from '../../client/commands/run.js';
import { commitCheckpoint, listCommittedSteps, pruneCheckpoints, restoreNewestCheckpoint } from '../../storage/checkpoints.js';
import { commitDirectory, downloadCommitted, IntegrityError, readCommitted, verifyCommitted } from '../../storage/commit.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { summarizeAttempts } from '../../storage/attempt-records.js';
import { parseSpec } from '../../spec/load.js';
import { planPipeline } from '../../spec/plan.js';
import type { StageJobResult } from '../../workflows/types.js';
import { GpuAllocator } from '../../worker/gpu-allocator.js';
import { jobsPython } from '../../config/worker.js';
import { startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

let store: ObjectStore;
const uniq = () => `st-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;

async function dirWith(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-st-'));
  for (const [name, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), content);
  }
  return dir;
}

beforeAll(() => {
  store = testStore();
});

describe('commit protocol', () => {
  it('uploads a file larger than a part in parallel parts, hashed once; downloads verify it', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'refinery-st-big-'));
    // 70 MiB: three parts (32 + 32 + 6 MiB), next to a small file that goes up in one signed PUT.
    const big = randomBytes(70 * 1024 * 1024);
    await writeFile(path.join(dir, 'model.safetensors'), big);
    await writeFile(path.join(dir, 'config.json'), '{"a":1}');
    const prefix = uniq();
    const art = await commitDirectory(store, dir, prefix);
    const file = art.manifest.files.find((f) => f.path === 'model.safetensors')!;
    expect(file).toMatchObject({ size: big.length, sha256: createHash('sha256').update(big).digest('hex') });
    expect(await verifyCommitted(store, prefix)).toEqual([]);
    const dest = await mkdtemp(path.join(tmpdir(), 'refinery-st-big-down-'));
    expect(await downloadCommitted(store, art, dest)).toEqual({ downloaded: 2, reused: 0 });
    expect((await readFile(path.join(dest, 'model.safetensors'))).equals(big)).toBe(true);
    // A second download on the same disk re-hashes and keeps what is already right.
    expect(await downloadCommitted(store, art, dest)).toEqual({ downloaded: 0, reused: 2 });
  });

  it('refuses a file whose bytes in the bucket differ from the manifest, leaving nothing at the target', async () => {
    const dir = await dirWith({ 'w.bin': 'weights' });
    const prefix = uniq();
    const art = await commitDirectory(store, dir, prefix);
    await store.putBytes(`${prefix}/files/w.bin`, 'weightz');
    const dest = await mkdtemp(path.join(tmpdir(), 'refinery-st-bad-'));
    await expect(downloadCommitted(store, art, dest)).rejects.toThrow(/w\.bin: sha256 .* does not match the manifest/);
    expect(existsSync(path.join(dest, 'w.bin'))).toBe(false);
  });

  it('reads only committed prefixes, and refuses a manifest that does not match its marker', async () => {
    const prefix = uniq();
    const dir = await dirWith({ 'a.txt': 'alpha', 'sub/b.bin': 'beta' });
    expect(await readCommitted(store, prefix)).toBeUndefined();
    const art = await commitDirectory(store, dir, prefix, { note: 'x' });
    expect(art.manifest.files.map((f) => f.path)).toEqual(['a.txt', 'sub/b.bin']);
    expect((await readCommitted(store, prefix))?.manifestSha256).toBe(art.manifestSha256);
    expect(await verifyCommitted(store, prefix)).toEqual([]);

    // Files without a marker (an interrupted commit) do not exist for readers.
    const partial = uniq();
    await store.putFile(`${partial}/files/a.txt`, path.join(dir, 'a.txt'));
    expect(await readCommitted(store, partial)).toBeUndefined();

    // A rewritten manifest is caught by the marker's hash; a modified file by verify.
    await store.putBytes(`${prefix}/_manifest.json`, JSON.stringify({ ...art.manifest, files: [] }));
    await expect(readCommitted(store, prefix)).rejects.toBeInstanceOf(IntegrityError);
    const other = uniq();
    await commitDirectory(store, dir, other);
    await store.putBytes(`${other}/files/a.txt`, 'alphA');
    expect(await verifyCommitted(store, other)).toEqual([expect.stringMatching(/a\.txt: sha256 mismatch/)]);
  });
});

describe('checkpoints', () => {
  it('restores the newest checkpoint that verifies, skipping a corrupt one', async () => {
    const art = uniq();
    for (const step of [5, 10]) await commitCheckpoint(store, art, step, await dirWith({ 'w.bin': `weights-${step}`, 'trainer_state.json': `{"global_step":${step}}` }));
    expect(await listCommittedSteps(store, art)).toEqual([10, 5]);
    await store.putBytes(`${art}/checkpoints/step-000000010/files/w.bin`, 'weights-1O'); // flipped
    const local = await mkdtemp(path.join(tmpdir(), 'refinery-restore-'));
    const r = await restoreNewestCheckpoint(store, art, local);
    expect(r.restored?.step).toBe(5);
    expect(r.skipped.map((s) => s.step)).toEqual([10]);
    expect(await readFile(path.join(local, 'checkpoint-5', 'w.bin'), 'utf8')).toBe('weights-5');

    // A deleted object is as bad as a modified one.
    await store.remove([`${art}/checkpoints/step-000000005/files/w.bin`]);
    const none = await restoreNewestCheckpoint(store, art, await mkdtemp(path.join(tmpdir(), 'refinery-restore-')));
    expect(none.restored).toBeUndefined();
    expect(none.skipped.map((s) => s.step)).toEqual([10, 5]);
  });

  it('keeps only the newest N committed checkpoints', async () => {
    const art = uniq();
    for (const step of [1, 2, 3, 4]) await commitCheckpoint(store, art, step, await dirWith({ 'x': String(step) }));
    expect(await pruneCheckpoints(store, art, 2)).toEqual([2, 1]);
    expect(await listCommittedSteps(store, art)).toEqual([4, 3]);
    expect(await store.list(`${art}/checkpoints/step-000000001/`)).toEqual([]);
  });
});

describe('stage runtime idempotency', () => {
  it('a retry of a stage whose output is committed returns it without running the job', async () => {
    const scratch = await mkdtemp(path.join(tmpdir(), 'refinery-idem-'));
    const counter = path.join(scratch, 'runs.txt');
    // A contract job that also counts how often it was started.
    const countingJob: [string, ...string[]] = [
      '/bin/sh', '-c', `echo run >> '${counter}'; exec "$0" "$@"`, ...testJobCommand()('sft'),
    ];
    const training = createTrainingActivities({ store, scratchDir: scratch, jobCommand: () => countingJob, jobCwd: path.resolve('jobs'), gpus: new GpuAllocator([]) });
    const planned = planPipeline(parseSpec('name: idem\nbase_model: /b\nstages:\n  - {id: sft, kind: sft, dataset: {path: /d.jsonl, format: chat}, hyper: {max_steps: 3}, job_params: {step_seconds: 0}}\n', '/s.yaml'));
    const input = { runId: 'idem', storagePrefix: uniq(), stage: planned.stages[0]!, cacheKey: 'k1', artifactPrefix: `${uniq()}/art`, inputs: {}, datasets: {} };
    const env = new MockActivityEnvironment({ attempt: 1 });
    env.on('heartbeat', () => undefined);
    const first: StageJobResult = await env.run(training.runStageJob, input);
    expect(first.alreadyCommitted).toBe(false);
    const retry: StageJobResult = await new MockActivityEnvironment({ attempt: 2 }).run(training.runStageJob, input);
    expect(retry.alreadyCommitted).toBe(true);
    expect(retry.artifact).toEqual(first.artifact);
    expect((await readFile(counter, 'utf8')).trim().split('\n')).toHaveLength(1);
  });
});

describe('corrupt checkpoint inside a real retry', () => {
  let workers: TestWorkers;
  let client: Client;
  let close: () => Promise<void>;
  beforeAll(async () => {
    useTestStackEnv();
    workers = await startTestWorkers({ jobCommand: testJobCommand(), trainingQueues: ['gpu-corrupt'] });
    ({ client, close } = await testClient());
  });
  afterAll(async () => {
    await close?.();
    await workers?.shutdown();
  });

  it('resumes from the previous checkpoint when the newest one was tampered with', async () => {
    const prefix = uniq();
    const { file } = await writeTestSpec({
      name: 'corrupt-test',
      storage: { prefix },
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 16, save_steps: 5 }, job_params: { step_seconds: 0.05, fail_at_step: 12 }, resources: { task_queue: 'gpu-corrupt' }, retry: { initial_interval: '4s' } }],
    });
    const { runId, handle } = await startRun(client, file, { id: `corrupt-${Date.now()}` });
    // Wait for the first attempt to fail (the retry is in its 4 s backoff), then damage checkpoint 10.
    await until('attempt 1 failed', async () => (await summarizeAttempts(store, { storagePrefix: prefix, runId, stageId: 'sft' }))[0]?.outcome === 'failed', 60_000, 100);
    const [art] = await store.list(`${prefix}/artifacts/`, false);
    const artifactPrefix = art!.key.replace(/\/$/, '');
    expect(await listCommittedSteps(store, artifactPrefix)).toEqual([10, 5]);
    const victim = (await store.list(`${(await readCommitted(store, `${artifactPrefix}/checkpoints/step-000000010`))!.filesPrefix}/`))[0]!.key;
    const bytes = (await store.getBytes(victim))!;
    bytes[0] = bytes[0]! ^ 0x01;
    await store.putBytes(victim, bytes);

    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    expect(result.status.stages[0]!.resumedFromStep).toBe(5);
  });
});

jobsPython();
