/**
 * The preflight a worker runs before each job (jobs/CONTRACT.md, "Preflight"): are the devices it
 * was given visible, and does a small computation on each give the right answer — in the job's own
 * runtime (`python -m refinery_jobs.preflight`; REFINERY_PREFLIGHT_COMMAND for other trainers).
 * A node that fails it is quarantined (worker/host-health.ts): it stops taking GPU work.
 */
import { execa } from 'execa';
import { z } from 'zod';
import { EVENTS_FD } from './job-contract.js';
import { jobEnvironment } from './job-process.js';

export const PreflightReport = z.object({
  event: z.literal('preflight'),
  ok: z.boolean(),
  runtime: z.string().optional(),
  devices: z.array(z.string()).optional(),
  message: z.string().optional(),
  seconds: z.number().optional(),
});
export type PreflightReport = z.infer<typeof PreflightReport>;

export interface PreflightResult {
  ok: boolean;
  /** What failed, in words (ok: which devices passed). */
  message: string;
  seconds: number;
}

export interface PreflightOptions {
  argv: readonly [string, ...string[]];
  cwd: string;
  devices: number[];
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Runs the preflight; never throws for a failing node (that is its result). */
export async function runPreflight(options: PreflightOptions): Promise<PreflightResult> {
  const started = Date.now();
  const visible = options.devices.join(',');
  const r = await execa(options.argv[0], options.argv.slice(1), {
    cwd: options.cwd,
    env: jobEnvironment(process.env, { CUDA_VISIBLE_DEVICES: visible }),
    extendEnv: false,
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    reject: false,
    timeout: options.timeoutMs ?? 120_000,
    cancelSignal: options.signal,
    maxBuffer: 1 << 20,
  });
  const seconds = (Date.now() - started) / 1000;
  const lines = String((r.stdio as unknown[])[EVENTS_FD] ?? '').split('\n').filter((l) => l.trim());
  let report: PreflightReport | undefined;
  for (const line of lines) {
    try {
      const parsed = PreflightReport.safeParse(JSON.parse(line));
      if (parsed.success) report = parsed.data;
    } catch {
      // not JSON: the stderr tail below says what happened
    }
  }
  const devices = visible ? `CUDA_VISIBLE_DEVICES=${visible}` : 'no GPUs';
  if (r.timedOut) return { ok: false, message: `preflight did not finish within ${(options.timeoutMs ?? 120_000) / 1000} s (${devices})`, seconds };
  if (r.exitCode === 0 && report?.ok) return { ok: true, message: `${report.runtime ?? 'preflight'} ok on ${(report.devices ?? []).join(', ') || devices}`, seconds };
  const tail = String(r.stderr ?? '').trim().split('\n').slice(-3).join(' | ');
  return { ok: false, message: report?.message ?? `preflight exited ${r.exitCode ?? r.signal ?? '?'} (${devices})${tail ? `: ${tail}` : ''}`, seconds };
}
