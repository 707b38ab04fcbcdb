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
import { verifyRun } from '../client/commands/audit.js';
import { readAttemptRecords } from '../storage/attempt-records.js';
import { listCommittedSteps } from '../storage/checkpoints.js';
import { verifyCommitted } from '../storage/commit.js';
import { layout } from '../storage/layout.js';
import { REAL_TRAINERS, runKillAndResume, type RealTrainer } from '../infra/harness/real-resume.js';
import { writeTinyModelFixture, type TinyModelFixture } from '../infra/harness/specs.js';
import { waitFor } from '../infra/harness/wait.js';
import { OVERLAP_BOUND_MS, type Ctx } from './context.js';
import { killPids } from './harness.js';
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

  // The same checks as every run: audit verify, every committed checkpoint.
  const verify = await verifyRun({ runId, prefix, store: ctx.store, env: ctx.stack.env() }).catch((err: unknown) => ({
    problems: [`audit verify failed to run: ${(err as Error).message}`],
    checked: { artifacts: 0, inputs: 0 },
  }));
  problems.push(...verify.problems.map((p) => `audit verify: ${p}`));
  let artifactsChecked = verify.checked.artifacts + verify.checked.inputs;
  const artifactsFailed = verify.problems.filter((p) => /artifact|dataset|base model/.test(p));
  for (const { key } of await ctx.store.list(`${prefix}/artifacts/`, false)) {
    const artifact = key.replace(/\/$/, '');
    for (const step of await listCommittedSteps(ctx.store, artifact)) {
      artifactsChecked++;
      const bad = await verifyCommitted(ctx.store, layout.checkpoint(artifact, step));
      if (bad.length) {
        artifactsFailed.push(...bad);
        problems.push(`committed checkpoint does not verify: ${bad[0]}`);
      }
    }
  }

  // Every checkpoint the final attempt announced was committed.
  let uncommitted: number[] = [];
  if (final) {
    const logs = await attemptLogs(ctx.store, prefix, runId, trainer, []);
    const records = await readAttemptRecords(ctx.store, layout.attemptRecords(prefix, runId, trainer, final.attempt)).catch(() => []);
    const committed = new Set(records.filter((x) => x.event.type === 'checkpoint-committed').map((x) => x.event.step as number));
    uncommitted = (logs.get(final.attempt)?.checkpoints ?? []).filter((s) => !committed.has(s));
    if (uncommitted.length) problems.push(`attempt ${final.attempt} announced checkpoint(s) ${uncommitted.join(', ')} that were never committed`);
  }

  const overlaps = ctx.sampler.overlaps(runId).map((o) => ({ stage: o.stageId, attempts: o.attempts, ms: o.ms }));
  for (const o of overlaps) if (o.ms > OVERLAP_BOUND_MS) problems.push(`attempts ${o.attempts.join(' and ')} of ${o.stage} trained at the same time for ${o.ms} ms (bound ${OVERLAP_BOUND_MS} ms)`);
  const jobSessions = ctx.sampler.ofRun(runId).length;
  if (jobSessions === 0) problems.push('the sampler saw no job session of the run: the orphan and overlap checks would be vacuous');
  await waitFor(async () => (await ctx.sampler.alivePids(runId)).length === 0, 20_000, 200);
  const orphans = await ctx.sampler.alivePids(runId);
  if (orphans.length) {
    problems.push(`${orphans.length} job process(es) left running: ${orphans.join(', ')}`);
    killPids(orphans);
  }
  return { ...base, runId, prefix, state, fault, artifactsChecked, artifactsFailed, auditProblems: verify.problems, overlaps, uncommitted, jobSessions, orphans, problems, durationMs: Date.now() - t0 };
}
