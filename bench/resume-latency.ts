/**
 * Resume latency: a training worker process (`bin/refinery worker --no-control`) is killed with
 * SIGKILL at a random point of a stage; a second worker on the same queue takes the stage over
 * from the newest committed checkpoint. Per trial: time from the kill to the first new progress
 * step, split into
 *
 *   detection  kill → the retry's activity starts on the other worker (heartbeat timeout + retry
 *              interval + dispatch)
 *   restore    activity start → the job is launched (inputs + checkpoint downloaded and verified)
 *   job start  launch → first progress step of the resumed job (process start, setup, one step)
 *
 * The activity's own steps are timed by what it leaves on the surviving worker's disk: it creates
 * the stage's output folder as it starts and writes job-config.attempt-N.json just before it
 * launches the job (file times, same clock as the kill). The first step is the `at` of the job's
 * first progress event in the worker's events log. (Signal times in Temporal's history are not
 * used: signals that arrive during a workflow task are written, and timed, when it completes.)
 *
 * and the steps lost (step at the kill − step resumed from). The job is the contract test job
 * with checkpoints padded to a realistic size (bench/jobs/padded_testjob.py).
 *
 *   npx tsx bench/resume-latency.ts [--quick] [--trials N] [--heartbeat 5s] [--ckpt 64M] [--seed S]
 *
 * There is no peer here; the reference points are the configured heartbeat timeout and save interval.
 */
import { existsSync, statSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Rng } from '../infra/harness/rng.js';
import { WorkerProcess } from '../infra/harness/processes.js';
import { until as harnessUntil } from '../infra/harness/wait.js';
import { stringify } from 'yaml';
import { startRun } from '../client/commands/run.js';
import { listCommittedSteps } from '../storage/checkpoints.js';
import { ObjectStore } from '../storage/object-store.js';
import { REPO_ROOT } from '../config/paths.js';
import { jobsPython } from '../config/worker.js';
import { fmtBytes, fx, log, machineNote, median, parseArgs, parseSize, percentile, sleep, table } from './lib/common.js';
import { startBenchStack, type BenchStack } from './lib/stack.js';
import { benchClient, quietTemporalRuntime, startWorkers } from './lib/workers.js';

const args = parseArgs({ values: ['trials', 'heartbeat', 'ckpt', 'seed'] });
const quick = args.quick;
const trials = Number(args.get('trials') ?? (quick ? 3 : 8));
const heartbeat = args.get('heartbeat') ?? '5s';
const ckptBytes = parseSize(args.get('ckpt') ?? (quick ? '16M' : '128M'));
const STEP_SECONDS = 0.1;
const SAVE_STEPS = quick ? 20 : 50;
const KILL_WINDOW_S: [number, number] = quick ? [4, 12] : [4, 30];
const QUEUE = 'bench-resume';

// A small deterministic PRNG (mulberry32), so a run can be repeated with --seed.
const seedUsed = Number(args.get('seed') ?? Date.now() % 1_000_000);
const rng = new Rng(seedUsed);
const random = () => rng.next();

/** A training worker process running the padded contract job; ready once it says how many workers it runs. */
function spawnWorker(stack: BenchStack): Promise<WorkerProcess> {
  return mkdtemp(path.join(tmpdir(), 'refinery-bench-resume-worker-')).then((scratch) =>
    WorkerProcess.spawn({
      name: path.basename(scratch),
      queue: QUEUE,
      scratch,
      stackEnv: stack.env,
      jobCommand: [jobsPython(), path.join(REPO_ROOT, 'bench', 'jobs', 'padded_testjob.py')],
      env: { BENCH_CKPT_BYTES: String(ckptBytes) },
      waitReady: true,
      readyTimeoutMs: 120_000,
    }),
  );
}

interface JobEventLine {
  at: string;
  attempt: number;
  event: string;
  step?: number;
  resumed_from_step?: number | null;
}

/** The contract events a worker logged for an attempt (its scratch copy, written as they arrive). */
async function attemptEvents(scratch: string, attempt: number): Promise<JobEventLine[] | undefined> {
  const stages = path.join(scratch, 'stages');
  // <scratch>/stages/<cacheKey>/<runId>.<attempt>/ — one folder per attempt.
  const dirs: string[] = [];
  for (const key of await readdir(stages).catch(() => [] as string[])) {
    for (const sub of await readdir(path.join(stages, key)).catch(() => [] as string[])) dirs.push(path.join(stages, key, sub));
  }
  for (const dir of dirs) {
    const text = await readFile(path.join(dir, `job.attempt-${attempt}.events.jsonl`), 'utf8').catch(() => undefined);
    if (text === undefined) continue;
    return text.split('\n').filter((l) => l.trim()).flatMap((l) => {
      try {
        return [JSON.parse(l) as JobEventLine];
      } catch {
        return []; // a line cut by the kill
      }
    });
  }
  return undefined;
}

/** The harness's `until` with this benchmark's defaults (3 min, every 50 ms). */
const until = <T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 180_000, everyMs = 50): Promise<T> => harnessUntil(what, fn, timeoutMs, everyMs);

/** When a file or folder came to be: birth time where the filesystem records it, else mtime. */
function fileTime(p: string): number {
  const st = statSync(p);
  return st.birthtimeMs > 0 ? st.birthtimeMs : st.mtimeMs;
}

interface Trial {
  killAfterS: number;
  stepAtKill: number;
  lastCheckpointWritten: number;
  committedAtKill: number | null;
  resumedFrom: number | null;
  detection: number;
  restore: number;
  jobStart: number;
  total: number;
}

async function main(): Promise<void> {
  quietTemporalRuntime();
  const loadBefore = machineNote();
  log('starting a private Temporal + MinIO, a control worker in this process, two training worker processes');
  const stack = await startBenchStack();
  const store = new ObjectStore();
  const control = await startWorkers(stack, { control: true, trainingQueues: [] });
  const { client, close } = await benchClient(stack);
  const work = await mkdtemp(path.join(tmpdir(), 'refinery-bench-resume-'));
  const pool: WorkerProcess[] = [];
  const results: Trial[] = [];
  try {
    pool.push(...(await Promise.all([spawnWorker(stack), spawnWorker(stack)])));
    await mkdir(path.join(work, 'base'));
    await writeFile(path.join(work, 'base', 'config.json'), JSON.stringify({ model_type: 'bench-placeholder' }));
    await mkdir(path.join(work, 'data'));
    await cp(path.join(REPO_ROOT, 'demo', 'data', 'sft.jsonl'), path.join(work, 'data', 'sft.jsonl'));

    for (let trial = 0; trial < trials; trial++) {
      const prefix = `resume-${trial}`;
      const specFile = path.join(work, `pipeline-${trial}.yaml`);
      await writeFile(specFile, stringify({
        name: 'bench-resume',
        base_model: './base',
        storage: { prefix },
        datasets: { chats: { path: 'data/sft.jsonl', format: 'chat' } },
        stages: [{
          id: 'sft',
          kind: 'sft',
          dataset: 'chats',
          hyper: { max_steps: 100000, save_steps: SAVE_STEPS, save_total_limit: 2 },
          job_params: { step_seconds: STEP_SECONDS },
          resources: { task_queue: QUEUE },
          timeouts: { heartbeat },
          retry: { initial_interval: '1s', maximum_attempts: 5 },
        }],
      }));
      const runId = `resume-${trial}-${Date.now()}`;
      const { handle } = await startRun(client, specFile, { id: runId, by: 'bench' });
      // Which worker got attempt 1, and when it trains.
      const [victim, first] = await until('attempt 1 to make progress', async () => {
        for (const w of pool) {
          const ev = await attemptEvents(w.scratch, 1);
          const p = ev?.find((e) => e.event === 'progress');
          if (p) return [w, p] as const;
        }
        return undefined;
      });
      const killAfterS = KILL_WINDOW_S[0] + random() * (KILL_WINDOW_S[1] - KILL_WINDOW_S[0]);
      await sleep(Math.max(0, Date.parse(first.at) + killAfterS * 1000 - Date.now()));
      const tKill = Date.now();
      await victim.kill9();
      pool.splice(pool.indexOf(victim), 1);
      const before = (await attemptEvents(victim.scratch, 1)) ?? [];
      const stepAtKill = Math.max(0, ...before.filter((e) => e.event === 'progress').map((e) => e.step ?? 0));
      const lastCheckpointWritten = Math.max(0, ...before.filter((e) => e.event === 'checkpoint').map((e) => e.step ?? 0));
      const artifactPrefix = (await store.list(`${prefix}/artifacts/`, false))[0]?.key.replace(/\/$/, '');
      const committedAtKill = artifactPrefix ? ((await listCommittedSteps(store, artifactPrefix))[0] ?? null) : null;
      log(`trial ${trial + 1}/${trials}: killed the worker ${fx(killAfterS, 1)} s into training at step ${stepAtKill} (newest committed checkpoint: ${committedAtKill ?? 'none'})`);

      // The survivor resumes.
      const survivor = pool[0]!;
      const resumed = await until('the resumed attempt\'s first progress step', async () => {
        for (let attempt = 2; attempt <= 5; attempt++) {
          const ev = await attemptEvents(survivor.scratch, attempt);
          const p = ev?.find((e) => e.event === 'progress');
          if (p) return { attempt, events: ev!, firstStep: p };
        }
        return undefined;
      }, 300_000);
      // The activity's start (output folder created) and the job's launch (its config written).
      const stageDir = await until('the attempt\'s stage folder', async () => {
        const stages = path.join(survivor.scratch, 'stages');
        for (const key of await readdir(stages)) if (existsSync(path.join(stages, key, `job-config.attempt-${resumed.attempt}.json`))) return path.join(stages, key);
        return undefined;
      }, 30_000);
      const tActivity = fileTime(path.join(stageDir, 'output'));
      const tLaunch = fileTime(path.join(stageDir, `job-config.attempt-${resumed.attempt}.json`));
      const started = resumed.events.find((e) => e.event === 'started');
      const tFirstStep = Date.parse(resumed.firstStep.at);
      results.push({
        killAfterS,
        stepAtKill,
        lastCheckpointWritten,
        committedAtKill,
        resumedFrom: started?.resumed_from_step ?? null,
        detection: (tActivity - tKill) / 1000,
        restore: (tLaunch - tActivity) / 1000,
        jobStart: (tFirstStep - tLaunch) / 1000,
        total: (tFirstStep - tKill) / 1000,
      });
      await handle.cancel();
      await handle.result().catch(() => undefined);
      await rm(victim.scratch, { recursive: true, force: true });
      // The cancelled attempt's files stay in the survivor's scratch: clear them, so that the next
      // trial finds only its own.
      for (const w of pool) await rm(path.join(w.scratch, 'stages'), { recursive: true, force: true });
      pool.push(await spawnWorker(stack));
    }
  } finally {
    await Promise.all(pool.map((w) => w.kill9()));
    for (const w of pool) await rm(w.scratch, { recursive: true, force: true });
    await close();
    await control.shutdown();
    await stack.stop();
    await rm(work, { recursive: true, force: true });
    await rm(control.scratchDir, { recursive: true, force: true });
  }

  console.log(`\nresume latency: ${results.length} trials; worker killed with SIGKILL ${KILL_WINDOW_S[0]}–${KILL_WINDOW_S[1]} s into training (uniform, --seed ${seedUsed} repeats them)`);
  console.log(`test job: ${STEP_SECONDS * 1000} ms a step, checkpoint every ${SAVE_STEPS} steps of ${fmtBytes(ckptBytes)}; heartbeat timeout ${heartbeat}, retry initial interval 1 s${quick ? ' (--quick)' : ''}`);
  console.log(`machine: ${loadBefore} at the start, ${machineNote()} at the end\n`);
  console.log(table(['trial', 'kill at s', 'step at kill', 'ckpt written', 'committed', 'resumed from', 'steps lost', 'detection s', 'restore s', 'job start s', 'kill → step s'], results.map((r, i) => [
    i + 1, fx(r.killAfterS, 1), r.stepAtKill, r.lastCheckpointWritten, r.committedAtKill ?? '-', r.resumedFrom ?? '-', r.stepAtKill - (r.resumedFrom ?? 0), fx(r.detection), fx(r.restore), fx(r.jobStart), fx(r.total),
  ])));
  const col = (f: (r: Trial) => number) => results.map(f);
  console.log('\n' + table(['', 'median', 'p90', 'max'], [
    ['detection s', ...[50, 90, 100].map((p) => fx(percentile(col((r) => r.detection), p)))],
    ['restore s', ...[50, 90, 100].map((p) => fx(percentile(col((r) => r.restore), p)))],
    ['job start s', ...[50, 90, 100].map((p) => fx(percentile(col((r) => r.jobStart), p)))],
    ['kill → first new step s', ...[50, 90, 100].map((p) => fx(percentile(col((r) => r.total), p)))],
    ['steps lost', ...[50, 90, 100].map((p) => fx(percentile(col((r) => r.stepAtKill - (r.resumedFrom ?? 0)), p), 0))],
  ]));
  const hbS = Number(/^(\d+(?:\.\d+)?)s$/.exec(heartbeat)?.[1] ?? NaN);
  console.log(`\ndetection / heartbeat timeout: median ${fx(median(col((r) => r.detection)) / hbS)} (expected between ~0.2 and 1, plus the 1 s retry interval: heartbeats reach the server at most every 0.8 × timeout)`);
  console.log(`steps lost / save interval: max ${fx(Math.max(...col((r) => r.stepAtKill - (r.resumedFrom ?? 0))) / SAVE_STEPS)} (README: at most one save_steps interval plus the step in flight, when uploads keep up)`);
}

await main();
