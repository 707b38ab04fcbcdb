/**
 * A run id is owned by the first execution that writes under it (storage/run-claim.ts). A
 * scheduled run's id is its workflow id, "<schedule>-<fire time to the second>": two fires in one
 * second start two executions of one workflow id, one after the other. The second must not write
 * over the first's manifest, trail or status: it fails at once with RunIdTaken, and the first run's
 * objects are byte for byte what they were, and still verify. (Found by the nightly test, whose
 * first version triggered two nights in one second.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { verifyRun } from '../../client/commands/audit.js';
import { validateSpec } from '../../client/commands/validate.js';
import { CONTROL_TASK_QUEUE } from '../../config/temporal.js';
import { pipelineWorkflow } from '../../workflows/pipeline.js';
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

describe('a run id used twice', () => {
  it('the second execution of a scheduled-style workflow id writes nothing and fails with RunIdTaken', async () => {
    const prefix = `it-claim-${Date.now().toString(36)}`;
    const { file } = await writeTestSpec({ name: 'claim', storage: { prefix }, stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 4, save_steps: 2 }, job_params: { step_seconds: 0.02 } }] });
    const { plan } = await validateSpec(file);
    const workflowId = `claim-sched-${Date.now().toString(36)}-2026-12-04T03:00:00Z`;
    // As a schedule starts it: no runId in the input, the workflow id is the run id.
    const start = () => client.workflow.start(pipelineWorkflow, { workflowId, taskQueue: CONTROL_TASK_QUEUE, workflowIdReusePolicy: 'ALLOW_DUPLICATE', args: [{ plan, requestedBy: 'schedule-test', skipIfUnchanged: true, scheduleId: 'claim-sched' }] });
    const first = await (await start()).result();
    expect(first.status.state).toBe('completed');

    const snapshot = async () => {
      const objects = await testStore().list(`${prefix}/runs/${workflowId}/`);
      return new Map(await Promise.all(objects.map(async (o) => [o.key, (await testStore().getBytes(o.key))!.toString('base64')] as const)));
    };
    const before = await snapshot();
    expect([...before.keys()].some((k) => k.endsWith('/claim.json'))).toBe(true);
    expect([...before.keys()].some((k) => k.endsWith('/status.json'))).toBe(true);

    const second = await start();
    await expect(second.result()).rejects.toMatchObject({ cause: { type: 'RunIdTaken', message: expect.stringContaining(`run id ${workflowId} is taken by an earlier run`) } });
    expect(await snapshot()).toEqual(before);
    expect((await verifyRun({ runId: workflowId, prefix, store: testStore() })).problems).toEqual([]);
  });
});
