/**
 * The worker's input cache (activities/input-cache.ts) against real MinIO: inputs of known sizes
 * committed with the commit protocol and downloaded (verified) into a cache capped at two of them.
 * Eviction is least recently used first and happens before a fill; an entry a running job holds is
 * never evicted while others are filled at the same time; two acquires of one input download it
 * once; what is on disk fits the cap after releases; entries an earlier process left are counted
 * (an incomplete one removed). Then through the training activity: two attempts at once on one
 * worker's activities with a small cap, a third input filled while they run.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { InputCache, type InputCacheLogger } from '../../activities/input-cache.js';
import { createTrainingActivities } from '../../activities/run-stage-job.js';
import { fetchStageInputs } from '../../activities/stage-inputs.js';
import { commitDirectory, downloadCommitted, type CommittedArtifact } from '../../storage/commit.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { parseSpec } from '../../spec/load.js';
import { planPipeline } from '../../spec/plan.js';
import type { ArtifactRef, StageJobInput, StageJobResult } from '../../workflows/types.js';
import { GpuAllocator } from '../../worker/gpu-allocator.js';
import { testJobCommand, testStore } from '../helpers/env.js';
import { until } from '../helpers/processes.js';

// These tests order and count the Node transfer path's own requests (spies on ObjectStore, one file
// at a time); the native mover's transfers have their own tests (native-mover.test.ts).
process.env.REFINERY_MOVER = 'off';

const MiB = 1024 * 1024;
/** Each input: 3 MiB in two files (and a nested one), so that two fit the cap and three do not. */
const INPUT_BYTES = 3 * MiB;
const CAP = 7 * MiB;
const uniq = () => `icache-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let store: ObjectStore;
/** Everything this file writes locally, removed afterwards. */
const scratchRoot = path.join(tmpdir(), `refinery-icache-${process.pid}-${Date.now()}`);
const inputs: Record<string, CommittedArtifact> = {};

async function commitInput(name: string, sizes: Record<string, number>): Promise<CommittedArtifact> {
  const dir = path.join(scratchRoot, 'inputs', name);
  for (const [file, size] of Object.entries(sizes)) {
    await mkdir(path.dirname(path.join(dir, file)), { recursive: true });
    await writeFile(path.join(dir, file), randomBytes(size));
  }
  return commitDirectory(store, dir, `${uniq()}/${name}`);
}

const bytesOf = (a: CommittedArtifact) => a.manifest.files.reduce((s, f) => s + f.size, 0);

/** Bytes of the files in the cache's entry directories (the stamps are a few bytes each, not counted). */
async function diskBytes(cacheDir: string): Promise<number> {
  const walk = async (dir: string): Promise<number> => {
    let total = 0;
    for (const d of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(dir, d.name);
      if (d.isDirectory()) total += await walk(p);
      else if (d.isFile() && dir !== cacheDir) total += (await stat(p)).size;
    }
    return total;
  };
  return walk(cacheDir);
}

const entryDirs = async (cacheDir: string) => (await readdir(cacheDir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name).sort();

/** A recording logger, and a cache in a fresh directory. */
function newCache(capBytes = CAP, dir?: string): { cache: InputCache; warnings: string[]; dir: string } {
  const warnings: string[] = [];
  const log: InputCacheLogger = { info: () => undefined, warn: (m) => warnings.push(m) };
  const cacheDir = dir ?? path.join(tmpdirSync(), 'cache');
  return { cache: new InputCache({ dir: cacheDir, capBytes, log }), warnings, dir: cacheDir };
}
let scratchSeq = 0;
const tmpdirSync = () => path.join(scratchRoot, String(++scratchSeq));

/** Fills by a real, verified download, counting the files each key downloaded and the fills in flight. */
function downloads() {
  const files = new Map<string, number>();
  const fills = new Map<string, number>();
  let inFlight = 0;
  let maxInFlight = 0;
  const fill = (artifact: CommittedArtifact, before?: () => Promise<void>) => async (dir: string) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    fills.set(artifact.manifestSha256, (fills.get(artifact.manifestSha256) ?? 0) + 1);
    try {
      await before?.();
      const r = await downloadCommitted(store, artifact, dir);
      files.set(artifact.manifestSha256, (files.get(artifact.manifestSha256) ?? 0) + r.downloaded);
    } finally {
      inFlight--;
    }
  };
  return { fill, files, fills, maxInFlight: () => maxInFlight };
}

const acquire = (cache: InputCache, a: CommittedArtifact, fill: (dir: string) => Promise<void>) => cache.acquire(a.manifestSha256, bytesOf(a), fill);

/** Every file of the input in `dir` has its manifest's sha256. */
async function intact(a: CommittedArtifact, dir: string): Promise<boolean> {
  for (const f of a.manifest.files) if (sha(await readFile(path.join(dir, f.path))) !== f.sha256) return false;
  return true;
}

beforeAll(async () => {
  store = testStore();
  for (const name of ['a', 'b', 'c', 'd', 'e']) inputs[name] = await commitInput(name, { 'model.safetensors': 2 * MiB, 'tokenizer.json': MiB - 4096, 'sub/config.json': 4096 });
  inputs.big = await commitInput('big', { 'model.safetensors': 8 * MiB });
  for (const name of ['a', 'b', 'c', 'd', 'e']) expect(bytesOf(inputs[name]!)).toBe(INPUT_BYTES);
});
afterAll(async () => {
  await rm(scratchRoot, { recursive: true, force: true });
});

describe('input cache', () => {
  it('evicts the least recently used idle entry, before the new one is filled; disk stays within the cap', async () => {
    const { cache, dir, warnings } = newCache();
    const d = downloads();
    const { a, b, c, d: dIn } = inputs as Record<string, CommittedArtifact>;
    const use = async (x: CommittedArtifact, before?: () => Promise<void>) => (await acquire(cache, x, d.fill(x, before))).release();

    await use(a!);
    await use(b!);
    // a is used again (a verification of what is on disk, no download): b is now the least recently used.
    await use(a!);
    expect(d.files.get(a!.manifestSha256)).toBe(3);
    expect(d.fills.get(a!.manifestSha256)).toBe(2);
    expect(cache.list().map((e) => e.key)).toEqual([b!.manifestSha256, a!.manifestSha256]);

    // c does not fit next to both: b goes, and it is off the disk before c's download starts.
    let diskBeforeFill = -1;
    await use(c!, async () => {
      diskBeforeFill = await diskBytes(dir);
    });
    expect(diskBeforeFill).toBe(INPUT_BYTES);
    expect(await entryDirs(dir)).toEqual([a!.manifestSha256, c!.manifestSha256].sort());
    // Then a (released before c was acquired) goes for d.
    await use(dIn!);
    expect(await entryDirs(dir)).toEqual([c!.manifestSha256, dIn!.manifestSha256].sort());
    expect(cache.list().map((e) => e.key)).toEqual([c!.manifestSha256, dIn!.manifestSha256]);
    expect(await diskBytes(dir)).toBeLessThanOrEqual(CAP);
    expect(cache.totalBytes).toBe(2 * INPUT_BYTES);
    // b, evicted, is downloaded again when used again (and c, the least recently used, makes room).
    await use(b!);
    expect(d.files.get(b!.manifestSha256)).toBe(6);
    expect(await entryDirs(dir)).toEqual([b!.manifestSha256, dIn!.manifestSha256].sort());
    expect(warnings).toEqual([]);
  });

  it('never evicts an entry a running job holds while others are filled at the same time', async () => {
    const { cache, dir, warnings } = newCache();
    const d = downloads();
    const { a, b, c, d: dIn, e } = inputs as Record<string, CommittedArtifact>;
    const held = await acquire(cache, a!, d.fill(a!));
    // The "job": reads (and checks) every file of its input over and over while the others come and go.
    let reading = true;
    let reads = 0;
    const job = (async () => {
      while (reading) {
        expect(await intact(a!, held.dir)).toBe(true);
        reads++;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    // Eight attempts at once over four other inputs (each twice): a fill, a read, a release each;
    // all of them hold their input at the same time before the first releases.
    const others = [b!, c!, dIn!, e!, b!, c!, dIn!, e!];
    let holding = 0;
    let allHolding!: () => void;
    const allHeld = new Promise<void>((resolve) => (allHolding = resolve));
    let diskMax = 0;
    await Promise.all(
      others.map(async (x, i) => {
        const lease = await acquire(cache, x, d.fill(x));
        expect(existsSync(held.dir)).toBe(true);
        expect(await intact(x, lease.dir)).toBe(true);
        if (++holding === others.length) allHolding();
        await allHeld;
        diskMax = Math.max(diskMax, await diskBytes(dir));
        await new Promise((r) => setTimeout(r, i * 5));
        await lease.release();
        expect(existsSync(held.dir)).toBe(true);
      }),
    );
    reading = false;
    await job;
    expect(reads).toBeGreaterThan(3);
    expect(d.maxInFlight()).toBeGreaterThan(1);
    // The held entry was never filled again nor removed, and it is still whole.
    expect(d.fills.get(a!.manifestSha256)).toBe(1);
    expect(await intact(a!, held.dir)).toBe(true);
    // One fill per input (the two attempts of each shared theirs), four at a time.
    for (const x of [b!, c!, dIn!, e!]) expect(d.fills.get(x.manifestSha256)).toBe(1);
    // Five inputs at once cannot fit a cap of two: exceeded while held, and said so.
    expect(diskMax).toBe(5 * INPUT_BYTES);
    expect(warnings.some((w) => /over its cap/.test(w))).toBe(true);
    // Once the others are released, the cache is back within the cap, the held entry in it.
    expect(await diskBytes(dir)).toBeLessThanOrEqual(CAP);
    expect(cache.totalBytes).toBeLessThanOrEqual(CAP);
    expect(await entryDirs(dir)).toContain(a!.manifestSha256);
    expect(cache.list().find((x) => x.key === a!.manifestSha256)).toMatchObject({ refs: 1, complete: true });
    await held.release();
    await held.release(); // idempotent
    expect(cache.list().find((x) => x.key === a!.manifestSha256)?.refs).toBe(0);
    expect(await diskBytes(dir)).toBeLessThanOrEqual(CAP);
  });

  it('two acquires of one input at once download it once and share its directory', async () => {
    const { cache, dir } = newCache();
    const a = inputs.a!;
    const counting = testStore();
    const gets = vi.spyOn(counting, 'getFile');
    let fills = 0;
    const fill = async (target: string) => {
      fills++;
      await downloadCommitted(counting, a, target);
    };
    const [x, y] = await Promise.all([acquire(cache, a, fill), acquire(cache, a, fill)]);
    expect(fills).toBe(1);
    expect(gets).toHaveBeenCalledTimes(a.manifest.files.length);
    expect(x.dir).toBe(y.dir);
    expect(await intact(a, x.dir)).toBe(true);
    expect(cache.list()).toEqual([{ key: a.manifestSha256, bytes: INPUT_BYTES, refs: 2, complete: true, filling: false }]);
    // While one still holds it, a third acquire is a plain hit: no fill, no verification.
    const z = await acquire(cache, a, fill);
    expect(fills).toBe(1);
    await Promise.all([x.release(), y.release(), z.release()]);
    expect(await entryDirs(dir)).toEqual([a.manifestSha256]);
    expect(gets).toHaveBeenCalledTimes(a.manifest.files.length);
  });

  it('fetchStageInputs holds each input once per use (the same input twice too) and releases them all', async () => {
    const { cache, dir } = newCache();
    const ref = (x: CommittedArtifact): ArtifactRef => ({ prefix: x.prefix, uri: x.uri, manifestSha256: x.manifestSha256 });
    const local = await fetchStageInputs(store, { inputs: { model: ref(inputs.a!), base: ref(inputs.a!) }, datasets: {} }, cache);
    expect(local.inputs.model).toBe(path.join(dir, inputs.a!.manifestSha256));
    expect(local.inputs.base).toBe(local.inputs.model);
    expect(cache.list()[0]!.refs).toBe(2);
    await local.release();
    await local.release();
    expect(cache.list()[0]!.refs).toBe(0);
    // A missing input fails the fetch and leaves nothing held.
    const missing = { prefix: `${uniq()}/nope`, uri: 's3://x', manifestSha256: 'f'.repeat(64) };
    await expect(fetchStageInputs(store, { inputs: { model: ref(inputs.b!), base: missing }, datasets: {} }, cache)).rejects.toThrow(/missing or changed/);
    expect(cache.list().every((e) => e.refs === 0)).toBe(true);
  });

  it('allows an entry bigger than the cap while in use, and evicts it once released', async () => {
    const { cache, dir, warnings } = newCache();
    const d = downloads();
    const { a, big } = inputs as Record<string, CommittedArtifact>;
    await (await acquire(cache, a!, d.fill(a!))).release();
    const lease = await acquire(cache, big!, d.fill(big!));
    // The idle entry made room first; the big one is there, whole, with the cap exceeded and said so.
    expect(await entryDirs(dir)).toEqual([big!.manifestSha256]);
    expect(await intact(big!, lease.dir)).toBe(true);
    expect(warnings.some((w) => /over its cap/.test(w))).toBe(true);
    await lease.release();
    expect(await entryDirs(dir)).toEqual([]);
    expect(cache.totalBytes).toBe(0);
    expect(await diskBytes(dir)).toBe(0);
  });

  it('counts what an earlier process left in its scratch dir, removes an incomplete entry, and applies a smaller cap', async () => {
    const first = newCache();
    const d = downloads();
    const { a, b, c } = inputs as Record<string, CommittedArtifact>;
    await (await acquire(first.cache, a!, d.fill(a!))).release();
    await (await acquire(first.cache, b!, d.fill(b!))).release();
    // A download cut short by a crash: files and a part file, no completion stamp.
    const partial = path.join(first.dir, c!.manifestSha256);
    await mkdir(partial, { recursive: true });
    await writeFile(path.join(partial, 'model.safetensors.part-12345'), randomBytes(MiB));

    const again = newCache(CAP, first.dir);
    await again.cache.open();
    expect(again.cache.list().map((e) => [e.key, e.bytes, e.complete])).toEqual(
      expect.arrayContaining([
        [a!.manifestSha256, INPUT_BYTES, true],
        [b!.manifestSha256, INPUT_BYTES, true],
      ]),
    );
    expect(again.cache.list()).toHaveLength(2);
    expect(existsSync(partial)).toBe(false);
    // Used again: verified against its manifest, nothing downloaded; c needs a's or b's room.
    const before = d.files.get(a!.manifestSha256);
    await (await acquire(again.cache, a!, d.fill(a!))).release();
    expect(d.files.get(a!.manifestSha256)).toBe(before);
    await (await acquire(again.cache, c!, d.fill(c!))).release();
    expect(await entryDirs(first.dir)).toEqual([a!.manifestSha256, c!.manifestSha256].sort());

    // A worker restarted with a smaller cap evicts down to it at once.
    const smaller = newCache(4 * MiB, first.dir);
    await smaller.cache.open();
    expect(smaller.cache.list()).toHaveLength(1);
    expect(await diskBytes(first.dir)).toBeLessThanOrEqual(4 * MiB);
  });
});

describe('input cache in the training activity', () => {
  it('two attempts at once on one worker keep their inputs while a third input is filled; within the cap afterwards', async () => {
    const scratch = path.join(scratchRoot, 'worker');
    await mkdir(scratch, { recursive: true });
    const cacheDir = path.join(scratch, 'cache');
    const training = createTrainingActivities({
      store,
      scratchDir: scratch,
      jobCommand: testJobCommand(),
      jobCwd: path.resolve('jobs'),
      gpus: new GpuAllocator([]),
      inputCacheBytes: CAP,
    });
    const plan = (steps: number) =>
      planPipeline(parseSpec(`name: icache\nbase_model: /b\nstages:\n  - {id: sft, kind: sft, dataset: {path: /d.jsonl, format: chat}, hyper: {max_steps: ${steps}}, job_params: {step_seconds: 0.1}}\n`, '/s.yaml')).stages[0]!;
    const ref = (x: CommittedArtifact): ArtifactRef => ({ prefix: x.prefix, uri: x.uri, manifestSha256: x.manifestSha256 });
    const attempt = (model: CommittedArtifact, steps: number): Promise<StageJobResult> => {
      const input: StageJobInput = { runId: uniq(), storagePrefix: uniq(), stage: plan(steps), cacheKey: uniq(), artifactPrefix: `${uniq()}/art`, inputs: { model: ref(model) }, datasets: {} };
      const env = new MockActivityEnvironment({ attempt: 1 });
      env.on('heartbeat', () => undefined);
      return env.run(training.runStageJob, input);
    };
    const { a, b, c } = inputs as Record<string, CommittedArtifact>;
    const entry = (x: CommittedArtifact) => path.join(cacheDir, x.manifestSha256);
    const started = Date.now();
    let longDone = false;
    const long = Promise.all([attempt(a!, 100), attempt(b!, 100)]).finally(() => (longDone = true));
    await until('both inputs in the cache', async () => existsSync(`${entry(a!)}.complete`) && existsSync(`${entry(b!)}.complete`), 60_000, 50);
    // A third attempt, short, while both run: its input does not fit next to theirs, theirs stay.
    const short = await attempt(c!, 3);
    expect(short.alreadyCommitted).toBe(false);
    expect(longDone).toBe(false);
    expect(await intact(a!, entry(a!))).toBe(true);
    expect(await intact(b!, entry(b!))).toBe(true);
    // Released at the end of the short attempt: the cache is back within the cap (c evicted).
    expect(existsSync(entry(c!))).toBe(false);
    const results = await long;
    expect(Date.now() - started).toBeLessThan(120_000);
    expect(results.map((r) => r.alreadyCommitted)).toEqual([false, false]);
    expect(await diskBytes(cacheDir)).toBeLessThanOrEqual(CAP);
    expect(await entryDirs(cacheDir)).toEqual([a!.manifestSha256, b!.manifestSha256].sort());
  });
});
