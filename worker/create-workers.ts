/**
 * Builds the workers of one process: the control worker (workflows + control activities, CPU
 * task queue) and/or a training worker per GPU task queue. Tests use this directly.
 */
import path from 'node:path';
import type { DataConverter } from '@temporalio/common';
import { NativeConnection, Worker, type WorkflowBundle } from '@temporalio/worker';
import { createAuditActivities, createControlActivities, createTrainingActivities } from '../activities/index.js';
import type { StageKind } from '../spec/schema.js';
import { ObjectStore } from '../storage/object-store.js';
import { REPO_ROOT } from '../config/paths.js';
import { CONTROL_TASK_QUEUE } from '../config/temporal.js';
import { llamaCppToolEnv } from '../config/worker.js';
import { GpuAllocator } from './gpu-allocator.js';
import { codeVersion, jobsVersion } from './jobs-version.js';
import { reapStaleJobs } from './stale-jobs.js';

export interface WorkerOptions {
  connection: NativeConnection;
  namespace: string;
  store: ObjectStore;
  /** Which roles this process plays. */
  control: boolean;
  /** GPU task queues to serve (empty: no training). */
  trainingQueues: string[];
  gpus: number[];
  scratchDir: string;
  python: string;
  /** Replace the default Python job launcher (other trainers, test jobs). */
  jobCommand?: (kind: StageKind) => [string, ...string[]];
  /**
   * Payload encryption (codec/data-converter.ts); default: plain JSON. A prebuilt `workflowBundle`
   * must have been bundled with the same `failureConverterPath` (the sandbox ignores this one).
   */
  dataConverter?: DataConverter;
  workflowBundle?: WorkflowBundle;
  /** How long in-flight training may take to stop on shutdown before it is cancelled. */
  shutdownGraceTime?: string;
  killGraceMs?: number;
  /** Longest time a job's output waits before it is flushed to the bucket (default 10 s). */
  logFlushMs?: number;
  /** Where the stale-job reaper reports what it found in the scratch dir (default: console.warn). */
  staleJobLog?: (line: string) => void;
}

/** The most a training heartbeat (and so live progress) is held back by the SDK. */
export const HEARTBEAT_THROTTLE = '2s';

/** Python jobs: one module per stage kind (cpt shares the SFT recipe). */
export function pythonJobCommand(python: string): (kind: StageKind) => [string, ...string[]] {
  return (kind) => [python, '-m', `refinery_jobs.${kind === 'cpt' ? 'sft' : kind}`];
}

export async function createWorkers(options: WorkerOptions): Promise<Worker[]> {
  // Jobs an earlier worker on this scratch dir left running (its supervisor died with it) are
  // killed before any task queue is polled: worker/stale-jobs.ts.
  await reapStaleJobs({ scratchDir: options.scratchDir, log: options.staleJobLog });
  const workers: Worker[] = [];
  if (options.control) {
    const [jobs, code] = await Promise.all([jobsVersion(), codeVersion()]);
    workers.push(
      await Worker.create({
        connection: options.connection,
        namespace: options.namespace,
        taskQueue: CONTROL_TASK_QUEUE,
        dataConverter: options.dataConverter,
        ...(options.workflowBundle
          ? { workflowBundle: options.workflowBundle }
          : { workflowsPath: path.join(REPO_ROOT, 'workflows', 'index.ts') }),
        activities: {
          ...createControlActivities({ store: options.store, jobsVersion: jobs, codeVersion: code }),
          ...createAuditActivities(options.store),
        },
      }),
    );
  }
  const gpus = new GpuAllocator(options.gpus);
  const training = createTrainingActivities({
    store: options.store,
    scratchDir: options.scratchDir,
    jobCommand: options.jobCommand ?? pythonJobCommand(options.python),
    jobCwd: path.join(REPO_ROOT, 'jobs'),
    gpus,
    jobEnv: (kind) => (kind === 'gguf' ? llamaCppToolEnv() : {}),
    killGraceMs: options.killGraceMs,
    logFlushMs: options.logFlushMs,
  });
  for (const taskQueue of options.trainingQueues) {
    workers.push(
      await Worker.create({
        connection: options.connection,
        namespace: options.namespace,
        taskQueue,
        dataConverter: options.dataConverter,
        activities: training,
        // One job per GPU; a CPU-only worker runs one job at a time.
        maxConcurrentActivityTaskExecutions: Math.max(1, options.gpus.length),
        shutdownGraceTime: options.shutdownGraceTime ?? '30s',
        // Live progress is the training activity's heartbeat details (no history events), so how
        // often they reach the server bounds how far `status` lags the job; and the SDK's default
        // throttle (0.8 x the heartbeat timeout, up to 60 s) leaves a short timeout only 20 % slack
        // before a busy worker's attempt is declared dead. 2 s: fresh progress, and a 3 s heartbeat
        // timeout still has a second to spare. Cost: one heartbeat RPC per running attempt per 2 s.
        maxHeartbeatThrottleInterval: HEARTBEAT_THROTTLE,
        defaultHeartbeatThrottleInterval: HEARTBEAT_THROTTLE,
      }),
    );
  }
  return workers;
}
