/**
 * The fault-injection suite: real pipelines (the contract test job, two or three stages) on a
 * private stack, with faults injected at seeded random points, then every invariant checked.
 *
 *   npx tsx faults/run.ts [--trials N] [--seed S] [--short] [--kinds a,b] [--allow-skip a,b] [--keep]
 *
 * It starts its OWN Temporal dev server and MinIO (free ports, temp state dir; never the user's
 * stack), a control worker in this process and training workers as separate processes
 * (`bin/refinery worker --no-control`). Fault kinds (docs/reliability.md says what each exercises):
 *
 *   worker-kill         kill -9 the training worker mid-stage; a new worker (own scratch) takes over
 *   temporal-restart    kill -9 the Temporal dev server mid-run, restart it on the same db file and port
 *   temporal-outage     the same, down longer than the heartbeat timeout: the stage is retried while its attempt lives
 *   minio-outage        kill -9 MinIO right after a checkpoint upload starts; down 30 s (--short 5 s)
 *   corrupt-checkpoint  flip a bit in / delete an object of the newest committed checkpoint, kill the job
 *   scratch-full        fill the worker's (size-limited) scratch filesystem mid-stage
 *   job-hang            the job stops emitting events (stall detection kills and retries it)
 *   cancel              cancel the run mid-stage
 *   drain               SIGTERM the training worker mid-stage: checkpoint now, attempt drained, resumed elsewhere; no stage attempt used
 *   oom                 the job reports CUDA out of memory above a batch size: retries halve the batch, double accumulation, resume
 *   divergence          the loss turns NaN: attempt diverged, the retry resumes from a checkpoint strictly before the last good step
 *   bad-node            the first attempt lands on a host whose preflight fails: host quarantined, the stage runs on another; no stage attempt used
 *   real-worker-kill    worker-kill on the real trainers (SFT LoRA, DPO, PPO, GRPO by turn; --short: SFT), losses
 *                       and weights compared with an uninterrupted run (faults/real-trial.ts)
 *
 * Per run it checks: completed (cancelled for `cancel`), the audit trail and every artifact verify
 * (`audit verify`) and every remaining committed checkpoint verifies, steps lost per fault (from
 * the job's events, at every hand-over between attempts) within the bound, every checkpoint the
 * final attempt announced committed, no two attempts of a stage training at once beyond the bound
 * and no process of any job session left (faults/process-sampler.ts), no duplicate stage
 * completions, no kind skipped unless --allow-skip names it. Prints a table; exits 1 if any
 * invariant failed.
 *
 * This file: the suite and its command line. One trial (run + fault + invariants) is in
 * faults/trial.ts; what each fault kind sets up, injects and checks in faults/kinds/<kind>.ts; what
 * the trials share in faults/context.ts; the summary and table in faults/summary.ts; the shared
 * types in faults/types.ts; the suite's own helpers in faults/harness.ts, over the shared harness
 * in infra/harness/ (private stack, workers, worker processes, polling).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs as parseArgv } from 'node:util';
import { readToolchain } from '../config/toolchain.js';
import { jobsPython } from '../config/worker.js';
import type { WorkerProcess } from '../infra/harness/processes.js';
import { Rng } from '../infra/harness/rng.js';
import { smallFilesystem, spawnFaultWorker, startControlWorker, startFaultStack, type ControlWorker, type SmallFs } from './harness.js';
import { ProcessSampler } from './process-sampler.js';
import { summarize } from './summary.js';
import type { Ctx } from './context.js';
import { runRealTrial } from './real-trial.js';
import { runTrial } from './trial.js';
import { FAULT_KINDS, type FaultKind, type RunReport, type SuiteOptions, type SuiteResult } from './types.js';

export { renderTable } from './summary.js';
export { FAULT_KINDS, type FaultKind, type FaultRecord, type KindSummary, type RunReport, type SuiteOptions, type SuiteResult } from './types.js';

// ------------------------------------------------------------------------------------------------

export async function runFaultSuite(options: SuiteOptions = {}): Promise<SuiteResult> {
  const t0 = Date.now();
  const short = options.short ?? false;
  const seed = options.seed ?? Math.floor(Math.random() * 1e6);
  const trials = options.trials ?? (short ? 1 : 8);
  const kinds = options.kinds ?? FAULT_KINDS;
  const log = options.log ?? ((line: string) => console.error(`[faults ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${line}`));
  const toolchain = readToolchain();
  const python = jobsPython();
  const rng = new Rng(seed);

  log(`seed ${seed}, ${trials} trial(s) of ${kinds.length} fault kind(s)${short ? ' (short form)' : ''}; starting a private stack`);
  const stack = await startFaultStack(toolchain);
  const workDir = await mkdtemp(path.join(tmpdir(), 'refinery-faults-work-'));
  const cleanups: (() => Promise<unknown>)[] = [];
  const skipped: SuiteResult['skipped'] = [];
  const runs: RunReport[] = [];
  try {
    const { client, close } = await stack.client();
    cleanups.push(close);
    const spawnWorker = (name: string, queue: string, scratch: string) => spawnFaultWorker(stack, python, { name, queue, scratch });
    let smallFs: SmallFs | undefined;
    if (kinds.includes('scratch-full')) {
      const fs = await smallFilesystem(workDir, 48);
      if ('unavailable' in fs) skipped.push({ kind: 'scratch-full', reason: fs.unavailable });
      else {
        smallFs = fs;
        cleanups.push(() => fs.release());
      }
    }
    const started = await Promise.allSettled([
      startControlWorker(stack, python, path.join(workDir, 'control-scratch')),
      spawnWorker('worker-1', 'faults-main', path.join(workDir, 'scratch-1')),
      smallFs ? spawnWorker('worker-small', 'faults-small', smallFs.dir) : Promise.resolve(undefined),
    ] as const);
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) {
      for (const r of started) {
        if (r.status !== 'fulfilled' || !r.value) continue;
        await ('kill9' in r.value ? r.value.kill9() : r.value.shutdown());
      }
      throw (failed as PromiseRejectedResult).reason;
    }
    const [control, main, smallWorker] = started.map((r) => (r as PromiseFulfilledResult<unknown>).value) as [ControlWorker, WorkerProcess, WorkerProcess | undefined];
    const ctx: Ctx = {
      opts: { short, minioOutageMs: options.minioOutageMs ?? (short ? 5_000 : 30_000), seed },
      rng,
      log,
      stack,
      store: stack.store(),
      client,
      control,
      python,
      workDir,
      main,
      small: smallFs && smallWorker ? { fs: smallFs, worker: smallWorker } : undefined,
      workerSeq: 1,
      workers: [main, ...(smallWorker ? [smallWorker] : [])],
      corrupted: new Set(),
      sampler: new ProcessSampler(() => ctx.workers.filter((w) => w.alive).map((w) => w.pid)),
    };
    ctx.sampler.start();
    cleanups.unshift(() => ctx.sampler.stop());
    control.run.catch((err: unknown) => (ctx.controlFailed = String(err)));
    // Workers first, then the control worker's connection, so nothing polls a stopped server.
    cleanups.unshift(async () => {
      for (const w of ctx.workers) await w.stop();
      await ctx.control.shutdown();
    });
    ctx.log(`stack up (temporal ${stack.info.temporalAddress}, minio ${stack.info.s3Endpoint}); workers ${ctx.workers.map((w) => w.name).join(', ')}${smallFs ? `; small scratch: ${smallFs.how}` : ''}`);

    const plan: { trial: number; kind: FaultKind }[] = [];
    for (let trial = 1; trial <= trials; trial++) {
      for (const kind of rng.shuffle(kinds)) if (!skipped.some((s) => s.kind === kind)) plan.push({ trial, kind });
    }
    for (const [i, { trial, kind }] of plan.entries()) {
      ctx.log(`run ${i + 1}/${plan.length}: ${kind} (trial ${trial})`);
      const report = kind === 'real-worker-kill' ? await runRealTrial(ctx, trial) : await runTrial(ctx, kind, trial);
      runs.push(report);
      ctx.log(
        `  -> ${report.state}; ${report.fault.detail}; steps lost ${report.fault.stepsLost ?? '-'} (bound ${report.fault.bound})` +
          `${report.problems.length ? `; PROBLEMS: ${report.problems.join(' | ')}` : ''} [${(report.durationMs / 1000).toFixed(1)} s]`,
      );
      for (const note of report.fault.notes) ctx.log(`     ${note}`);
      if (ctx.fatal) {
        report.problems.push(`suite stopped after this run: ${ctx.fatal}`);
        ctx.log(`stopping: ${ctx.fatal}`);
        break;
      }
      await keepWorkersUp(ctx, spawnWorker, runs.at(-1)!);
    }
  } finally {
    for (const c of cleanups) await c().catch((err: unknown) => log(`cleanup: ${String(err)}`));
    await stack.stop(options.keep).catch((err: unknown) => log(`stopping the stack: ${String(err)}`));
    if (!options.keep) await rm(workDir, { recursive: true, force: true });
    else log(`kept ${stack.info.stateDir} and ${workDir}`);
  }
  // No silent skips: a kind that could not run here fails the suite unless the caller allowed it.
  const notAllowed = skipped.filter((s) => !(options.allowSkip ?? []).includes(s.kind));
  return summarize({ seed, trials, short, runs, skipped, notAllowed, durationMs: Date.now() - t0 });
}

/** A worker that died without being killed by a fault is a problem; either way, serve on. */
async function keepWorkersUp(ctx: Ctx, spawnWorker: (name: string, queue: string, scratch: string) => Promise<WorkerProcess>, report: RunReport): Promise<void> {
  if (!ctx.main.alive) {
    if (!ctx.main.killedByUs) report.problems.push(`training worker ${ctx.main.name} died on its own; log tail:\n${ctx.main.logTail(8)}`);
    ctx.main = await spawnWorker(`worker-${++ctx.workerSeq}`, 'faults-main', path.join(ctx.workDir, `scratch-${ctx.workerSeq}`));
    ctx.workers.push(ctx.main);
  }
  if (ctx.small && !ctx.small.worker.alive) {
    if (!ctx.small.worker.killedByUs) report.problems.push(`training worker ${ctx.small.worker.name} died on its own; log tail:\n${ctx.small.worker.logTail(8)}`);
    await ctx.small.fs.unfill();
    ctx.small.worker = await spawnWorker(`worker-small-${++ctx.workerSeq}`, 'faults-small', ctx.small.fs.dir);
    ctx.workers.push(ctx.small.worker);
  }
  if (ctx.controlFailed) {
    report.problems.push(`the control worker failed: ${ctx.controlFailed}`);
    ctx.controlFailed = undefined;
    ctx.control = await startControlWorker(ctx.stack, ctx.python, path.join(ctx.workDir, 'control-scratch'));
    ctx.control.run.catch((err: unknown) => (ctx.controlFailed = String(err)));
  }
}

// ------------------------------------------------------------------------------------------------
// CLI

const FLAGS = {
  short: { type: 'boolean' },
  keep: { type: 'boolean' },
  trials: { type: 'string' },
  seed: { type: 'string' },
  'minio-outage': { type: 'string' },
  kinds: { type: 'string' },
  'allow-skip': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** The command line (node:util parseArgs), checked token by token in order, so the first bad one is the error. */
export function parseArgs(argv: string[]): SuiteOptions {
  const opts: SuiteOptions = {};
  const { tokens } = parseArgv({ args: argv, options: FLAGS, strict: false, allowPositionals: true, tokens: true });
  for (const t of tokens) {
    if (t.kind === 'positional') throw new Error(`unknown argument "${t.value}"`);
    if (t.kind === 'option-terminator') throw new Error('unknown argument "--"');
    const a = t.rawName;
    if (!Object.hasOwn(FLAGS, t.name)) throw new Error(`unknown argument "${a}"`);
    const value = () => {
      if (t.value === undefined) throw new Error(`${a} needs a value`);
      return t.value;
    };
    if (t.name === 'short') opts.short = true;
    else if (t.name === 'keep') opts.keep = true;
    else if (t.name === 'trials') opts.trials = positiveInt(a, value());
    else if (t.name === 'seed') opts.seed = positiveInt(a, value(), 0);
    else if (t.name === 'minio-outage') opts.minioOutageMs = positiveInt(a, value()) * 1000;
    else if (t.name === 'kinds') opts.kinds = faultKinds(value());
    else if (t.name === 'allow-skip') opts.allowSkip = faultKinds(value());
    else {
      console.log('usage: npx tsx faults/run.ts [--trials N] [--seed S] [--short] [--kinds k1,k2] [--allow-skip k1,k2] [--minio-outage SECONDS] [--keep]');
      process.exit(0);
    }
  }
  return opts;
}

function faultKinds(list: string): FaultKind[] {
  const kinds = list.split(',');
  for (const k of kinds) if (!(FAULT_KINDS as readonly string[]).includes(k)) throw new Error(`unknown fault kind "${k}" (one of ${FAULT_KINDS.join(', ')})`);
  return kinds as FaultKind[];
}

function positiveInt(flag: string, v: string, min = 1): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`${flag} needs a whole number >= ${min}, got "${v}"`);
  return n;
}

function isEntryPoint(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  let opts: SuiteOptions;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`faults: ${(err as Error).message}`);
    process.exit(2);
  }
  runFaultSuite(opts).then(
    (result) => {
      console.log(result.table);
      process.exit(result.ok ? 0 : 1);
    },
    (err: unknown) => {
      console.error(`faults: ${(err as Error).stack ?? String(err)}`);
      process.exit(1);
    },
  );
}
