/**
 * `refinery worker`: one worker process. By default it serves the control queue and the default
 * GPU queue; a GPU node runs `--no-control --queue <pool>` with REFINERY_GPUS set.
 */
import { mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { NativeConnection, Runtime } from '@temporalio/worker';
import { GiB } from '../activities/input-cache.js';
import { dataConverterFromEnv } from '../codec/data-converter.js';
import { DEFAULT_TASK_QUEUE } from '../spec/plan.js';
import type { StageKind } from '../spec/schema.js';
import { ObjectStore } from '../storage/object-store.js';
import { stateDir } from '../config/paths.js';
import { connectionOptions, describeSecurity, temporalSettings } from '../config/temporal.js';
import { inputCacheBytes, jobMemoryLimit, jobsPython, preflightCommandOverride, quarantinePolicy, workerGpus } from '../config/worker.js';
import { createWorkers } from './create-workers.js';
import { reapStaleJobsOfHost } from './stale-jobs.js';

export interface RunWorkerOptions {
  control?: boolean;
  queues?: string[];
  scratchDir?: string;
}

/**
 * REFINERY_JOB_COMMAND='["/venv/bin/python","-m","my_trainer"]' runs every stage through another
 * trainer that follows the job contract (an argv array as JSON: never a shell string).
 */
function jobCommandOverride(): ((kind: StageKind) => [string, ...string[]]) | undefined {
  const raw = process.env.REFINERY_JOB_COMMAND;
  if (!raw) return undefined;
  const argv: unknown = JSON.parse(raw);
  if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === 'string')) {
    throw new Error('REFINERY_JOB_COMMAND must be a JSON array of strings, e.g. ["python","-m","my_trainer"]');
  }
  return () => argv as [string, ...string[]];
}

export async function runWorker(options: RunWorkerOptions = {}): Promise<void> {
  // SIGTERM and SIGINT drain (below) instead of the SDK's immediate shutdown: installed before
  // anything else touches the runtime.
  Runtime.install({ shutdownSignals: [] });
  const temporal = temporalSettings();
  // A bad REFINERY_PAYLOAD_KEY stops the worker here, before it connects.
  const dataConverter = dataConverterFromEnv();
  // So does a bad REFINERY_INPUT_CACHE_GB.
  const inputCache = inputCacheBytes();
  const scratchRoot = path.join(stateDir(), 'scratch');
  const scratchDir = options.scratchDir ?? path.join(scratchRoot, `${hostname()}-${process.pid}`);
  await mkdir(scratchDir, { recursive: true });
  // Jobs a dead worker left running are killed before this one takes work: those recorded in its
  // scratch dir by createWorkers, and, since a default scratch dir is new for every process, those
  // of this host's other default dirs whose worker is gone (worker/stale-jobs.ts).
  if (!options.scratchDir) await reapStaleJobsOfHost(scratchRoot, scratchDir);
  const store = new ObjectStore();
  await store.ensureBucket();
  const connection = await NativeConnection.connect(connectionOptions(temporal));
  const jobCommand = jobCommandOverride();
  const workers = await createWorkers({
    connection,
    namespace: temporal.namespace,
    store,
    control: options.control ?? true,
    trainingQueues: options.queues ?? [DEFAULT_TASK_QUEUE],
    gpus: workerGpus(),
    scratchDir,
    python: jobsPython(),
    jobCommand,
    preflightCommand: preflightCommandOverride(),
    ...quarantinePolicy(),
    jobMemoryLimitBytes: jobMemoryLimit(),
    inputCacheBytes: inputCache,
    dataConverter,
  });
  const payloads = dataConverter ? 'payloads encrypted' : 'payloads not encrypted';
  const fleet = workers.fleet ? `; host ${workers.health?.host}, worker id ${workers.fleet.workerId}` : '';
  const cache = workers.fleet ? `; input cache ${+(inputCache / GiB).toFixed(2)} GiB (LRU)` : '';
  console.log(`[worker] ${workers.length} worker(s) on ${temporal.address}/${temporal.namespace} (${describeSecurity(temporal)}); ${payloads}; scratch ${scratchDir}${cache}${fleet}`);
  // A deploy's SIGTERM (or ^C) drains: running jobs checkpoint now, commit, and their attempts end
  // drained, to resume on another worker without losing steps or a stage attempt. A second signal
  // stops at once (the jobs die with the worker: their supervisor's parent-death signal).
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (++signals > 1) {
      console.log(`[worker] ${sig} again: stopping now, without draining`);
      process.exit(130);
    }
    void workers.drainAndStop(sig);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  await Promise.all(workers.map((w) => w.run()));
  await connection.close();
}
