/**
 * temporal-outage: the Temporal server is down for longer than the stage's heartbeat timeout. When
 * it comes back it declares the running attempt lost and retries the stage — while that attempt's
 * worker and job are alive and training. The hazard is two attempts of one stage training (and
 * committing) at once: the newer one takes over the stage lease, the older one must notice and stop,
 * and nothing it commits after the takeover may land (faults/process-sampler.ts measures the overlap).
 */
import { killAndRestartTemporal } from './temporal-restart.js';
import type { FaultKindModule } from './kind.js';

/** The trial's heartbeat timeout (faults/trial.ts) is 3 s; the outage is at least twice that. */
const HEARTBEAT_S = 3;

export const temporalOutage: FaultKindModule = {
  // A long stage (0.1 s a step): still training when the server comes back, so the retry finds
  // the attempt alive and work left to do.
  setup: ({ ctx, total }) => ({ maxSteps: total + (ctx.opts.short ? 120 : 220) }),
  async inject(t) {
    const { ctx } = t;
    const { step, down, upMs } = await killAndRestartTemporal(t, () => ctx.rng.int(2 * HEARTBEAT_S * 1000, ctx.opts.short ? 2 * HEARTBEAT_S * 1000 : 5 * HEARTBEAT_S * 1000));
    t.fault.detail = `kill -9 Temporal at step ${step}; down ${(down / 1000).toFixed(1)} s (heartbeat timeout ${HEARTBEAT_S} s), +${upMs} ms to come up`;
  },
  check({ fault }) {
    // Whether the server timed the attempt out depends on a race after the restart: its timer
    // against the worker's first heartbeat. Both are fine; the retried case is the one that matters.
    fault.notes.push(fault.retried ? 'the server timed the live attempt out and retried the stage' : 'the worker\'s heartbeat reached the restarted server before its timeout fired: no retry');
  },
};
