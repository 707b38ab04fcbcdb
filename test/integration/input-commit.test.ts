/**
 * Inputs that take time, and identical runs storing the same inputs at once, against real MinIO:
 * an interrupted commit resumes with only the files missing (or differing) in the bucket; two
 * deterministic commits of the same content agree byte for byte; prepareRun heartbeats with its
 * progress, on a timer as well, and a retried prepareRun skips what the failed attempt uploaded.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import type { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createControlActivities, type PrepareProgress } from '../../activities/control.js';
import { treeSha256 } from '../../storage/tree-hash.js';
import { startRun } from '../../client/commands/run.js';
import { commitDirectory, readCommitted, verifyCommitted, type CommitProgress } from '../../storage/commit.js';
import { layout } from '../../storage/layout.js';
import { SINGLE_PUT_MAX_BYTES, type ObjectStore } from '../../storage/object-store.js';
import { loadSpecFile } from '../../spec/load.js';
import { planPipeline } from '../../spec/plan.js';
import type { PreparedRun } from '../../workflows/types.js';
import { startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { writeTestSpec } from '../helpers/specs.js';

// These tests order and count the Node transfer path's own requests (spies on ObjectStore, one file
// at a time); the native mover's transfers have their own tests (native-mover.test.ts).
process.env.REFINERY_MOVER = 'off';

const MiB = 1024 * 1024;
let store: ObjectStore;
const uniq = () => `ic-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Random files of the given sizes; returns the directory and the bytes by name. */
async function dirOf(sizes: Record<string, number>): Promise<{ dir: string; bytes: Record<string, Buffer> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-ic-'));
  const bytes: Record<string, Buffer> = {};
  for (const [name, size] of Object.entries(sizes)) {
    bytes[name] = randomBytes(size);
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), bytes[name]!);
  }
  return { dir, bytes };
}

beforeAll(() => {
  store = testStore();
});

describe('resumable commits', () => {
  it('an interrupted commit resumes with only the missing files; a remote copy that differs is uploaded again', async () => {
    // Sorted order is upload order with one file at a time: the interruption lands after the
    // small file and the multipart one (40 MiB > the 32 MiB single-PUT limit).
    const sizes = { '1-small.bin': 8 * MiB, '2-large.bin': 40 * MiB, '3.bin': 12 * MiB, '4.bin': 16 * MiB, 'sub/5.bin': 20 * MiB };
    expect(sizes['2-large.bin']).toBeGreaterThan(SINGLE_PUT_MAX_BYTES);
    const total = Object.values(sizes).reduce((a, b) => a + b, 0);
    const { dir, bytes } = await dirOf(sizes);
    const prefix = uniq();

    const first: CommitProgress[] = [];
    const interrupted = commitDirectory(store, dir, prefix, undefined, {
      resume: true,
      concurrency: 1,
      onProgress: (p) => {
        first.push(p);
        if (p.filesDone >= 2) throw new Error('worker lost');
      },
    });
    await expect(interrupted).rejects.toThrow('worker lost');
    expect(await readCommitted(store, prefix)).toBeUndefined();
    expect((await store.list(`${prefix}/files/`)).map((o) => o.key).sort()).toEqual([`${prefix}/files/1-small.bin`, `${prefix}/files/2-large.bin`]);
    // Both uploads recorded their sha256 (the multipart one at initiate) for a later comparison.
    expect((await store.head(`${prefix}/files/1-small.bin`))?.sha256).toBe(sha(bytes['1-small.bin']!));
    expect((await store.head(`${prefix}/files/2-large.bin`))?.sha256).toBe(sha(bytes['2-large.bin']!));
    // Progress came per part of the large file, not only per file.
    expect(first[0]).toEqual({ files: 5, filesDone: 0, bytes: total, bytesDone: 0, skippedFiles: 0 });
    expect(first.some((p) => p.filesDone === 1 && p.bytesDone > 8 * MiB && p.bytesDone < 48 * MiB)).toBe(true);

    const puts = vi.spyOn(store, 'putFileHashed');
    try {
      let last: CommitProgress | undefined;
      const art = await commitDirectory(store, dir, prefix, { note: 'resumed' }, { resume: true, deterministic: true, onProgress: (p) => (last = p) });
      expect(last).toEqual({ files: 5, filesDone: 5, bytes: total, bytesDone: total, skippedFiles: 2 });
      expect(puts.mock.calls.map((c) => c[0]).sort()).toEqual([`${prefix}/files/3.bin`, `${prefix}/files/4.bin`, `${prefix}/files/sub/5.bin`]);
      expect(art.manifest.files.map((f) => [f.path, f.size, f.sha256])).toEqual(Object.entries(bytes).map(([n, b]) => [n, b.length, sha(b)]));
      expect(await verifyCommitted(store, prefix)).toEqual([]);
      expect((await readCommitted(store, prefix))?.manifestSha256).toBe(art.manifestSha256);

      // Remote copies that differ: same size, other bytes — one without a recorded sha256 (a plain
      // PUT), one with the sha256 of its other bytes. Both go up again; the rest is skipped.
      await store.putBytes(`${prefix}/files/3.bin`, randomBytes(sizes['3.bin']));
      const otherDir = await dirOf({ '4.bin': sizes['4.bin'] });
      await store.putFileHashed(`${prefix}/files/4.bin`, path.join(otherDir.dir, '4.bin'));
      expect(await verifyCommitted(store, prefix)).toHaveLength(2);
      puts.mockClear();
      const again = await commitDirectory(store, dir, prefix, { note: 'resumed' }, { resume: true, deterministic: true, onProgress: (p) => (last = p) });
      expect(last).toMatchObject({ filesDone: 5, skippedFiles: 3 });
      expect(puts.mock.calls.map((c) => c[0]).sort()).toEqual([`${prefix}/files/3.bin`, `${prefix}/files/4.bin`]);
      expect(await verifyCommitted(store, prefix)).toEqual([]);
      // Deterministic: the same content and meta commit to the same manifest as before.
      expect(again.manifestSha256).toBe(art.manifestSha256);
    } finally {
      puts.mockRestore();
    }
  });

  it('two concurrent deterministic commits of the same directory both return the committed manifest', async () => {
    const { dir } = await dirOf({ 'config.json': 200, 'model.safetensors': 34 * MiB, 'tok/vocab.txt': 5000 });
    const prefix = uniq();
    // The same meta with its keys in another order is the same manifest.
    const [a, b] = await Promise.all([
      commitDirectory(store, dir, prefix, { kind: 'model', rows: 3 }, { deterministic: true }),
      commitDirectory(store, dir, prefix, { rows: 3, kind: 'model' }, { deterministic: true, resume: true }),
    ]);
    expect(a.manifestSha256).toBe(b.manifestSha256);
    expect(a.manifest.createdAt).toBeUndefined();
    const committed = await readCommitted(store, prefix);
    expect(committed?.manifestSha256).toBe(a.manifestSha256);
    expect(committed?.manifest).toEqual(a.manifest);
    expect(await verifyCommitted(store, prefix)).toEqual([]);
    // A third, later commit of the same content still agrees.
    expect((await commitDirectory(store, dir, prefix, { kind: 'model', rows: 3 }, { deterministic: true })).manifestSha256).toBe(a.manifestSha256);
  });
});

describe('prepareRun', () => {
  it('heartbeats its progress (on a timer too), and a retry after a lost attempt skips the files already uploaded', async () => {
    const prefix = uniq();
    const { dir, file } = await writeTestSpec({
      name: 'prep-test',
      storage: { prefix },
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 2 }, job_params: {} }],
    });
    const base = path.join(dir, 'base');
    await writeFile(path.join(base, 'model.safetensors'), randomBytes(3 * MiB));
    await writeFile(path.join(base, 'tokenizer.json'), JSON.stringify({ v: randomBytes(8).toString('hex') }));
    await mkdir(path.join(base, 'extra'));
    await writeFile(path.join(base, 'extra', 'generation_config.json'), '{}');
    const plan = planPipeline(await loadSpecFile(file));
    const modelKey = layout.model(prefix, await treeSha256(base));
    const input = (runId: string) => ({ runId, plan, requestedBy: 'tester' });

    // Attempt 1: every upload takes 800 ms (the ticker must keep the attempt alive meanwhile); the
    // attempt is lost (cancelled, as after a heartbeat timeout) 400 ms into the model's upload: the
    // other files are in the bucket by then, model.safetensors (whose PUT waits first) is not.
    const slowStore = testStore();
    const realPut = slowStore.putFileHashed.bind(slowStore);
    const sleep = () => new Promise((r) => setTimeout(r, 800));
    vi.spyOn(slowStore, 'putFileHashed').mockImplementation(async (key, ...rest) => {
      if (key.endsWith('/model.safetensors')) await sleep();
      const put = await realPut(key, ...rest);
      if (!key.endsWith('/model.safetensors')) await sleep();
      return put;
    });
    const lost = createControlActivities({ store: slowStore, jobsVersion: 'test-jobs', codeVersion: 'test' });
    const env1 = new MockActivityEnvironment({ attempt: 1, heartbeatTimeoutMs: 600 });
    const beats1: PrepareProgress[] = [];
    let cancelled = false;
    env1.on('heartbeat', (d: PrepareProgress) => {
      beats1.push(d);
      if (!cancelled && beats1.filter((b) => b.phase === 'base-model' && b.step === 'uploading').length >= 3) {
        cancelled = true;
        env1.cancel();
      }
    });
    await expect(env1.run(lost.prepareRun, input('prep-1'))).rejects.toBeInstanceOf(CancelledFailure);
    expect(await readCommitted(store, modelKey)).toBeUndefined();
    const uploaded = (await store.list(`${modelKey}/files/`)).map((o) => o.key);
    expect(uploaded.length).toBeGreaterThanOrEqual(1);
    expect(uploaded).not.toContain(`${modelKey}/files/model.safetensors`);

    expect(beats1[0]).toEqual({ phase: 'datasets' });
    expect(beats1).toContainEqual(expect.objectContaining({ phase: 'datasets', dataset: 'chats', step: 'validating', rowsDone: expect.any(Number) }));
    expect(beats1).toContainEqual(expect.objectContaining({ phase: 'datasets', dataset: 'chats', step: 'done', rowsDone: expect.any(Number) }));
    expect(beats1.find((b) => b.step === 'done' && b.phase === 'datasets')!.rowsDone).toBeGreaterThan(0);
    expect(beats1).toContainEqual(expect.objectContaining({ phase: 'base-model', step: 'hashing', files: 4 }));
    const uploading = beats1.filter((b) => b.phase === 'base-model' && b.step === 'uploading');
    expect(uploading[0]).toMatchObject({ files: 4, filesDone: 0, bytesDone: 0, skippedFiles: 0 });
    // No file completes within 800 ms, progress reports are throttled to one a second: the repeats
    // are the 200 ms ticker's (a third of the heartbeat timeout).
    expect(uploading.filter((b) => b.filesDone === 0).length).toBeGreaterThanOrEqual(3);

    // Attempt 2: what attempt 1 uploaded is skipped, the rest goes up, the run manifest is written.
    const control = createControlActivities({ store, jobsVersion: 'test-jobs', codeVersion: 'test' });
    const puts = vi.spyOn(store, 'putFileHashed');
    const env2 = new MockActivityEnvironment({ attempt: 2 });
    const beats2: PrepareProgress[] = [];
    env2.on('heartbeat', (d: PrepareProgress) => beats2.push(d));
    let prepared: PreparedRun;
    try {
      prepared = await env2.run(control.prepareRun, input('prep-1'));
      expect(puts.mock.calls.map((c) => c[0])).toContain(`${modelKey}/files/model.safetensors`);
      expect(puts.mock.calls.filter((c) => c[0].startsWith(modelKey))).toHaveLength(4 - uploaded.length);
    } finally {
      puts.mockRestore();
    }
    expect(beats2).toContainEqual({ phase: 'base-model', step: 'done', files: 4, filesDone: 4, bytes: expect.any(Number), bytesDone: expect.any(Number), skippedFiles: uploaded.length });
    expect(prepared.baseModel.prefix).toBe(modelKey);
    expect(await verifyCommitted(store, modelKey)).toEqual([]);
    const model = await readCommitted(store, modelKey);
    expect(model?.manifestSha256).toBe(prepared.baseModel.manifestSha256);
    // Content-addressed inputs carry no per-run facts; run.json does.
    expect(model?.manifest.createdAt).toBeUndefined();
    expect(model?.manifest.meta).toBeUndefined();
    const dataset = await readCommitted(store, prepared.datasets.chats!.prefix);
    expect(dataset?.manifest.meta).toEqual({ rows: expect.any(Number) });
    const runJson = await store.getJson<{ baseModel: { source: string; manifestSha256: string }; datasets: Record<string, { path: string; source: string }> }>(
      `${layout.run(prefix, 'prep-1')}/run.json`,
    );
    expect(runJson?.baseModel).toMatchObject({ source: base, manifestSha256: prepared.baseModel.manifestSha256 });
    expect(runJson?.datasets.chats).toMatchObject({ path: path.join(dir, 'data', 'sft.jsonl'), source: path.join(dir, 'data', 'sft.jsonl') });

    // Another run of the same spec: the committed inputs are reused as they are.
    const env3 = new MockActivityEnvironment({ attempt: 1 });
    env3.on('heartbeat', () => undefined);
    const again: PreparedRun = await env3.run(control.prepareRun, input('prep-2'));
    expect(again.baseModel).toEqual(prepared.baseModel);
    expect(again.datasets).toEqual(prepared.datasets);
    expect(again.fingerprint).toBe(prepared.fingerprint);
  });
});

describe('two runs of the same spec started together', () => {
  let workers: TestWorkers;
  let client: Client;
  let close: () => Promise<void>;
  beforeAll(async () => {
    useTestStackEnv();
    workers = await startTestWorkers({ jobCommand: testJobCommand(), trainingQueues: ['gpu-twins'] });
    ({ client, close } = await testClient());
  });
  afterAll(async () => {
    await close?.();
    await workers?.shutdown();
  });

  // Only the prepare part: both runs then train the same cache key at once, which is the stage
  // lease's business (not asserted here).
  it("store the same inputs, and both runs' references match what is committed", async () => {
    const prefix = uniq();
    const { dir, file } = await writeTestSpec({
      name: 'twins-test',
      storage: { prefix },
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 40 }, job_params: { step_seconds: 0.25 }, resources: { task_queue: 'gpu-twins' } }],
    });
    // A base model that takes a moment to upload: the two commits overlap.
    await writeFile(path.join(dir, 'base', 'model.safetensors'), randomBytes(40 * MiB));
    const stamp = Date.now();
    const runs = await Promise.all([startRun(client, file, { id: `twin-a-${stamp}` }), startRun(client, file, { id: `twin-b-${stamp}` })]);
    try {
      type RunJson = { baseModel: { prefix: string; manifestSha256: string }; datasets: Record<string, { prefix: string; manifestSha256: string }> };
      const manifests: RunJson[] = [];
      for (const { runId } of runs) {
        for (let i = 0; ; i++) {
          const run = await store.getJson<RunJson>(`${layout.run(prefix, runId)}/run.json`);
          if (run) {
            manifests.push(run);
            break;
          }
          if (i > 600) throw new Error(`${runId}: no run.json after 60 s`);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      const [a, b] = manifests as [RunJson, RunJson];
      expect(b.baseModel).toEqual(a.baseModel);
      expect(b.datasets).toEqual(a.datasets);
      // What runStageJob checks before it downloads an input: the ref still names the committed manifest.
      for (const ref of [a.baseModel, a.datasets.chats!]) expect((await readCommitted(store, ref.prefix))?.manifestSha256).toBe(ref.manifestSha256);
      expect(await verifyCommitted(store, a.baseModel.prefix)).toEqual([]);
      // Each run's training activity starts.
      for (const { runId } of runs) {
        const child = client.workflow.getHandle(`${runId}--sft`);
        for (let i = 0; ; i++) {
          const d = await child.describe().catch(() => undefined);
          if (d?.raw.pendingActivities?.some((p) => p.activityType?.name === 'runStageJob') || d?.status.name === 'COMPLETED') break;
          if (d && d.status.name !== 'RUNNING') throw new Error(`${runId}--sft: ${d.status.name}`);
          if (i > 600) throw new Error(`${runId}--sft: no training activity after 60 s`);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    } finally {
      await Promise.all(runs.map(({ handle }) => handle.terminate('test done').catch(() => undefined)));
    }
  });
});
