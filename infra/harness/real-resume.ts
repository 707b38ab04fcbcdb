/**
 * Kill and resume with the real trainers (issue #12): a pipeline trains on the tiny Llama through the
 * real worker, Temporal and MinIO; right after the target stage's second checkpoint is committed its
 * training worker process gets SIGKILL, a second worker process takes the stage over from the newest
 * committed checkpoint, and the result is compared with the same pipeline run without interruption:
 * every per-step loss after the resume (|Δ| ≤ 1e-3) and every tensor of the final output
 * (torch.allclose, atol 1e-4, rtol 0; jobs/tests/compare_weights.py).
 *
 *   const r = await runKillAndResume({ stack, trainer: 'sft' });   // r.problems: [] when it held
 *
 * `stack` is a PrivateStack (the fault suite's) or the StackInfo of one (the test stack); a control
 * worker (workflows + control activities) already serving it may be passed in as `control`, else one
 * is started in this process for the call. Training runs only in the two `bin/refinery worker
 * --no-control` processes started here (one after the other on one task queue of their own), with
 * the real Python jobs (jobs/refinery_jobs/), never the contract test job.
 *
 * How the kill lands between the second checkpoint and the end of a job that takes well under a
 * second per step: the events file the worker writes in its scratch dir is polled every 5 ms; at the
 * second `checkpoint` event the job's own processes are stopped (SIGSTOP; the supervisor that leads
 * their process group is left running, so that its parent-death trap still works), the harness waits
 * until that checkpoint's `checkpoint-committed` record is in the bucket, and then kills the worker
 * with SIGKILL. The supervisor then kills the stopped job (SIGKILL reaches stopped processes); the
 * harness checks that no process of the job is left. Nothing in the jobs sleeps for this.
 *
 * The two runs have their own storage prefixes (no cache key, artifact or input shared) and equal
 * specs otherwise: the same seeds, data and settings, `logging_steps` 1 (the Trainer-based jobs
 * log every step; PPO reports every step), LoRA dropout left at its default 0.05, so that the RNG
 * state must be restored exactly too.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { startRun } from '../../client/commands/run.js';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';
import { readAttemptRecords, summarizeAttempts, type AttemptSummary } from '../../storage/attempt-records.js';
import { downloadCommitted, readCommitted } from '../../storage/commit.js';
import { listJobLogs, readJobLog } from '../../storage/job-logs.js';
import { layout } from '../../storage/layout.js';
import type { ObjectStore } from '../../storage/object-store.js';
import type { PipelineResult } from '../../workflows/types.js';
import { WorkerProcess } from './processes.js';
import { writeTinyModelFixture, type TinyModelFixture } from './specs.js';
import { PrivateStack, stackClient, stackEnv, stackStore, type StackInfo } from './stack.js';
import { sleep, until, waitFor } from './wait.js';
import { installQuietRuntime, startInProcessWorkers, type InProcessWorkers } from './workers.js';

export type RealTrainer = 'sft' | 'dpo' | 'ppo' | 'grpo';
export const REAL_TRAINERS: readonly RealTrainer[] = ['sft', 'dpo', 'ppo', 'grpo'];

export interface KillAndResumeOptions {
  /** The stack to run on: a PrivateStack, or its `info` (e.g. the test stack's `inject('stack')`). */
  stack: PrivateStack | StackInfo;
  trainer: RealTrainer;
  /** The jobs' Python (default: jobsPython(), i.e. $REFINERY_PYTHON or the bootstrap's). */
  python?: string;
  /** hyper.seed of every stage (default 42). */
  seed?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /** A control worker already serving this stack's namespace; without it one is started here for the call. 'external': one runs elsewhere. */
  control?: InProcessWorkers | 'external';
  /** A client of the stack's Temporal; without it one is connected (and closed) here. */
  client?: Client;
  /** The tiny model and data (writeTinyModelFixture); without it one is built here (about 6 s). Reusable across calls. */
  fixture?: TinyModelFixture;
  /** Where specs, worker scratch dirs, worker logs and downloaded outputs go (default: a new temp dir). */
  workDir?: string;
  /** Keep workDir (default: removed unless a problem was found or the call threw). */
  keep?: boolean;
  /** Largest accepted |Δloss| per step (default 1e-3). */
  lossTolerance?: number;
  /** atol of torch.allclose on the final weights (rtol 0; default 1e-4). */
  weightAtol?: number;
  /** Upper bound for each run (default 15 min). */
  runTimeoutMs?: number;
  /**
   * Run the reference pipeline at the same time as the killed one, on a third worker process and a
   * task queue of its own (the killed run spends ~10 s waiting for the dead worker's stage lease).
   * Default false, one after the other: on 2 cores the overlap saved 2 s of 39 (SFT).
   */
  referenceAlongside?: boolean;
  /** Called with each training worker process once it is up (the fault suite tracks their job sessions); the harness still stops them at the end. */
  onWorker?: (worker: WorkerProcess) => void;
}

export interface StepComparison {
  step: number;
  reference: number;
  resumed: number;
  delta: number;
}

export interface KillAndResumeResult {
  trainer: RealTrainer;
  /** The stage that was killed and resumed (sft, dpo, ppo or grpo; ppo and grpo have a reward stage before it). */
  stage: string;
  seed: number;
  saveSteps: number;
  totalSteps: number;
  runIds: { reference: string; killed: string };
  prefixes: { reference: string; killed: string };
  /** Checkpoint steps the job had reported when it was stopped; the newest was committed before the kill. */
  checkpointsAtKill: number[];
  /** The job's last reported step when it was stopped. */
  stepAtKill: number;
  /** resumed_from_step of the resumed attempt's `started` event (≥ 2 × saveSteps). */
  resumeStep: number;
  /** Every attempt of the killed run's target stage (from its records in the bucket). */
  attempts: Pick<AttemptSummary, 'attempt' | 'outcome' | 'resumedFromStep' | 'checkpoints' | 'reason'>[];
  /** Steps after resumeStep compared with the reference run (all of them, resumeStep+1 … totalSteps). */
  stepsCompared: number;
  maxLossDelta: number;
  lossTolerance: number;
  steps: StepComparison[];
  /** Steps before the kill (attempt 1, as far as its events reached the bucket) compared too. */
  stepsBeforeKillCompared: number;
  maxLossDeltaBeforeKill: number;
  /**
   * Largest |Δ| per progress metric after the resume (learning_rate, grad_norm, reward_mean, kl, …). Each must be
   * ≤ lossTolerance × max(1, |reference value|), except wall-clock ones (TIMING_METRIC): the losses of PPO and GRPO
   * are ~1e-5, so their rewards and KL are what shows a resume that went wrong.
   */
  metricDeltas: Record<string, number>;
  weights: { tensors: number; allclose: boolean; maxAbsDiff: number; atol: number; notClose: string[]; onlyInOne: string[] };
  /** setupMs: control worker, tiny model and worker processes; referenceMs, killedRunMs: start to end of each run (alongside: overlapping). */
  timings: { setupMs: number; referenceMs: number; killedRunMs: number; commitWaitMs: number; killToResumeMs: number | null; compareMs: number; totalMs: number };
  workDir: string;
  /** Empty when everything held; otherwise what did not. */
  problems: string[];
}

const SAVE_STEPS: Record<RealTrainer, number> = { sft: 3, dpo: 3, ppo: 2, grpo: 2 };
// SFT on the tiny model takes about 35 ms a step: 18 steps after the second checkpoint give the stop
// a window of more than half a second. The others take 0.3–2 s a step.
const MAX_STEPS: Record<RealTrainer, number> = { sft: 24, dpo: 12, ppo: 10, grpo: 10 };

/** The pipeline for a trainer: the target stage (and, for ppo/grpo, the reward stage before it). */
export function realResumeSpec(trainer: RealTrainer, o: { prefix: string; queue: string; seed: number; fixture: TinyModelFixture }): Record<string, unknown> {
  const target = { id: trainer, kind: trainer, hyper: { max_steps: MAX_STEPS[trainer], save_steps: SAVE_STEPS[trainer] } };
  const reward = { id: 'reward', kind: 'reward', from: 'base', dataset: 'prefs', hyper: { max_steps: 6, learning_rate: 3e-3 } };
  const stages: Record<string, unknown>[] =
    trainer === 'sft'
      ? [{ ...target, dataset: 'chats', hyper: { ...target.hyper, learning_rate: 3e-3 } }]
      : trainer === 'dpo'
        ? [{ ...target, from: 'base', dataset: 'prefs', hyper: { ...target.hyper, learning_rate: 3e-3 }, params: { beta: 0.1 } }]
        : trainer === 'ppo'
          ? [reward, { ...target, policy: 'base', reward_model: 'reward', dataset: 'prompts', hyper: { ...target.hyper, learning_rate: 1e-3 }, params: { max_new_tokens: 16, ppo_epochs: 2 } }]
          : // beta > 0: TRL keeps a frozen "ref" adapter beside the trained one, which a resume must restore too.
            [reward, { ...target, policy: 'base', reward_model: 'reward', dataset: 'prompts', hyper: { ...target.hyper, learning_rate: 1e-3 }, params: { num_generations: 4, max_completion_length: 16, beta: 0.04 } }];
  return {
    name: `real-resume-${trainer}`,
    base_model: o.fixture.baseModel,
    storage: { prefix: o.prefix },
    datasets: {
      chats: { path: o.fixture.data.sft, format: 'chat' },
      prefs: { path: o.fixture.data.preference, format: 'preference' },
      prompts: { path: o.fixture.data.prompts, format: 'prompts' },
    },
    defaults: {
      finetuning: { type: 'lora', lora: { r: 8, alpha: 16 } },
      hyper: { batch_size: 8, max_length: 128, seed: o.seed, save_total_limit: 3 },
      resources: { task_queue: o.queue },
      // Stall: the job is stopped on purpose for a while. Lease TTL (the wait before the takeover) is 10 s.
      timeouts: { heartbeat: '5s', stall: '5m' },
      retry: { maximum_attempts: 4, initial_interval: '1s', maximum_interval: '2s' },
    },
    stages,
  };
}

/** Progress metrics that measure time, not training (GRPO's step_time): never compared. */
export const TIMING_METRIC = /time|runtime|per_second/;

interface LoggedEvent {
  attempt: number;
  at?: string;
  event: string;
  step?: number;
  loss?: number;
  metrics?: Record<string, number>;
  resumed_from_step?: number | null;
}

/** The target stage's job events of every attempt of a run, from the bucket (whole objects or flushed parts). */
async function stageEvents(store: ObjectStore, prefix: string, runId: string, stage: string): Promise<LoggedEvent[]> {
  const out: LoggedEvent[] = [];
  for (const ref of await listJobLogs(store, layout.run(prefix, runId), { stage, kind: 'events' })) {
    const bytes = await readJobLog(store, ref.key);
    for (const line of (bytes?.toString('utf8') ?? '').split('\n')) {
      if (!line.trim()) continue;
      try {
        out.push({ attempt: ref.attempt, ...(JSON.parse(line) as Omit<LoggedEvent, 'attempt'>) });
      } catch {
        // a line cut by the kill
      }
    }
  }
  return out;
}

function lossesByStep(events: LoggedEvent[]): Map<number, LoggedEvent> {
  const m = new Map<number, LoggedEvent>();
  for (const e of events) if (e.event === 'progress' && typeof e.step === 'number') m.set(e.step, e);
  return m;
}

/** A job's process group as seen in /proc: its leader (the supervisor) and the other members (the job). */
interface JobProcesses {
  leader: number;
  members: number[];
}

async function procStat(pid: number): Promise<{ state: string; pgrp: number } | undefined> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (!text) return undefined;
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0]!, pgrp: Number(fields[2]) };
}

/** Processes whose argv names `configPath` (the supervisor and the job), grouped by their process group. */
async function findJob(configPath: string): Promise<JobProcesses | undefined> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.split('\0').includes(configPath)) pids.push(Number(entry));
  }
  for (const pid of pids) {
    const st = await procStat(pid);
    if (!st || st.pgrp !== pid) continue;
    const members: number[] = [];
    for (const entry of await readdir('/proc')) {
      if (!/^\d+$/.test(entry) || Number(entry) === pid) continue;
      const m = await procStat(Number(entry));
      if (m && m.pgrp === pid && m.state !== 'Z') members.push(Number(entry));
    }
    if (members.length > 0) return { leader: pid, members };
  }
  return undefined;
}

function signalAll(pids: number[], sig: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, sig);
    } catch {
      // gone
    }
  }
}

async function liveOf(pids: number[]): Promise<number[]> {
  const out: number[] = [];
  for (const pid of pids) {
    const st = await procStat(pid);
    if (st && st.state !== 'Z') out.push(pid);
  }
  return out;
}

/** The first attempt's folder of `runId`/`stage` in a worker's scratch dir: <scratch>/stages/<cacheKey>/<runId>.1/ */
async function firstAttemptDir(scratch: string, runId: string, stage: string): Promise<string | undefined> {
  const stages = path.join(scratch, 'stages');
  for (const key of await readdir(stages).catch(() => [] as string[])) {
    const dir = path.join(stages, key, `${runId}.1`);
    const cfg = await readFile(path.join(dir, 'job-config.attempt-1.json'), 'utf8').catch(() => undefined);
    if (!cfg) continue;
    try {
      if ((JSON.parse(cfg) as { stage_id?: string }).stage_id === stage) return dir;
    } catch {
      // being written
    }
  }
  return undefined;
}

function parseEventsFile(text: string): { checkpoints: number[]; step: number; done: boolean } {
  const r = { checkpoints: [] as number[], step: 0, done: false };
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    let e: LoggedEvent;
    try {
      e = JSON.parse(line) as LoggedEvent;
    } catch {
      continue; // a line being written
    }
    if (e.event === 'checkpoint' && typeof e.step === 'number') r.checkpoints.push(e.step);
    else if (e.event === 'progress' && typeof e.step === 'number') r.step = e.step;
    else if (e.event === 'done' || e.event === 'error') r.done = true;
  }
  return r;
}

async function finishedRun(handle: { result(): Promise<PipelineResult> }, timeoutMs: number, what: string): Promise<PipelineResult> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      handle.result(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not finish within ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs the trainer's pipeline twice on `stack` — once straight, once with the training worker killed
 * (SIGKILL) right after the target stage's second committed checkpoint and the stage resumed by a
 * second worker process — and compares the two. Throws when the harness itself cannot do its part
 * (a run fails, the job ends before it could be stopped, a timeout); an equivalence or recovery that
 * does not hold is reported in `problems`.
 */
export async function runKillAndResume(options: KillAndResumeOptions): Promise<KillAndResumeResult> {
  const t0 = Date.now();
  const info: StackInfo = options.stack instanceof PrivateStack ? options.stack.info : options.stack;
  const { trainer } = options;
  const python = options.python ?? jobsPython();
  const seed = options.seed ?? 42;
  const log = options.log ?? (() => undefined);
  const lossTolerance = options.lossTolerance ?? 1e-3;
  const weightAtol = options.weightAtol ?? 1e-4;
  const runTimeoutMs = options.runTimeoutMs ?? 15 * 60_000;
  const store = stackStore(info);
  const saveSteps = SAVE_STEPS[trainer];
  const totalSteps = MAX_STEPS[trainer];
  const stage = trainer;
  const problems: string[] = [];
  const workDir = options.workDir ?? (await mkdtemp(path.join(tmpdir(), `refinery-real-resume-${trainer}-`)));
  await mkdir(workDir, { recursive: true });
  const stamp = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const queue = `real-resume-${trainer}-${stamp}`;
  const prefixes = { reference: `real-resume/${stamp}-${trainer}-ref`, killed: `real-resume/${stamp}-${trainer}-kill` };
  const runIds = { reference: `real-resume-${trainer}-ref-${stamp}`, killed: `real-resume-${trainer}-kill-${stamp}` };
  const logDir = path.join(workDir, 'logs');

  const cleanups: (() => Promise<unknown>)[] = [];
  /** Runs started here: terminated if the harness gives up on them. */
  const runs: { result(): Promise<unknown>; terminate(reason?: string): Promise<unknown> }[] = [];
  const workers: WorkerProcess[] = [];
  let stopped: number[] = [];
  let threw = false;
  try {
    // ------------------------------------------------------------------ the stack's side
    let client = options.client;
    if (!client) {
      const c = await stackClient(info);
      client = c.client;
      cleanups.push(c.close);
    }
    const startControl = async () => {
      if (options.control) return;
      installQuietRuntime('WARN');
      const control = await startInProcessWorkers(info, { store, control: true, trainingQueues: [], python, scratchDir: path.join(workDir, 'control'), shutdownGraceTime: '2s', lenientShutdown: true });
      cleanups.push(control.shutdown);
    };
    const alongside = options.referenceAlongside ?? false;
    const refQueue = alongside ? `${queue}-ref` : queue;
    const specFile = async (name: string, prefix: string, q: string, fixture: TinyModelFixture) => {
      const file = path.join(fixture.dir, `${name}-${stamp}.yaml`);
      await writeFile(file, stringify(realResumeSpec(trainer, { prefix, queue: q, seed, fixture })));
      return file;
    };
    const spawnWorker = (name: string, q: string) =>
      WorkerProcess.spawn({
        name: `${name}-${stamp}`,
        queue: q,
        scratch: path.join(workDir, name),
        stackEnv: stackEnv(info),
        python,
        // REFINERY_JOB_COMMAND empty: the worker runs the real Python job of each stage kind (worker/main.ts).
        jobCommand: [python],
        env: { REFINERY_JOB_COMMAND: '' },
        logDir,
      }).then((w) => {
        workers.push(w);
        options.onWorker?.(w);
        return w;
      });
    // Setup, all at once: the control worker (bundling the workflows), the tiny model, the workers.
    const [fixture, a] = await Promise.all([
      options.fixture ?? writeTinyModelFixture({ python, dir: path.join(workDir, 'fixture') }),
      spawnWorker('worker-a', queue),
      alongside ? spawnWorker('worker-ref', refQueue) : undefined,
      startControl(),
    ]);
    const setupMs = Date.now() - t0;

    // ------------------------------------------------------------------ the reference run, straight
    log(`${trainer}: reference run ${runIds.reference} (queue ${refQueue})`);
    const tRef = Date.now();
    const ref = await startRun(client, await specFile('reference', prefixes.reference, refQueue, fixture), { id: runIds.reference, by: 'real-resume' });
    runs.push(ref.handle);
    let referenceMs = 0;
    const refDone = finishedRun(ref.handle, runTimeoutMs, `reference run ${runIds.reference}`).then((r) => {
      referenceMs = Date.now() - tRef;
      log(`${trainer}: reference run done in ${(referenceMs / 1000).toFixed(1)} s`);
      return r;
    });
    refDone.catch(() => undefined);
    if (!alongside) await refDone;

    // ------------------------------------------------------------------ the killed run
    const tKill = Date.now();
    const killed = await startRun(client, await specFile('killed', prefixes.killed, queue, fixture), { id: runIds.killed, by: 'real-resume' });
    runs.push(killed.handle);
    let ended: string | undefined;
    void killed.handle.result().then(
      () => (ended = 'completed'),
      (err: unknown) => (ended = `failed: ${(err as Error).message}`),
    );
    let attemptDir: string | undefined;
    for (const deadline = Date.now() + runTimeoutMs; !attemptDir; await sleep(100)) {
      attemptDir = await firstAttemptDir(a.scratch, runIds.killed, stage);
      if (attemptDir) break;
      if (ended) throw new Error(`killed run ${runIds.killed} ${ended} before its ${stage} stage started on worker a`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for attempt 1 of ${stage} on worker a`);
    }
    // Worker b may start now: worker a's one job slot is taken, so b gets only the retry.
    const bStarted = spawnWorker('worker-b', queue);
    bStarted.catch(() => undefined);
    const configPath = path.join(attemptDir, 'job-config.attempt-1.json');
    const eventsFile = path.join(attemptDir, 'job.attempt-1.events.jsonl');
    const job = await until(`the ${stage} job's processes`, () => findJob(configPath), 120_000, 50);
    log(`${trainer}: job of attempt 1 is pid ${job.members.join(',')} (supervisor ${job.leader})`);

    // Stop the job at its second checkpoint event.
    let seen = parseEventsFile('');
    for (;;) {
      seen = parseEventsFile(await readFile(eventsFile, 'utf8').catch(() => ''));
      if (seen.checkpoints.length >= 2) break;
      if (seen.done) throw new Error(`the ${stage} job ended before its second checkpoint (checkpoints ${seen.checkpoints.join(',') || 'none'})`);
      if ((await liveOf(job.members)).length === 0) throw new Error(`the ${stage} job exited before its second checkpoint`);
      await sleep(5);
    }
    signalAll(job.members, 'SIGSTOP');
    const stoppedAt = Date.now();
    stopped = job.members;
    // Anything else the job started meanwhile (not the supervisor).
    const again = await findJob(configPath);
    if (again) {
      const extra = again.members.filter((p) => !stopped.includes(p));
      signalAll(extra, 'SIGSTOP');
      stopped = [...stopped, ...extra];
    }
    await sleep(200); // events already in the pipe reach the worker's file
    seen = parseEventsFile(await readFile(eventsFile, 'utf8').catch(() => ''));
    if (seen.done) throw new Error(`the ${stage} job finished before it could be stopped (raise its max_steps)`);
    if ((await liveOf(stopped)).length === 0) throw new Error(`the ${stage} job exited before it could be stopped`);
    const newest = seen.checkpoints.at(-1)!;
    log(`${trainer}: job stopped at step ${seen.step} (checkpoints ${seen.checkpoints.join(',')}); waiting for checkpoint ${newest} to be committed`);

    const recordsPrefix = layout.attemptRecords(prefixes.killed, runIds.killed, stage, 1);
    await until(
      `checkpoint ${newest} committed by attempt 1`,
      async () => (await readAttemptRecords(store, recordsPrefix)).some((r) => r.event.type === 'checkpoint-committed' && r.event.step === newest),
      120_000,
      50,
    );
    const killedAt = Date.now();
    const commitWaitMs = killedAt - stoppedAt;
    await a.kill9();
    log(`${trainer}: worker a killed (SIGKILL) ${commitWaitMs} ms after the stop`);
    // The supervisor's parent-death trap kills the stopped job (its whole process group).
    const gone = await waitFor(async () => (await liveOf([job.leader, ...stopped])).length === 0, 15_000, 50);
    if (!gone) {
      problems.push(`processes of the killed worker's job still alive 15 s after the kill: ${(await liveOf([job.leader, ...stopped])).join(',')}`);
      signalAll([job.leader, ...stopped], 'SIGKILL');
    }
    stopped = [];

    await bStarted;
    const killedResult = await finishedRun(killed.handle, runTimeoutMs, `killed run ${runIds.killed}`);
    const killedRunMs = Date.now() - tKill;
    const killedArtifact = killedResult.artifacts[stage];
    if (!killedArtifact) throw new Error(`killed run ${runIds.killed} has no ${stage} artifact`);
    log(`${trainer}: killed run done in ${(killedRunMs / 1000).toFixed(1)} s`);
    const refArtifact = (await refDone).artifacts[stage];
    if (!refArtifact) throw new Error(`reference run ${runIds.reference} has no ${stage} artifact`);

    // ------------------------------------------------------------------ compare
    const tCompare = Date.now();
    const attempts = await summarizeAttempts(store, { storagePrefix: prefixes.killed, runId: runIds.killed, stageId: stage });
    const first = attempts.find((s) => s.attempt === 1);
    if (first?.outcome !== 'lost') problems.push(`attempt 1 should be lost (its worker was killed), is ${first?.outcome ?? 'missing'}`);
    const last = attempts.at(-1);
    if (!last || last.attempt < 2 || last.outcome !== 'completed') problems.push(`no later attempt completed the stage: ${JSON.stringify(attempts.map((s) => [s.attempt, s.outcome]))}`);

    const events = await stageEvents(store, prefixes.killed, runIds.killed, stage);
    const refEvents = await stageEvents(store, prefixes.reference, runIds.reference, stage);
    const resumedAttempt = last?.attempt ?? 2;
    const started = events.find((e) => e.attempt === resumedAttempt && e.event === 'started');
    const resumeStep = started?.resumed_from_step ?? -1;
    if (!started) problems.push(`attempt ${resumedAttempt} has no started event in the bucket`);
    if (resumeStep < 2 * saveSteps) problems.push(`attempt ${resumedAttempt} resumed from step ${resumeStep}, expected >= ${2 * saveSteps}`);
    if (resumeStep !== newest) problems.push(`attempt ${resumedAttempt} resumed from step ${resumeStep}, not from the checkpoint committed before the kill (${newest})`);
    const killToResumeMs = started?.at ? Date.parse(started.at) - killedAt : null;

    const reference = lossesByStep(refEvents);
    const resumed = lossesByStep(events.filter((e) => e.attempt === resumedAttempt));
    const steps: StepComparison[] = [];
    const metricDeltas: Record<string, number> = {};
    for (let step = resumeStep + 1; step <= totalSteps; step++) {
      const r = reference.get(step);
      const k = resumed.get(step);
      if (typeof r?.loss !== 'number' || typeof k?.loss !== 'number') {
        problems.push(`step ${step}: no loss in the ${typeof r?.loss !== 'number' ? 'reference' : 'resumed'} run's events`);
        continue;
      }
      steps.push({ step, reference: r.loss, resumed: k.loss, delta: Math.abs(r.loss - k.loss) });
      for (const [key, v] of Object.entries(k.metrics ?? {})) {
        const rv = r.metrics?.[key];
        if (typeof rv !== 'number' || typeof v !== 'number') continue;
        const delta = Math.abs(rv - v);
        metricDeltas[key] = Math.max(metricDeltas[key] ?? 0, delta);
        if (!TIMING_METRIC.test(key) && !(delta <= lossTolerance * Math.max(1, Math.abs(rv)))) problems.push(`step ${step}: ${key} ${v} after the resume, ${rv} uninterrupted`);
      }
    }
    const maxLossDelta = Math.max(0, ...steps.map((s) => s.delta));
    for (const s of steps) if (!(s.delta <= lossTolerance)) problems.push(`step ${s.step}: loss ${s.resumed} after the resume, ${s.reference} uninterrupted (|Δ| ${s.delta.toExponential(2)} > ${lossTolerance})`);
    // Attempt 1 before the kill, as far as its events were flushed to the bucket.
    const before = [...lossesByStep(events.filter((e) => e.attempt === 1)).values()].filter((e) => typeof e.loss === 'number' && typeof reference.get(e.step!)?.loss === 'number');
    const beforeDeltas = before.map((e) => Math.abs(e.loss! - reference.get(e.step!)!.loss!));
    const maxLossDeltaBeforeKill = Math.max(0, ...beforeDeltas);
    if (maxLossDeltaBeforeKill > lossTolerance) problems.push(`before the kill the losses already differ from the reference run (max |Δ| ${maxLossDeltaBeforeKill})`);

    const weights = await compareOutputs(store, python, refArtifact.prefix, killedArtifact.prefix, path.join(workDir, 'outputs'), weightAtol);
    if (!weights.allclose) problems.push(`final weights differ: ${weights.tensors} tensors compared, max |Δ| ${weights.maxAbsDiff}, not allclose: ${[...weights.notClose, ...weights.onlyInOne].slice(0, 5).join(', ')}`);
    const compareMs = Date.now() - tCompare;

    const result: KillAndResumeResult = {
      trainer,
      stage,
      seed,
      saveSteps,
      totalSteps,
      runIds,
      prefixes,
      checkpointsAtKill: seen.checkpoints,
      stepAtKill: seen.step,
      resumeStep,
      attempts: attempts.map(({ attempt, outcome, resumedFromStep, checkpoints, reason }) => ({ attempt, outcome, resumedFromStep, checkpoints, reason })),
      stepsCompared: steps.length,
      maxLossDelta,
      lossTolerance,
      steps,
      stepsBeforeKillCompared: before.length,
      maxLossDeltaBeforeKill,
      metricDeltas,
      weights,
      timings: { setupMs, referenceMs, killedRunMs, commitWaitMs, killToResumeMs, compareMs, totalMs: Date.now() - t0 },
      workDir,
      problems,
    };
    log(
      `${trainer}: resumed from step ${resumeStep}; ${steps.length} steps compared, max |Δloss| ${maxLossDelta.toExponential(2)}; ` +
        `weights ${weights.allclose ? 'allclose' : 'NOT allclose'} (max |Δ| ${weights.maxAbsDiff.toExponential(2)}, ${weights.tensors} tensors); ${problems.length ? `problems: ${problems.join('; ')}` : 'ok'}`,
    );
    return result;
  } catch (err) {
    threw = true;
    for (const h of runs) await h.terminate('the real-resume harness gave up').catch(() => undefined);
    const tails = workers.map((w) => `--- ${w.name} (${w.logFile}):\n${w.logTail(15)}`).join('\n');
    throw new Error(`real-resume ${trainer}: ${(err as Error).message}\n${tails}`, { cause: err });
  } finally {
    signalAll(stopped, 'SIGKILL');
    await Promise.all(workers.map((w) => w.stop()));
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    if (!options.keep && !threw && problems.length === 0 && !options.workDir) await rm(workDir, { recursive: true, force: true });
  }
}

/** Downloads both committed outputs and compares every tensor (jobs/tests/compare_weights.py, torch.allclose). */
async function compareOutputs(store: ObjectStore, python: string, refPrefix: string, killedPrefix: string, dir: string, atol: number): Promise<KillAndResumeResult['weights']> {
  const local: string[] = [];
  for (const [name, prefix] of [
    ['reference', refPrefix],
    ['killed', killedPrefix],
  ] as const) {
    const artifact = await readCommitted(store, prefix);
    if (!artifact) throw new Error(`${prefix}: not committed`);
    const target = path.join(dir, name);
    await downloadCommitted(store, artifact, target);
    local.push(target);
  }
  const r = await execa(python, [path.join(REPO_ROOT, 'jobs', 'tests', 'compare_weights.py'), local[0]!, local[1]!, '--atol', String(atol), '--rtol', '0'], { reject: false });
  if (r.exitCode !== 0) throw new Error(`compare_weights.py failed (exit ${r.exitCode}): ${r.stderr.slice(-2000)}`);
  const out = JSON.parse(r.stdout) as { tensors: number; allclose: boolean; max_abs_diff: number; atol: number; not_close: string[]; only_in_a: string[]; only_in_b: string[]; shape_mismatch: string[] };
  return { tensors: out.tensors, allclose: out.allclose, maxAbsDiff: out.max_abs_diff, atol: out.atol, notClose: [...out.not_close, ...out.shape_mismatch], onlyInOne: [...out.only_in_a, ...out.only_in_b] };
}
