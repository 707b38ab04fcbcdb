/** temporal-restart: kill -9 the Temporal dev server mid-run, restart it on the same db file and port. */
import { sleep } from '../../infra/harness/wait.js';
import type { FaultKindModule, Trial } from './kind.js';

/**
 * Once the target's job reaches the aimed step: kill -9 the Temporal server, keep it down for
 * `downMs()` (drawn after the kill), start it again on the same db file and port. Also used by
 * temporal-outage. Returns the step at the kill, the downtime and how long the server took to come up.
 */
export async function killAndRestartTemporal({ ctx, worker, aimedAt, fault, reach }: Trial, downMs: () => number): Promise<{ step: number; down: number; upMs: number }> {
  const p = await reach(worker, aimedAt);
  if (!p) throw new Error(`the job never reached step ${aimedAt}`);
  await ctx.stack.killTemporal();
  const down = downMs();
  Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
  await sleep(down);
  const r0 = Date.now();
  await ctx.stack.restartTemporal().catch((err: unknown) => {
    ctx.fatal = `could not restart Temporal: ${(err as Error).message}`;
    throw err;
  });
  return { step: p.step, down, upMs: Date.now() - r0 };
}

export const temporalRestart: FaultKindModule = {
  // Survive the server restart without a heartbeat timeout (a timeout would only cost a retry).
  setup: () => ({ timeouts: { heartbeat: '20s' } }),
  async inject(t) {
    const { step, down, upMs } = await killAndRestartTemporal(t, () => t.ctx.rng.int(0, t.ctx.opts.short ? 1500 : 5000));
    t.fault.detail = `kill -9 Temporal at step ${step}; restarted after ${down} ms (+${upMs} ms to come up) on the same db file and port`;
  },
};
