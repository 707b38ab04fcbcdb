/** job-hang: the job stops emitting events (stall detection kills and retries it). */
import { waitFor } from '../../infra/harness/wait.js';
import { aliveAll } from '../harness.js';
import type { FaultKindModule } from './kind.js';

export const jobHang: FaultKindModule = {
  setup: ({ aimedAt }) => ({ params: { hang_at_step: aimedAt }, timeouts: { stall: '2s' } }),
  async inject({ ctx, worker, aimedAt, fault, problems, reach }) {
    const p = await reach(worker, aimedAt - 1);
    if (!p) throw new Error(`the job never reached step ${aimedAt - 1}`);
    const pids = (await ctx.sampler.jobsOf(worker.pid)).flatMap((j) => j.pids);
    Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
    const killed = await waitFor(() => aliveAll(pids).length === 0, 30_000, 50);
    fault.detail = `the job hung at step ${aimedAt}${killed ? '' : ' and was NOT killed within 30 s'}`;
    if (!killed) problems.push('a hung job was not killed within 30 s (stall timeout 2 s)');
  },
  check({ fault, problems }, { failures }) {
    if (!failures.some((r) => /stalled/.test(r))) problems.push(`no attempt failure says "stalled" in the audit trail${failures.length ? `; recorded: ${failures.join(' | ')}` : ''}`);
    if (!fault.retried) problems.push('the hung job was not retried');
  },
};
