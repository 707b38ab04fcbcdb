/**
 * Notifications on the real stack (docs/operations.md, "Notifications"), with the contract test
 * job and a local HTTP receiver behind the control worker's webhooks file:
 *   - a completed run: one run-completed per webhook, in the Slack and the generic format;
 *   - a stage that fails: stage-failed, then run-failed;
 *   - an approval gate: approval-waiting with the `refinery approve` command, then the run completes;
 *   - the promote step: promoted, and promote-stopped when a gate stops it;
 *   - a cancelled run: run-cancelled (sent although the run is cancelled); an unchanged scheduled run: run-unchanged;
 *   - a receiver that answers 500 twice: the third attempt delivers it, with the same event id, and
 *     the other webhook of that event gets it once;
 *   - a receiver that always fails: the run still completes, and the trail records the failure;
 *   - the webhook URL (with its secret token) is nowhere in any run's history or trail.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideApproval, runStatus } from '../../client/commands/manage.js';
import { startRun } from '../../client/commands/run.js';
import { validateSpec } from '../../client/commands/validate.js';
import { CONTROL_TASK_QUEUE } from '../../config/temporal.js';
import type { AuditEvent, AuditRecord } from '../../storage/audit-chain.js';
import type { ObjectStore } from '../../storage/object-store.js';
import type { pipelineWorkflow } from '../../workflows/pipeline.js';
import type { PipelineResult } from '../../workflows/types.js';
import { startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { historyText } from '../helpers/history-text.js';
import { until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';
import { startWebhookReceiver, type ReceivedRequest, type WebhookReceiver } from '../helpers/webhook-receiver.js';

const PREFIX = 'it-notifications';
const SECRET = 'SECRET-TOKEN-123';
const SLACK = `/hooks/${SECRET}`;

let workers: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
let store: ObjectStore;
let receiver: WebhookReceiver;
/** Every run of this file, for the secrecy check at the end. */
const runs: { runId: string; stages: string[] }[] = [];

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  receiver = await startWebhookReceiver({ '/flaky': { failFirst: 2 }, '/down': { status: 500 } });
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-webhooks-'));
  const webhooksFile = path.join(dir, 'webhooks.json');
  const webhooks = [
    { url: receiver.url(SLACK), format: 'slack', pipelines: ['notify-main'] },
    { url: receiver.url('/json'), format: 'json', pipelines: ['notify-main', 'notify-promote', 'notify-unchanged'] },
    { url: receiver.url('/flaky'), pipelines: ['notify-flaky'] },
    { url: receiver.url('/flaky-neighbour'), pipelines: ['notify-flaky'] },
    // Three attempts (1 s, then 2 s apart) rather than the default ten (~4 minutes).
    { url: receiver.url('/down'), pipelines: ['notify-down'], maxAttempts: 3 },
  ];
  await writeFile(webhooksFile, JSON.stringify({ webhooks }, null, 2));
  workers = await startTestWorkers({ jobCommand: testJobCommand(), webhooksFile });
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  await closeClient?.();
  await workers?.shutdown();
  await receiver?.close();
});

const quick = (id: string, extra: Record<string, unknown> = {}) => ({ id, kind: 'sft', dataset: 'chats', hyper: { max_steps: 2 }, job_params: { step_seconds: 0.01 }, retry: { maximum_attempts: 1 }, ...extra });

const specFiles = new Map<string, string>();
const specOf = async (runId: string) => specFiles.get(runId)!;

async function run(name: string, stages: Record<string, unknown>[], extra: Record<string, unknown> = {}) {
  const { file } = await writeTestSpec({ name, storage: { prefix: PREFIX }, stages, ...extra });
  const started = await startRun(client, file, { id: `${name}-${Date.now()}`, by: 'tester' });
  runs.push({ runId: started.runId, stages: stages.map((s) => String(s.id)) });
  specFiles.set(started.runId, file);
  return started;
}

async function auditEvents(runId: string): Promise<AuditEvent[]> {
  const keys = (await store.list(`${PREFIX}/runs/${runId}/audit/`)).map((o) => o.key).sort();
  return Promise.all(keys.map(async (k) => (await store.getJson<AuditRecord>(k))!.event));
}

const forRun = (path: string, runId: string): ReceivedRequest[] => receiver.to(path).filter((r) => r.body.runId === runId || JSON.stringify(r.body).includes(runId));


describe('notifications', () => {
  it('a completed run: one run-completed per webhook, Slack and generic bodies, recorded in the trail before run-finished', async () => {
    const { runId, handle } = await run('notify-main', [quick('sft')]);
    expect((await handle.result()).status.state).toBe('completed');

    const [slack, ...moreSlack] = forRun(SLACK, runId);
    const [json, ...moreJson] = forRun('/json', runId);
    expect(moreSlack).toEqual([]);
    expect(moreJson).toEqual([]);
    const eventId = `${runId}:run-completed:-:1`;
    expect(json!).toMatchObject({ eventId, event: 'run-completed', contentType: 'application/json' });
    expect(json!.body).toEqual({ version: 1, event: 'run-completed', eventId, runId, pipeline: 'notify-main', stage: null, state: 'completed', message: `Run ${runId} (notify-main) completed`, at: expect.any(String) });
    expect(slack!.eventId).toBe(eventId);
    expect(slack!.body.text).toBe(`Run ${runId} (notify-main) completed`);
    const blocks = JSON.stringify(slack!.body.blocks);
    for (const part of [`*Run*\\n\`${runId}\``, '*Pipeline*\\nnotify-main', '*State*\\ncompleted', `event ${eventId}`]) expect(blocks).toContain(part);

    const events = await auditEvents(runId);
    const sent = events.filter((e) => e.type === 'notification-sent');
    expect(sent).toEqual([expect.objectContaining({ event: 'run-completed', eventId, webhooks: 2, delivered: 2, statusCodes: [200, 200], attempts: 1 })]);
    expect(events.findIndex((e) => e.type === 'notification-sent')).toBeLessThan(events.findIndex((e) => e.type === 'run-finished'));
    expect(events.at(-1)!.type).toBe('run-finished');
  });

  it('a stage that fails: stage-failed with its error, then run-failed', async () => {
    const { runId, handle } = await run('notify-main', [quick('sft', { job_params: { exit_code: 3 } }), { id: 'merge', kind: 'merge', from: 'sft' }]);
    await expect(handle.result()).rejects.toThrow(/failed/);
    // Sent in that order, but delivered concurrently: receivers order them by the event id's sequence number.
    for (const hook of ['/json', SLACK]) {
      expect(forRun(hook, runId).map((r) => [r.event, r.eventId]).sort()).toEqual([
        ['run-failed', `${runId}:run-failed:-:2`],
        ['stage-failed', `${runId}:stage-failed:sft:1`],
      ]);
    }
    const stageFailed = forRun('/json', runId).find((r) => r.event === 'stage-failed');
    const runFailed = forRun('/json', runId).find((r) => r.event === 'run-failed');
    expect(stageFailed!.body).toMatchObject({ stage: 'sft', state: 'failed', error: expect.stringMatching(/data error/) });
    expect(runFailed!.body).toMatchObject({ stage: null, state: 'failed', error: expect.stringMatching(/data error/) });
    expect(JSON.stringify(forRun(SLACK, runId)[0]!.body.blocks)).toContain('*Error*');
    const sent = (await auditEvents(runId)).filter((e) => e.type === 'notification-sent');
    expect(sent.map((e) => [e.event, e.stage ?? null]).sort()).toEqual([
      ['run-failed', null],
      ['stage-failed', 'sft'],
    ]);
  });

  it('an approval gate: approval-waiting with the approve command; approved, the run completes', async () => {
    const { runId, handle } = await run('notify-main', [quick('sft', { gate: { approval: { timeout: '10m' } } }), { id: 'merge', kind: 'merge', from: 'sft' }]);
    await until('approval-waiting to arrive', async () => forRun('/json', runId).some((r) => r.event === 'approval-waiting'), 120_000, 200);
    const command = `refinery approve ${runId} --stage sft --by YOU --reason "..."`;
    const waiting = forRun('/json', runId).find((r) => r.event === 'approval-waiting')!;
    expect(waiting.body).toMatchObject({ eventId: `${runId}:approval-waiting:sft:1`, stage: 'sft', state: 'awaiting-approval', approveCommand: command, approvalDeadline: expect.any(String) });
    expect(Date.parse(waiting.body.approvalDeadline as string) - Date.now()).toBeGreaterThan(8 * 60_000);
    await until('the Slack one too', async () => forRun(SLACK, runId).length > 0, 30_000, 200);
    expect(JSON.stringify(forRun(SLACK, runId)[0]!.body.blocks)).toContain(JSON.stringify(`*To approve*\n\`\`\`${command}\`\`\``).slice(1, -1));

    await decideApproval(client, runId, { stageId: 'sft', approved: true, by: 'tester', reason: 'looks good' });
    expect(((await handle.result()) as PipelineResult).status.state).toBe('completed');
    expect(forRun('/json', runId).map((r) => r.event)).toEqual(['approval-waiting', 'run-completed']);
  });

  it('the promote step: promoted; a gate that stops it: promote-stopped with the gate', async () => {
    const promoted = await run('notify-promote', [quick('sft')], { promote: { stage: 'sft', model: `notify-model-${Date.now()}`, alias: 'production' } });
    const result = (await promoted.handle.result()) as PipelineResult;
    expect(result.status.promoted?.changed).toBe(true);
    expect(forRun('/json', promoted.runId).map((r) => r.event).sort()).toEqual(['promoted', 'run-completed']);
    expect(forRun('/json', promoted.runId).find((r) => r.event === 'promoted')!.body).toMatchObject({
      stage: 'sft',
      state: 'promoted',
      promoted: { model: result.status.promoted!.model, alias: 'production', target: result.status.promoted!.target.uri, changed: true },
    });

    const stopped = await run('notify-promote', [quick('sft', { gate: { metrics: [{ metric: 'final_loss', max: -1 }] } })], { promote: { stage: 'sft', model: 'notify-stopped', alias: 'production' } });
    await expect(stopped.handle.result()).rejects.toThrow();
    expect(forRun('/json', stopped.runId).map((r) => r.event).sort()).toEqual(['promote-stopped', 'run-failed', 'stage-failed']);
    expect(forRun('/json', stopped.runId).find((r) => r.event === 'promote-stopped')!.body).toMatchObject({ state: 'stopped', promote: { model: 'notify-stopped', alias: 'production' }, gate: expect.stringMatching(/^stage "sft": .*final_loss .* is above -1/) });
  });

  it('a cancelled run: run-cancelled, no stage-failed', async () => {
    const { runId, handle } = await run('notify-main', [quick('sft', { hyper: { max_steps: 200 }, job_params: { step_seconds: 0.1 } })]);
    await until('sft to train', async () => (await runStatus(client, runId)).stages[0]!.state === 'running', 60_000, 200);
    await handle.cancel();
    await expect(handle.result()).rejects.toThrow();
    expect(forRun('/json', runId).map((r) => [r.event, r.body.state])).toEqual([['run-cancelled', 'cancelled']]);
    expect(forRun(SLACK, runId).map((r) => r.body.text)).toEqual([`Run ${runId} (notify-main) was cancelled`]);
    expect((await auditEvents(runId)).filter((e) => e.type === 'notification-sent').map((e) => e.event)).toEqual(['run-cancelled']);
  });

  it('a scheduled run whose inputs are unchanged: run-unchanged, naming the run it repeats', async () => {
    const first = await run('notify-unchanged', [quick('sft')]);
    await first.handle.result();
    const { plan } = await validateSpec(await specOf(first.runId));
    const runId = `notify-unchanged-again-${Date.now()}`;
    const handle = await client.workflow.start<typeof pipelineWorkflow>('pipelineWorkflow', { args: [{ runId, plan, requestedBy: 'tester', skipIfUnchanged: true }], taskQueue: CONTROL_TASK_QUEUE, workflowId: runId });
    runs.push({ runId, stages: [] });
    expect((await handle.result()).status.state).toBe('unchanged');
    expect(forRun('/json', runId).map((r) => r.body)).toEqual([
      expect.objectContaining({ event: 'run-unchanged', state: 'unchanged', unchangedSince: first.runId, message: `Run ${runId} (notify-unchanged) trained nothing: inputs unchanged since run ${first.runId}` }),
    ]);
    const types = (await auditEvents(runId)).map((e) => e.type);
    expect(types.filter((t) => t.startsWith('notification'))).toEqual(['notification-sent']);
    expect(types.indexOf('notification-sent')).toBeLessThan(types.indexOf('run-unchanged'));
    expect(types.at(-1)).toBe('run-finished');
  });

  it('a receiver that fails twice: the third attempt delivers it, same event id; the other webhook gets it once', async () => {
    const { runId, handle } = await run('notify-flaky', [quick('sft')]);
    expect((await handle.result()).status.state).toBe('completed');
    const eventId = `${runId}:run-completed:-:1`;
    expect(forRun('/flaky', runId).map((r) => [r.status, r.eventId, r.body.eventId])).toEqual([
      [500, eventId, eventId],
      [500, eventId, eventId],
      [200, eventId, eventId],
    ]);
    expect(forRun('/flaky-neighbour', runId).map((r) => r.status)).toEqual([200]);
    const sent = (await auditEvents(runId)).filter((e) => e.type === 'notification-sent');
    expect(sent).toEqual([expect.objectContaining({ event: 'run-completed', eventId, webhooks: 2, delivered: 2, statusCodes: [200, 200], attempts: 3 })]);
  });

  it('a receiver that always fails: the run still completes; the trail records the failed notification', async () => {
    const { runId, handle } = await run('notify-down', [quick('sft')]);
    expect((await handle.result()).status.state).toBe('completed');
    expect(forRun('/down', runId).map((r) => r.status)).toEqual([500, 500, 500]);
    const events = await auditEvents(runId);
    expect(events.filter((e) => e.type.startsWith('notification'))).toEqual([
      expect.objectContaining({ type: 'notification-failed', event: 'run-completed', eventId: `${runId}:run-completed:-:1`, webhooks: 1, delivered: 0, statusCodes: [500], attempts: 3, error: '1 of 1 webhook(s) not delivered: webhook 5 (json): HTTP 500' }),
    ]);
    expect(events.at(-1)).toMatchObject({ type: 'run-finished', state: 'completed' });
  });

  it('the webhook URL and its token are nowhere in any run history or audit trail', async () => {
    expect(runs.length).toBeGreaterThanOrEqual(10);
    for (const r of runs) {
      const text = historyText(await client.workflow.getHandle(r.runId).fetchHistory());
      // The decoding works: the notify activity's input is readable here.
      expect(text).toContain(`${r.runId}:run-`);
      expect(text).not.toContain(SECRET);
      expect(text).not.toContain(receiver.url('/'));
      for (const s of r.stages) {
        const child = await client.workflow.getHandle(`${r.runId}--${s}`).fetchHistory().catch(() => undefined);
        if (child) expect(historyText(child)).not.toContain(SECRET);
      }
      const trail = JSON.stringify(await auditEvents(r.runId));
      expect(trail).not.toContain(SECRET);
      expect(trail).not.toContain(receiver.url('/'));
    }
  });
});
