/**
 * Nothing is dropped on the floor, on the real stack with the contract test job: a corrupt
 * checkpoint skipped on resume and a job event that breaks the contract are in the attempt's
 * records, the run's audit trail and `status`; and `status` of a finished run (completed, failed,
 * cancelled) works with no worker running at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { readRun, verifyRun } from '../../client/commands/audit.js';
import { runStatus } from '../../client/commands/manage.js';
import { startRun } from '../../client/commands/run.js';
import { listCommittedSteps } from '../../storage/checkpoints.js';
import { committedFileKey, readCommitted } from '../../storage/commit.js';
import { layout } from '../../storage/layout.js';
import type { PipelineResult } from '../../workflows/types.js';
import { startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

let workers: TestWorkers | undefined;
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

async function artifactPrefixOf(prefix: string): Promise<string | undefined> {
  const objects = await testStore().list(`${prefix}/artifacts/`, false);
  return objects[0]?.key.replace(/\/$/, '');
}

describe('nothing dropped', () => {
  it('a skipped corrupt checkpoint and a contract violation reach the records, the trail and status', async () => {
    const { file } = await writeTestSpec({
      name: 'dropped',
      storage: { prefix: 'it-dropped' },
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 8, save_steps: 2 }, job_params: { step_seconds: 0.3, fail_at_step: 5, bad_event_at_step: 2 }, retry: { maximum_attempts: 3, initial_interval: '4s' } }],
    });
    const { runId, handle } = await startRun(client, file, { id: `dropped-${Date.now()}` });
    // Attempt 1 commits checkpoints 2 and 4, then fails at step 5; corrupt checkpoint 4 before the retry.
    const prefix = await until('the artifact prefix', () => artifactPrefixOf('it-dropped'));
    await until('checkpoint 4 committed', async () => (await listCommittedSteps(testStore(), prefix)).includes(4), 30_000, 100);
    await testStore().putBytes(committedFileKey((await readCommitted(testStore(), layout.checkpoint(prefix, 4)))!, 'state.json'), '{"corrupted": true}');

    const result: PipelineResult = await handle.result();
    expect(result.status.state).toBe('completed');
    const sft = result.status.stages[0]!;
    expect(sft.skippedCheckpoints).toEqual([4]);
    expect(sft.resumedFromStep).toBe(2);
    expect(sft.contractViolations).toBe(1); // attempt 1 broke the contract at step 2; attempt 2 resumed after it
    expect(sft.attempts!.map((a) => [a.attempt, a.outcome, a.skippedCheckpoints, a.contractViolations])).toEqual([
      [1, 'failed', [], 1],
      [2, 'completed', [4], 0],
    ]);
    expect(sft.attempts![0]!.reason).toMatch(/injected failure at step 5/);

    const run = await readRun({ runId, prefix: 'it-dropped', store: testStore() });
    const attemptEvents = run.records.map((r) => r.event).filter((e) => e.type === 'attempt');
    expect(attemptEvents.map((e) => [e.attempt, e.outcome, e.contractViolations, (e.skippedCheckpoints as { step: number }[]).map((c) => c.step)])).toEqual([
      [1, 'failed', 1, []],
      [2, 'completed', 0, [4]],
    ]);
    expect((await verifyRun({ runId, prefix: 'it-dropped', store: testStore() })).problems).toEqual([]);
  });

  it('status of finished runs needs no worker: completed, failed, cancelled', async () => {
    const stage = (params: Record<string, unknown>) => [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 4 }, job_params: params, retry: { maximum_attempts: 1 } }];
    const ok = await writeTestSpec({ name: 'offline-ok', storage: { prefix: 'it-offline' }, stages: stage({ step_seconds: 0.01 }) });
    const bad = await writeTestSpec({ name: 'offline-bad', storage: { prefix: 'it-offline' }, stages: stage({ exit_code: 3 }) });
    const slow = await writeTestSpec({ name: 'offline-cancel', storage: { prefix: 'it-offline' }, stages: stage({ step_seconds: 5 }) });
    const completed = await startRun(client, ok.file, { id: `offline-ok-${Date.now()}` });
    await completed.handle.result();
    const failed = await startRun(client, bad.file, { id: `offline-bad-${Date.now()}` });
    await failed.handle.result().catch(() => undefined);
    const cancelled = await startRun(client, slow.file, { id: `offline-cancel-${Date.now()}` });
    await until('the slow stage running', async () => (await runStatus(client, cancelled.runId)).stages[0]!.state === 'running');
    await cancelled.handle.cancel();
    await cancelled.handle.result().catch(() => undefined);

    await workers!.shutdown(); // no worker anywhere from here on
    workers = undefined;
    const s1 = await runStatus(client, completed.runId);
    expect([s1.state, s1.stages[0]!.state, s1.stages[0]!.step]).toEqual(['completed', 'completed', 4]);
    const s2 = await runStatus(client, failed.runId);
    expect([s2.state, s2.stages[0]!.state]).toEqual(['failed', 'failed']);
    expect(s2.stages[0]!.error).toMatch(/data error/);
    const s3 = await runStatus(client, cancelled.runId);
    expect([s3.state, s3.stages[0]!.state]).toEqual(['cancelled', 'cancelled']);
  });
});
