/**
 * Cache keys that cover what ran, on the real stack (dev server, MinIO, training workers as
 * processes of their own, the contract test job): a stage is reused only when the worker that
 * would train it has the same toolchain (worker/toolchain.ts). Changed alone, each of these makes
 * the next run train again: the Python environment (a distribution more on the worker's
 * PYTHONPATH), the trainer (its script's content); the same toolchain is reused. A nightly-style
 * run (skipIfUnchanged) ends 'unchanged' on the same data and toolchain, and trains after a
 * toolchain change. A worker of another toolchain than the stage was keyed with declines the
 * attempt (another host serves the queue) or fails it with a config error (none does).
 */
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createTrainingActivities } from '../../activities/run-stage-job.js';
import { verifyRun } from '../../client/commands/audit.js';
import { listAliases, promoteRun, rollbackAlias } from '../../client/commands/registry.js';
import { startRun } from '../../client/commands/run.js';
import { validateSpec } from '../../client/commands/validate.js';
import { CONTROL_TASK_QUEUE } from '../../config/temporal.js';
import { jobsPython } from '../../config/worker.js';
import type { AuditRecord } from '../../storage/audit-chain.js';
import { summarizeAttempts } from '../../storage/attempt-records.js';
import { GpuAllocator } from '../../worker/gpu-allocator.js';
import { describeWorkerToolchain } from '../../worker/toolchain.js';
import { pipelineWorkflow } from '../../workflows/pipeline.js';
import type { PipelineResult, StageJobInput } from '../../workflows/types.js';
import { startTestWorkers, testClient, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { killSpawnedWorkers, spawnTrainingWorker } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';
import type { WorkerProcess } from '../../infra/harness/processes.js';

let control: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
let work: string;
const python = jobsPython();
const uniq = Date.now().toString(36);

beforeAll(async () => {
  useTestStackEnv();
  control = await startTestWorkers({ trainingQueues: [] });
  ({ client, close: closeClient } = await testClient());
  work = await mkdtemp(path.join(tmpdir(), 'refinery-tc-keys-'));
});
afterAll(async () => {
  killSpawnedWorkers();
  await closeClient?.();
  await control?.shutdown();
});

async function auditEvents(prefix: string, runId: string): Promise<AuditRecord['event'][]> {
  const keys = (await testStore().list(`${prefix}/runs/${runId}/audit/`)).map((o) => o.key).sort();
  return Promise.all(keys.map(async (k) => (await testStore().getJson<AuditRecord>(k))!.event));
}

/** A trainer script of its own: the contract test job, run by a file whose content is its version. */
async function trainerScript(version: string): Promise<string> {
  const script = path.join(work, 'trainer', 'trainer.py');
  await mkdir(path.dirname(script), { recursive: true });
  // The job runs in jobs/ (its cwd): the package is found there, as with `python -m`.
  await writeFile(script, `import os, runpy, sys\nsys.path.insert(0, os.getcwd())\nrunpy.run_module("refinery_jobs.testjob", run_name="__main__", alter_sys=True)  # ${version}\n`);
  return script;
}

async function stopWorker(w: WorkerProcess): Promise<void> {
  w.signal('SIGKILL');
  await w.exited;
}

describe('cache keys that cover the toolchain', () => {
  it('same toolchain: reused; another Python environment or trainer version: trained again; unchanged vs changed nightly runs', async () => {
    const queue = `tc-${uniq}`;
    const prefix = `it-tc-${uniq}`;
    const { file } = await writeTestSpec({
      name: 'toolchain-keys',
      storage: { prefix },
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 6, save_steps: 3 }, job_params: { step_seconds: 0.05 }, resources: { task_queue: queue } }],
    });
    const { plan } = await validateSpec(file);
    const run = async (name: string, options: { skipIfUnchanged?: boolean } = {}): Promise<PipelineResult & { runId: string }> => {
      const runId = `tc-${name}-${uniq}`;
      if (options.skipIfUnchanged) {
        const handle = await client.workflow.start(pipelineWorkflow, { workflowId: runId, taskQueue: CONTROL_TASK_QUEUE, args: [{ runId, plan, requestedBy: 'test', skipIfUnchanged: true }] });
        return { ...(await handle.result()), runId };
      }
      const started = await startRun(client, file, { id: runId });
      return { ...(await started.handle.result()), runId };
    };
    const stateOf = (r: PipelineResult) => r.status.stages[0]!.state;
    const keyOf = async (r: { runId: string }) => {
      const done = (await auditEvents(prefix, r.runId)).find((e) => e.type === 'stage-completed' || e.type === 'stage-reused');
      return String(done?.cacheKey);
    };

    // 1. A worker with the jobs' own environment trains; a second run is reused.
    let worker = await spawnTrainingWorker(queue);
    const first = await run('first');
    expect(first.status.state).toBe('completed');
    expect(stateOf(first)).toBe('completed');
    const toolchainEvent = (await auditEvents(prefix, first.runId)).find((e) => e.type === 'toolchains');
    expect(toolchainEvent?.byQueue).toMatchObject({ [queue]: { digests: { sft: expect.stringMatching(/^tc-/) } } });
    const again = await run('again');
    expect(stateOf(again)).toBe('reused');
    expect(await keyOf(again)).toBe(await keyOf(first));
    // Nightly: same data, same toolchain → unchanged, nothing trained.
    const nightSame = await run('night-same', { skipIfUnchanged: true });
    expect(nightSame.status.state).toBe('unchanged');

    // 2. Another Python environment (one distribution more, on the worker's PYTHONPATH): trained again.
    await stopWorker(worker);
    const site = path.join(work, 'site');
    await mkdir(path.join(site, 'fakepkg-1.0.dist-info'), { recursive: true });
    await writeFile(path.join(site, 'fakepkg-1.0.dist-info', 'METADATA'), 'Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n');
    worker = await spawnTrainingWorker(queue, { PYTHONPATH: site });
    // Nightly: same data, new toolchain → it trains.
    const nightEnv = await run('night-env', { skipIfUnchanged: true });
    expect(nightEnv.status.state).toBe('completed');
    expect(stateOf(nightEnv)).toBe('completed');
    expect(await keyOf(nightEnv)).not.toBe(await keyOf(first));

    // 3. Another trainer (a script of its own), then a new version of that script: trained each time.
    await stopWorker(worker);
    worker = await spawnTrainingWorker(queue, {}, [python, await trainerScript('v1')]);
    const v1 = await run('trainer-v1');
    expect(stateOf(v1)).toBe('completed');
    expect(stateOf(await run('trainer-v1-again'))).toBe('reused');
    await stopWorker(worker);
    worker = await spawnTrainingWorker(queue, {}, [python, await trainerScript('v2')]);
    const v2 = await run('trainer-v2');
    expect(stateOf(v2)).toBe('completed');
    expect(new Set([await keyOf(first), await keyOf(nightEnv), await keyOf(v1), await keyOf(v2)]).size).toBe(4);
    for (const r of [first, again, nightEnv, v1, v2]) expect((await verifyRun({ runId: r.runId, prefix, store: testStore() })).problems).toEqual([]);
    await stopWorker(worker);

    // The registry on real runs: promote the first run's model, then v2's; roll back to the first.
    await promoteRun({ runId: first.runId, stage: 'sft', alias: 'production', prefix, by: 'alice', reason: 'first nightly' });
    const promoted = await promoteRun({ runId: v2.runId, stage: 'sft', alias: 'production', prefix, by: 'alice', reason: 'trainer v2' });
    expect(promoted.record.event.replaced?.runId).toBe(first.runId);
    await rollbackAlias({ name: 'toolchain-keys', alias: 'production', prefix, by: 'bob', reason: 'v2 regresses' });
    const aliases = await listAliases({ name: 'toolchain-keys', prefix });
    expect(aliases.aliases.find((a) => a.alias === 'production')?.current).toMatchObject({ runId: first.runId, stage: 'sft', manifestSha256: first.artifacts.sft!.manifestSha256 });
    expect(aliases.problems).toEqual([]);
    // Only a completed run: the unchanged night trained nothing to promote.
    await expect(promoteRun({ runId: nightSame.runId, stage: 'sft', alias: 'production', prefix, reason: 'x' })).rejects.toThrow(/is unchanged: only a completed run/);
  });

  it('a worker of another toolchain declines the attempt when another host serves the queue, and fails it when none does', async () => {
    const store = testStore();
    const keyed = await describeWorkerToolchain({ jobCommand: () => [python, '-m', 'refinery_jobs.testjob'], kinds: ['sft'], python, llamaCppEnv: {} });
    const otherScript = await trainerScript('other');
    const mine = await describeWorkerToolchain({ jobCommand: () => [python, otherScript], kinds: ['sft'], python, llamaCppEnv: {} });
    const { file } = await writeTestSpec({ name: 'toolchain-mismatch', storage: { prefix: `it-tcm-${uniq}` }, stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 4, save_steps: 2 } }] });
    const { plan } = await validateSpec(file);
    const attempt = async (anotherHostServes: boolean, n: number): Promise<ApplicationFailure> => {
      const activities = createTrainingActivities({
        store,
        scratchDir: await mkdtemp(path.join(work, 'scratch-')),
        jobCommand: () => [python, '-m', 'refinery_jobs.testjob'],
        jobCwd: work,
        gpus: new GpuAllocator([]),
        toolchain: Promise.resolve(mine),
        health: { host: 'gpu-b', quarantined: () => undefined, preflightFailed: async () => undefined, jobFailed: async () => undefined, anotherHostServes: async () => anotherHostServes },
      });
      const input: StageJobInput = {
        runId: `tcm-${uniq}`,
        storagePrefix: plan.storage.prefix,
        stage: plan.stages[0]!,
        cacheKey: `tcm${n}`,
        artifactPrefix: `${plan.storage.prefix}/artifacts/sft-tcm${n}-${uniq}`,
        inputs: {},
        datasets: {},
        toolchain: { digest: keyed.digest('sft'), parts: keyed.parts },
        attempt: n,
      };
      return new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000 }).run(activities.runStageJob, input).then(
        () => {
          throw new Error('the attempt ran');
        },
        (err: unknown) => err as ApplicationFailure,
      );
    };
    const declined = await attempt(true, 1);
    expect(declined.type).toBe('ToolchainDeclined');
    expect(declined.nonRetryable).toBe(false);
    expect(declined.message).toContain('they differ in: trainer');
    const failed = await attempt(false, 2);
    expect(failed.type).toBe('ToolchainMismatch');
    expect(failed.nonRetryable).toBe(true);
    // Both are in the attempts' own records, with the host that refused.
    const attempts = await summarizeAttempts(store, { storagePrefix: plan.storage.prefix, runId: `tcm-${uniq}`, stageId: 'sft' });
    expect(attempts.map((a) => [a.attempt, a.outcome, a.failureKind, a.host])).toEqual([
      [1, 'declined', 'toolchain-declined', 'gpu-b'],
      [2, 'failed', 'toolchain-mismatch', 'gpu-b'],
    ]);
  });
});
