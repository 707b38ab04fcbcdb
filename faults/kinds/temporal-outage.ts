/**
 * temporal-outage: the Temporal server is down for longer than the stage's heartbeat timeout. When
 * it comes back it declares the running attempt lost and retries the stage — while that attempt's
 * worker and job are alive and training. The hazard is two attempts of one stage training (and
 * committing) at once: the newer one takes over the stage lease, the older one must notice and stop,
 * and nothing it commits after the takeover may land (faults/process-sampler.ts measures the overlap).
 */
import { sleep } from '../../infra/harness/wait.js';
import type { FaultKindModule } from './kind.js';

/** The trial's heartbeat timeout (faults/trial.ts) is 3 s; the outage is at least twice that. */
const HEARTBEAT_S = 3;

export const temporalOutage: FaultKindModule = {
  // A long stage: the retry must find work left to do.
  setup: ({ total }) => ({ maxSteps: total + 30 }),
  async inject({ ctx, worker, aimedAt, fault, reach }) {
    const p = await reach(worker, aimedAt);
    if (!p) throw new Error(`the job never reached step ${aimedAt}`);
    await ctx.stack.killTemporal();
    const down = ctx.rng.int(2 * HEARTBEAT_S * 1000, ctx.opts.short ? 2 * HEARTBEAT_S * 1000 : 5 * HEARTBEAT_S * 1000);
    Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
    await sleep(down);
    const r0 = Date.now();
    await ctx.stack.restartTemporal().catch((err: unknown) => {
      ctx.fatal = `could not restart Temporal: ${(err as Error).message}`;
      throw err;
    });
    fault.detail = `kill -9 Temporal at step ${p.step}; down ${(down / 1000).toFixed(1)} s (heartbeat timeout ${HEARTBEAT_S} s), +${Date.now() - r0} ms to come up`;
  },
};
