/** What every trial of one fault suite shares (faults/run.ts builds it, faults/trial.ts and faults/kinds/ use it). */
import type { Client } from '@temporalio/client';
import type { ObjectStore } from '../storage/object-store.js';
import type { PrivateStack } from '../infra/harness/stack.js';
import type { WorkerProcess } from '../infra/harness/processes.js';
import type { Rng } from '../infra/harness/rng.js';
import type { ControlWorker, SmallFs } from './harness.js';
import type { ProcessSampler } from './process-sampler.js';
import type { SuiteOptions } from './types.js';

/** Checkpoint interval of every stage of a trial's pipeline. */
export const SAVE_STEPS = 5;

/**
 * The longest two attempts of one stage may train at the same time. A retry takes over the stage
 * lease of a live earlier attempt at once (Temporal declared it lost); that attempt finds out at
 * its next lease renewal, every ttl/3 — 10 s / 3 with the trials' 3 s heartbeat timeout (the lease
 * ttl is the heartbeat timeout, at least 10 s) — or sooner from its next heartbeat, and stops its
 * job (the test job exits on TERM at once). Nothing it commits after the takeover lands
 * (test/integration/fencing.test.ts). Plus one sampling interval.
 */
export const OVERLAP_BOUND_MS = Math.ceil(10_000 / 3) + 1_000;

export interface Ctx {
  opts: Required<Pick<SuiteOptions, 'short' | 'minioOutageMs'>> & { seed: number };
  rng: Rng;
  log: (line: string) => void;
  stack: PrivateStack;
  store: ObjectStore;
  client: Client;
  control: ControlWorker;
  controlFailed?: string;
  python: string;
  workDir: string;
  main: WorkerProcess;
  small?: { fs: SmallFs; worker: WorkerProcess };
  workerSeq: number;
  /** Every worker ever started (for the orphan scan over their scratch dirs). */
  workers: WorkerProcess[];
  /** Checkpoints damaged on purpose: `${artifactPrefix}@${step}`. */
  corrupted: Set<string>;
  /** Set when the stack itself could not be brought back: the suite stops. */
  fatal?: string;
  /** Every job session on this machine, by /proc (overlaps, orphans). */
  sampler: ProcessSampler;
}
