/**
 * The stage runtime against the real stack, with the contract test job: a worker killed with
 * SIGKILL mid-stage and another taking over from the last committed checkpoint; a cancelled run
 * leaving no process behind; a stalled job killed and retried.
 */
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { startRun } from '../../client/commands/run.js';
import { runStatus } from '../../client/commands/manage.js';
import { listCommittedSteps } from '../../storage/checkpoints.js';
import { committedFileKey, readCommitted } from '../../storage/commit.js';
import { jobsPython } from '../../config/worker.js';
import { processesInGroup, readProcStat } from '../../activities/proc.js';
import { startTestWorkers, testClient, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { killSpawnedWorkers, spawnTrainingWorker, until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

let control: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;

beforeAll(async () => {
  useTestStackEnv();
  // Workflows and control activities in this process; training only in separate worker processes.
  control = await startTestWorkers({ trainingQueues: [] });
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  killSpawnedWorkers();
  await closeClient?.();
  await control?.shutdown();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function jobPids(scratch: string): Promise<number[]> {
  // Job argv carries its config path under <scratch>/stages/ (the worker's own argv does not).
  const r = await execa('pgrep', ['-f', path.join(scratch, 'stages')], { reject: false });
  return r.stdout.split('\n').filter(Boolean).map(Number);
}

async function artifactPrefix(prefix: string): Promise<string | undefined> {
  const objects = await testStore().list(`${prefix}/artifacts/`, false);
  return objects[0]?.key.replace(/\/$/, '');
}

describe('stage runtime', () => {
  it('resumes on another worker from the last committed checkpoint after kill -9', async () => {
    const queue = `gpu-kill-${Date.now()}`;
    const prefix = `it-kill-${Date.now()}`;
    const { file } = await writeTestSpec({
      name: 'kill-test',
      storage: { prefix },
      stages: [
        {
          id: 'sft',
          kind: 'sft',
          dataset: 'chats',
          hyper: { max_steps: 60, save_steps: 5 },
          job_params: { step_seconds: 0.1 },
          resources: { task_queue: queue },
          timeouts: { heartbeat: '3s' },
          retry: { initial_interval: '1s' },
        },
      ],
    });
    const a = await spawnTrainingWorker(queue);
    const { runId, handle } = await startRun(client, file, { id: `kill-${Date.now()}` });
    await until('a committed checkpoint at step >= 15', async () => (await runStatus(client, runId)).stages[0]!.lastCommittedStep! >= 15);
    const jobsOfA = await jobPids(a.scratch);
    a.signal('SIGKILL');
    await a.exited;
    const stepAtKill = (await runStatus(client, runId)).stages[0]!.step;
    // The job dies with its worker (parent-death signal): no orphan keeps training.
    await until('the dead worker\'s job to exit', async () => jobsOfA.every((pid) => !alive(pid)), 10_000);
    const committedAtKill = (await listCommittedSteps(testStore(), (await artifactPrefix(prefix))!))[0]!;

    await spawnTrainingWorker(queue);
    const result = await handle.result();
    const sft = result.status.stages[0]!;
    expect(sft.state).toBe('completed');
    expect(sft.resumedFromStep).toBe(committedAtKill);
    expect(sft.attempt).toBeGreaterThanOrEqual(2);
    // Lost work is at most one checkpoint interval.
    expect(stepAtKill - committedAtKill).toBeLessThanOrEqual(5 + 2);
    const out = await testStore().getJson<{ resumed_from_step: number; steps: number }>(committedFileKey((await readCommitted(testStore(), result.artifacts.sft!.prefix))!, 'result.json'));
    expect(out?.resumed_from_step).toBe(committedAtKill);
    expect(out?.steps).toBe(60);
  });

  it('cancel stops the job and everything it spawned; the run shows cancelled', async () => {
    const queue = `gpu-cancel-${Date.now()}`;
    const w = await spawnTrainingWorker(queue);
    const childPidFile = path.join(w.scratch, 'child.pid');
    const { file } = await writeTestSpec({
      name: 'cancel-test',
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 1000 }, job_params: { step_seconds: 0.1, child_pid_file: childPidFile, ignore_sigterm: true }, resources: { task_queue: queue }, timeouts: { heartbeat: '2s' } }],
    });
    const { runId, handle } = await startRun(client, file, { id: `cancel-${Date.now()}` });
    await until('the job to make progress', async () => (await runStatus(client, runId)).stages[0]!.step >= 3);
    const pids = await jobPids(w.scratch);
    expect(pids.length).toBeGreaterThan(0);
    const { readFile } = await import('node:fs/promises');
    const childPid = Number(await readFile(childPidFile, 'utf8'));
    await handle.cancel();
    await expect(handle.result()).rejects.toThrow();
    const status = await runStatus(client, runId);
    expect(status.state).toBe('cancelled');
    expect(status.stages[0]!.state).toBe('cancelled');
    // The job ignored SIGTERM: the worker escalated to SIGKILL on the whole process group.
    await until('no job process left', async () => [...pids, childPid].every((pid) => !alive(pid)), 20_000);
    expect(await jobPids(w.scratch)).toEqual([]);
  });

  it('a worker killed with SIGKILL leaves no process of its job behind, the job\'s own children included', async () => {
    const queue = `gpu-orphans-${Date.now()}`;
    const w = await spawnTrainingWorker(queue);
    const childPidFile = path.join(w.scratch, 'child.pid');
    const { file } = await writeTestSpec({
      name: 'orphan-test',
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 1000 }, job_params: { step_seconds: 0.1, child_pid_file: childPidFile }, resources: { task_queue: queue }, timeouts: { heartbeat: '3s' }, retry: { maximum_attempts: 1 } }],
    });
    const { runId, handle } = await startRun(client, file, { id: `orphans-${Date.now()}` });
    await until('the job to make progress', async () => (await runStatus(client, runId)).stages[0]!.step >= 3);
    const { readFile } = await import('node:fs/promises');
    const childPid = Number(await readFile(childPidFile, 'utf8'));
    // Found by process group, not by command line: the job's child is in the job's group.
    const group = readProcStat(childPid)!.pgrp;
    const members = (await processesInGroup(group)).map((p) => p.pid);
    expect(members).toContain(childPid);
    expect(members.length).toBeGreaterThanOrEqual(2); // the job and its child (and the supervisor)
    w.signal('SIGKILL');
    await until('no live process in the job\'s process group', async () => (await processesInGroup(group)).length === 0, 15_000);
    await handle.cancel();
    await handle.result().catch(() => undefined);
  });

  it('kills a stalled job and retries it, saying so', async () => {
    const queue = `gpu-stall-${Date.now()}`;
    await spawnTrainingWorker(queue);
    const { file } = await writeTestSpec({
      name: 'stall-test',
      stages: [
        {
          id: 'sft',
          kind: 'sft',
          dataset: 'chats',
          hyper: { max_steps: 12, save_steps: 4 },
          job_params: { step_seconds: 0.05, hang_at_step: 6 },
          resources: { task_queue: queue },
          timeouts: { stall: '2s', heartbeat: '5s' },
          retry: { initial_interval: '1s' },
        },
      ],
    });
    const { runId, handle } = await startRun(client, file, { id: `stall-${Date.now()}` });
    const result = await handle.result();
    expect(result.status.stages[0]!.state).toBe('completed');
    expect(result.status.stages[0]!.resumedFromStep).toBe(4);
    const history = await client.workflow.getHandle(`${runId}--sft`).fetchHistory();
    const failure = history.events!.find((e) => e.activityTaskFailedEventAttributes)?.activityTaskFailedEventAttributes?.failure;
    // The first attempt's failure is recorded on the retry, not as a failed event; look at the retry's last failure.
    const started = history.events!.filter((e) => e.activityTaskStartedEventAttributes?.attempt === 2);
    const lastFailure = failure ?? started[0]?.activityTaskStartedEventAttributes?.lastFailure;
    expect(lastFailure?.message).toMatch(/stalled/);
  });
});

// Keep the Python env resolvable for helpers (fails early with a clear message if missing).
jobsPython();
