/** In-process Refinery workers (worker/create-workers.ts) and a client, against a bench stack. */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { bundleWorkflowCode, DefaultLogger, NativeConnection, Runtime, type Worker, type WorkflowBundle } from '@temporalio/worker';
import type { StageKind } from '../../spec/schema.js';
import { ObjectStore } from '../../storage/object-store.js';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { createWorkers } from '../../worker/create-workers.js';
import type { BenchStack } from './stack.js';

let runtimeInstalled = false;
/** Temporal's logs (TS side and Rust core) at ERROR only: the benchmarks' output is a table. */
export function quietTemporalRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  Runtime.install({ logger: new DefaultLogger('ERROR'), telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, forward: {} } } });
}

let bundle: Promise<WorkflowBundle> | undefined;
export function workflowBundle(): Promise<WorkflowBundle> {
  bundle ??= bundleWorkflowCode({
    workflowsPath: path.join(REPO_ROOT, 'workflows', 'index.ts'),
    logger: { log: () => undefined, trace: () => undefined, debug: () => undefined, info: () => undefined, warn: () => undefined, error: (m: string) => console.error(m) },
  });
  return bundle;
}

export interface BenchWorkers {
  workers: Worker[];
  scratchDir: string;
  shutdown(): Promise<void>;
}

export async function startWorkers(stack: BenchStack, options: {
  control?: boolean;
  trainingQueues?: string[];
  /** Job slots of the training worker: one per "GPU" (a CPU-only worker runs one job at a time). */
  gpus?: number[];
  jobCommand?: (kind: StageKind) => [string, ...string[]];
  scratchDir?: string;
}): Promise<BenchWorkers> {
  const connection = await NativeConnection.connect({ address: stack.temporal!.address });
  const scratchDir = options.scratchDir ?? (await mkdtemp(path.join(tmpdir(), 'refinery-bench-worker-')));
  const workers = await createWorkers({
    connection,
    namespace: stack.temporal!.namespace,
    store: new ObjectStore(),
    control: options.control ?? true,
    trainingQueues: options.trainingQueues ?? ['refinery-gpu'],
    gpus: options.gpus ?? [],
    scratchDir,
    python: jobsPython(),
    jobCommand: options.jobCommand,
    workflowBundle: await workflowBundle(),
    shutdownGraceTime: '5s',
    killGraceMs: 2000,
  });
  const run = Promise.all(workers.map((w) => w.run())).then(() => undefined);
  return {
    workers,
    scratchDir,
    shutdown: async () => {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await run;
      await connection.close();
    },
  };
}

export async function benchClient(stack: BenchStack): Promise<{ client: Client; close: () => Promise<void> }> {
  const connection = await Connection.connect({ address: stack.temporal!.address });
  return { client: new Client({ connection, namespace: stack.temporal!.namespace }), close: () => connection.close() };
}
