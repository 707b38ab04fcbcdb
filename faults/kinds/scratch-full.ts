/**
 * scratch-full: fill the worker's (size-limited) scratch filesystem mid-stage; keep it full until
 * the job has failed on it and the next attempt has failed its restore on it too; then free it.
 * Own checks: every failed attempt is infrastructure: scratch-disk (no stage attempt used); no
 * checkpoint was skipped (a full disk is no reason to distrust one); the run resumes from the
 * newest committed checkpoint (the steps-lost bound).
 */
import { waitFor } from '../../infra/harness/wait.js';
import { summarizeAttempts } from '../../storage/attempt-records.js';
import { SAVE_STEPS } from '../context.js';
import { aliveAll, spawnFaultWorker } from '../harness.js';
import type { FaultKindModule } from './kind.js';

export const scratchFull: FaultKindModule = {
  worker: (ctx) => ctx.small!.worker,
  setup: () => ({ params: { checkpoint_bytes: 2 << 20 } }),
  async inject({ ctx, worker, total, aimedAt, fault, problems, reach, prefix, runId, target }) {
    const small = ctx.small!;
    const p = await reach(worker, aimedAt);
    if (!p) throw new Error(`the job never reached step ${aimedAt}`);
    const pids = (await ctx.sampler.jobsOf(worker.pid)).flatMap((j) => j.pids);
    let filled = await small.fs.fill();
    Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
    // Keep it full (the worker frees space when it prunes a committed checkpoint) until the
    // attempt has failed: the job exited, or the worker gave up.
    const failed = await waitFor(async () => {
      filled += await small.fs.fill();
      return aliveAll(pids).length === 0 || !worker.alive;
    }, 30_000, 20);
    // Still full when the retry comes (a disk nobody has cleaned yet): its restore download fails on
    // the same disk, and must fail the attempt — never skip the checkpoint it could not write.
    const retryFailed = failed && worker.alive
      ? await waitFor(async () => {
          filled += await small.fs.fill();
          const attempts = await summarizeAttempts(ctx.store, { storagePrefix: prefix, runId, stageId: target });
          return attempts.some((a) => a.attempt > p.attempt && a.outcome === 'failed');
        }, 60_000, 100)
      : undefined;
    await small.fs.unfill();
    // The job got as far as its next checkpoint, which it could not write.
    fault.furthestStep = Math.min(total, Math.ceil((p.step + 1) / SAVE_STEPS) * SAVE_STEPS);
    fault.detail = `filled the scratch ${small.fs.how} (${(filled / 2 ** 20).toFixed(1)} MB) at step ${p.step}`;
    if (!failed) problems.push('the job kept running for 30 s on a full scratch disk');
    else if (worker.alive && !retryFailed) problems.push('no retry failed on the still-full scratch disk within 60 s');
    if (!worker.alive) {
      const exit = await worker.exited;
      problems.push(`the worker process died on a full scratch disk (${exit.signal ?? `exit ${exit.code}`}): ${lastErrorLine(worker.logTail(40))}`);
      // Serve on, so that the run can still finish (its attempt is retried once the heartbeat times out).
      worker.killedByUs = true;
      small.worker = await spawnFaultWorker(ctx.stack, ctx.python, {
        name: `worker-small-${++ctx.workerSeq}`,
        queue: worker.queue,
        scratch: small.fs.dir,
      });
      ctx.workers.push(small.worker);
    }
  },
  check({ fault, problems }, { failures, attempts }) {
    // The node's fault, not the job's: no stage attempt is used, and a retry that still finds the
    // disk full fails its restore the same way instead of skipping the checkpoint.
    for (const a of attempts.filter((x) => x.outcome === 'failed')) {
      if (a.failureClass !== 'infrastructure' || a.failureKind !== 'scratch-disk') problems.push(`attempt ${a.attempt} failed as ${a.failureClass ?? '-'}: ${a.failureKind ?? '-'}, expected infrastructure: scratch-disk (${(a.reason ?? '').slice(0, 160)})`);
    }
    const skipped = attempts.flatMap((a) => a.skippedCheckpoints.map((s) => s.step));
    if (skipped.length > 0) problems.push(`checkpoint(s) ${skipped.join(', ')} skipped on a resume: a full disk is no reason to distrust a checkpoint`);
    const clear = failures.find((r) => /No space left|ENOSPC/i.test(r));
    if (clear) fault.notes.push(`failure recorded: ${clear.split('\n')[0]!.slice(0, 160)}`);
    else problems.push(`no attempt failure names the full disk (ENOSPC) in the audit trail${failures.length ? `; recorded: ${failures.map((f) => f.slice(0, 120)).join(' | ')}` : ''}`);
    if (!fault.retried) problems.push('the stage was not retried after the disk filled');
  },
};

function lastErrorLine(text: string): string {
  const lines = text.split('\n').filter((l) => /error|ENOSPC|space/i.test(l));
  return (lines.at(-1) ?? text.split('\n').filter(Boolean).at(-1) ?? '').trim().slice(0, 240);
}
