/**
 * A run's Temporal history grows with stages, attempts and gate decisions, never with training
 * time or steps (invariant 9), on the real stack with the contract test job:
 *   - the same stage (same steps and checkpoints) trained 10× longer in wall time leaves the same
 *     history, and its live progress reaches `status` within a bounded lag at the default timeouts;
 *   - a stage of 100,000 progress events and 500 checkpoints ends with a run history under 1,000 events;
 *   - a worker killed with SIGKILL: `audit verify` still lists every checkpoint that attempt committed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { verifyRun } from '../../client/commands/audit.js';
import { runStatus } from '../../client/commands/manage.js';
import { startRun } from '../../client/commands/run.js';
import { readJobLog } from '../../storage/job-logs.js';
import { layout } from '../../storage/layout.js';
import type { PipelineResult } from '../../workflows/types.js';
import { startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { killSpawnedWorkers, spawnTrainingWorker, until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

let workers: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;

beforeAll(async () => {
  useTestStackEnv();
  workers = await startTestWorkers({ jobCommand: testJobCommand() });
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  killSpawnedWorkers();
  await closeClient?.();
  await workers?.shutdown();
});

/**
 * Workflow-task bookkeeping (a task that timed out on a busy machine, a sticky queue that expired)
 * varies with load, not with training time, so it is counted apart from the run's own events.
 */
const WORKFLOW_TASK_EVENT = /^EVENT_TYPE_WORKFLOW_TASK_/;

/** Events in the run's history and in each of its stage workflows' histories. */
async function historyLength(runId: string, stageIds: string[]): Promise<{ total: number; run: number; byWorkflow: Record<string, number>; byType: Record<string, number> }> {
  const byWorkflow: Record<string, number> = {};
  const byType: Record<string, number> = {};
  let run = 0;
  for (const id of [runId, ...stageIds.map((s) => `${runId}--${s}`)]) {
    const events = (await client.workflow.getHandle(id).fetchHistory()).events ?? [];
    byWorkflow[id] = events.length;
    for (const e of events) {
      const type = String(temporal.api.enums.v1.EventType[e.eventType ?? 0]);
      byType[type] = (byType[type] ?? 0) + 1;
      if (!WORKFLOW_TASK_EVENT.test(type)) run++;
    }
  }
  return { total: Object.values(byWorkflow).reduce((a, b) => a + b, 0), run, byWorkflow, byType };
}

const stage = (name: string, params: Record<string, unknown>, hyper: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
  name,
  storage: { prefix: `it-hist-${name}` },
  stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper, job_params: params, ...extra }],
});

describe('history does not grow with training time', () => {
  it('the same stage trained 10× longer leaves the same history; status follows it within the throttle at default timeouts', async () => {
    const hyper = { max_steps: 24, save_steps: 6 };
    const short = await writeTestSpec(stage('hist-short', { step_seconds: 0.1 }, hyper));
    const long = await writeTestSpec(stage('hist-long', { step_seconds: 1.0 }, hyper));
    const a = await startRun(client, short.file, { id: `hist-short-${Date.now()}` });
    await a.handle.result();
    const b = await startRun(client, long.file, { id: `hist-long-${Date.now()}` });

    // Progress lag at the default heartbeat timeout (60 s): poll status as a person's --watch would.
    const seen: { at: number; step: number; took: number }[] = [];
    const result = b.handle.result();
    let done = false;
    void result.finally(() => (done = true));
    while (!done) {
      const asked = Date.now();
      const s = await runStatus(client, b.runId).catch(() => undefined);
      if (s?.stages[0]?.state === 'running') seen.push({ at: Date.now(), step: s.stages[0].step, took: Date.now() - asked });
      await new Promise((r) => setTimeout(r, 500));
    }
    await result;
    const events = (await readJobLog(testStore(), layout.jobEvents(`it-hist-hist-long`, b.runId, 'sft', 1)))!
      .toString('utf8').trim().split('\n').map((l) => JSON.parse(l) as { at: string; event: string; step?: number })
      .filter((e) => e.event === 'progress');
    const emittedAt = new Map(events.map((e) => [e.step!, Date.parse(e.at)]));
    // How stale each look was: time since the first step after the one shown was emitted.
    const lags = seen.map(({ at, step }) => {
      const next = emittedAt.get(step + 1);
      return next !== undefined && next < at ? at - next : 0;
    });
    const maxLagMs = Math.max(...lags);
    console.log(`[history-bound] progress lag at default timeouts: max ${(maxLagMs / 1000).toFixed(1)} s over ${seen.length} looks`);
    expect(seen.length).toBeGreaterThan(20);
    const timeline = seen.map((x, i) => `${((x.at - seen[0]!.at) / 1000).toFixed(1)}s:step ${x.step} lag ${(lags[i]! / 1000).toFixed(1)}s took ${x.took}ms`).join(', ');
    expect(maxLagMs, `looks at status: ${timeline}`).toBeLessThanOrEqual(10_000);

    const hShort = await historyLength(a.runId, ['sft']);
    const hLong = await historyLength(b.runId, ['sft']);
    console.log(`[history-bound] 2.4 s of training: ${hShort.total} events (${hShort.run} without workflow-task bookkeeping); 24 s: ${hLong.total} (${hLong.run})`, hShort.byWorkflow, hLong.byWorkflow);
    const byType = `2.4 s: ${JSON.stringify(hShort.byType)}; 24 s: ${JSON.stringify(hLong.byType)}`;
    // The run's own events are the same; workflow tasks may time out and be retried under load
    // (2-3 events each), which is bounded by the number of tasks, not by training time.
    expect(Math.abs(hLong.run - hShort.run), byType).toBeLessThanOrEqual(2);
    expect(hLong.total - hShort.total, byType).toBeLessThanOrEqual(30);
  });

  it('100,000 progress events and 500 checkpoints (saved faster than they upload: newer ones supersede queued ones): the run history stays under 1,000 events', async () => {
    const { file } = await writeTestSpec(stage('hist-big', { step_seconds: 0 }, { max_steps: 100_000, save_steps: 200, save_total_limit: 2 }, { timeouts: { stall: '10m' } }));
    const { runId, handle } = await startRun(client, file, { id: `hist-big-${Date.now()}` });
    const result: PipelineResult = await handle.result();
    expect(result.status.state).toBe('completed');
    const st = result.status.stages[0]!;
    expect(st.step).toBe(100_000);
    // The job saves far faster than the bucket takes them: a newer checkpoint supersedes the one
    // waiting in the upload queue. Every one of the 500 is accounted for, the last one committed.
    const a0 = st.attempts![0]!;
    expect(a0.checkpoints + (a0.supersededCheckpoints ?? 0)).toBe(500);
    expect(a0.lastCheckpointStep).toBe(100_000);
    const h = await historyLength(runId, ['sft']);
    console.log(`[history-bound] 100,000 steps, 500 checkpoints: ${h.total} events`, h.byWorkflow);
    expect(h.total).toBeLessThan(1000);
    // The checkpoints are in the attempt's records, anchored in the trail, and verify.
    const v = await verifyRun({ runId, prefix: 'it-hist-hist-big', store: testStore() });
    expect(v.problems).toEqual([]);
    expect(v.attempts).toHaveLength(1);
    expect(v.attempts[0]!.checkpoints).toHaveLength(a0.checkpoints);
    expect(v.attempts[0]!.supersededCheckpoints).toHaveLength(a0.supersededCheckpoints ?? 0);
    expect([...v.attempts[0]!.checkpoints, ...v.attempts[0]!.supersededCheckpoints].sort((x, y) => x - y)).toEqual(Array.from({ length: 500 }, (_, i) => (i + 1) * 200));
    expect(v.attempts[0]!.checkpoints.at(-1)).toBe(100_000);
  });
});

describe('a worker killed with SIGKILL', () => {
  it('audit verify lists every checkpoint the killed attempt committed', async () => {
    const queue = `hist-kill-${Date.now()}`;
    const { file } = await writeTestSpec({
      ...stage('hist-kill', { step_seconds: 0.2 }, { max_steps: 40, save_steps: 4 }, { resources: { task_queue: queue }, timeouts: { heartbeat: '3s' }, retry: { maximum_attempts: 3, initial_interval: '1s' } }),
    });
    const first = await spawnTrainingWorker(queue);
    const { runId, handle } = await startRun(client, file, { id: `hist-kill-${Date.now()}` });
    await until('two committed checkpoints', async () => ((await runStatus(client, runId)).stages[0]!.lastCommittedStep ?? 0) >= 8, 60_000);
    first.signal('SIGKILL');
    await spawnTrainingWorker(queue);
    const result: PipelineResult = await handle.result();
    expect(result.status.state).toBe('completed');

    const v = await verifyRun({ runId, prefix: 'it-hist-hist-kill', store: testStore() });
    expect(v.problems).toEqual([]);
    const killed = v.attempts.find((a) => a.attempt === 1)!;
    expect(killed.outcome).toBe('lost');
    expect(killed.checkpoints.length).toBeGreaterThanOrEqual(2);
    expect(killed.checkpoints.slice(0, 2)).toEqual([4, 8]);
    const retry = v.attempts.find((a) => a.attempt === 2)!;
    expect(retry.outcome).toBe('completed');
    // The retry resumed from the newest checkpoint the killed attempt committed.
    expect(result.status.stages[0]!.attempts!.find((a) => a.attempt === 2)!.resumedFromStep).toBe(killed.checkpoints.at(-1));
    expect(result.status.stages[0]!.attempts!.map((a) => a.outcome)).toEqual(['lost', 'completed']);
  });
});
