/**
 * oom: the job runs out of memory. The target stage trains at per-device batch 8 × gradient
 * accumulation 1; the test job reports CUDA out of memory (`oom_above_batch`, error category oom,
 * exit 5) before it trains step `oom_at_step` = the aimed step (after the checkpoint at step 5 or
 * later) while its batch is above a seeded limit of 4, 2 or 1 — one, two or three attempts run out of
 * memory. Each retry (workflows/attempt-policy.ts) halves the batch and doubles the accumulation
 * (effective batch 8 throughout), resumes from the newest checkpoint, and the one within the limit
 * completes.
 *
 * The target stage allows a single job attempt (`retry.maximum_attempts: 1`): out of memory is
 * retried by its own rule (down to `retry.oom_min_batch_size`), never from the stage's attempts.
 * Steps lost: each attempt that runs out of memory gets to step oom_at_step − 1 and its retry
 * resumes from the newest checkpoint at or before it, so it costs at most save_steps − 1 steps (0
 * when the step before the OOM is a checkpoint step): bound (attempts out of memory) × (save_steps − 1).
 * Own checks: the attempts' batch sizes (their adjustments) are 8, 4, 2, … down to the limit, batch ×
 * accumulation is 8 in every attempt, each one but the last failed with class job, kind oom, a reason
 * naming the out of memory, every retry resumed from that newest checkpoint, the last one completed,
 * and the OOMed job's processes ended.
 */
import { waitFor } from '../../infra/harness/wait.js';
import { aliveAll } from '../harness.js';
import { SAVE_STEPS } from '../context.js';
import type { FaultKindModule, Trial } from './kind.js';

/** The target stage's per-device batch size and gradient accumulation. */
const BATCH = 8;
const ACCUMULATION = 1;

/** How many attempts run out of memory before the batch fits (halving from BATCH down to `limit`). */
function oomAttempts(limit: number): number {
  let n = 0;
  for (let b = BATCH; b > limit; b = Math.floor(b / 2)) n++;
  return n;
}

/** The checkpoint every retry resumes from: the newest at or before the step before the OOM. */
function resumeStep(t: Trial): number {
  return Math.floor(((t.params.oom_at_step as number) - 1) / SAVE_STEPS) * SAVE_STEPS;
}

export const oom: FaultKindModule = {
  setup: ({ ctx, aimedAt }) => ({
    hyper: { batch_size: BATCH, gradient_accumulation: ACCUMULATION },
    params: { oom_above_batch: ctx.rng.pick([4, 2, 1]), oom_at_step: aimedAt },
    retry: { maximum_attempts: 1 },
  }),
  async inject(t) {
    const { ctx, worker, fault, problems, params, reach } = t;
    const limit = params.oom_above_batch as number;
    const at = params.oom_at_step as number;
    const n = oomAttempts(limit);
    fault.bound = n * (SAVE_STEPS - 1);
    // The step before the OOM: the job dies before it logs step `at`.
    const p = await reach(worker, at - 1);
    if (!p) throw new Error(`the job never reached step ${at - 1}`);
    const pids = (await ctx.sampler.jobsOf(worker.pid)).flatMap((j) => j.pids);
    Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
    const ended = await waitFor(() => aliveAll(pids).length === 0, 30_000, 50);
    if (!ended) problems.push(`the job that ran out of memory at step ${at} was still running 30 s later`);
    const batches = Array.from({ length: n + 1 }, (_, i) => `${BATCH >> i} x ${ACCUMULATION << i}`);
    fault.detail = `CUDA out of memory at step ${at} while batch_size > ${limit} (${n} attempt(s)): batch x accumulation ${batches.join(' -> ')}`;
    fault.notes.push(`expect every retry to resume from ${resumeStep(t)}`);
  },
  check(t, { attempts }) {
    const { fault, problems, params } = t;
    const limit = params.oom_above_batch as number;
    const n = oomAttempts(limit);
    const ran = attempts.filter((a) => a.outcome !== 'declined');
    const shape = ran.map((a) => `${a.outcome}${a.failureKind ? `/${a.failureKind}` : ''} ${a.adjustments?.batchSize ?? BATCH} x ${a.adjustments?.gradientAccumulation ?? ACCUMULATION}`).join(', ');
    fault.notes.push(`attempts: ${shape}`);
    if (ran.length !== n + 1) problems.push(`${ran.length} attempt(s) ran, expected ${n} out of memory and one that completes: ${shape}`);
    const from = resumeStep(t);
    for (const [i, a] of ran.entries()) {
      const batch = a.adjustments?.batchSize ?? BATCH;
      const accumulation = a.adjustments?.gradientAccumulation ?? ACCUMULATION;
      if (batch !== BATCH >> i) problems.push(`attempt ${a.attempt} ran at batch ${batch}, expected ${BATCH >> i} (halved at each out of memory)`);
      if (batch * accumulation !== BATCH * ACCUMULATION) problems.push(`attempt ${a.attempt}: batch ${batch} x accumulation ${accumulation} is not the effective batch ${BATCH * ACCUMULATION}`);
      if (i > 0 && a.resumedFromStep !== from) problems.push(`attempt ${a.attempt} resumed from ${a.resumedFromStep ?? 'scratch'}, expected ${from} (the newest checkpoint before the out of memory)`);
      if (i < ran.length - 1 && (a.outcome !== 'failed' || a.failureClass !== 'job' || a.failureKind !== 'oom' || !/out of memory/i.test(a.reason ?? ''))) {
        problems.push(`attempt ${a.attempt} ended ${a.outcome} (${a.failureClass ?? '-'}: ${a.failureKind ?? '-'}), expected failed (job: oom) with the out of memory in its reason: ${a.reason ?? ''}`);
      }
    }
    const last = ran.at(-1);
    if (last?.outcome !== 'completed') problems.push(`the last attempt ended ${last?.outcome}, expected completed`);
    else if ((last.adjustments?.batchSize ?? BATCH) > limit) problems.push(`the attempt that completed ran at batch ${last.adjustments?.batchSize ?? BATCH}, above the limit ${limit}`);
    if (!fault.retried) problems.push('the stage was not retried after the out of memory');
  },
};
