/**
 * The pipeline end to end on the real stack, with the contract test job standing in for training:
 * DAG order, committed outputs (files, manifest, marker), cache reuse on a re-run, gates, and
 * refusal of a run id that is already running.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { readCommitted, verifyCommitted } from '../../storage/commit.js';
import { startRun } from '../../client/commands/run.js';
import { listRuns, renderRunList, runStatus } from '../../client/commands/manage.js';
import { until } from '../helpers/processes.js';
import { retryRun } from '../../client/commands/retry.js';
import type { pipelineWorkflow } from '../../workflows/pipeline.js';
import { startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
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
  await closeClient?.();
  await workers?.shutdown();
});

const stages = (extra: Record<string, unknown> = {}) => [
  { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 6, save_steps: 2 }, job_params: { step_seconds: 0.02 }, ...extra },
  { id: 'rm', kind: 'reward', dataset: { path: 'data/preference.jsonl', format: 'preference' }, hyper: { max_steps: 4 }, job_params: { step_seconds: 0.02 } },
  { id: 'ppo', kind: 'ppo', policy: 'sft', reward_model: 'rm', dataset: { path: 'data/prompts.jsonl', format: 'prompts' }, hyper: { max_steps: 4 }, job_params: { step_seconds: 0.02 } },
  { id: 'merge', kind: 'merge', from: 'ppo', job_params: {} },
];

describe('pipeline workflow on the real stack', () => {
  it('runs the DAG, commits every output, and reuses them on a re-run', async () => {
    const { dir, file } = await writeTestSpec({ name: 'dag-test', storage: { prefix: 'it-dag' }, stages: stages() });
    const { runId, handle } = await startRun(client, file, { id: `dag-${Date.now()}`, by: 'tester' });
    const result = await handle.result();
    expect(result.status.state).toBe('completed');
    const byId = Object.fromEntries(result.status.stages.map((s) => [s.id, s]));
    expect(Object.values(byId).map((s) => s.state)).toEqual(['completed', 'completed', 'completed', 'completed']);
    // DAG order: ppo starts only after both of its inputs ended.
    expect(byId.ppo!.startedAt! >= byId.sft!.endedAt!).toBe(true);
    expect(byId.ppo!.startedAt! >= byId.rm!.endedAt!).toBe(true);
    // sft and rm are independent: they overlapped.
    expect(byId.rm!.startedAt! < byId.sft!.endedAt!).toBe(true);

    const store = testStore();
    for (const s of Object.values(byId)) {
      const art = await readCommitted(store, s.artifact!.prefix);
      expect(art?.manifestSha256).toBe(s.artifact!.manifestSha256);
      expect(art!.manifest.files.length).toBeGreaterThan(0);
      expect(await verifyCommitted(store, s.artifact!.prefix)).toEqual([]);
    }
    expect((await store.getJson<{ requestedBy: string }>(`it-dag/runs/${runId}/run.json`))?.requestedBy).toBe('tester');

    // What it cost: one attempt per stage, each attempt's time inside its stage's wall time, the
    // run's wall time covering all; the same figures in status.json and the trail's run-cost event.
    const cost = result.status.cost!;
    expect(cost.attempts).toBe(4);
    for (const s of Object.values(byId)) {
      expect(s.cost).toMatchObject({ attempts: 1, gpuSeconds: 0 });
      expect(s.cost!.attemptSeconds).toBeGreaterThan(0);
      expect(s.cost!.attemptSeconds).toBeLessThanOrEqual(s.cost!.wallSeconds! + 0.01);
    }
    expect(cost.attemptSeconds).toBeCloseTo(Object.values(byId).reduce((n, s) => n + s.cost!.attemptSeconds, 0), 2);
    expect(cost.wallSeconds!).toBeGreaterThanOrEqual(Math.max(...Object.values(byId).map((s) => s.cost!.wallSeconds!)));
    expect((await store.getJson<{ cost: unknown }>(`it-dag/runs/${runId}/status.json`))?.cost).toEqual(cost);
    const trail = await Promise.all((await store.list(`it-dag/runs/${runId}/audit/`)).map(async (o) => (await store.getJson<{ event: { type: string; total?: unknown } }>(o.key))!.event));
    expect(trail.find((e) => e.type === 'run-cost')?.total).toEqual(cost);
    // `refinery list` shows it too (visibility catches up within moments).
    const listed = await until('the run in the visibility store', async () => (await listRuns(client, { pipeline: 'dag-test', limit: 200 })).find((r) => r.runId === runId && r.state === 'completed'));
    expect(listed.cost).toEqual(cost);
    expect(renderRunList([listed])).toMatch(new RegExp(`^${runId} +dag-test +completed .* \\d+:\\d\\d wall, 4 attempts, 0\\.00 GPU-h$`));

    // Same spec again: every stage is reused, nothing runs.
    const again = await (await startRun(client, file, { id: `dag-again-${Date.now()}` })).handle.result();
    expect(again.status.stages.map((s) => s.state)).toEqual(['reused', 'reused', 'reused', 'reused']);
    expect(again.status.cost).toMatchObject({ attempts: 0, attemptSeconds: 0, gpuSeconds: 0 }); // cache hits run nothing
    expect(again.artifacts).toEqual(result.artifacts);

    // Change one hyper-parameter of sft: sft and everything downstream re-run; rm is reused.
    const changed = await writeTestSpec({ name: 'dag-test', storage: { prefix: 'it-dag' }, stages: stages({ hyper: { max_steps: 8, save_steps: 2 } }) }, dir);
    const third = await (await startRun(client, changed.file, { id: `dag-changed-${Date.now()}` })).handle.result();
    expect(Object.fromEntries(third.status.stages.map((s) => [s.id, s.state]))).toEqual({ sft: 'completed', rm: 'reused', ppo: 'completed', merge: 'completed' });

    // `refinery retry --from-stage ppo`: ppo and merge run again, sft and rm are reused.
    const { runId: retryId, forced } = await retryRun(client, runId, { fromStage: 'ppo' });
    expect(forced).toEqual(['ppo', 'merge']);
    const retried = await client.workflow.getHandle<typeof pipelineWorkflow>(retryId).result();
    expect(Object.fromEntries(retried.status.stages.map((s) => [s.id, s.state]))).toEqual({ sft: 'reused', rm: 'reused', ppo: 'completed', merge: 'completed' });
    expect(retried.artifacts.ppo!.prefix).not.toBe(result.artifacts.ppo!.prefix);
  });

  it('refuses to start a run whose id is running', async () => {
    const { file } = await writeTestSpec({ name: 'dup-test', stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 30 }, job_params: { step_seconds: 0.1 } }] });
    const id = `dup-${Date.now()}`;
    const { handle } = await startRun(client, file, { id });
    await expect(startRun(client, file, { id })).rejects.toThrow(/already running/);
    await handle.cancel();
  });

  it('stops the run at a failed metric gate, with the reason', async () => {
    const { file } = await writeTestSpec({
      name: 'gate-test',
      stages: [
        { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 3 }, job_params: { step_seconds: 0.01 }, gate: { metrics: [{ metric: 'final_loss', max: -1 }] } },
        { id: 'merge', kind: 'merge', from: 'sft' },
      ],
    });
    const { runId, handle } = await startRun(client, file, { id: `gate-${Date.now()}` });
    await expect(handle.result()).rejects.toThrow();
    const status = await runStatus(client, runId);
    expect(status.state).toBe('failed');
    expect(status.stages[0]!.state).toBe('failed');
    expect(status.stages[0]!.gate).toMatch(/final_loss = .* is above -1/);
    expect(status.stages[1]!.state).toBe('skipped');
  });

  it('fails a data error once, without retrying, naming the job error', async () => {
    const { file } = await writeTestSpec({
      name: 'data-error-test',
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', retry: { maximum_attempts: 5, initial_interval: '1s' }, job_params: { exit_code: 3 } }],
    });
    const { runId, handle } = await startRun(client, file, { id: `dataerr-${Date.now()}` });
    await expect(handle.result()).rejects.toThrow();
    const status = await runStatus(client, runId);
    expect(status.stages[0]!.error).toMatch(/data error/);
    const history = await client.workflow.getHandle(`${runId}--sft`).fetchHistory();
    const jobScheduled = history.events!.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'runStageJob')!;
    const attempts = history.events!
      .filter((e) => String(e.activityTaskStartedEventAttributes?.scheduledEventId) === String(jobScheduled.eventId))
      .map((e) => e.activityTaskStartedEventAttributes!.attempt);
    expect(attempts).toEqual([1]);
  });
});
