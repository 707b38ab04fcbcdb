/**
 * real-worker-kill: the worker-kill fault on the real trainers (SFT with LoRA, DPO, PPO, GRPO in
 * turn by trial; the short form: SFT). infra/harness/real-resume.ts does the run: the pipeline once
 * straight and once with its training worker killed (SIGKILL) after the target stage's second
 * committed checkpoint, a second worker resuming it; per-step losses after the resume within 1e-3 of
 * the straight run's, final weights allclose. This module turns that into a fault-suite run: the
 * same checks as every other run (audit verify, committed checkpoints, steps lost, every announced
 * checkpoint committed, overlapping attempts and orphans by job session).
 */
import path from 'node:path';
import { REAL_TRAINERS, runKillAndResume, type RealTrainer } from '../infra/harness/real-resume.js';
import { writeTinyModelFixture, type TinyModelFixture } from '../infra/harness/specs.js';
import { checkArtifacts, checkOrphans, checkOverlaps, uncommittedCheckpoints } from './checks.js';
import type { Ctx } from './context.js';
import { attemptLogs } from './trial.js';
import type { FaultRecord, RunReport } from './types.js';

let fixture: Promise<TinyModelFixture> | undefined;

/** Which trainer trial `n` (1-based) runs. */
export function realTrainerOf(ctx: Ctx, trial: number): RealTrainer {
  return ctx.opts.short ? 'sft' : REAL_TRAINERS[(trial - 1) % REAL_TRAINERS.length]!;
}

export async function runRealTrial(ctx: Ctx, trial: number): Promise<RunReport> {
  const t0 = Date.now();
  const trainer = realTrainerOf(ctx, trial);
  fixture ??= writeTinyModelFixture({ python: ctx.python, dir: path.join(ctx.workDir, 'real-fixture') });
  const fault: FaultRecord = { kind: 'real-worker-kill', stage: trainer, aimedAt: 0, detail: '', stepAtFault: null, furthestStep: null, attemptAtFault: 1, resumedFrom: null, retried: false, stepsLost: null, bound: 0, notes: [] };
  const problems: string[] = [];
  const base = { trial, kind: 'real-worker-kill' as const, expected: 'completed' as const, duplicates: 0, overlaps: [], uncommitted: [], jobSessions: 0, artifactsChecked: 0, artifactsFailed: [], auditProblems: [] };
  let r;
  try {
    r = await runKillAndResume({
      stack: ctx.stack,
      trainer,
      python: ctx.python,
      seed: 42 + trial,
      control: ctx.control,
      client: ctx.client,
      fixture: await fixture,
      workDir: path.join(ctx.workDir, `real-${trial}-${trainer}`),
      // Its worker processes join the suite's: the sampler sees their job sessions.
      onWorker: (w) => ctx.workers.push(w),
    });
  } catch (err) {
    problems.push(`the real-trainer run failed: ${(err as Error).message}`);
    fault.detail = `kill -9 the worker of real ${trainer}: ${(err as Error).message.split('\n')[0]}`;
    return { ...base, runId: `real-${trial}-${trainer}`, prefix: '', state: 'failed', fault, orphans: [], problems, durationMs: Date.now() - t0 };
  }
  const runId = r.runIds.killed;
  const prefix = r.prefixes.killed;
  problems.push(...r.problems);
  const final = r.attempts.at(-1);
  const state = final?.outcome === 'completed' ? 'completed' : String(final?.outcome ?? 'unknown');
  Object.assign(fault, {
    aimedAt: 2 * r.saveSteps,
    bound: r.saveSteps + 1,
    stepAtFault: r.stepAtKill,
    resumedFrom: r.resumeStep,
    retried: r.attempts.length > 1,
    furthestStep: r.stepAtKill,
    stepsLost: Math.max(0, r.stepAtKill - r.resumeStep),
    detail:
      `kill -9 the worker of real ${trainer} at step ${r.stepAtKill} (checkpoints ${r.checkpointsAtKill.join(',')} committed); resumed from ${r.resumeStep}; ` +
      `${r.stepsCompared} steps max |Δloss| ${r.maxLossDelta.toExponential(1)}; ${r.weights.tensors} tensors max |Δ| ${r.weights.maxAbsDiff.toExponential(1)}`,
  });
  if (fault.stepsLost! > fault.bound) problems.push(`${fault.stepsLost} steps lost (killed at ${r.stepAtKill}, resumed from ${r.resumeStep}), more than the bound ${fault.bound}`);

  // The same checks as every run (faults/checks.ts).
  const { artifactsChecked, artifactsFailed, auditProblems } = await checkArtifacts(ctx, { runId, prefix }, problems);
  const announced = final ? ((await attemptLogs(ctx.store, prefix, runId, trainer, [])).get(final.attempt)?.checkpoints ?? []) : [];
  const uncommitted = final ? await uncommittedCheckpoints(ctx, { prefix, runId, stageId: trainer, attempt: final.attempt }, announced, problems) : [];
  const { overlaps, jobSessions } = checkOverlaps(ctx, runId, problems);
  if (jobSessions === 0) problems.push('the sampler saw no job session of the run: the orphan and overlap checks would be vacuous');
  const orphans = await checkOrphans(ctx, runId, [], problems);
  return { ...base, runId, prefix, state, fault, artifactsChecked, artifactsFailed, auditProblems, overlaps, uncommitted, jobSessions, orphans, problems, durationMs: Date.now() - t0 };
}
