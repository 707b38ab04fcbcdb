/**
 * The TypeScript side of the job contract (jobs/CONTRACT.md, version 1): the config a job reads,
 * the events it writes, and what its exit code means.
 */
import { z } from 'zod';
import type { DatasetFormat, Finetuning, Hyper, StageKind } from '../spec/schema.js';

export const JOB_CONTRACT_VERSION = 1;
/** File descriptor on which jobs write JSON-lines events. */
export const EVENTS_FD = 3;

export interface JobConfig {
  contract: typeof JOB_CONTRACT_VERSION;
  kind: StageKind;
  run_id: string;
  stage_id: string;
  output_dir: string;
  checkpoint_dir: string;
  resume_from: string | null;
  /** Local model directories: model (+ base when model is an adapter), reward_model (+ reward_model_base). */
  inputs: Record<string, string>;
  /** val_size: the job splits this share (< 1) or this many rows (≥ 1) of train off as its eval set. */
  datasets: { train: string | null; eval: string | null; val_size?: number | null };
  dataset_format: DatasetFormat | null;
  finetuning: Finetuning;
  hyper: Hyper;
  params: Record<string, unknown>;
  /** Free-form settings for a job other than the built-in ones (the built-in jobs refuse any). */
  job_params: Record<string, unknown>;
  /** A named chat template or Jinja text; null: the model's own. */
  chat_template: string | null;
}

/** A number, or a non-finite one as the string JSON must carry it in (a diverged loss is "NaN"). */
export const Reading = z.union([z.number(), z.enum(['NaN', 'Infinity', '-Infinity'])]);
const Metrics = z.record(z.string(), Reading.nullable());

/** The signal a job that declares it (`started.checkpoint_signal`) takes as "checkpoint now". */
export const CHECKPOINT_SIGNAL = 'SIGUSR1';

export const JobEvent = z.discriminatedUnion('event', [
  z.object({
    event: z.literal('started'),
    total_steps: z.number().int().nonnegative().nullable().optional(),
    resumed_from_step: z.number().int().nullable().optional(),
    device: z.string().optional(),
    checkpoint_signal: z.literal(CHECKPOINT_SIGNAL).optional(),
  }),
  z.object({ event: z.literal('progress'), step: z.number().int().nonnegative(), total_steps: z.number().int().nonnegative().nullable().optional(), loss: Reading.nullable().optional(), metrics: Metrics.optional() }),
  /** save_seconds: how long training stood still while the job wrote it (optional). */
  z.object({ event: z.literal('checkpoint'), step: z.number().int().nonnegative(), path: z.string().min(1), save_seconds: z.number().nonnegative().optional() }),
  z.object({ event: z.literal('metrics'), metrics: Metrics, step: z.number().int().optional() }),
  z.object({ event: z.literal('done'), metrics: Metrics.optional() }),
  z.object({
    event: z.literal('error'),
    category: z.enum(['config', 'data', 'unsupported', 'runtime', 'oom']),
    message: z.string(),
    file: z.string().optional(),
    line: z.number().int().optional(),
    field: z.string().optional(),
  }),
]);
export type JobEvent = z.infer<typeof JobEvent>;

/** Parses one line; undefined for blank lines, an Error for anything that breaks the contract. */
export function parseJobEvent(line: string): JobEvent | Error | undefined {
  if (line.trim() === '') return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return new Error(`job wrote a line that is not JSON on the events channel: ${line.slice(0, 200)}`);
  }
  const parsed = JobEvent.safeParse(raw);
  return parsed.success ? parsed.data : new Error(`job event does not follow the contract: ${parsed.error.issues[0]?.message ?? ''}: ${line.slice(0, 200)}`);
}

export const EXIT = { ok: 0, config: 2, data: 3, unsupported: 4, oom: 5 } as const;

export type ExitClass = 'ok' | 'config' | 'data' | 'unsupported' | 'oom' | 'crash';

/** Config, data and unsupported are the user's to fix: never retried. Out of memory is retried with a smaller batch; everything else as it was. */
export function classifyExit(exitCode: number | undefined, sawDone: boolean): ExitClass {
  if (exitCode === EXIT.ok) return sawDone ? 'ok' : 'crash';
  if (exitCode === EXIT.config) return 'config';
  if (exitCode === EXIT.data) return 'data';
  if (exitCode === EXIT.unsupported) return 'unsupported';
  if (exitCode === EXIT.oom) return 'oom';
  return 'crash';
}
