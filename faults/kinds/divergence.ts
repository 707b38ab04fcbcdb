/**
 * divergence: the job's loss turns NaN at a seeded step (`nan_at_step`, at least save_steps + 2 so
 * that a checkpoint before it is known good; fresh start only, so the retry trains clean). The
 * worker's divergence watch (activities/divergence-watch.ts) stops the job at the first NaN and
 * ends the attempt `diverged` (class job: it uses one of the stage's attempts); the retry resumes
 * strictly before the last good step — a checkpoint taken at the last good step may already hold
 * the weights that gave NaN, so it and any later one of that attempt are discarded
 * (workflows/attempt-policy.ts) — and completes.
 *
 * Steps lost: the furthest step the diverged attempt logged (the NaN step, plus what it trained
 * before the stop reached it) minus the checkpoint the retry resumed from. That checkpoint is the
 * newest one strictly before the last good step (NaN step − 1), at most save_steps + 1 steps before
 * the NaN step; the stop lands within a step or two (0.1 s steps): bound save_steps + 3.
 * Own checks: attempt 1 failed with class job, kind diverged, its reason naming the NaN step; the
 * next attempt resumed from exactly the newest checkpoint attempt 1 committed strictly before the
 * last good step (from scratch if none); the last attempt completed; the diverged job was stopped.
 */
import { waitFor } from '../../infra/harness/wait.js';
import { aliveAll } from '../harness.js';
import { SAVE_STEPS } from '../context.js';
import type { FaultKindModule } from './kind.js';

export const divergence: FaultKindModule = {
  setup: ({ aimedAt }) => ({ params: { nan_at_step: Math.max(aimedAt, SAVE_STEPS + 2) } }),
  async inject({ ctx, worker, fault, problems, params, reach }) {
    const nanAt = params.nan_at_step as number;
    fault.aimedAt = nanAt;
    fault.bound = SAVE_STEPS + 3;
    const p = await reach(worker, nanAt);
    if (!p) throw new Error(`the job never reached step ${nanAt}`);
    const pids = (await ctx.sampler.jobsOf(worker.pid)).flatMap((j) => j.pids);
    Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
    const stopped = await waitFor(() => aliveAll(pids).length === 0, 15_000, 50);
    if (!stopped) problems.push(`the job whose loss turned NaN at step ${nanAt} was still training 15 s later`);
    fault.detail = `loss NaN from step ${nanAt} (the job was at step ${p.step} when seen)`;
  },
  check({ fault, problems, params }, { attempts }) {
    const nanAt = params.nan_at_step as number;
    const lastGood = nanAt - 1;
    const [first, ...later] = attempts;
    if (!first) {
      problems.push('the target stage has no attempt records');
      return;
    }
    if (first.outcome !== 'failed' || first.failureClass !== 'job' || first.failureKind !== 'diverged') {
      problems.push(`attempt 1 ended ${first.outcome} (${first.failureClass ?? '-'}: ${first.failureKind ?? '-'}), expected failed (job: diverged): ${first.reason ?? ''}`);
    }
    if (!new RegExp(`diverged at step ${nanAt}: loss is NaN`).test(first.reason ?? '')) problems.push(`attempt 1's reason does not say it diverged at step ${nanAt} with a NaN loss: ${first.reason ?? '(none)'}`);
    const before = first.checkpoints.filter((s) => s < lastGood);
    const expected = before.length ? Math.max(...before) : null;
    const next = later.find((a) => a.outcome !== 'declined');
    if (!next) problems.push('no attempt after the diverged one ran');
    else {
      if (next.resumedFromStep !== expected) problems.push(`attempt ${next.attempt} resumed from ${next.resumedFromStep ?? 'scratch'}, expected ${expected ?? 'scratch'} (the newest checkpoint strictly before the last good step ${lastGood})`);
      if ((next.resumedFromStep ?? 0) >= lastGood) problems.push(`attempt ${next.attempt} resumed from ${next.resumedFromStep}, not strictly before the last good step ${lastGood}`);
      fault.notes.push(`last good step ${lastGood}; attempt 1 committed ${first.checkpoints.join(', ') || 'nothing'}; attempt ${next.attempt} resumed from ${next.resumedFromStep ?? 'scratch'}`);
    }
    if (attempts.at(-1)?.outcome !== 'completed') problems.push(`the last attempt ended ${attempts.at(-1)?.outcome}, expected completed`);
    if (!fault.retried) problems.push('the stage was not retried after the divergence');
  },
};
