/**
 * Failures as GPU fleets see them (issue #19), injected into real parts — real Temporal, real
 * MinIO, real worker processes, the contract test job (jobs/refinery_jobs/testjob.py):
 *   - drain for deploys: SIGTERM or `refinery worker drain` → checkpoint now, commit, attempt
 *     drained, resumed elsewhere at that step, no stage attempt used (maximum_attempts: 1)
 *   - a lost worker costs no stage attempt either
 *   - out of memory (reported by the job, and a real kernel OOM kill under a per-job memory cgroup)
 *     → half the batch, twice the accumulation, resumed from the checkpoint; a floor
 *   - divergence (NaN loss) → "diverged", resumed from a checkpoint before it, at a lower learning rate
 *   - bad nodes (two "hosts", REFINERY_HOST): a failed preflight quarantines the host and the stage
 *     runs elsewhere; a retry avoids the host that failed it; jobs of N stages failing on one host
 *     quarantine it; `refinery worker clear` lifts it
 * Real trainers (drain, OOM): fleet-failures-real.test.ts.
 */
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { runStatus } from '../../client/commands/manage.js';
import { startRun } from '../../client/commands/run.js';
import { REPO_ROOT } from '../../config/paths.js';
import { summarizeAttempts, type AttemptSummary } from '../../storage/attempt-records.js';
import { readCommitted } from '../../storage/commit.js';
import { listWorkers, readQuarantine } from '../../storage/fleet.js';
import { layout } from '../../storage/layout.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { startTestWorkers, testClient, testJobCommand, testStackEnv, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { killSpawnedWorkers, spawnTrainingWorker, until } from '../helpers/processes.js';
import { attemptEvents } from '../helpers/job-events.js';
import { writeTestSpec } from '../helpers/specs.js';

let store: ObjectStore;
let control: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
const uniq = (what: string) => `${what}-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  control = await startTestWorkers({ trainingQueues: [] });
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  killSpawnedWorkers();
  await closeClient?.();
  await control?.shutdown();
});

const attemptsOf = (prefix: string, runId: string, stageId = 'sft'): Promise<AttemptSummary[]> => summarizeAttempts(store, { storagePrefix: prefix, runId, stageId });

/** A one-stage spec of the test job on its own queue. */
async function oneStage(o: { prefix: string; queue: string; hyper?: Record<string, unknown>; job_params?: Record<string, unknown>; retry?: Record<string, unknown>; divergence?: Record<string, unknown>; timeouts?: Record<string, unknown> }) {
  return writeTestSpec({
    name: 'fleet-test',
    storage: { prefix: o.prefix },
    stages: [
      {
        id: 'sft',
        kind: 'sft',
        dataset: 'chats',
        hyper: { max_steps: 30, save_steps: 5, ...o.hyper },
        job_params: { step_seconds: 0.05, ...o.job_params },
        resources: { task_queue: o.queue },
        timeouts: { heartbeat: '4s', ...o.timeouts },
        retry: { maximum_attempts: 1, initial_interval: '1s', ...o.retry },
        ...(o.divergence ? { divergence: o.divergence } : {}),
      },
    ],
  });
}

/** The job events of one attempt, from the bucket. */
const jobEvents = (prefix: string, runId: string, attempt: number) => attemptEvents(store, { prefix, runId, stage: 'sft', attempt });

describe('drain for deploys', () => {
  it('SIGTERM: the job checkpoints now, the attempt ends drained, another worker resumes at that step; no attempt used', async () => {
    const queue = uniq('drain');
    const prefix = uniq('drain-run');
    // Scheduled checkpoints are far apart: only the drain's own request can save ~0 steps.
    const { file } = await oneStage({ prefix, queue, hyper: { max_steps: 400, save_steps: 1000 }, job_params: { step_seconds: 0.05 } });
    const a = await spawnTrainingWorker(queue, { REFINERY_HOST: uniq('host-a') });
    const { runId, handle } = await startRun(client, file, { id: uniq('drain') });
    await until('the job past step 40', async () => (await runStatus(client, runId)).stages[0]!.step >= 40, 60_000, 100);
    const b = await spawnTrainingWorker(queue, { REFINERY_HOST: uniq('host-b') });
    const termAt = Date.now();
    a.signal('SIGTERM');
    const exit = await a.exited;
    expect(exit.code, a.logTail(40)).toBe(0);
    const drainSeconds = (Date.now() - termAt) / 1000;
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');

    const [first, second] = await attemptsOf(prefix, runId);
    expect(first).toMatchObject({ outcome: 'drained', failureClass: 'infrastructure', failureKind: 'drained' });
    // The drain's checkpoint is the only one attempt 1 committed, and attempt 2 resumed from it.
    expect(first!.checkpoints).toHaveLength(1);
    const drainedStep = first!.checkpoints[0]!;
    expect(second!.resumedFromStep).toBe(drainedStep);
    expect(second!.outcome).toBe('completed');
    // ~0 steps lost: the job trained at most a step or two between the request and its checkpoint
    // (step 0.05 s), and nothing after it.
    const events1 = await jobEvents(prefix, runId, 1);
    const lastStep1 = Math.max(...events1.filter((e) => e.event === 'progress').map((e) => e.step as number));
    expect(lastStep1 - drainedStep).toBeLessThanOrEqual(2);
    expect(drainedStep).toBeGreaterThanOrEqual(40);
    expect(drainSeconds).toBeLessThan(20);
    // The trail says which kind each attempt ended with.
    const status = await runStatus(client, runId);
    expect(status.stages[0]!.attempts?.map((x) => [x.outcome, x.failureClass ?? null])).toEqual([
      ['drained', 'infrastructure'],
      ['completed', null],
    ]);
    await b.stop();
  });

  it('`refinery worker drain --host`: the same through a request in the bucket; a lost worker costs no attempt either', async () => {
    const queue = uniq('cli-drain');
    const prefix = uniq('cli-drain-run');
    const hostA = uniq('host-a');
    const { file } = await oneStage({ prefix, queue, hyper: { max_steps: 300, save_steps: 20 }, job_params: { step_seconds: 0.05 } });
    const a = await spawnTrainingWorker(queue, { REFINERY_HOST: hostA });
    const { runId, handle } = await startRun(client, file, { id: uniq('cli-drain') });
    await until('the job past step 30', async () => (await runStatus(client, runId)).stages[0]!.step >= 30, 60_000, 100);
    const b = await spawnTrainingWorker(queue, { REFINERY_HOST: uniq('host-b') });
    expect((await listWorkers(store)).filter((w) => w.live && w.host === hostA).map((w) => w.state)).toEqual(['active']);
    const cli = await execa(path.join(REPO_ROOT, 'bin', 'refinery'), ['worker', 'drain', '--host', hostA, '--by', 'deploy-bot', '--timeout', '60s'], { env: { ...process.env, ...testStackEnv() }, reject: false });
    expect(cli.exitCode, cli.stderr).toBe(0);
    expect(cli.stdout).toMatch(/drained: /);
    expect((await a.exited).code).toBe(0);
    expect((await listWorkers(store)).some((w) => w.live && w.host === hostA)).toBe(false);

    // Now the worker that took over is lost (SIGKILL): still no stage attempt used (maximum_attempts 1).
    await until('attempt 2 past its resume point', async () => (await runStatus(client, runId)).stages[0]!.step >= (await attemptsOf(prefix, runId))[0]!.checkpoints.at(-1)! + 25, 60_000, 100);
    const c = await spawnTrainingWorker(queue, { REFINERY_HOST: uniq('host-c') });
    await b.kill9();
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    const attempts = await attemptsOf(prefix, runId);
    expect(attempts.map((x) => [x.outcome, x.failureKind ?? null])).toEqual([
      ['drained', 'drained'],
      ['lost', 'worker-lost'],
      ['completed', null],
    ]);
    await c.stop();
  });
});

describe('out of memory', () => {
  let workers: TestWorkers;
  const queue = uniq('oom');
  beforeAll(async () => {
    // Each job in a memory cgroup of its own, limited to 300 MiB: a real kernel OOM kill.
    workers = await startTestWorkers({ control: false, trainingQueues: [queue], jobCommand: testJobCommand(), jobMemoryLimitBytes: 300 * 1024 * 1024 });
  });
  afterAll(async () => workers?.shutdown());

  it('the job says CUDA OOM: the retries halve the batch and double accumulation, resuming from the checkpoint; no attempt used', async () => {
    const prefix = uniq('oom-run');
    const { file } = await oneStage({ prefix, queue, hyper: { batch_size: 8, gradient_accumulation: 1 }, job_params: { oom_above_batch: 2, oom_at_step: 7 } });
    const { runId, handle } = await startRun(client, file, { id: uniq('oom') });
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    const attempts = await attemptsOf(prefix, runId);
    expect(attempts.map((a) => [a.outcome, a.failureKind ?? null, a.adjustments?.batchSize ?? 8, a.adjustments?.gradientAccumulation ?? 1])).toEqual([
      ['failed', 'oom', 8, 1],
      ['failed', 'oom', 4, 2],
      ['completed', null, 2, 4],
    ]);
    // The first attempt checkpointed at step 5 before its OOM at 7: the retries resume there.
    expect(attempts[1]!.resumedFromStep).toBe(5);
    expect(attempts[0]!.reason).toMatch(/out of memory after step 6 \(batch 8 x 1\): CUDA out of memory/);
  });

  it('the kernel kills the job (OOM killer, per-job memory limit): recognised, and retried with a smaller batch', async () => {
    const prefix = uniq('kernel-oom-run');
    // batch x 100 MiB: 400 MiB is killed under the 300 MiB limit, 200 MiB fits.
    const { file } = await oneStage({ prefix, queue, hyper: { max_steps: 12, batch_size: 4 }, job_params: { mb_per_sample: 100 } });
    const { runId, handle } = await startRun(client, file, { id: uniq('kernel-oom') });
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    const attempts = await attemptsOf(prefix, runId);
    expect(attempts.map((a) => [a.outcome, a.failureKind ?? null, a.adjustments?.batchSize ?? 4])).toEqual([
      ['failed', 'oom', 4],
      ['completed', null, 2],
    ]);
    expect(attempts[0]!.reason).toMatch(/killed by the kernel's OOM killer/);
  });

  it('at the floor it fails with a clear message', async () => {
    const prefix = uniq('oom-floor-run');
    const { file } = await oneStage({ prefix, queue, hyper: { batch_size: 8 }, job_params: { oom_above_batch: 1 }, retry: { oom_min_batch_size: 4, maximum_attempts: 5 } });
    const { handle } = await startRun(client, file, { id: uniq('oom-floor') });
    await expect(handle.result()).rejects.toThrow();
    const status = (await runStatus(client, handle.workflowId)).stages[0]!;
    expect(status.state).toBe('failed');
    expect(status.error).toMatch(/out of memory at per-device batch size 4 \(gradient accumulation 2\), the floor \(retry.oom_min_batch_size: 4\)/);
  });
});

describe('divergence', () => {
  let workers: TestWorkers;
  const queue = uniq('nan');
  beforeAll(async () => {
    workers = await startTestWorkers({ control: false, trainingQueues: [queue], jobCommand: testJobCommand() });
  });
  afterAll(async () => workers?.shutdown());

  it('a NaN loss ends the attempt as diverged; the retry resumes from a checkpoint before it, at a lower learning rate', async () => {
    const prefix = uniq('nan-run');
    // NaN from step 13 while the learning rate is above 5e-4; lr_factor 0.1 takes the retry below it.
    const { file } = await oneStage({
      prefix,
      queue,
      hyper: { max_steps: 24, save_steps: 4, learning_rate: 1e-3 },
      job_params: { nan_at_step: 13, nan_above_lr: 5e-4 },
      retry: { maximum_attempts: 2 },
      divergence: { lr_factor: 0.1 },
    });
    const { runId, handle } = await startRun(client, file, { id: uniq('nan') });
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    const [first, second] = await attemptsOf(prefix, runId);
    expect(first).toMatchObject({ outcome: 'failed', failureClass: 'job', failureKind: 'diverged' });
    expect(first!.reason).toMatch(/diverged at step 13: loss is NaN/);
    // Last good step 12: checkpoint 12 may already hold the weights that gave NaN; 8 is known good.
    expect(second!.resumedFromStep).toBe(8);
    expect(second!.adjustments?.learningRate).toBeCloseTo(1e-4);
    // NaN is NaN in the job's events (not dropped), and checkpoints carry the loss they were taken at.
    const events1 = await jobEvents(prefix, runId, 1);
    expect(events1.find((e) => e.event === 'progress' && e.step === 13)?.loss).toBe('NaN');
    const artifact = (await store.list(`${prefix}/artifacts/`, false))[0]!.key.replace(/\/$/, '');
    const at24 = await readCommitted(store, layout.checkpoint(artifact, 24));
    expect(at24?.manifest.meta?.loss).toBeCloseTo(2 / (1 + 0.1 * 24), 5);
  });
});

describe('bad nodes', () => {
  it('a node that fails its preflight is quarantined, says so in `status` and `refinery workers`, and the stage runs elsewhere', async () => {
    const queue = uniq('preflight');
    const prefix = uniq('preflight-run');
    const bad = uniq('node-bad');
    const { file } = await oneStage({ prefix, queue, hyper: { max_steps: 10 } });
    // Given GPU 0 on a machine that has none: the preflight finds /dev/nvidia0 missing.
    const badWorker = await spawnTrainingWorker(queue, { REFINERY_HOST: bad, REFINERY_GPUS: '0' });
    const { runId, handle } = await startRun(client, file, { id: uniq('preflight') });
    await until('the bad node quarantined', async () => (await readQuarantine(store, bad)) !== undefined, 60_000, 200);
    const good = await spawnTrainingWorker(queue, { REFINERY_HOST: uniq('node-good') });
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');

    const quarantine = (await readQuarantine(store, bad))!;
    expect(quarantine.reason).toMatch(/preflight failed: .*nvidia0/);
    const attempts = await attemptsOf(prefix, runId);
    expect(attempts[0]).toMatchObject({ host: bad, outcome: 'failed', failureClass: 'infrastructure', failureKind: 'node-failure' });
    expect(attempts.at(-1)).toMatchObject({ outcome: 'completed' });
    expect(attempts.at(-1)!.host).not.toBe(bad);
    // maximum_attempts 1, yet completed: a bad node costs no stage attempt.
    const status = await runStatus(client, runId);
    expect(status.quarantinedHosts?.map((q) => q.host)).toContain(bad);
    const cli = await execa(path.join(REPO_ROOT, 'bin', 'refinery'), ['workers'], { env: { ...process.env, ...testStackEnv() }, reject: false });
    expect(cli.stdout).toMatch(new RegExp(`host ${bad} QUARANTINED since .*preflight failed`));
    expect(cli.stdout).toMatch(new RegExp(`host ${bad}\\s+quarantined`));

    // `refinery worker clear` lifts it; the worker notices and publishes itself active again.
    const clear = await execa(path.join(REPO_ROOT, 'bin', 'refinery'), ['worker', 'clear', bad], { env: { ...process.env, ...testStackEnv() }, reject: false });
    expect(clear.stdout).toMatch(/quarantine cleared/);
    expect(await readQuarantine(store, bad)).toBeUndefined();
    await until('the bad node active again', async () => (await listWorkers(store)).some((w) => w.host === bad && w.live && w.state === 'active'), 40_000, 500);
    await badWorker.kill9();
    await good.stop();
  });

  it('the retry of a stage avoids the host that just failed it while another host can take it', async () => {
    const queue = uniq('avoid');
    const prefix = uniq('avoid-run');
    const bad = uniq('node-crashy');
    // Two attempts: if the retry landed on the crashing host again, the stage would fail.
    const { file } = await oneStage({ prefix, queue, hyper: { max_steps: 10 }, retry: { maximum_attempts: 2, initial_interval: '8s' } });
    const badWorker = await spawnTrainingWorker(queue, { REFINERY_HOST: bad, REFINERY_TESTJOB_CRASH_AT_STEP: '2' });
    const { runId, handle } = await startRun(client, file, { id: uniq('avoid') });
    await until('attempt 1 failed on the crashing host', async () => (await attemptsOf(prefix, runId))[0]?.outcome === 'failed', 60_000, 200);
    const good = await spawnTrainingWorker(queue, { REFINERY_HOST: uniq('node-fine') });
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    const attempts = await attemptsOf(prefix, runId);
    expect(attempts[0]).toMatchObject({ host: bad, failureClass: 'job', failureKind: 'crash' });
    // Declines (if the crashing host polled first) cost nothing; the attempt that ran went elsewhere.
    for (const a of attempts.slice(1, -1)) expect([a.host, a.outcome, a.failureKind]).toEqual([bad, 'declined', 'host-avoided']);
    expect(attempts.at(-1)).toMatchObject({ outcome: 'completed' });
    expect(attempts.at(-1)!.host).not.toBe(bad);
    await badWorker.kill9();
    await good.stop();
  });

  it('a host whose jobs fail attempts of N different stages is quarantined and takes no more GPU work', async () => {
    const queue = uniq('flaky');
    const prefix = uniq('flaky-run');
    const bad = uniq('node-flaky');
    const stage = (id: string) => ({ id, kind: 'sft', dataset: 'chats', hyper: { max_steps: 8 }, job_params: { step_seconds: 0.05 }, resources: { task_queue: queue }, timeouts: { heartbeat: '4s' }, retry: { maximum_attempts: 6, initial_interval: '1s' } });
    const { file } = await writeTestSpec({ name: 'flaky-test', storage: { prefix }, stages: [stage('a'), stage('b'), { ...stage('c'), from: 'a' }] });
    const badWorker = await spawnTrainingWorker(queue, { REFINERY_HOST: bad, REFINERY_TESTJOB_CRASH_AT_STEP: '2', REFINERY_QUARANTINE_AFTER: '2' });
    const { runId, handle } = await startRun(client, file, { id: uniq('flaky') });
    await until('the flaky host quarantined', async () => (await readQuarantine(store, bad)) !== undefined, 90_000, 200);
    const quarantinedAt = new Date().toISOString();
    const good = await spawnTrainingWorker(queue, { REFINERY_HOST: uniq('node-steady') });
    const result = await handle.result();
    expect(result.status.state).toBe('completed');
    expect((await readQuarantine(store, bad))!.reason).toMatch(/jobs of 2 different stages failed here/);
    for (const id of ['a', 'b', 'c']) {
      const attempts = await attemptsOf(prefix, runId, id);
      // Nothing ran on the quarantined host after the quarantine: every later attempt went to the good one.
      for (const a of attempts) if (a.host === bad && a.outcome !== 'declined') expect(a.startedAt! < quarantinedAt, `${id} attempt ${a.attempt}`).toBe(true);
      expect(attempts.at(-1)!.host).not.toBe(bad);
    }
    expect((await listWorkers(store)).find((w) => w.host === bad && w.live)?.state).toBe('quarantined');
    await badWorker.kill9();
    await good.stop();
  });
});
