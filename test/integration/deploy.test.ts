/**
 * A deploy in the middle of a run (invariant 10): a run started on a control worker running the
 * previous workflow bundle (test/fixtures/histories/2d6c2d30db45/workflow-bundle.js, the code
 * before the `history-v2` patch) is training when that worker is shut down; a worker with today's bundle
 * picks the run up — replaying the old code's history — and it finishes through an approval gate.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { NativeConnection } from '@temporalio/worker';
import type { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyRun } from '../../client/commands/audit.js';
import { decideApproval, runStatus } from '../../client/commands/manage.js';
import { startRun } from '../../client/commands/run.js';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { createWorkers } from '../../worker/create-workers.js';
import { HISTORY_V2 } from '../../workflows/patches.js';
import type { PipelineResult } from '../../workflows/types.js';
import { stack, startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, workflowBundle, type TestWorkers } from '../helpers/env.js';
import { until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

/** The workflow code from before the history-v2 patch, as its workers ran it. */
const PREVIOUS_BUNDLE = path.join(REPO_ROOT, 'test', 'fixtures', 'histories', '2d6c2d30db45', 'workflow-bundle.js');
let training: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;

beforeAll(async () => {
  useTestStackEnv();
  training = await startTestWorkers({ control: false, jobCommand: testJobCommand() });
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  await closeClient?.();
  await training?.shutdown();
});

async function controlWorker(bundle: { code: string }) {
  const connection = await NativeConnection.connect({ address: stack().temporalAddress });
  const [worker] = await createWorkers({
    connection,
    namespace: stack().namespace,
    store: testStore(),
    control: true,
    trainingQueues: [],
    gpus: [],
    scratchDir: '/nonexistent',
    python: jobsPython(),
    workflowBundle: bundle,
  });
  const running = worker!.run();
  return {
    stop: async () => {
      worker!.shutdown();
      await running;
      await connection.close();
    },
  };
}

/** The patch ids a history records (core's `core_patch` markers carry {id, deprecated} as a JSON payload). */
function patchIds(history: Awaited<ReturnType<ReturnType<Client['workflow']['getHandle']>['fetchHistory']>>): string[] {
  const ids: string[] = [];
  for (const e of history.events ?? []) {
    const m = e.markerRecordedEventAttributes;
    if (m?.markerName !== 'core_patch') continue;
    for (const p of Object.values(m.details ?? {}).flatMap((d) => d.payloads ?? [])) {
      const text = Buffer.from(p.data ?? []).toString('utf8');
      try {
        const v = JSON.parse(text) as unknown;
        ids.push(typeof v === 'object' && v ? String((v as { id?: unknown }).id) : String(v));
      } catch {
        ids.push(text);
      }
    }
  }
  return ids;
}

describe('deploying new workflow code under a running run', () => {
  it('a run started on the previous bundle finishes on the new one', async () => {
    const old = await controlWorker({ code: await readFile(PREVIOUS_BUNDLE, 'utf8') });
    const { file } = await writeTestSpec({
      name: 'deploy-test',
      storage: { prefix: 'it-deploy' },
      stages: [
        { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 30, save_steps: 5 }, job_params: { step_seconds: 0.2 } },
        { id: 'merge', kind: 'merge', from: 'sft', gate: { approval: { timeout: '1h' } } },
      ],
    });
    const { runId, handle } = await startRun(client, file, { id: `deploy-${Date.now()}`, by: 'tester' });
    await until('sft to train on the old workflow code', async () => (await runStatus(client, runId)).stages[0]!.step >= 5, 60_000);
    await old.stop(); // the deploy: old workers drain away mid-training

    const current = await controlWorker(await workflowBundle());
    try {
      await until('merge to await approval', async () => (await runStatus(client, runId)).stages[1]!.state === 'awaiting-approval', 120_000, 500);
      await decideApproval(client, runId, { stageId: 'merge', approved: true, by: 'tester', reason: 'after the deploy' });
      const result: PipelineResult = await handle.result();
      expect(result.status.state).toBe('completed');
      expect(result.status.stages.map((s) => s.state)).toEqual(['completed', 'completed']);
    } finally {
      await current.stop();
    }
    // The run stayed on the old path: no history-v2 patch marker in its history.
    const history = await client.workflow.getHandle(runId).fetchHistory();
    expect(patchIds(history)).not.toContain(HISTORY_V2);
    const verified = await verifyRun({ runId, prefix: 'it-deploy', store: testStore() });
    expect(verified.problems).toEqual([]);

    // A run started now takes the new path.
    const fresh = await controlWorker(await workflowBundle());
    try {
      const { runId: newId, handle: newHandle } = await startRun(client, file, { id: `deploy-new-${Date.now()}`, by: 'tester' });
      await until('merge to await approval', async () => (await runStatus(client, newId)).stages[1]!.state === 'awaiting-approval', 60_000, 300);
      await decideApproval(client, newId, { stageId: 'merge', approved: true, by: 'tester', reason: 'new path' });
      await newHandle.result();
      expect(patchIds(await client.workflow.getHandle(newId).fetchHistory())).toContain(HISTORY_V2);
    } finally {
      await fresh.stop();
    }
  });
});
