/**
 * Builds the workers of one process: the control worker (workflows + control activities, CPU
 * task queue) and/or the training pool (a Temporal worker per GPU task queue, paused while the
 * host is quarantined), with what the training activity needs of its process: the host's health,
 * the drain, the preflight. Tests use this directly.
 */
import { hostname } from 'node:os';
import path from 'node:path';
import type { DataConverter } from '@temporalio/common';
import { NativeConnection, Worker, type WorkflowBundle } from '@temporalio/worker';
import { createApprovalActivities, createAuditActivities, createControlActivities, createNotificationActivities, createRegistryActivities, createTrainingActivities } from '../activities/index.js';
import { StageKind } from '../spec/schema.js';
import { ObjectStore } from '../storage/object-store.js';
import { approversFileFromEnv, loadApprovers } from '../config/approvers.js';
import { loadWebhooks, redactUrl, webhooksFileFromEnv } from '../config/webhooks.js';
import { REPO_ROOT } from '../config/paths.js';
import { CONTROL_TASK_QUEUE } from '../config/temporal.js';
import { llamaCppToolEnv } from '../config/worker.js';
import { WorkerDrain } from './drain.js';
import { FleetMembership } from './fleet-membership.js';
import { GpuAllocator } from './gpu-allocator.js';
import { HostHealth } from './host-health.js';
import { codeVersion, jobsVersion } from './jobs-version.js';
import { reapStaleJobs } from './stale-jobs.js';
import { describeWorkerToolchain } from './toolchain.js';
import { TrainingPool, type ServedWorker } from './training-pool.js';

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
  /** This worker's host as the fleet knows it (default: REFINERY_HOST, else the OS host name). */
  host?: string;
  /** The preflight before each job (activities/preflight.ts); null: none. Default: the Python jobs' own. */
  preflightCommand?: readonly [string, ...string[]] | null;
  /** Job failures of different stages within `quarantineWindowMs` that quarantine the host (default 3 in 30 min). */
  quarantineAfter?: number;
  quarantineWindowMs?: number;
  /** How long a drained attempt waits for its job's checkpoint (default 5 min). */
  drainCheckpointTimeoutMs?: number;
  /** A memory limit of each job's own (bytes), enforced by a cgroup per job. */
  jobMemoryLimitBytes?: number;
  /** Cap of the input cache in the scratch dir (bytes; LRU, inputs of running jobs never evicted). Default 64 GiB. */
  inputCacheBytes?: number;
  /** Where fleet events (quarantine, drain) are logged (default: console.log). */
  log?: (line: string) => void;
  /**
   * The approvers file the control worker checks approvals against (config/approvers.ts); default
   * REFINERY_APPROVERS; null: none (unsigned approvals accepted, recorded as unsigned).
   */
  approversFile?: string | null;
  /**
   * The webhooks file the control worker posts notifications to (config/webhooks.ts); default
   * REFINERY_WEBHOOKS; null: none (notify succeeds at once, sending nothing).
   */
  webhooksFile?: string | null;
}

/** A worker process's workers, and the handles its owner drains and stops them with. */
export interface RefineryWorkers extends Array<ServedWorker> {
  drain: WorkerDrain;
  health: HostHealth | undefined;
  fleet: FleetMembership | undefined;
  /** Drains (see worker/drain.ts): no new work; running attempts checkpoint, commit and end drained; then every worker stops. */
  drainAndStop(reason: string): Promise<void>;
}

/** The most a training heartbeat (and so live progress) is held back by the SDK. */
export const HEARTBEAT_THROTTLE = '2s';

/** Python jobs: one module per stage kind (cpt shares the SFT recipe). */
export function pythonJobCommand(python: string): (kind: StageKind) => [string, ...string[]] {
  return (kind) => [python, '-m', `refinery_jobs.${kind === 'cpt' ? 'sft' : kind}`];
}

/** The preflight in the Python jobs' runtime (torch); `--runtime python` for runtimes without it. */
export function pythonPreflightCommand(python: string, runtime: 'torch' | 'python' = 'torch'): [string, ...string[]] {
  return [python, '-m', 'refinery_jobs.preflight', '--runtime', runtime];
}

export async function createWorkers(options: WorkerOptions): Promise<RefineryWorkers> {
  // Jobs an earlier worker on this scratch dir left running (its supervisor died with it) are
  // killed before any task queue is polled: worker/stale-jobs.ts.
  await reapStaleJobs({ scratchDir: options.scratchDir, log: options.staleJobLog });
  const log = options.log ?? ((line: string) => console.log(line));
  const workers: ServedWorker[] = [];
  if (options.control) {
    const [jobs, code] = await Promise.all([jobsVersion(), codeVersion()]);
    const approversFile = options.approversFile === undefined ? approversFileFromEnv() : (options.approversFile ?? undefined);
    // A broken approvers file stops the worker here rather than refusing every approval later.
    if (approversFile) log(`[worker] approvals must be signed by one of ${loadApprovers(approversFile).approvers.length} approver(s) of ${approversFile}`);
    const webhooksFile = options.webhooksFile === undefined ? webhooksFileFromEnv() : (options.webhooksFile ?? undefined);
    // Likewise a broken webhooks file; it is read again for each notification, so edits count at once.
    if (webhooksFile) log(`[worker] notifications go to ${loadWebhooks(webhooksFile).map((w) => `${redactUrl(w.url)} (${w.format})`).join(', ') || 'no webhook'} (${webhooksFile})`);
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
          ...createApprovalActivities({ approversFile }),
          ...createRegistryActivities(options.store),
          ...createNotificationActivities({ webhooksFile, log }),
        },
      }),
    );
  }
  const drain = new WorkerDrain(options.drainCheckpointTimeoutMs);
  const host = options.host ?? (process.env.REFINERY_HOST || hostname());
  let health: HostHealth | undefined;
  let fleet: FleetMembership | undefined;
  if (options.trainingQueues.length > 0) {
    const workerId = `${host}-${process.pid}-${Date.now().toString(36)}`;
    health = new HostHealth({ store: options.store, host, workerId, failuresToQuarantine: options.quarantineAfter, windowMs: options.quarantineWindowMs, log });
    fleet = new FleetMembership({ store: options.store, workerId, host, taskQueues: options.trainingQueues, gpus: options.gpus, drain, health, log });
    await fleet.join();
    const gpus = new GpuAllocator(options.gpus);
    const jobCommand = options.jobCommand ?? pythonJobCommand(options.python);
    // Described once, while the pollers start: every stage's cache key includes it (worker/toolchain.ts).
    const toolchain = describeWorkerToolchain({ jobCommand, kinds: StageKind.options, python: options.python, llamaCppEnv: llamaCppToolEnv(), env: { ...process.env } });
    toolchain.catch(() => undefined); // a failure surfaces in describeToolchain and each attempt
    const training = createTrainingActivities({
      store: options.store,
      scratchDir: options.scratchDir,
      jobCommand,
      toolchain,
      jobCwd: path.join(REPO_ROOT, 'jobs'),
      gpus,
      jobEnv: (kind) => (kind === 'gguf' ? llamaCppToolEnv() : {}),
      killGraceMs: options.killGraceMs,
      logFlushMs: options.logFlushMs,
      health,
      drain,
      // Another trainer's runtime is unknown: the stdlib preflight (devices visible, arithmetic right) fits any.
      preflightCommand: options.preflightCommand === undefined ? pythonPreflightCommand(options.python, options.jobCommand ? 'python' : 'torch') : (options.preflightCommand ?? undefined),
      devices: options.gpus,
      jobMemoryLimitBytes: options.jobMemoryLimitBytes,
      inputCacheBytes: options.inputCacheBytes,
    });
    const buildTraining = () => Promise.all(options.trainingQueues.map((taskQueue) => trainingWorker(options, taskQueue, training)));
    workers.push(new TrainingPool(buildTraining, health, log));
  }
  const result = Object.assign(workers, {
    drain,
    health,
    fleet,
    drainAndStop: async (reason: string) => {
      if (!drain.draining) log(`[worker] draining (${reason}): no new work; ${drain.runningAttempts} running attempt(s) checkpoint, commit and end drained`);
      drain.start(reason);
      await fleet?.markDraining();
      // Stop polling first, so no new attempt lands here while the running ones drain.
      for (const w of workers) if (w instanceof TrainingPool) w.shutdown();
      await drain.idle();
      for (const w of workers) if (!(w instanceof TrainingPool) && w.getState() === 'RUNNING') w.shutdown();
      await fleet?.leave();
      log('[worker] drained');
    },
  });
  fleet?.on('drain-requested', (r: { requestedBy: string }) => void result.drainAndStop(`refinery worker drain, by ${r.requestedBy}`));
  return result;
}

async function trainingWorker(options: WorkerOptions, taskQueue: string, training: ReturnType<typeof createTrainingActivities>): Promise<Worker> {
  return await Worker.create({
    connection: options.connection,
    namespace: options.namespace,
    taskQueue,
    dataConverter: options.dataConverter,
    activities: training,
    // One job per GPU; a CPU-only worker runs one job at a time.
    maxConcurrentActivityTaskExecutions: Math.max(1, options.gpus.length),
    // Stopping the pollers (a quarantine, a drain) must not cancel attempts that are running:
    // they end by themselves or by the drain (worker/drain.ts), never by this timer.
    shutdownGraceTime: options.shutdownGraceTime ?? '7 days',
    // Live progress is the training activity's heartbeat details (no history events), so how
    // often they reach the server bounds how far `status` lags the job; and the SDK's default
    // throttle (0.8 x the heartbeat timeout, up to 60 s) leaves a short timeout only 20 % slack
    // before a busy worker's attempt is declared dead. 2 s: fresh progress, and a 3 s heartbeat
    // timeout still has a second to spare. Cost: one heartbeat RPC per running attempt per 2 s.
    maxHeartbeatThrottleInterval: HEARTBEAT_THROTTLE,
    defaultHeartbeatThrottleInterval: HEARTBEAT_THROTTLE,
  });
}
