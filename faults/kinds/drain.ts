/**
 * drain: SIGTERM the worker process that runs the target stage mid-stage, as a deploy would
 * (worker/drain.ts). The worker stops taking work, asks the job to checkpoint now (the contract's
 * checkpoint signal, SIGUSR1 for the test job), commits that checkpoint, ends the attempt `drained`
 * (class infrastructure) and exits 0; a new worker process (own scratch dir, started right after
 * the signal, as in worker-kill) takes the next attempt, which resumes at the drained checkpoint.
 *
 * The target stage allows a single job attempt (`retry.maximum_attempts: 1`): had the drain cost a
 * stage attempt, the run would fail. Steps lost: the job trains on between the request and its
 * checkpoint for at most a step (0.1 s steps), and may log one more step before it stops: bound 2.
 * Own checks: attempt 1 `drained` (infrastructure), its last committed checkpoint at or after the
 * step at the signal, the next attempt resumed from exactly that checkpoint, no attempt of class
 * `job`, the drained worker exited 0 within 60 s and its job ended with the drain.
 */
import path from 'node:path';
import { waitFor } from '../../infra/harness/wait.js';
import { spawnFaultWorker } from '../harness.js';
import type { FaultKindModule } from './kind.js';

/** The most steps a drain may cost (see above). */
const DRAIN_BOUND = 2;

export const drain: FaultKindModule = {
  setup: () => ({ retry: { maximum_attempts: 1 } }),
  async inject({ ctx, worker, aimedAt, fault, problems, reach }) {
    fault.bound = DRAIN_BOUND;
    const p = await reach(worker, aimedAt);
    if (!p) throw new Error(`the job never reached step ${aimedAt}`);
    const sessions = (await ctx.sampler.jobsOf(worker.pid)).map((j) => j.sid);
    const termAt = Date.now();
    worker.signal('SIGTERM');
    Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt, detail: `SIGTERM (drain) worker ${worker.name} at step ${p.step} (attempt ${p.attempt})` });
    // The worker that takes over, started while the drained one checkpoints and commits.
    const takeover = spawnFaultWorker(ctx.stack, ctx.python, {
      name: `worker-${++ctx.workerSeq}`,
      queue: worker.queue,
      scratch: path.join(ctx.workDir, `scratch-${ctx.workerSeq}`),
    });
    const exit = (await waitFor(() => !worker.alive, 60_000, 50)) ? await worker.exited : undefined;
    if (!exit) {
      problems.push(`the drained worker ${worker.name} did not exit within 60 s of SIGTERM; log tail:\n${worker.logTail(8)}`);
      await worker.kill9();
    } else if (exit.code !== 0) {
      problems.push(`the drained worker ${worker.name} exited ${exit.signal ?? `with code ${exit.code}`}, expected 0; log tail:\n${worker.logTail(8)}`);
    } else {
      fault.notes.push(`${worker.name} drained and exited 0 after ${((Date.now() - termAt) / 1000).toFixed(1)} s`);
    }
    if (sessions.length === 0) problems.push('no job session of the worker was seen before the drain');
    const inSessions = async () => (await ctx.sampler.inSessions(sessions)).flatMap((j) => j.pids);
    if (!(await waitFor(async () => (await inSessions()).length === 0, 10_000, 50))) problems.push(`the drained job's session(s) ${sessions.join(', ')} outlived the drain: pids ${(await inSessions()).join(', ')}`);
    const next = await takeover;
    ctx.workers.push(next);
    ctx.main = next;
    // Step 1, or the step it resumed from once its job has started.
    const resumed = await reach(next, 1, 60_000);
    fault.notes.push(resumed ? `${next.name} took over at attempt ${resumed.attempt}, resumed from ${resumed.resumedFrom ?? 'scratch'}` : `${next.name} did not pick the stage up within 60 s`);
  },
  check({ fault, problems }, { attempts }) {
    const [first, ...later] = attempts;
    if (!first) {
      problems.push('the target stage has no attempt records');
      return;
    }
    if (first.outcome !== 'drained' || first.failureClass !== 'infrastructure' || first.failureKind !== 'drained') {
      problems.push(`attempt 1 ended ${first.outcome} (${first.failureClass ?? '-'}: ${first.failureKind ?? '-'}), expected drained (infrastructure: drained): ${first.reason ?? ''}`);
    }
    const drainedAt = first.checkpoints.at(-1);
    if (drainedAt === undefined) problems.push('the drained attempt committed no checkpoint');
    else if (fault.stepAtFault !== null && drainedAt < fault.stepAtFault) problems.push(`the drained attempt's last checkpoint (${drainedAt}) is before the step at the drain (${fault.stepAtFault})`);
    const next = later.find((a) => a.outcome !== 'declined');
    if (!next) problems.push('no attempt after the drained one ran');
    else if (drainedAt !== undefined && next.resumedFromStep !== drainedAt) problems.push(`attempt ${next.attempt} resumed from ${next.resumedFromStep ?? 'scratch'}, expected the drained checkpoint ${drainedAt}`);
    const job = attempts.filter((a) => a.failureClass === 'job');
    if (job.length) problems.push(`the drain used a job attempt: ${job.map((a) => `attempt ${a.attempt} ${a.failureKind ?? ''}`).join(', ')}`);
    if (attempts.at(-1)?.outcome !== 'completed') problems.push(`the last attempt ended ${attempts.at(-1)?.outcome}, expected completed`);
    if (!fault.retried) problems.push('the stage was not resumed by another worker after the drain');
  },
};
