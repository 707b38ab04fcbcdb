/**
 * The toolchain each stage would be trained with, asked of the workers of its task queue
 * (describeToolchain, activities/run-stage-job.ts; what it covers: worker/toolchain.ts). It goes
 * into each stage's cache key, into the run's fingerprint (so a nightly run on unchanged data but
 * an upgraded toolchain trains) and into the audit trail. Behind patch `toolchain-keys`.
 */
import { proxyActivities } from '@temporalio/workflow';
import type * as activities from '../activities/index.js';
import type { PipelinePlan } from '../spec/plan-types.js';
import type { StageKind } from '../spec/schema.js';
import type { StageToolchain } from './types.js';

type TrainingActivities = ReturnType<typeof activities.createTrainingActivities>;

/**
 * A worker of the queue answers (it may have to start first: no schedule-to-start limit); the
 * answer is computed once per worker process, so each call is quick.
 */
function toolchainOf(taskQueue: string) {
  return proxyActivities<TrainingActivities>({ taskQueue, startToCloseTimeout: '5 minutes', retry: { maximumAttempts: 20, maximumInterval: '30s', nonRetryableErrorTypes: ['ToolchainUnknown'] } }).describeToolchain;
}

export interface RunToolchains {
  byStage: Record<string, StageToolchain>;
  /** What the audit trail records: per task queue, the answering host and the digest per kind. */
  byQueue: Record<string, { host: string; digests: Partial<Record<StageKind, string>> }>;
}

export async function describeRunToolchains(plan: PipelinePlan): Promise<RunToolchains> {
  const kindsByQueue = new Map<string, StageKind[]>();
  for (const s of plan.stages) {
    const kinds = kindsByQueue.get(s.taskQueue) ?? [];
    if (!kinds.includes(s.kind)) kinds.push(s.kind);
    kindsByQueue.set(s.taskQueue, kinds);
  }
  const queues = [...kindsByQueue.keys()].sort();
  const reports = await Promise.all(queues.map((q) => toolchainOf(q)({ kinds: kindsByQueue.get(q)! })));
  const byQueue: RunToolchains['byQueue'] = {};
  queues.forEach((q, i) => (byQueue[q] = { host: reports[i]!.host, digests: reports[i]!.digests }));
  const byStage: RunToolchains['byStage'] = {};
  for (const s of plan.stages) {
    const report = reports[queues.indexOf(s.taskQueue)]!;
    byStage[s.id] = { digest: report.digests[s.kind]!, parts: report.parts };
  }
  return { byStage, byQueue };
}

/** The run's fingerprint with the toolchains in it: equal only when inputs and toolchains are. */
export function fingerprintWithToolchains(fingerprint: string, toolchains: RunToolchains): string {
  const digests = Object.entries(toolchains.byStage)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([id, t]) => `${id}=${t.digest}`);
  return `${fingerprint}+${digests.join(',')}`;
}
