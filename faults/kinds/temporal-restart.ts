/** temporal-restart: kill -9 the Temporal dev server mid-run, restart it on the same db file and port. */
import { sleep } from '../../infra/harness/wait.js';
import type { FaultKindModule } from './kind.js';

export const temporalRestart: FaultKindModule = {
  // Survive the server restart without a heartbeat timeout (a timeout would only cost a retry).
  setup: () => ({ timeouts: { heartbeat: '20s' } }),
  async inject({ ctx, worker, aimedAt, fault, reach }) {
    const p = await reach(worker, aimedAt);
    if (!p) throw new Error(`the job never reached step ${aimedAt}`);
    await ctx.stack.killTemporal();
    const down = ctx.rng.int(0, ctx.opts.short ? 1500 : 5000);
    Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
    await sleep(down);
    const r0 = Date.now();
    await ctx.stack.restartTemporal().catch((err: unknown) => {
      ctx.fatal = `could not restart Temporal: ${(err as Error).message}`;
      throw err;
    });
    fault.detail = `kill -9 Temporal at step ${p.step}; restarted after ${down} ms (+${Date.now() - r0} ms to come up) on the same db file and port`;
  },
};
