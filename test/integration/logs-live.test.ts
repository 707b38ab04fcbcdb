/**
 * End to end: job logs and events flushed to the bucket while the job runs
 * (activities/log-shipper.ts inside activities/run-stage-job.ts, default flush interval 10 s).
 * Written against the intended behaviour before the shipper was wired into the activity: it
 * fails on an activity that uploads the logs only when the attempt ends.
 *
 * On the real stack, with the contract test job (jobs/refinery_jobs/testjob.py) training for
 * ~30 s in a training worker that is its own OS process:
 *   - while it trains, readJobLog() of its events key shows progress events at most 15 s old,
 *     and `refinery logs --follow --events` prints them at most ~15 s after they happened;
 *   - after SIGKILL of the worker mid-run, the parts it flushed stay readable (no whole object
 *     for that attempt, ever), another worker finishes the stage, and the report's curve for the
 *     killed attempt has exactly the points up to its last flush;
 *   - `logs --follow` ends once the run is closed (after the grace for the killed attempt, which
 *     never gets a whole object).
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { streamLogs, type LogChunk } from '../../client/commands/logs.js';
import { buildReport, parseJobEventLines } from '../../client/commands/report.js';
import { startRun } from '../../client/commands/run.js';
import { listJobLogParts, readJobLog } from '../../storage/job-logs.js';
import { layout } from '../../storage/layout.js';
import { startTestWorkers, testClient, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { killSpawnedWorkers, spawnTrainingWorker, until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

/** The activity's default flush interval (activities/log-shipper.ts DEFAULT_LOG_FLUSH_MS). */
const FLUSH_MS = 10_000;
/** How far behind the bucket may be: the interval, one size check, the upload. */
const MAX_LAG_MS = 15_000;

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

const progressSteps = (lines: { event: string; step?: number }[]) => lines.filter((l) => l.event === 'progress' && typeof l.step === 'number').map((l) => l.step!);

describe('live job logs', () => {
  it("a running stage's events are in the bucket within 15 s, and a worker killed with SIGKILL leaves them readable", async () => {
    const store = testStore();
    const queue = `gpu-logs-live-${Date.now()}`;
    const prefix = `it-logs-live-${Date.now()}`;
    const { file } = await writeTestSpec({
      name: 'logs-live-test',
      storage: { prefix },
      stages: [
        {
          id: 'sft',
          kind: 'sft',
          dataset: 'chats',
          // ~30 s of training: the kill comes at ~25 s (two flush intervals and then some), the
          // second worker finishes the rest.
          hyper: { max_steps: 300, save_steps: 20 },
          job_params: { step_seconds: 0.1 },
          resources: { task_queue: queue },
          timeouts: { heartbeat: '3s' },
          retry: { initial_interval: '1s' },
        },
      ],
    });
    const a = await spawnTrainingWorker(queue);
    const { scratch } = a;
    const { runId, handle } = await startRun(client, file, { id: `logs-live-${Date.now()}` });
    const eventsKey = layout.jobEvents(prefix, runId, 'sft', 1);

    // `refinery logs --follow --events` from the start, noting when each piece arrived.
    const chunks: (LogChunk & { arrived: number })[] = [];
    const stopFollowing = new AbortController();
    const following = streamLogs({ runId, prefix, store, events: true, follow: true, closeGraceMs: 3000, signal: stopFollowing.signal, onChunk: (c) => chunks.push({ ...c, arrived: Date.now() }) });

    // The worker's own events file (what the job has said so far), to compare the bucket with.
    const localEvents = await until('the job to start', async () => {
      // <scratch>/stages/<cache key>/<attempt folder>/job.attempt-1.events.jsonl
      const stages = path.join(scratch, 'stages');
      const found = (await readdir(stages, { recursive: true })).find((f) => path.basename(f) === 'job.attempt-1.events.jsonl');
      const f = found && path.join(stages, found);
      return f && parseJobEventLines(await readFile(f, 'utf8')).some((l) => l.event === 'started') ? f : undefined;
    }, 120_000, 250);
    const startedAt = Date.now();

    // While it trains (from 15 s in, when the first flushes must have happened): fresh events in the bucket.
    await new Promise((r) => setTimeout(r, 15_000));
    const lags: number[] = [];
    while (Date.now() - startedAt < 25_000) {
      const bytes = await readJobLog(store, eventsKey);
      expect(bytes, 'events of the running attempt in the bucket').toBeDefined();
      const newest = parseJobEventLines(bytes!.toString('utf8')).filter((l) => l.event === 'progress').at(-1);
      expect(newest).toBeDefined();
      lags.push(Date.now() - Date.parse(newest!.at));
      await new Promise((r) => setTimeout(r, 2000));
    }
    expect(lags.length).toBeGreaterThanOrEqual(3);
    expect(Math.max(...lags)).toBeLessThanOrEqual(MAX_LAG_MS);
    // Still running: only parts so far.
    expect(await store.exists(eventsKey)).toBe(false);

    // SIGKILL: no finish(), no whole object; the flushed parts are all that is left of attempt 1.
    const killedAt = Date.now();
    a.signal('SIGKILL');
    await a.exited;
    const afterKill = (await readJobLog(store, eventsKey))!;
    expect(afterKill).toBeDefined();
    const local = await readFile(localEvents, 'utf8');
    // The bucket holds a prefix of what the job said, in whole lines.
    expect(local.startsWith(afterKill.toString('utf8'))).toBe(true);
    expect(afterKill.toString('utf8').endsWith('\n')).toBe(true);
    const shippedSteps = progressSteps(parseJobEventLines(afterKill.toString('utf8')));
    const lastShipped = Math.max(...shippedSteps);
    const lastLocal = Math.max(...progressSteps(parseJobEventLines(local)));
    expect(lastLocal).toBeGreaterThanOrEqual(200);
    // Lost at most one flush interval (plus a size check and the upload) of 10 steps/s.
    expect(lastShipped).toBeGreaterThanOrEqual(lastLocal - ((FLUSH_MS + 3000) / 1000) * 10);
    expect(shippedSteps).toEqual(Array.from({ length: lastShipped }, (_, i) => i + 1));
    expect((await listJobLogParts(store, eventsKey)).length).toBeGreaterThanOrEqual(2);

    // Another worker finishes the stage from the last committed checkpoint.
    await spawnTrainingWorker(queue);
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    expect(result.status.stages[0]!.attempt).toBeGreaterThanOrEqual(2);
    // Attempt 1 never got its whole object; its parts are unchanged.
    expect(await store.exists(eventsKey)).toBe(false);
    expect(await readJobLog(store, eventsKey)).toEqual(afterKill);
    const lastAttempt = result.status.stages[0]!.attempt;
    expect(await store.exists(layout.jobEvents(prefix, runId, 'sft', lastAttempt))).toBe(true);

    // The report draws the killed attempt's curve up to its last flush.
    const { data, charts } = await buildReport({ runId, prefix, store });
    const sft = data.stages.find((s) => s.id === 'sft')!;
    expect(progressSteps(sft.events.get(1) ?? [])).toEqual(shippedSteps);
    expect(Math.max(...progressSteps(sft.events.get(lastAttempt) ?? []))).toBe(300);
    expect(charts).toBeGreaterThanOrEqual(1);

    // `logs --follow` printed attempt 1 while it ran, at most ~15 s behind, and ended after the run closed.
    const followed = await Promise.race([following, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('logs --follow did not end')), 60_000))]).finally(() => stopFollowing.abort());
    expect(followed.finished).toBe(true);
    const fileOf = (n: number) => followed.files.find((f) => f.stage === 'sft' && f.attempt === n);
    expect(fileOf(1)?.complete).toBe(false);
    expect(fileOf(lastAttempt)?.complete).toBe(true);
    const liveChunks = chunks.filter((c) => c.attempt === 1 && c.arrived < killedAt && c.text.length > 0);
    expect(liveChunks.length).toBeGreaterThanOrEqual(2);
    for (const c of liveChunks) {
      for (const l of parseJobEventLines(c.text)) expect(c.arrived - Date.parse(l.at)).toBeLessThanOrEqual(MAX_LAG_MS + 2000);
    }
    expect(chunks.filter((c) => c.attempt === 1).map((c) => c.text).join('')).toBe(afterKill.toString('utf8'));
  });
});
