/** scratch-full: fill the worker's (size-limited) scratch filesystem mid-stage. */
import { waitFor } from '../../infra/harness/wait.js';
import { SAVE_STEPS } from '../context.js';
import { aliveAll, spawnFaultWorker } from '../harness.js';
import type { FaultKindModule } from './kind.js';

export const scratchFull: FaultKindModule = {
  worker: (ctx) => ctx.small!.worker,
  setup: () => ({ params: { checkpoint_bytes: 2 << 20 } }),
  async inject({ ctx, worker, total, aimedAt, fault, problems, reach }) {
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
    await small.fs.unfill();
    // The job got as far as its next checkpoint, which it could not write.
    fault.furthestStep = Math.min(total, Math.ceil((p.step + 1) / SAVE_STEPS) * SAVE_STEPS);
    fault.detail = `filled the scratch ${small.fs.how} (${(filled / 2 ** 20).toFixed(1)} MB) at step ${p.step}`;
    if (!failed) problems.push('the job kept running for 30 s on a full scratch disk');
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
  check({ fault, problems }, { failures }) {
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
