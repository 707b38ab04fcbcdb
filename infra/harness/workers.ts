/**
 * In-process Refinery workers (worker/create-workers.ts) against a private stack, with a job
 * command of the caller's choosing, and the workflow bundle they share (built once per process).
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { DataConverter } from '@temporalio/common';
import { bundleWorkflowCode, DefaultLogger, NativeConnection, Runtime, type WorkflowBundle } from '@temporalio/worker';
import type { StageKind } from '../../spec/schema.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { createWorkers, type RefineryWorkers } from '../../worker/create-workers.js';
import type { StackInfo } from './stack.js';

export type JobCommand = (kind: StageKind) => [string, ...string[]];

/** The purpose-built contract job (jobs/refinery_jobs/testjob.py) for every stage kind. */
export function testJobCommand(python: string = jobsPython()): JobCommand {
  return () => [python, '-m', 'refinery_jobs.testjob'];
}

/**
 * Installs the Temporal runtime with its logs at `level` (TS side; with `core`, Rust core too);
 * a no-op where a runtime is already installed in this process.
 */
export function installQuietRuntime(level: 'WARN' | 'ERROR', core = false): void {
  try {
    Runtime.install(core ? { logger: new DefaultLogger(level), telemetryOptions: { logging: { filter: { core: level, other: level }, forward: {} } } } : { logger: new DefaultLogger(level) });
  } catch {
    // a runtime is already installed in this process: keep it
  }
}

/** Bundler logs: warnings (with `warn`) and errors only. */
function bundleLogger(warn: boolean) {
  return {
    log: () => undefined,
    trace: () => undefined,
    debug: () => undefined,
    info: () => undefined,
    warn: warn ? (m: string) => console.warn(m) : () => undefined,
    error: (m: string) => console.error(m),
  };
}

/**
 * A bundle of workflows/ made once for a whole test run (test/global-setup.ts writes it and names
 * it here): every test file's workers share it instead of bundling again (~2–4 s each).
 */
export const SHARED_BUNDLE_ENV = 'REFINERY_TEST_WORKFLOW_BUNDLE';

/** One bundle per failure converter: the workflow sandbox gets it at bundle time, not from Worker.create. */
const bundles = new Map<string, Promise<WorkflowBundle>>();
export function workflowBundle(options: { failureConverterPath?: string; warnings?: boolean } = {}): Promise<WorkflowBundle> {
  const key = `${options.failureConverterPath ?? ''}\0${options.warnings ? 'warn' : ''}`;
  const shared = process.env[SHARED_BUNDLE_ENV];
  if (!bundles.has(key) && shared && !options.failureConverterPath) bundles.set(key, readFile(shared, 'utf8').then((code) => ({ code })));
  if (!bundles.has(key)) {
    bundles.set(
      key,
      bundleWorkflowCode({ workflowsPath: path.join(REPO_ROOT, 'workflows', 'index.ts'), failureConverterPath: options.failureConverterPath, logger: bundleLogger(options.warnings ?? false) }),
    );
  }
  return bundles.get(key)!;
}

export interface InProcessWorkers {
  workers: RefineryWorkers;
  connection: NativeConnection;
  scratchDir: string;
  /** Rejects if a worker fails (e.g. it could not survive a server restart). */
  run: Promise<void>;
  shutdown: () => Promise<void>;
}

export interface InProcessWorkerOptions {
  store: ObjectStore;
  control?: boolean;
  trainingQueues?: string[];
  /** Job slots of the training worker: one per "GPU" (a CPU-only worker runs one job at a time). */
  gpus?: number[];
  jobCommand?: JobCommand;
  /** Default: a new temp dir named `<scratchPrefix>XXXXXX`. */
  scratchDir?: string;
  scratchPrefix?: string;
  python?: string;
  dataConverter?: DataConverter;
  shutdownGraceTime?: string;
  killGraceMs?: number;
  /** Bundler warnings on the console. */
  bundleWarnings?: boolean;
  /** shutdown() swallows a failed worker's or connection's error. */
  lenientShutdown?: boolean;
  /** Default (createWorkers): the stdlib preflight for a job command of the caller's, the torch one for the Python jobs. */
  preflightCommand?: readonly [string, ...string[]] | null;
  host?: string;
  quarantineAfter?: number;
  /** A memory limit of each job's own (bytes). */
  jobMemoryLimitBytes?: number;
  /** The control worker's approvers file (signed approvals); default none, whatever this shell's REFINERY_APPROVERS says. */
  approversFile?: string;
  /** The control worker's webhooks file (notifications); default none, whatever this shell's REFINERY_WEBHOOKS says. */
  webhooksFile?: string;
}

export async function startInProcessWorkers(stack: Pick<StackInfo, 'temporalAddress' | 'namespace'>, options: InProcessWorkerOptions): Promise<InProcessWorkers> {
  const [connection, bundle] = await Promise.all([
    NativeConnection.connect({ address: stack.temporalAddress }),
    workflowBundle({ failureConverterPath: options.dataConverter?.failureConverterPath, warnings: options.bundleWarnings }),
  ]);
  const scratchDir = options.scratchDir ?? (await mkdtemp(path.join(tmpdir(), options.scratchPrefix ?? 'refinery-test-worker-')));
  const workers = await createWorkers({
    connection,
    namespace: stack.namespace,
    store: options.store,
    control: options.control ?? true,
    trainingQueues: options.trainingQueues ?? ['refinery-gpu'],
    gpus: options.gpus ?? [],
    scratchDir,
    python: options.python ?? jobsPython(),
    jobCommand: options.jobCommand,
    dataConverter: options.dataConverter,
    workflowBundle: bundle,
    shutdownGraceTime: options.shutdownGraceTime ?? '5s',
    killGraceMs: options.killGraceMs,
    preflightCommand: options.preflightCommand,
    host: options.host,
    // Tests inject job crashes on purpose, all on this one host (see processes.ts).
    quarantineAfter: options.quarantineAfter ?? 1000,
    jobMemoryLimitBytes: options.jobMemoryLimitBytes,
    approversFile: options.approversFile ?? null,
    webhooksFile: options.webhooksFile ?? null,
    log: () => undefined,
  });
  const run = Promise.all(workers.map((w) => w.run())).then(() => undefined);
  return {
    workers,
    connection,
    scratchDir,
    run,
    shutdown: async () => {
      await workers.fleet?.leave();
      for (const w of workers) if (w.getState() === 'RUNNING' || w.getState() === 'PAUSED') w.shutdown();
      if (options.lenientShutdown) {
        await run.catch(() => undefined);
        await connection.close().catch(() => undefined);
      } else {
        await run;
        await connection.close();
      }
    },
  };
}
