/**
 * Bounded memory for the commands that read whole objects: `refinery audit verify` re-hashes a run's
 * artifacts and inputs, and scans its logs for secrets, streaming; `refinery report` streams each
 * attempt's events file and keeps a bounded sample of its progress events. Peak RSS is the kernel's
 * high-water mark of the real CLI process (test/helpers/peak-rss.ts).
 *
 *   - a real run (contract test job) whose base model is a committed artifact holding a 1 GiB file
 *     of random bytes: `audit verify` passes under 400 MiB; with one byte of that object changed
 *     (re-uploaded through a stream) it fails, naming the file as a sha256 mismatch, still under
 *     400 MiB;
 *   - a run whose events file has 300k progress lines, whole and as the parts a running attempt
 *     leaves: the report keeps a bounded sample (first and last exact) under 400 MiB.
 */
import { randomFillSync } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { startRun } from '../../client/commands/run.js';
import { buildReport } from '../../client/commands/report.js';
import { MAX_PROGRESS_EVENTS, readJobEvents, type JobEventLine } from '../../client/run-records.js';
import { commitDirectory, committedFileKey, type CommittedArtifact } from '../../storage/commit.js';
import { layout } from '../../storage/layout.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { REPO_ROOT } from '../../config/paths.js';
import { startTestWorkers, testClient, testJobCommand, testStackEnv, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { runMeasuringPeakRss } from '../helpers/peak-rss.js';
import { writeTestSpec } from '../helpers/specs.js';

const PREFIX = 'it-bounded-mem';
const MiB = 1024 * 1024;
const BIG_BYTES = 1024 * MiB;
const WRITE_CHUNK = 8 * MiB;
const RSS_LIMIT = 400 * MiB;
const BIN = path.join(REPO_ROOT, 'bin', 'refinery');

let store: ObjectStore;
let workers: TestWorkers | undefined;
let client: Client;
let closeClient: (() => Promise<void>) | undefined;
let tmp: string;
let model: CommittedArtifact;
let bigKey: string;
let runId: string;

const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;
const refinery = (args: string[]) => runMeasuringPeakRss(BIN, args, { env: testStackEnv(), cwd: tmp });

/**
 * Changes byte `offset` of the object (xor 0xff) in the bucket: streams it down to a scratch file
 * (store.getFile), changes that byte there and uploads the file again in parts (putFileHashed);
 * memory is a few chunks and parts, never the object.
 */
async function flipByte(key: string, offset: number): Promise<void> {
  const file = path.join(tmp, 'tampered.bin');
  await store.getFile(key, file);
  const fh = await open(file, 'r+');
  try {
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, offset);
    one[0] = one[0]! ^ 0xff;
    await fh.write(one, 0, 1, offset);
  } finally {
    await fh.close();
  }
  await store.putFileHashed(key, file);
  await rm(file, { force: true });
}

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  tmp = await mkdtemp(path.join(tmpdir(), 'refinery-bounded-mem-'));
  const t0 = Date.now();
  // A "model": a config and 1 GiB of random bytes, written 8 MiB at a time (never whole in memory).
  const modelDir = path.join(tmp, 'model');
  await mkdir(modelDir);
  await writeFile(path.join(modelDir, 'config.json'), JSON.stringify({ model_type: 'test', seed: Math.random() }));
  const fh = await open(path.join(modelDir, 'weights.bin'), 'w');
  const buf = Buffer.allocUnsafe(WRITE_CHUNK);
  for (let written = 0; written < BIG_BYTES; written += WRITE_CHUNK) await fh.write(randomFillSync(buf), 0, WRITE_CHUNK);
  await fh.close();
  model = await commitDirectory(store, modelDir, `${PREFIX}/models/big-${Date.now()}`, { kind: 'model' }, { deterministic: true });
  await rm(modelDir, { recursive: true, force: true });
  bigKey = committedFileKey(model, 'weights.bin');
  const tCommitted = Date.now();
  expect(model.manifest.files.find((f) => f.path === 'weights.bin')?.size).toBe(BIG_BYTES);

  // A small real run that names it as its base model (the trail's run-prepared records it).
  workers = await startTestWorkers({ jobCommand: testJobCommand() });
  ({ client, close: closeClient } = await testClient());
  const { file } = await writeTestSpec({
    name: 'bounded-mem',
    base_model: store.uri(model.prefix),
    storage: { prefix: PREFIX },
    stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 2, save_steps: 2 }, job_params: { step_seconds: 0.01 } }],
  });
  const started = await startRun(client, file, { id: `bounded-mem-${Date.now()}`, by: 'auditor' });
  runId = started.runId;
  await started.handle.result();
  // The worker's copy of the base model is not needed any more.
  await workers.shutdown();
  await rm(workers.scratchDir, { recursive: true, force: true });
  workers = undefined;
  console.log(`1 GiB written and committed in ${tCommitted - t0} ms; the run that names it took ${Date.now() - tCommitted} ms`);
}, 300_000);

afterAll(async () => {
  await closeClient?.();
  await workers?.shutdown();
  // 1 GiB is not left in the test bucket.
  if (bigKey) await store.remove([bigKey]);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('refinery audit verify: bounded memory', () => {
  it('re-hashes a 1 GiB input streaming (peak RSS < 400 MiB), and names one changed byte as a sha256 mismatch', async () => {
    const t0 = Date.now();
    const ok = await refinery(['audit', 'verify', runId, '--prefix', PREFIX, '--json']);
    const tOk = Date.now() - t0;
    expect(ok.stderr).toBe('');
    const okResult = JSON.parse(ok.stdout) as { ok: boolean; problems: string[]; checked: { inputs: number; files: number } };
    expect(okResult.problems).toEqual([]);
    expect(ok.exitCode).toBe(0);
    expect(okResult.checked.inputs).toBeGreaterThanOrEqual(2); // the base model and the dataset
    console.log(`audit verify, intact (1 GiB input): peak RSS ${mib(ok.peakRssBytes)}, ${tOk} ms`);
    expect(ok.peakRssBytes).toBeGreaterThan(0);
    expect(ok.peakRssBytes).toBeLessThan(RSS_LIMIT);

    const tFlip = Date.now();
    await flipByte(bigKey, 700 * MiB + 12_345);
    console.log(`one byte changed in the bucket in ${Date.now() - tFlip} ms`);
    const t1 = Date.now();
    const bad = await refinery(['audit', 'verify', runId, '--prefix', PREFIX, '--json']);
    const tBad = Date.now() - t1;
    const badResult = JSON.parse(bad.stdout) as { ok: boolean; problems: string[] };
    expect(bad.exitCode).toBe(1);
    expect(badResult.problems).toEqual([`base model: ${store.uri(bigKey)}: sha256 mismatch`]);
    console.log(`audit verify, one byte changed: peak RSS ${mib(bad.peakRssBytes)}, ${tBad} ms`);
    expect(bad.peakRssBytes).toBeLessThan(RSS_LIMIT);
    // The object is removed after the tests (1 GiB): nothing else reads this run.
  });
});

describe('refinery report: bounded memory for a long events file', () => {
  const STEPS = 300_000;
  const reportRun = `bounded-events-${Date.now()}`;
  const runKey = layout.run(PREFIX, reportRun);
  const at = (step: number) => new Date(Date.UTC(2026, 0, 1) + step * 1000).toISOString();
  const progress = (attempt: number, step: number): JobEventLine => ({ at: at(step), attempt, event: 'progress', step, total_steps: STEPS, loss: 2 / (1 + step / 1000) });

  /** A days-long attempt's events: started, 300k progress lines, a checkpoint every 50k, done (or, killed, a torn last line). */
  function eventsText(attempt: number, killed = false): string {
    const lines = [JSON.stringify({ at: at(0), attempt, event: 'started', total_steps: STEPS, resumed_from_step: null, device: 'cpu' })];
    for (let step = 1; step <= STEPS; step++) {
      lines.push(JSON.stringify(progress(attempt, step)));
      if (step % 50_000 === 0) lines.push(JSON.stringify({ at: at(step), attempt, event: 'checkpoint', step, path: `/x/${step}` }));
    }
    if (killed) return `${lines.join('\n')}\n{"at":"${at(STEPS + 1)}","attempt":${attempt},"event":"progr`;
    lines.push(JSON.stringify({ at: at(STEPS), attempt, event: 'done', metrics: { final_loss: 0.0066 } }));
    return `${lines.join('\n')}\n`;
  }

  beforeAll(async () => {
    const stage = (id: string) => ({ id, kind: 'sft', state: 'completed', attempt: 1, step: STEPS, totalSteps: STEPS, loss: null, metrics: {}, lastCommittedStep: null, resumedFromStep: null });
    await store.putJson(`${runKey}/status.json`, { runId: reportRun, pipeline: 'bounded-events', state: 'completed', stages: [stage('whole'), stage('parts')], finishedAt: at(STEPS) });
    // The whole object (an attempt that ended) …
    await store.putBytes(layout.jobEvents(PREFIX, reportRun, 'whole', 1), eventsText(1));
    // … and a killed attempt's flushed parts, cut mid-line (the parts are a prefix of the file).
    const killed = Buffer.from(eventsText(1, true));
    const key = layout.jobEvents(PREFIX, reportRun, 'parts', 1);
    const cuts = [0, 7_777_777, 19_000_003, killed.length];
    for (let n = 1; n < cuts.length; n++) await store.putBytes(layout.jobLogPart(key, n), killed.subarray(cuts[n - 1], cuts[n]));
  });

  it('keeps a bounded sample of 300k progress lines per attempt, first and last exact, whole or in parts', async () => {
    const events = await readJobEvents(store, runKey);
    for (const stage of ['whole', 'parts']) {
      const lines = events.get(stage)?.get(1) ?? [];
      const prog = lines.filter((l) => l.event === 'progress');
      // Bounded: at most the cap, plus one pinned before each other event.
      expect(prog.length, stage).toBeLessThanOrEqual(MAX_PROGRESS_EVENTS + 8);
      expect(prog.length, stage).toBeGreaterThan(MAX_PROGRESS_EVENTS / 4);
      expect(prog[0], stage).toEqual(progress(1, 1));
      expect(prog.at(-1), stage).toEqual(progress(1, STEPS));
      expect(lines.filter((l) => l.event !== 'progress').map((l) => l.event), stage).toEqual(['started', ...Array(6).fill('checkpoint'), ...(stage === 'whole' ? ['done'] : [])]);
    }
    // Every event, for a caller that needs them.
    const all = await readJobEvents(store, runKey, { maxProgress: Infinity });
    expect(all.get('parts')?.get(1)?.filter((l) => l.event === 'progress')).toHaveLength(STEPS);

    // The report draws from the sample: both attempts' loss curves, the timeline from first to last event.
    const { data, charts } = await buildReport({ runId: reportRun, prefix: PREFIX, store });
    expect(charts).toBeGreaterThanOrEqual(2);
    const whole = data.stages.find((s) => s.id === 'whole')!;
    expect(whole.attempts[0]).toMatchObject({ attempt: 1, outcome: 'ok', start: Date.parse(at(0)), end: Date.parse(at(STEPS)) });

    // The real CLI: peak RSS does not grow with the events file (~40 MB of lines, twice).
    const out = path.join(tmp, 'report.html');
    const t0 = Date.now();
    const r = await refinery(['report', reportRun, '--prefix', PREFIX, '--out', out]);
    console.log(`report, 2 × 300k progress lines: peak RSS ${mib(r.peakRssBytes)}, ${Date.now() - t0} ms`);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    expect(r.peakRssBytes).toBeLessThan(RSS_LIMIT);
    expect(await readFile(out, 'utf8')).toContain('whole — loss');
  });
});
