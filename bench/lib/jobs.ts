/**
 * Running jobs the way a plain script would (no Refinery): argv + `--config cfg.json`, cwd jobs/,
 * the same environment the worker gives a job, events read from fd 3 with their arrival times.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { execa } from 'execa';
import { EVENTS_FD, JOB_CONTRACT_VERSION, type JobConfig, type JobEvent } from '../../activities/job-contract.js';
import { jobEnvironment, withParentDeathSignal } from '../../activities/job-process.js';
import type { PlannedStage } from '../../spec/plan-types.js';
import { REPO_ROOT } from '../../config/paths.js';
import { jobsPython } from '../../config/worker.js';

export const JOBS_CWD = path.join(REPO_ROOT, 'jobs');

export function pythonJobArgv(kind: string, python = jobsPython()): [string, ...string[]] {
  return [python, '-m', `refinery_jobs.${kind === 'cpt' ? 'sft' : kind}`];
}

export function testJobArgv(python = jobsPython()): [string, ...string[]] {
  return [python, '-m', 'refinery_jobs.testjob'];
}

/** The job config the training activity writes for `stage` (activities/run-stage-job.ts). */
export function jobConfigFor(
  stage: PlannedStage,
  dirs: { output: string; checkpoints: string },
  inputs: Record<string, string>,
  datasets: { train: string | null; eval: string | null },
  runId = 'bench',
): JobConfig {
  return {
    contract: JOB_CONTRACT_VERSION,
    kind: stage.kind,
    run_id: runId,
    stage_id: stage.id,
    output_dir: dirs.output,
    checkpoint_dir: dirs.checkpoints,
    resume_from: null,
    inputs,
    datasets,
    dataset_format: stage.dataset?.format ?? null,
    finetuning: stage.finetuning,
    hyper: stage.hyper,
    params: stage.params,
    job_params: stage.jobParams ?? {},
    chat_template: stage.template ?? null,
  };
}

export interface TimedEvent {
  /** performance.now() when the line arrived */
  t: number;
  event: JobEvent;
}

export interface JobRun {
  startedAt: number;
  endedAt: number;
  exitCode: number | undefined;
  events: TimedEvent[];
}

/** Writes `config` to `<workDir>/job-config.json` and runs the job to completion. */
export async function runPlainJob(
  argv: [string, ...string[]],
  config: JobConfig,
  workDir: string,
  onEvent?: (e: TimedEvent) => void,
  env: Record<string, string> = {},
  /** Stops the job (SIGTERM); the run then resolves with the events so far. */
  signal?: AbortSignal,
): Promise<JobRun> {
  await mkdir(workDir, { recursive: true });
  await mkdir(config.output_dir, { recursive: true });
  await mkdir(config.checkpoint_dir, { recursive: true });
  const configPath = path.join(workDir, 'job-config.json');
  await writeFile(configPath, JSON.stringify(config, null, 2));
  const full = withParentDeathSignal([...argv, '--config', configPath] as [string, ...string[]]);
  const log = createWriteStream(path.join(workDir, 'job.log'), { flags: 'a' });
  const events: TimedEvent[] = [];
  const startedAt = performance.now();
  const child = execa(full[0], full.slice(1), {
    cwd: JOBS_CWD,
    env: jobEnvironment(process.env, { CUDA_VISIBLE_DEVICES: '', HF_HUB_OFFLINE: '1', TOKENIZERS_PARALLELISM: 'false', ...env }),
    extendEnv: false,
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    reject: false,
    buffer: false,
    cleanup: true,
  });
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  const stop = () => child.kill('SIGTERM');
  signal?.addEventListener('abort', stop, { once: true });
  const stream = child.stdio[EVENTS_FD] as Readable | undefined;
  const reading = (async () => {
    if (!stream) return;
    for await (const line of createInterface({ input: stream, crlfDelay: Infinity })) {
      if (!line.trim()) continue;
      const e: TimedEvent = { t: performance.now(), event: JSON.parse(line) as JobEvent };
      events.push(e);
      onEvent?.(e);
    }
  })();
  const result = await child;
  signal?.removeEventListener('abort', stop);
  await reading;
  const endedAt = performance.now();
  await new Promise<void>((resolve) => log.end(resolve));
  if (result.exitCode !== 0 && !signal?.aborted) throw new Error(`job ${argv.join(' ')} exited ${result.exitCode}; see ${path.join(workDir, 'job.log')}`);
  return { startedAt, endedAt, exitCode: result.exitCode, events };
}

/** Durations between consecutive `progress` events (ms), the first one excluded. */
export function stepTimes(events: TimedEvent[], from = -Infinity, to = Infinity): number[] {
  const progress = events.filter((e) => e.event.event === 'progress');
  const out: number[] = [];
  for (let i = 1; i < progress.length; i++) {
    const a = progress[i - 1]!;
    const b = progress[i]!;
    if (a.t >= from && b.t <= to) out.push(b.t - a.t);
  }
  return out;
}
