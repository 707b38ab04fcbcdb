/**
 * worker-kill: kill -9 the training worker mid-stage; a new worker (own scratch) takes over. The job
 * has a child process of its own: nothing of the job's session may outlive the worker.
 */
import path from 'node:path';
import { waitFor } from '../../infra/harness/wait.js';
import { jobProgress, spawnFaultWorker } from '../harness.js';
import type { FaultKindModule } from './kind.js';

export const workerKill: FaultKindModule = {
  setup: ({ ctx, runId }) => {
    const childPidFile = path.join(ctx.workDir, `${runId}.child.pid`);
    return { params: { child_pid_file: childPidFile }, childPidFile };
  },
  async inject({ ctx, worker, runId, target, aimedAt, fault, problems, reach }) {
    const p = await reach(worker, aimedAt);
    if (!p) throw new Error(`the job never reached step ${aimedAt}`);
    const jobs = await ctx.sampler.jobsOf(worker.pid);
    const sessions = jobs.map((j) => j.sid);
    const members = jobs.flatMap((j) => j.pids).length;
    const now = (await jobProgress(worker.scratch, runId, target)) ?? p;
    await worker.kill9();
    Object.assign(fault, { stepAtFault: now.step, attemptAtFault: now.attempt, detail: `kill -9 worker ${worker.name} at step ${now.step} (attempt ${now.attempt}; its job session had ${members} live processes)` });
    if (sessions.length === 0) problems.push('no job session of the worker was seen before the kill');
    // The job and its child die with their worker (the supervisor kills the session), before anyone takes over.
    const inSessions = async () => (await ctx.sampler.inSessions(sessions)).flatMap((j) => j.pids);
    const gone = await waitFor(async () => (await inSessions()).length === 0, 10_000, 50);
    if (!gone) problems.push(`the killed worker's job session(s) ${sessions.join(', ')} outlived it: pids ${(await inSessions()).join(', ')}`);
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
