/**
 * bad-node: the target stage's first attempt lands on a node that is not fit to run it. The target
 * stage gets a task queue of its own; the first worker on it is a process of a host of its own
 * (`REFINERY_HOST=faults-bad-node-…`) that was given a GPU this machine does not have
 * (`REFINERY_GPUS`, a device index without a /dev/nvidia<i> node), so the preflight the worker runs
 * before each job (activities/preflight.ts, the stdlib runtime for the test job) fails. The worker
 * quarantines its host (worker/host-health.ts: a record in the bucket, its pollers stop) and the
 * attempt ends failed with class infrastructure, kind node-failure: no stage attempt used. Once the
 * quarantine is in the bucket a good worker (the suite's own host, own scratch dir) joins the queue
 * and takes the retry, which avoids the bad host.
 *
 * The target stage allows a single job attempt (`retry.maximum_attempts: 1`): had the bad node cost
 * a stage attempt, the run would fail. Steps lost: the preflight fails before the job starts, so
 * nothing is trained on the bad node: bound 0.
 * Own checks: attempt 1 ran on the bad host and failed (infrastructure: node-failure) naming the
 * preflight; the host's quarantine record says "preflight failed"; nothing but declines ran on the
 * bad host afterwards; the last attempt completed on another host; no attempt of class job.
 * Cleanup (after every check, whatever happened): both extra workers stopped (SIGTERM, SIGKILL after
 * 10 s), the bad host's worker records removed and its quarantine cleared, so the next trial starts
 * with the fleet as before.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { WorkerProcess } from '../../infra/harness/processes.js';
import { waitFor } from '../../infra/harness/wait.js';
import { clearQuarantine, listWorkers, readQuarantine, removeWorkerRecord } from '../../storage/fleet.js';
import { spawnFaultWorker } from '../harness.js';
import type { FaultKindModule } from './kind.js';

interface BadNode {
  host: string;
  bad?: WorkerProcess;
  good?: WorkerProcess;
  quarantineReason?: string;
}

/** What each running trial of this kind started, by run id (for its checks and its cleanup). */
const nodes = new Map<string, BadNode>();

/** A GPU index this machine has no device node for: the stdlib preflight fails on it. */
function missingGpu(): number {
  let i = 0;
  while (existsSync(`/dev/nvidia${i}`)) i++;
  return i;
}

export const badNode: FaultKindModule = {
  setup: ({ ctx, trial }) => ({ queue: `faults-bad-node-${ctx.opts.seed}-${trial}`, retry: { maximum_attempts: 1 } }),
  async inject({ ctx, runId, trial, setup, fault, problems, reach }) {
    fault.bound = 0;
    const queue = setup.queue!;
    const node: BadNode = { host: `faults-bad-node-${ctx.opts.seed}-${trial}` };
    nodes.set(runId, node);
    const gpu = missingGpu();
    // Alone on the target's queue: the stage's first attempt is its.
    node.bad = await spawnFaultWorker(ctx.stack, ctx.python, {
      name: `worker-bad-node-${++ctx.workerSeq}`,
      queue,
      scratch: path.join(ctx.workDir, `scratch-${ctx.workerSeq}`),
      env: { REFINERY_HOST: node.host, REFINERY_GPUS: String(gpu) },
    });
    ctx.workers.push(node.bad);
    const quarantine = await waitFor(() => readQuarantine(ctx.store, node.host), 60_000, 200);
    if (!quarantine) throw new Error(`host ${node.host} (REFINERY_GPUS=${gpu}) was not quarantined within 60 s; log tail:\n${node.bad.logTail(8)}`);
    node.quarantineReason = quarantine.reason;
    Object.assign(fault, { stepAtFault: 0, attemptAtFault: 1, detail: `the first attempt on host ${node.host} (REFINERY_GPUS=${gpu}, no /dev/nvidia${gpu}): preflight failed, host quarantined` });
    fault.notes.push(`quarantine: ${quarantine.reason.slice(0, 160)}`);
    node.good = await spawnFaultWorker(ctx.stack, ctx.python, {
      name: `worker-${++ctx.workerSeq}`,
      queue,
      scratch: path.join(ctx.workDir, `scratch-${ctx.workerSeq}`),
    });
    ctx.workers.push(node.good);
    const resumed = await reach(node.good, 0, 60_000);
    if (!resumed) problems.push(`the good worker ${node.good.name} did not pick the stage up within 60 s`);
    else fault.notes.push(`${node.good.name} took the stage at attempt ${resumed.attempt}`);
  },
  check({ runId, fault, problems }, { attempts }) {
    const node = nodes.get(runId);
    if (!node) return; // not injected: already a problem
    if (!/preflight failed/.test(node.quarantineReason ?? '')) problems.push(`the quarantine of ${node.host} does not say its preflight failed: ${node.quarantineReason ?? '(none)'}`);
    const [first, ...later] = attempts;
    if (!first) {
      problems.push('the target stage has no attempt records');
      return;
    }
    if (first.host !== node.host || first.outcome !== 'failed' || first.failureClass !== 'infrastructure' || first.failureKind !== 'node-failure' || !/preflight/.test(first.reason ?? '')) {
      problems.push(`attempt 1 ran on ${first.host} and ended ${first.outcome} (${first.failureClass ?? '-'}: ${first.failureKind ?? '-'}), expected failed on ${node.host} (infrastructure: node-failure, its preflight): ${first.reason ?? ''}`);
    }
    for (const a of later) if (a.host === node.host && a.outcome !== 'declined') problems.push(`attempt ${a.attempt} ran on the quarantined host ${node.host} (${a.outcome})`);
    const last = attempts.at(-1)!;
    if (last.outcome !== 'completed') problems.push(`the last attempt ended ${last.outcome}, expected completed`);
    else if (last.host === node.host) problems.push(`the stage completed on the bad host ${node.host}`);
    const job = attempts.filter((a) => a.failureClass === 'job');
    if (job.length) problems.push(`the bad node used a job attempt: ${job.map((a) => `attempt ${a.attempt} ${a.failureKind ?? ''}`).join(', ')}`);
    if (!fault.retried) problems.push('the stage was not retried on another host');
  },
  async cleanup({ ctx, runId }) {
    const node = nodes.get(runId);
    nodes.delete(runId);
    if (!node) return;
    await node.bad?.stop();
    await node.good?.stop();
    // A worker killed rather than drained leaves its record: none of the bad host may look live.
    for (const w of await listWorkers(ctx.store)) if (w.host === node.host) await removeWorkerRecord(ctx.store, w.workerId);
    await clearQuarantine(ctx.store, node.host);
  },
};
