/**
 * Nightly retraining on the real stack (dev server schedules, MinIO, contract test job): a schedule
 * fires a run that trains; the next fire on the same data ends 'unchanged' without running a
 * stage; a newer object under the s3:// dataset prefix makes the next run train again and records
 * the new key and sha256; pause, unpause, trigger and delete; the SKIP overlap policy holds; a
 * nightly cron is fired through a backfill of last night. (The time-skipping test server does not
 * implement schedules: CreateSchedule is UNIMPLEMENTED there.)
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { createSchedule, deleteSchedule, describeSchedule, listSchedules, pauseSchedule, triggerSchedule, unpauseSchedule } from '../../client/commands/schedule.js';
import { runStatus } from '../../client/commands/manage.js';
import { verifyRun } from '../../client/commands/audit.js';
import type { AuditRecord } from '../../storage/audit-chain.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { REPO_ROOT } from '../../config/paths.js';
import type { pipelineWorkflow } from '../../workflows/pipeline.js';
import { SEARCH_ATTRIBUTES } from '../../workflows/search-attributes.js';
import type { LastSuccess, PipelineStatus } from '../../workflows/types.js';
import { stack, startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { writeTestSpec } from '../helpers/specs.js';

let workers: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
let store: ObjectStore;
const created: string[] = [];
const uniq = Date.now().toString(36);
const stateKey = defineSearchAttributeKey(SEARCH_ATTRIBUTES.state, SearchAttributeType.KEYWORD);

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  workers = await startTestWorkers({ jobCommand: testJobCommand() });
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  // Other test files share this server: leave no schedule firing behind.
  for (const id of created) await client?.schedule.getHandle(id).delete().catch(() => undefined);
  await closeClient?.();
  await workers?.shutdown();
});

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The first run the schedule started that is not in `seen`. */
async function nextRun(scheduleId: string, seen: Set<string>, timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const d = await client.schedule.getHandle(scheduleId).describe();
    const fresh = d.info.recentActions.map((a) => a.action.workflow.workflowId).find((id) => !seen.has(id));
    if (fresh) {
      seen.add(fresh);
      return fresh;
    }
    if (Date.now() > deadline) throw new Error(`schedule ${scheduleId} started no new run within ${timeoutMs} ms`);
    await sleep(100);
  }
}

const result = (runId: string) => client.workflow.getHandle<typeof pipelineWorkflow>(runId).result();

async function auditEvents(prefix: string, runId: string): Promise<AuditRecord['event'][]> {
  const keys = (await store.list(`${prefix}/runs/${runId}/audit/`)).map((o) => o.key).sort();
  return Promise.all(keys.map(async (k) => (await store.getJson<AuditRecord>(k))!.event));
}

interface RunManifest {
  scheduleId: string | null;
  requestedBy: string;
  fingerprint: string;
  datasets: Record<string, { path: string; source: string; sourceKey?: string; sha256: string }>;
}

describe('scheduled runs on the real stack', () => {
  it('fires a run that trains, then ends "unchanged" on the same data, then trains on a newer object', async () => {
    const prefix = 'it-sched';
    const dataPrefix = `it-sched-data/${uniq}/chats/`;
    const day1 = await readFile(path.join(REPO_ROOT, 'demo', 'data', 'sft.jsonl'));
    const day2 = Buffer.from(day1.toString('utf8').trimEnd().split('\n').slice(0, -7).join('\n') + '\n');
    await store.putBytes(`${dataPrefix}day-1.jsonl`, day1);
    const pipeline = `sched-${uniq}`;
    const { file } = await writeTestSpec({
      name: pipeline,
      storage: { prefix },
      datasets: { chats: { path: `s3://${stack().bucket}/${dataPrefix}`, format: 'chat' } },
      stages: [
        { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 4, save_steps: 2 }, job_params: { step_seconds: 0.02 } },
        { id: 'merge', kind: 'merge', from: 'sft' },
      ],
    });

    const id = `nightly-${uniq}`;
    created.push(id);
    const made = await createSchedule(client, file, { id, every: '2s', by: 'scheduler-test' });
    expect(made).toMatchObject({ scheduleId: id, pipeline, when: 'every 2s', paused: false, overlap: 'skip', createdBy: 'scheduler-test' });
    await expect(createSchedule(client, file, { id, every: '2s' })).rejects.toThrow(`schedule "${id}" already exists`);

    // 1. The interval fires: the run takes its id from the workflow id and trains.
    const seen = new Set<string>();
    const run1 = await nextRun(id, seen);
    await pauseSchedule(client, id, 'test: one run at a time');
    expect(run1).toMatch(new RegExp(`^${id}-\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$`));
    const r1 = await result(run1);
    expect(r1.status.runId).toBe(run1);
    expect(r1.status.state).toBe('completed');
    expect(r1.status.stages.map((s) => s.state)).toEqual(['completed', 'completed']);
    const m1 = (await store.getJson<RunManifest>(`${prefix}/runs/${run1}/run.json`))!;
    expect(m1).toMatchObject({ scheduleId: id, requestedBy: 'scheduler-test' });
    // The run's fingerprint: its inputs' (run.json), then the toolchain each stage is keyed with.
    expect(r1.status.fingerprint).toMatch(new RegExp(`^${m1.fingerprint}\\+merge=tc-[0-9a-f]{20},sft=tc-[0-9a-f]{20}$`));
    expect(m1.datasets.chats).toMatchObject({ path: `s3://${stack().bucket}/${dataPrefix}`, sourceKey: `${dataPrefix}day-1.jsonl`, source: `s3://${stack().bucket}/${dataPrefix}day-1.jsonl`, sourceSha256: sha256(day1) }); // sha256: of the canonical rows committed
    const prepared1 = (await auditEvents(prefix, run1)).find((e) => e.type === 'run-prepared')!;
    expect(prepared1.datasets).toMatchObject({ chats: { sourceKey: `${dataPrefix}day-1.jsonl`, sourceSha256: sha256(day1) } });
    expect(await store.getJson<LastSuccess>(`${prefix}/pipelines/${pipeline}/last-success.json`)).toMatchObject({ runId: run1, fingerprint: r1.status.fingerprint });

    // 2. Unpaused, the next fire finds the same inputs: 'unchanged', no stage job runs.
    await unpauseSchedule(client, id);
    const run2 = await nextRun(id, seen);
    await pauseSchedule(client, id, 'test: checking the unchanged run');
    const r2 = await result(run2);
    expect(r2.status.state).toBe('unchanged');
    expect(r2.status.unchangedSince).toBe(run1);
    expect(r2.status.stages.map((s) => [s.state, s.note])).toEqual([
      ['skipped', `not run: inputs unchanged since run ${run1}`],
      ['skipped', `not run: inputs unchanged since run ${run1}`],
    ]);
    const history = await client.workflow.getHandle(run2).fetchHistory();
    expect(history.events!.filter((e) => e.startChildWorkflowExecutionInitiatedEventAttributes)).toEqual([]);
    expect((await client.workflow.getHandle(run2).describe()).typedSearchAttributes.get(stateKey)).toBe('unchanged');
    const events2 = await auditEvents(prefix, run2);
    expect(events2.map((e) => e.type)).toEqual(['run-started', 'run-prepared', 'toolchains', 'run-cost', 'run-unchanged', 'run-finished']);
    expect(events2[3]).toMatchObject({ total: { attempts: 0, attemptSeconds: 0, gpuSeconds: 0 } });
    expect(events2[4]).toMatchObject({ previousRunId: run1, fingerprint: r1.status.fingerprint });
    expect(events2[5]).toMatchObject({ state: 'unchanged' });
    expect((await store.getJson<PipelineStatus>(`${prefix}/runs/${run2}/status.json`))?.state).toBe('unchanged');
    expect((await store.getJson<LastSuccess>(`${prefix}/pipelines/${pipeline}/last-success.json`))?.runId).toBe(run1);
    for (const runId of [run1, run2]) expect((await verifyRun({ runId, prefix })).problems).toEqual([]);

    // 3. A newer object under the prefix: a run triggered now (schedule still paused) trains on it.
    await sleep(1100); // a later LastModified than day-1 (and a greater key in case of a tie)
    await store.putBytes(`${dataPrefix}day-2.jsonl`, day2);
    const t = await triggerSchedule(client, id);
    expect(t.outcome).toBe('started');
    const run3 = t.runId!;
    seen.add(run3);
    const r3 = await result(run3);
    expect(r3.status.state).toBe('completed');
    expect(r3.status.stages.map((s) => s.state)).toEqual(['completed', 'completed']);
    expect(r3.status.fingerprint).not.toBe(r1.status.fingerprint);
    const m3 = (await store.getJson<RunManifest>(`${prefix}/runs/${run3}/run.json`))!;
    expect(m3.datasets.chats).toMatchObject({ sourceKey: `${dataPrefix}day-2.jsonl`, sourceSha256: sha256(day2) });
    const prepared3 = (await auditEvents(prefix, run3)).find((e) => e.type === 'run-prepared')!;
    expect(prepared3.datasets).toMatchObject({ chats: { sourceKey: `${dataPrefix}day-2.jsonl`, sourceSha256: sha256(day2) } });
    expect((await store.getJson<LastSuccess>(`${prefix}/pipelines/${pipeline}/last-success.json`))?.runId).toBe(run3);

    // 4. describe shows the history with each run's state; list finds it; delete removes it.
    const d = await describeSchedule(client, id);
    expect(d.paused).toBe(true);
    expect(d.note).toBe('test: checking the unchanged run');
    expect(d.actionsTaken).toBe(3);
    expect(d.recentRuns.map((r) => [r.runId, r.state])).toEqual([[run1, 'completed'], [run2, 'unchanged'], [run3, 'completed']]);
    for (let i = 0; !(await listSchedules(client)).some((s) => s.scheduleId === id); i++) {
      if (i > 50) throw new Error('schedule never listed');
      await sleep(200);
    }
    expect(await deleteSchedule(client, id)).toEqual({ scheduleId: id, deleted: true, runningRuns: [] });
    await expect(describeSchedule(client, id)).rejects.toThrow(`no schedule "${id}"`);
    await expect(triggerSchedule(client, id)).rejects.toThrow(`no schedule "${id}"`);
  });

  it('a nightly cron in a time zone; its run fired by a backfill of last night; SKIP holds while it runs', async () => {
    const { file } = await writeTestSpec({
      name: `overlap-${uniq}`,
      storage: { prefix: 'it-sched' },
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 400 }, job_params: { step_seconds: 0.1 }, timeouts: { heartbeat: '2s' } }],
    });
    const id = `overlap-${uniq}`;
    created.push(id);
    const tz = 'America/New_York';
    const made = await createSchedule(client, file, { id, cron: '0 2 * * *', timezone: tz, overlap: 'skip' });
    const wallClock = (iso: string) => new Intl.DateTimeFormat('en-GB', { timeZone: tz, hour: '2-digit', minute: '2-digit', hour12: false }).format(new Date(iso));
    expect(made.nextRuns.length).toBeGreaterThan(0);
    for (const next of made.nextRuns) expect(wallClock(next)).toBe('02:00');

    // Last night's 02:00 (whatever the DST offset): the only 02:00 between 25 h and 23 h before the next one.
    const next = new Date(made.nextRuns[0]!).getTime();
    await client.schedule.getHandle(id).backfill([{ start: new Date(next - 25 * 3600_000 - 60_000), end: new Date(next - 23 * 3600_000 + 60_000), overlap: ScheduleOverlapPolicy.SKIP }]);
    const runA = await nextRun(id, new Set());
    expect(wallClock(runA.slice(id.length + 1))).toBe('02:00');
    for (let i = 0; (await runStatus(client, runA)).stages[0]!.state !== 'running'; i++) {
      if (i > 100) throw new Error('the stage never started');
      await sleep(100);
    }

    // A trigger while that run goes on is skipped: still one run, and the schedule counts the skip.
    const t = await triggerSchedule(client, id);
    expect(t).toMatchObject({ outcome: 'skipped', runningRuns: [runA] });
    const d = await describeSchedule(client, id);
    expect(d).toMatchObject({ actionsTaken: 1, runningRuns: [runA], overlap: 'skip' });
    expect(d.skippedOverlap).toBeGreaterThanOrEqual(1);
    expect(d.recentRuns.map((r) => [r.runId, r.state])).toEqual([[runA, 'running']]);

    expect(await deleteSchedule(client, id)).toMatchObject({ deleted: true, runningRuns: [runA] });
    const handle = client.workflow.getHandle(runA);
    await handle.cancel();
    await expect(handle.result()).rejects.toThrow();
    expect((await runStatus(client, runA)).state).toBe('cancelled');
  });
});
