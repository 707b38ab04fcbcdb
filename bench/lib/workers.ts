/** In-process Refinery workers (infra/harness/workers.ts) and a client, against a bench stack. */
import { stackClient } from '../../infra/harness/stack.js';
import { installQuietRuntime, startInProcessWorkers, type InProcessWorkers, type JobCommand } from '../../infra/harness/workers.js';
import { ObjectStore } from '../../storage/object-store.js';
import type { BenchStack } from './stack.js';

/** Temporal's logs (TS side and Rust core) at ERROR only: the benchmarks' output is a table. */
export function quietTemporalRuntime(): void {
  installQuietRuntime('ERROR', true);
}

export type BenchWorkers = InProcessWorkers;

function temporalOf(stack: BenchStack): { temporalAddress: string; namespace: string } {
  return { temporalAddress: stack.temporal!.address, namespace: stack.temporal!.namespace };
}

export function startWorkers(stack: BenchStack, options: {
  control?: boolean;
  trainingQueues?: string[];
  /** Job slots of the training worker: one per "GPU" (a CPU-only worker runs one job at a time). */
  gpus?: number[];
  jobCommand?: JobCommand;
  scratchDir?: string;
}): Promise<BenchWorkers> {
  return startInProcessWorkers(temporalOf(stack), { ...options, store: new ObjectStore(), scratchPrefix: 'refinery-bench-worker-', shutdownGraceTime: '5s', killGraceMs: 2000 });
}

export function benchClient(stack: BenchStack): ReturnType<typeof stackClient> {
  return stackClient(temporalOf(stack));
}
