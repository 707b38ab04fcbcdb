/**
 * Test glue over the shared harness (infra/harness/): the stack of test/global-setup.ts through
 * `inject('stack')`, and the harness's store, client and in-process workers bound to it.
 */
import type { DataConverter } from '@temporalio/common';
import type { WorkflowBundle } from '@temporalio/worker';
import { inject } from 'vitest';
import { ObjectStore } from '../../storage/object-store.js';
import { stackClient, stackEnv } from '../../infra/harness/stack.js';
import {
  installQuietRuntime,
  startInProcessWorkers,
  workflowBundle as harnessBundle,
  type InProcessWorkers,
  type JobCommand,
} from '../../infra/harness/workers.js';

export { testJobCommand } from '../../infra/harness/workers.js';

// Workers log state changes at INFO; tests only need warnings and errors.
installQuietRuntime('WARN');

export const stack = () => inject('stack');

/** The environment that points a process (CLI, worker) at the test stack, credentials included. */
export function testStackEnv(): Record<string, string> {
  return stackEnv(stack());
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
export function testClient(dataConverter?: DataConverter): ReturnType<typeof stackClient> {
  return stackClient(stack(), dataConverter);
}

export function workflowBundle(failureConverterPath?: string): Promise<WorkflowBundle> {
  return harnessBundle({ failureConverterPath, warnings: true });
}

export type TestWorkers = InProcessWorkers;

export function startTestWorkers(options: {
  control?: boolean;
  trainingQueues?: string[];
  jobCommand?: JobCommand;
  killGraceMs?: number;
  dataConverter?: DataConverter;
  jobMemoryLimitBytes?: number;
  host?: string;
  /** The control worker's approvers file (REFINERY_APPROVERS of a real worker); default none. */
  approversFile?: string;
  /** The control worker's webhooks file (REFINERY_WEBHOOKS of a real worker); default none. */
  webhooksFile?: string;
}): Promise<TestWorkers> {
  return startInProcessWorkers(stack(), { ...options, store: testStore(), killGraceMs: options.killGraceMs ?? 2000, bundleWarnings: true });
}

/** Runs fn with REFINERY_MOVER set to `value` (undefined: unset; "off": Node's transfers only). */
export async function withMover<T>(value: string | undefined, fn: () => Promise<T>): Promise<T> {
  const before = process.env.REFINERY_MOVER;
  if (value === undefined) delete process.env.REFINERY_MOVER;
  else process.env.REFINERY_MOVER = value;
  try {
    return await fn();
  } finally {
    if (before === undefined) delete process.env.REFINERY_MOVER;
    else process.env.REFINERY_MOVER = before;
  }
}
