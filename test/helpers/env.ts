/**
 * Test harness over the shared stack: an ObjectStore, a client, workers with a job launcher of the
 * test's choosing, and the workflow bundle built once per file.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import { bundleWorkflowCode, DefaultLogger, NativeConnection, Runtime, type Worker, type WorkflowBundle } from '@temporalio/worker';
import { inject } from 'vitest';
import { ObjectStore } from '../../storage/object-store.js';
import type { StageKind } from '../../spec/schema.js';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { createWorkers } from '../../worker/create-workers.js';

// Workers log state changes at INFO; tests only need warnings and errors.
try {
  Runtime.install({ logger: new DefaultLogger('WARN') });
} catch {
  // already installed in this process
}

export const stack = () => inject('stack');

/** The environment that points a process (CLI, worker) at the test stack, credentials included. */
export function testStackEnv(): Record<string, string> {
  const s = stack();
  return {
    TEMPORAL_ADDRESS: s.temporalAddress,
    TEMPORAL_NAMESPACE: s.namespace,
    REFINERY_S3_ENDPOINT: s.s3Endpoint,
    REFINERY_S3_ACCESS_KEY: s.accessKey,
    REFINERY_S3_SECRET_KEY: s.secretKey,
    REFINERY_BUCKET: s.bucket,
  };
}

/** Points this process's environment at the test stack (the CLI code reads it from there). */
export function useTestStackEnv(): void {
  Object.assign(process.env, testStackEnv());
}

export function testStore(): ObjectStore {
  useTestStackEnv();
  return new ObjectStore();
}

/** `dataConverter`: payload encryption (codec/data-converter.ts); default plain JSON. */
export async function testClient(dataConverter?: DataConverter): Promise<{ client: Client; close: () => Promise<void> }> {
  const connection = await Connection.connect({ address: stack().temporalAddress });
  return { client: new Client({ connection, namespace: stack().namespace, dataConverter }), close: () => connection.close() };
}

/** One bundle per failure converter: the workflow sandbox gets it at bundle time, not from Worker.create. */
const bundles = new Map<string, Promise<WorkflowBundle>>();
export function workflowBundle(failureConverterPath?: string): Promise<WorkflowBundle> {
  const key = failureConverterPath ?? '';
  if (!bundles.has(key)) {
    bundles.set(key, bundleWorkflowCode({ workflowsPath: path.join(REPO_ROOT, 'workflows', 'index.ts'), failureConverterPath, logger: quietLogger }));
  }
  return bundles.get(key)!;
}

/** The purpose-built contract job (jobs/refinery_jobs/testjob.py) for every stage kind. */
export function testJobCommand(): (kind: StageKind) => [string, ...string[]] {
  const python = jobsPython();
  return () => [python, '-m', 'refinery_jobs.testjob'];
}

export interface TestWorkers {
  workers: Worker[];
  connection: NativeConnection;
  scratchDir: string;
  run: Promise<void>;
  shutdown: () => Promise<void>;
}

export async function startTestWorkers(options: {
  control?: boolean;
  trainingQueues?: string[];
  jobCommand?: (kind: StageKind) => [string, ...string[]];
  killGraceMs?: number;
  dataConverter?: DataConverter;
}): Promise<TestWorkers> {
  const connection = await NativeConnection.connect({ address: stack().temporalAddress });
  const scratchDir = await mkdtemp(path.join(tmpdir(), 'refinery-test-worker-'));
  const workers = await createWorkers({
    connection,
    namespace: stack().namespace,
    store: testStore(),
    control: options.control ?? true,
    trainingQueues: options.trainingQueues ?? ['refinery-gpu'],
    gpus: [],
    scratchDir,
    python: jobsPython(),
    jobCommand: options.jobCommand,
    dataConverter: options.dataConverter,
    workflowBundle: await workflowBundle(options.dataConverter?.failureConverterPath),
    shutdownGraceTime: '5s',
    killGraceMs: options.killGraceMs ?? 2000,
  });
  const run = Promise.all(workers.map((w) => w.run())).then(() => undefined);
  return {
    workers,
    connection,
    scratchDir,
    run,
    shutdown: async () => {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await run;
      await connection.close();
    },
  };
}

const quietLogger = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: (m: string) => console.warn(m),
  error: (m: string) => console.error(m),
};
