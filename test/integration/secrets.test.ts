/**
 * Secrets never leave the worker's and CLI's environment (invariant 6). A real run on the test
 * stack — whose S3 access and secret keys are unique test values — with a training worker as a
 * separate process, a failed-and-retried attempt and checkpoints; then the S3 keys are looked for
 * in: the full Temporal history of the run and of every child workflow (each event as JSON, every
 * payload decoded), the job logs and events in the bucket, every object under the run's prefix, the
 * worker's scratch dir and its own output. None may be found. A job's environment (dumped by the
 * test job) holds no REFINERY_S3_* / AWS_* / MINIO_* variable.
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRun } from '../../client/commands/run.js';
import { REPO_ROOT } from '../../config/paths.js';
import { committedFileKey, readCommitted } from '../../storage/commit.js';
import { stack, startTestWorkers, testClient, testJobCommand, testStackEnv, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { writeTestSpec } from '../helpers/specs.js';

let control: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
let worker: ResultPromise | undefined;
let workerScratch: string;
let workerLog: string;

const queue = `gpu-secrets-${Date.now()}`;

beforeAll(async () => {
  useTestStackEnv();
  control = await startTestWorkers({ trainingQueues: [] });
  ({ client, close: closeClient } = await testClient());
  workerScratch = await mkdtemp(path.join(tmpdir(), 'refinery-secrets-worker-'));
  workerLog = path.join(workerScratch, '..', `${path.basename(workerScratch)}.log`);
  // Everything the worker needs, credentials included, comes from its environment, as in production.
  worker = execa(path.join(REPO_ROOT, 'bin', 'refinery'), ['worker', '--no-control', '--queue', queue, '--scratch', workerScratch], {
    env: {
      ...testStackEnv(),
      REFINERY_JOB_COMMAND: JSON.stringify(testJobCommand()('sft')),
    },
    reject: false,
    all: true,
    buffer: false,
  });
  worker.all?.pipe(createWriteStream(workerLog));
});
afterAll(async () => {
  worker?.kill('SIGTERM');
  await worker;
  await closeClient?.();
  await control?.shutdown();
});

/** Every file under `dir`, recursively. */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * An event as JSON, followed by every payload in it decoded: the history API returns payload data,
 * metadata and failure details as base64 (or bytes); each is added as the text it encodes, as a
 * reader of the history would see it.
 */
function historyText(event: unknown): string {
  const decoded: string[] = [];
  const raw = JSON.stringify(event, (_key, v: unknown) => {
    if (v instanceof Uint8Array) {
      decoded.push(Buffer.from(v).toString('utf8'));
      return Buffer.from(v).toString('base64');
    }
    if (typeof v === 'string' && v.length >= 8 && BASE64.test(v)) decoded.push(Buffer.from(v, 'base64').toString('utf8'));
    if (typeof v === 'bigint') return v.toString();
    return v;
  });
  return [raw, ...decoded].join('\n');
}

describe('secrets', () => {
  it('appear nowhere a run leaves a trace, and never in a job environment', async () => {
    const { accessKey, secretKey } = stack();
    const secrets = { 'S3 secret key': secretKey, 'S3 access key': accessKey };
    const prefix = `it-secrets-${Date.now()}`;
    const { file } = await writeTestSpec({
      name: 'secrets-test',
      storage: { prefix },
      datasets: { chats: { path: 'data/sft.jsonl', format: 'chat' }, prefs: { path: 'data/preference.jsonl', format: 'preference' } },
      defaults: { resources: { task_queue: queue }, retry: { initial_interval: '1s' }, timeouts: { heartbeat: '10s' } },
      stages: [
        { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 6, save_steps: 2 }, job_params: { step_seconds: 0.02, dump_env: true } },
        // Fails once (a failure and a retry in the history and the audit trail), then resumes.
        { id: 'dpo', kind: 'dpo', from: 'sft', dataset: 'prefs', hyper: { max_steps: 6, save_steps: 2 }, job_params: { step_seconds: 0.02, fail_at_step: 4, dump_env: true } },
      ],
    });
    const { runId, handle } = await startRun(client, file, { id: `secrets-${Date.now()}` });
    const result = await handle.result();
    expect(result.status.state).toBe('completed');
    expect(result.status.stages.find((s) => s.id === 'dpo')!.attempt).toBeGreaterThanOrEqual(2);

    const found: string[] = [];
    const scan = (where: string, data: Buffer | string) => {
      for (const [name, value] of Object.entries(secrets)) if (data.includes(value)) found.push(`${name} in ${where}`);
    };

    // 1. Temporal: the run's history and every child workflow's.
    const histories = [runId];
    const parent = await client.workflow.getHandle(runId).fetchHistory();
    for (const e of parent.events ?? []) {
      const child = e.childWorkflowExecutionStartedEventAttributes?.workflowExecution?.workflowId;
      if (child) histories.push(child);
    }
    expect(histories).toEqual([runId, `${runId}--sft`, `${runId}--dpo`]);
    let events = 0;
    let decoded = '';
    for (const id of histories) {
      const history = id === runId ? parent : await client.workflow.getHandle(id).fetchHistory();
      for (const e of history.events ?? []) {
        events++;
        const text = historyText(e);
        decoded += text;
        scan(`history of ${id}, event ${String(e.eventId)} (${String(e.eventType)})`, text);
      }
    }
    expect(events).toBeGreaterThan(30);
    // The scan reads payloads as text (workflow and activity inputs, results, heartbeats) and failures.
    expect(decoded.includes('"fail_at_step":4'), 'payloads are decoded').toBe(true);
    expect(decoded.includes('injected failure at step 4'), 'failures are read').toBe(true);

    // 2. The bucket: every object under the run's prefix (run.json, status.json, audit trail, job logs
    //    and events, datasets, models, checkpoints, outputs).
    const store = testStore();
    const objects = await store.list(`${prefix}/`);
    expect(objects.some((o) => o.key.includes(`/runs/${runId}/logs/dpo/attempt-1.log`))).toBe(true);
    expect(objects.some((o) => o.key.includes('/audit/'))).toBe(true);
    for (const o of objects) scan(store.uri(o.key), (await store.getBytes(o.key))!);

    // 3. The worker's scratch dir (job configs, logs, caches) and the worker's own output.
    const scratchFiles = await filesUnder(workerScratch);
    expect(scratchFiles.length).toBeGreaterThan(0);
    for (const f of scratchFiles) scan(f, await readFile(f));
    scan('the worker process output', await readFile(workerLog));

    expect(found).toEqual([]);

    // 4. What a job sees: no credentials in its environment.
    for (const stage of ['sft', 'dpo']) {
      const env = await store.getJson<Record<string, string>>(committedFileKey((await readCommitted(store, result.artifacts[stage]!.prefix))!, 'env.json'));
      expect(env, `${stage} dumped its environment`).toBeDefined();
      expect(env!.REFINERY_EVENTS_FD).toBe('3'); // it is the job's environment
      expect(Object.keys(env!).filter((k) => /^(REFINERY_S3_|AWS_|MINIO_)/.test(k))).toEqual([]);
      expect(Object.values(env!).filter((v) => v.includes(secretKey) || v.includes(accessKey))).toEqual([]);
    }
  });
});
