/** worker-kill: kill -9 the training worker mid-stage; a new worker (own scratch) takes over. */
import path from 'node:path';
import { waitFor } from '../../infra/harness/wait.js';
import { aliveAll, jobPids, jobProgress, spawnFaultWorker } from '../harness.js';
import type { FaultKindModule } from './kind.js';

export const workerKill: FaultKindModule = {
  async inject({ ctx, worker, runId, target, aimedAt, fault, problems, reach }) {
    const p = await reach(worker, aimedAt);
    if (!p) throw new Error(`the job never reached step ${aimedAt}`);
    const pids = await jobPids(worker.scratch);
    const now = (await jobProgress(worker.scratch, runId, target)) ?? p;
    await worker.kill9();
    Object.assign(fault, { stepAtFault: now.step, attemptAtFault: now.attempt, detail: `kill -9 worker ${worker.name} at step ${now.step} (attempt ${now.attempt})` });
    // The job dies with its worker (parent-death signal), before anyone takes over.
    const left = await waitFor(() => aliveAll(pids).length === 0, 10_000, 50);
    if (!left) problems.push(`the killed worker's job (pids ${aliveAll(pids).join(', ')}) outlived it`);
    const takeover = await spawnFaultWorker(ctx.stack, ctx.python, {
      name: `worker-${++ctx.workerSeq}`,
      queue: worker.queue,
      scratch: path.join(ctx.workDir, `scratch-${ctx.workerSeq}`),
    });
    ctx.workers.push(takeover);
    ctx.main = takeover;
    const resumed = await reach(takeover, 0, 60_000);
    fault.notes.push(resumed ? `${takeover.name} took over at attempt ${resumed.attempt}` : `${takeover.name} did not pick the stage up within 60 s`);
  },
  check({ fault, problems }) {
    if (!fault.retried) problems.push('the stage was not retried on another worker');
  },
};
