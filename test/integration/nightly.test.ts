/**
 * The nightly loop that ships, on the real stack: a Temporal Schedule on the dev server (fired with
 * `schedule trigger`, as a night), MinIO, the real sft and eval jobs on a tiny Llama, training
 * workers as processes of their own. The spec trains an adapter on the newest data under an s3://
 * prefix, scores it against the registry's `production` model on held-out chats (a relative gate:
 * not worse than production by more than 0.01 nats), and ends with a promote step:
 *   1. first night, no production yet (baseline.if_missing: pass): trains, promotes;
 *   2. more data: trains, is scored against night 1's model (better), promotes; `previous` = night 1;
 *   3. nothing new: 'unchanged', nothing trained, production untouched;
 *   4. corrupted data (answers replaced by noise): trains, the gate stops it, production untouched;
 *   5. the bad data removed, the training workers' Python environment changed: trains again;
 *   then `rollback` returns production to the model before.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { stringify } from 'yaml';
import { verifyRun } from '../../client/commands/audit.js';
import { listAliases, rollbackAlias } from '../../client/commands/registry.js';
import { createSchedule, pauseSchedule, triggerSchedule } from '../../client/commands/schedule.js';
import { renderStatus } from '../../client/render.js';
import { jobsPython } from '../../config/worker.js';
import type { WorkerProcess } from '../../infra/harness/processes.js';
import { writeTinyModelFixture, type TinyModelFixture } from '../../infra/harness/specs.js';
import type { AuditRecord } from '../../storage/audit-chain.js';
import type { ObjectStore } from '../../storage/object-store.js';
import type { pipelineWorkflow } from '../../workflows/pipeline.js';
import type { PipelineStatus } from '../../workflows/types.js';
import { stack, startTestWorkers, testClient, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { killSpawnedWorkers, spawnTrainingWorker } from '../helpers/processes.js';

let control: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
let store: ObjectStore;
let fixture: TinyModelFixture;
const python = jobsPython();
const uniq = Date.now().toString(36);
const scheduleId = `nightly-ships-${uniq}`;

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  control = await startTestWorkers({ trainingQueues: [] });
  ({ client, close: closeClient } = await testClient());
  fixture = await writeTinyModelFixture({ python });
}, 120_000);
afterAll(async () => {
  await client?.schedule.getHandle(scheduleId).delete().catch(() => undefined);
  killSpawnedWorkers();
  await closeClient?.();
  await control?.shutdown();
});

async function auditEvents(prefix: string, runId: string): Promise<AuditRecord['event'][]> {
  const keys = (await store.list(`${prefix}/runs/${runId}/audit/`)).map((o) => o.key).sort();
  return Promise.all(keys.map(async (k) => (await store.getJson<AuditRecord>(k))!.event));
}

/** Chat rows whose assistant answers are replaced by letter noise of the same length. */
function corrupted(jsonl: string): string {
  let seed = 7;
  const letter = () => String.fromCharCode(97 + ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % 26));
  return jsonl
    .trim()
    .split('\n')
    .map((line) => {
      const row = JSON.parse(line) as { messages: { role: string; content: string }[] };
      for (const m of row.messages) if (m.role === 'assistant') m.content = Array.from(m.content, (c) => (c === ' ' ? ' ' : letter())).join('');
      return JSON.stringify(row);
    })
    .join('\n') + '\n';
}

describe('the nightly loop', () => {
  it('trains, evaluates against production and promotes; stops a worse model at the gate; "unchanged" on the same inputs; retrains on a toolchain change; rolls back', async () => {
    const prefix = `it-nightly-${uniq}`;
    const pipeline = `nightly-${uniq}`;
    const dataPrefix = `it-nightly-data/${uniq}/chats/`;
    const sftQueue = `nightly-sft-${uniq}`;
    const evalQueue = `nightly-eval-${uniq}`;
    const chats = await readFile(path.join(fixture.dir, fixture.data.sft!), 'utf8');
    const rows = chats.trim().split('\n');
    const file = path.join(fixture.dir, `${pipeline}.yaml`);
    await writeFile(
      file,
      stringify({
        name: pipeline,
        base_model: fixture.baseModel,
        storage: { prefix },
        datasets: {
          chats: { path: `s3://${stack().bucket}/${dataPrefix}`, format: 'chat' },
          heldout: { path: fixture.data.sft_eval, format: 'chat' },
        },
        stages: [
          {
            id: 'sft',
            kind: 'sft',
            dataset: 'chats',
            finetuning: { type: 'lora', lora: { r: 8, alpha: 16 } },
            hyper: { num_epochs: 2, batch_size: 8, learning_rate: 0.003, max_length: 128, seed: 3 },
            resources: { task_queue: sftQueue },
            retry: { maximum_attempts: 1 },
          },
          {
            id: 'eval',
            kind: 'eval',
            from: 'sft',
            dataset: 'heldout',
            baseline: { alias: 'production', if_missing: 'pass' },
            hyper: { max_length: 128 },
            resources: { task_queue: evalQueue },
            retry: { maximum_attempts: 1 },
            gate: { metrics: [{ metric: 'loss_delta', max: 0.01 }] },
          },
        ],
        promote: { stage: 'sft', alias: 'production' },
      }),
    );
    let sftWorker: WorkerProcess = await spawnTrainingWorker(sftQueue, {}, [python, '-m', 'refinery_jobs.sft']);
    await spawnTrainingWorker(evalQueue, {}, [python, '-m', 'refinery_jobs.eval']);
    await createSchedule(client, file, { id: scheduleId, cron: '0 3 * * *', by: 'nightly-test' });
    await pauseSchedule(client, scheduleId, 'test: each night is a trigger');

    const night = async (label: string): Promise<{ runId: string; status: PipelineStatus }> => {
      // A scheduled run's id is the schedule's id and its fire time to the second: a second fire
      // in the same second would fail with RunIdTaken (run-id-claim.test.ts). A night is longer.
      await new Promise((r) => setTimeout(r, 1_100));
      const fired = await triggerSchedule(client, scheduleId, { waitMs: 30_000 });
      expect(fired.outcome, label).toBe('started');
      const runId = fired.runId!;
      const status = await client.workflow
        .getHandle<typeof pipelineWorkflow>(runId)
        .result()
        .then((r) => r.status)
        .catch(async () => (await store.getJson<PipelineStatus>(`${prefix}/runs/${runId}/status.json`))!);
      console.log(`[nightly] ${label}\n${renderStatus(status)}`);
      return { runId, status };
    };
    const production = async () => (await listAliases({ name: pipeline, prefix })).aliases.find((a) => a.alias === 'production');
    const stageOf = (s: PipelineStatus, id: string) => s.stages.find((x) => x.id === id)!;

    // 1. First night: nothing in production yet.
    await store.putBytes(`${dataPrefix}day-1.jsonl`, rows.slice(0, 16).join('\n') + '\n');
    const n1 = await night('night 1: first data');
    expect(n1.status.state).toBe('completed');
    expect(stageOf(n1.status, 'eval')).toMatchObject({ state: 'completed', baseline: expect.stringContaining('points at no model yet') });
    expect(stageOf(n1.status, 'eval').gate).toContain('loss_delta: no baseline yet');
    expect(n1.status.promoted).toMatchObject({ model: pipeline, alias: 'production', stage: 'sft', changed: true, replaced: null });
    expect((await production())?.current).toMatchObject({ runId: n1.runId, stage: 'sft' });

    // 2. More data: scored against night 1's model, better, promoted.
    const more = rows.slice(0, 96).join('\n') + '\n';
    await store.putBytes(`${dataPrefix}day-2.jsonl`, more);
    const n2 = await night('night 2: more data');
    expect(n2.status.state).toBe('completed');
    const m2 = stageOf(n2.status, 'eval').metrics;
    expect(m2.baseline_loss).toBeGreaterThan(0);
    expect(m2.loss_delta).toBeCloseTo(m2.loss! - m2.baseline_loss!, 6);
    expect(m2.loss_delta).toBeLessThan(0); // 6 times the data, the same epochs: a better model
    const baselineEvent = (await auditEvents(prefix, n2.runId)).find((e) => e.type === 'baseline');
    expect(baselineEvent).toMatchObject({ stage: 'eval', model: pipeline, alias: 'production', target: { runId: n1.runId, stage: 'sft' } });
    expect(n2.status.promoted).toMatchObject({ changed: true, replaced: { manifestSha256: n1.status.stages[0]!.artifact!.manifestSha256 } });
    const p2 = await production();
    expect(p2?.current).toMatchObject({ runId: n2.runId });
    expect(p2?.previous).toMatchObject({ runId: n1.runId });

    // 3. Nothing new: unchanged, nothing trained, production untouched.
    const n3 = await night('night 3: no new data');
    expect(n3.status.state).toBe('unchanged');
    expect(n3.status.unchangedSince).toBe(n2.runId);
    expect(n3.status.promoted).toBeUndefined();
    expect((await production())?.current).toMatchObject({ runId: n2.runId });

    // 4. Corrupted data: the model trains, is worse than production, and stops at the gate.
    const logBefore = (await listAliases({ name: pipeline, prefix })).history.length;
    await store.putBytes(`${dataPrefix}day-3.jsonl`, corrupted(more));
    const n4 = await night('night 4: corrupted data');
    expect(n4.status.state).toBe('failed');
    expect(stageOf(n4.status, 'sft').state).toBe('completed');
    const eval4 = stageOf(n4.status, 'eval');
    expect(eval4.state).toBe('failed');
    expect(eval4.metrics.loss_delta).toBeGreaterThan(0.01);
    expect(eval4.gate).toMatch(/^loss_delta = .* is above 0.01$/);
    expect(n4.status.promoted).toBeUndefined();
    const afterBad = await listAliases({ name: pipeline, prefix });
    expect(afterBad.history).toHaveLength(logBefore);
    expect(afterBad.aliases.find((a) => a.alias === 'production')?.current).toMatchObject({ runId: n2.runId });
    expect((await auditEvents(prefix, n4.runId)).some((e) => e.type === 'promoted')).toBe(false);

    // 5. The bad data removed (night 2's is the newest again) and the trainers' Python environment
    // upgraded (one distribution more): the toolchain is in the fingerprint, so it trains again.
    await store.remove([`${dataPrefix}day-3.jsonl`]);
    sftWorker.signal('SIGKILL');
    await sftWorker.exited;
    const site = path.join(fixture.dir, `site-${uniq}`);
    await mkdir(path.join(site, 'newpkg-2.0.dist-info'), { recursive: true });
    await writeFile(path.join(site, 'newpkg-2.0.dist-info', 'METADATA'), 'Metadata-Version: 2.1\nName: newpkg\nVersion: 2.0\n');
    sftWorker = await spawnTrainingWorker(sftQueue, { PYTHONPATH: site }, [python, '-m', 'refinery_jobs.sft']);
    const n5 = await night('night 5: toolchain upgrade');
    expect(n5.status.state).toBe('completed');
    expect(stageOf(n5.status, 'sft').state).toBe('completed'); // trained, not reused
    const keyOf = async (runId: string) => (await auditEvents(prefix, runId)).find((e) => e.type === 'stage-completed' && e.stage === 'sft')?.cacheKey;
    expect(await keyOf(n5.runId)).not.toBe(await keyOf(n2.runId));
    expect(stageOf(n5.status, 'eval').baseline).toContain(`-> ${n2.runId}/sft`);

    // Rollback: production returns to the model it pointed at before the last promotion.
    const before = (await production())!;
    await rollbackAlias({ name: pipeline, alias: 'production', prefix, by: 'oncall', reason: 'test: back to the previous model' });
    const after = await listAliases({ name: pipeline, prefix });
    expect(after.aliases.find((a) => a.alias === 'production')?.current).toEqual(before.previous);
    expect(after.problems).toEqual([]);
    for (const n of [n1, n2, n4, n5]) expect((await verifyRun({ runId: n.runId, prefix, store })).problems, n.runId).toEqual([]);
  });
});
