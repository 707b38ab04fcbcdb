/**
 * `refinery model push` at a real size (~1 GiB, two large shards and the usual small files), the
 * real CLI against the real MinIO: a push killed midway leaves no model, and the next push sends
 * only what the bucket does not hold; a second push of the same content sends nothing; the CLI's
 * peak RSS stays bounded (not ~ the file size); a spec that says `base_model: NAME` resolves to it.
 */
import { randomFillSync } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createControlActivities } from '../../activities/control.js';
import { loadSpecFile } from '../../spec/load.js';
import { planPipeline } from '../../spec/plan.js';
import { readCommitted } from '../../storage/commit.js';
import { layout } from '../../storage/layout.js';
import { resolveModelName } from '../../storage/models.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { treeSha256 } from '../../storage/tree-hash.js';
import type { PreparedRun } from '../../workflows/types.js';
import { testStackEnv, testStore } from '../helpers/env.js';
import { runMeasuringPeakRss } from '../helpers/peak-rss.js';
import { until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

const BIN = path.resolve('bin/refinery');
const MiB = 1024 * 1024;
/**
 * ~1 GiB in two shards far above the single-PUT size (multipart, parts in flight), uneven so that
 * the push can be killed with the small one stored and the large one half sent.
 */
const SHARD_BYTES = [128 * MiB, 896 * MiB] as const;
/** What the CLI may use while pushing 1 GiB (its baseline, node + tsx + the SDKs, is ~150 MiB). */
const PEAK_RSS_LIMIT = 400 * MiB;

let store: ObjectStore;
let modelDir: string;
const prefix = `mp-${Date.now()}`;
const env = () => ({ ...process.env, ...testStackEnv(), REFINERY_USER: 'model-pusher' });

/** Random bytes written 8 MiB at a time: the test itself never holds a shard in memory. */
async function randomFile(file: string, bytes: number): Promise<void> {
  const fh = await open(file, 'w');
  const chunk = Buffer.alloc(8 * MiB);
  try {
    for (let done = 0; done < bytes; done += chunk.length) await fh.write(randomFillSync(chunk), 0, Math.min(chunk.length, bytes - done));
  } finally {
    await fh.close();
  }
}

beforeAll(async () => {
  store = testStore();
  modelDir = await mkdtemp(path.join(tmpdir(), 'refinery-model-push-'));
  await randomFile(path.join(modelDir, 'model-00001-of-00002.safetensors'), SHARD_BYTES[0]);
  await randomFile(path.join(modelDir, 'model-00002-of-00002.safetensors'), SHARD_BYTES[1]);
  await writeFile(path.join(modelDir, 'config.json'), JSON.stringify({ architectures: ['LlamaForCausalLM'], model_type: 'llama' }));
  await writeFile(path.join(modelDir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: {} }));
  await writeFile(path.join(modelDir, 'tokenizer.json'), JSON.stringify({ version: '1.0' }));
  await writeFile(path.join(modelDir, 'generation_config.json'), '{}');
}, 120_000);

afterAll(async () => {
  if (modelDir) await rm(modelDir, { recursive: true, force: true });
});

const push = (name: string) => runMeasuringPeakRss(BIN, ['model', 'push', modelDir, '--name', name, '--prefix', prefix, '--json'], { env: env() });

describe('refinery model push', () => {
  it('resumes after being killed midway, skips everything on a second push, in bounded memory; base_model: NAME resolves to it', async () => {
    const key = layout.model(prefix, await treeSha256(modelDir));
    const shardKey = (n: number) => `${key}/files/model-0000${n}-of-00002.safetensors`;

    // 1. Killed (SIGKILL, no chance to clean up) once the small shard is in the bucket, the large one on its way.
    const killed = execa(BIN, ['model', 'push', modelDir, '--name', 'tiny-7b', '--prefix', prefix], { env: env(), reject: false });
    await until('the first shard stored', async () => (await store.head(shardKey(1)))?.size === SHARD_BYTES[0], 120_000, 100);
    killed.kill('SIGKILL');
    await killed;
    expect(await readCommitted(store, key), 'a killed push commits nothing').toBeUndefined();
    expect(await resolveModelName(store, prefix, 'tiny-7b'), 'and names nothing').toBeUndefined();
    const firstShard = (await store.list(`${key}/files/`)).find((o) => o.key === shardKey(1))!;

    // 2. Pushed again: the first shard is not sent again (same object, same time), the rest is.
    const resumed = await push('tiny-7b');
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    const r1 = JSON.parse(resumed.stdout) as { alreadyCommitted: boolean; skippedFiles: number; files: number; bytes: number; manifestSha256: string; pushedBy: string };
    expect(r1.alreadyCommitted).toBe(false);
    expect(r1.skippedFiles).toBeGreaterThanOrEqual(1);
    expect(r1.files).toBe(6);
    expect(r1.bytes).toBeGreaterThan(SHARD_BYTES[0] + SHARD_BYTES[1]);
    expect(r1.pushedBy).toBe('model-pusher');
    const afterResume = (await store.list(`${key}/files/`)).find((o) => o.key === shardKey(1))!;
    expect(afterResume.lastModified?.getTime(), 'the stored shard was not uploaded again').toBe(firstShard.lastModified?.getTime());
    const committed = await readCommitted(store, key);
    expect(committed?.manifestSha256).toBe(r1.manifestSha256);
    console.log(`[model-push] resumed push of ${(r1.bytes / MiB).toFixed(0)} MiB: peak RSS ${(resumed.peakRssBytes / MiB).toFixed(0)} MiB, ${r1.skippedFiles} files skipped`);
    expect(resumed.peakRssBytes, 'peak RSS while pushing ~1 GiB').toBeLessThan(PEAK_RSS_LIMIT);
    expect(resumed.peakRssBytes).toBeGreaterThan(20 * MiB); // the sampler saw the process at all

    // 3. A second push of the same content uploads nothing and rewrites nothing.
    const objectsBefore = await store.list(`${key}/`);
    const again = await push('tiny-7b-copy');
    expect(again.exitCode, again.stderr).toBe(0);
    const r2 = JSON.parse(again.stdout) as { alreadyCommitted: boolean; manifestSha256: string };
    expect(r2).toMatchObject({ alreadyCommitted: true, manifestSha256: r1.manifestSha256 });
    const objectsAfter = await store.list(`${key}/`);
    expect(objectsAfter.map((o) => [o.key, o.lastModified?.getTime()])).toEqual(objectsBefore.map((o) => [o.key, o.lastModified?.getTime()]));
    expect(again.peakRssBytes).toBeLessThan(PEAK_RSS_LIMIT);

    // 4. `model list` shows both names on the same content.
    const list = await execa(BIN, ['model', 'list', '--prefix', prefix, '--json'], { env: env() });
    const models = JSON.parse(list.stdout) as { name: string; manifestSha256: string }[];
    expect(models.map((m) => [m.name, m.manifestSha256])).toEqual([
      ['tiny-7b', r1.manifestSha256],
      ['tiny-7b-copy', r1.manifestSha256],
    ]);
    const text = await execa(BIN, ['model', 'list', '--prefix', prefix], { env: env() });
    expect(text.stdout).toMatch(/^NAME\s+FILES\s+SIZE\s+MANIFEST/);
    expect(text.stdout).toContain('tiny-7b-copy');

    // 5. A spec's `base_model: tiny-7b` is that commit, found by prepareRun without the directory.
    const { file } = await writeTestSpec({ name: 'named-base', base_model: 'tiny-7b', storage: { prefix }, stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 1 }, job_params: {} }] });
    const plan = planPipeline(await loadSpecFile(file));
    expect(plan.baseModel).toBe('tiny-7b');
    const control = createControlActivities({ store, jobsVersion: 'test-jobs', codeVersion: 'test' });
    const prepared = (await new MockActivityEnvironment().run(control.prepareRun, { runId: `named-${Date.now()}`, plan, requestedBy: 'tester' })) as PreparedRun;
    expect(prepared.baseModel).toMatchObject({ prefix: key, manifestSha256: r1.manifestSha256 });

    // An unknown name is an input error naming the field and how to push one, before any GPU time.
    const { file: bad } = await writeTestSpec({ name: 'named-missing', base_model: 'no-such-model', storage: { prefix }, stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 1 }, job_params: {} }] });
    const badPlan = planPipeline(await loadSpecFile(bad));
    await expect(new MockActivityEnvironment().run(control.prepareRun, { runId: `named-bad-${Date.now()}`, plan: badPlan, requestedBy: 'tester' })).rejects.toThrow(
      /base_model.*no model named "no-such-model".*refinery model push DIR --name no-such-model/s,
    );
  }, 300_000);

  it('refuses a bad name or a missing directory with one clear line', async () => {
    const empty = await mkdtemp(path.join(tmpdir(), 'refinery-model-push-bad-'));
    await mkdir(path.join(empty, 'm'));
    const badName = await execa(BIN, ['model', 'push', path.join(empty, 'm'), '--name', 'a/b', '--prefix', prefix], { env: env(), reject: false });
    expect(badName.exitCode).not.toBe(0);
    expect(badName.stderr).toMatch(/model name "a\/b" is not valid/);
    const noDir = await execa(BIN, ['model', 'push', path.join(empty, 'nope'), '--name', 'x', '--prefix', prefix], { env: env(), reject: false });
    expect(noDir.exitCode).not.toBe(0);
    expect(noDir.stderr).toMatch(/nope is not a directory/);
  });
});
