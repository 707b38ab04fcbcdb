/** cancel: cancel the run mid-stage; nothing of the job may be left running. */
import path from 'node:path';
import type { FaultKindModule } from './kind.js';

export const cancel: FaultKindModule = {
  expected: 'cancelled',
  measuresStepsLost: false,
  setup: ({ ctx, runId, trial }) => {
    const childPidFile = path.join(ctx.workDir, `${runId}.child.pid`);
    return {
      // Every other trial of the long form, SIGTERM is ignored: the worker must escalate to SIGKILL.
      params: { child_pid_file: childPidFile, ignore_sigterm: !ctx.opts.short && trial % 2 === 1 },
      // A cancelled job must still be training when the kill grace ends (SIGTERM ignored: SIGKILL).
      maxSteps: 1000,
      childPidFile,
    };
  },
  async inject({ worker, aimedAt, fault, handle, params, reach }) {
    const p = await reach(worker, aimedAt);
    if (!p) throw new Error(`the job never reached step ${aimedAt}`);
    Object.assign(fault, { stepAtFault: p.step, attemptAtFault: p.attempt });
    await handle.cancel();
    fault.detail = `cancel at step ${p.step}${params.ignore_sigterm ? ' (the job ignores SIGTERM)' : ''}`;
    fault.bound = 0;
  },
  check({ target, problems }, { events }) {
    if (!events.some((e) => e.type === 'stage-cancelled' && e.stage === target)) problems.push(`the audit trail has no stage-cancelled event for ${target}`);
    const finished = events.find((e) => e.type === 'run-finished');
    if (finished?.state !== 'cancelled') problems.push(`the audit trail's run-finished says ${String(finished?.state)}, expected cancelled`);
  },
};
