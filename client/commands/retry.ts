/**
 * `refinery retry ID --from-stage S`: a new run of the same plan that reuses every committed output
 * of the old one except S and the stages downstream of it, which run again.
 */
import type { Client } from '@temporalio/client';
import { CONTROL_TASK_QUEUE } from '../../config/temporal.js';
import { inputQuery } from '../../workflows/messages.js';
import { pipelineWorkflow } from '../../workflows/pipeline.js';
import type { PipelinePlan } from '../../spec/plan-types.js';
import { CliError } from '../errors.js';
import { newRunId, whoAmI } from './run.js';
import { EXIT } from '../exit-codes.js';

/** `stageId` and every stage that consumes it, directly or not. */
export function downstreamOf(plan: PipelinePlan, stageId: string): string[] {
  const out = new Set([stageId]);
  for (const s of plan.stages) if (s.deps.some((d) => out.has(d))) out.add(s.id); // plan.stages is topological
  return plan.stages.map((s) => s.id).filter((id) => out.has(id));
}

export async function retryRun(client: Client, runId: string, opts: { fromStage: string; id?: string; by?: string }): Promise<{ runId: string; forced: string[] }> {
  const previous = await client.workflow.getHandle(runId).query(inputQuery).catch((err: unknown) => {
    if ((err as Error).name === 'WorkflowNotFoundError') throw new CliError(`cannot read run "${runId}": no such run`, 'see "refinery list"', EXIT.notFound);
    throw new CliError(`cannot read run "${runId}": ${(err as Error).message}`, 'is a worker running? see "refinery list"');
  });
  const { plan } = previous;
  if (!plan.stages.some((s) => s.id === opts.fromStage)) {
    throw new CliError(`run "${runId}" has no stage "${opts.fromStage}"`, `stages: ${plan.stages.map((s) => s.id).join(', ')}`, EXIT.badInput);
  }
  const forced = downstreamOf(plan, opts.fromStage);
  const newId = opts.id ?? newRunId(plan.name);
  await client.workflow.start(pipelineWorkflow, {
    workflowId: newId,
    taskQueue: CONTROL_TASK_QUEUE,
    // A retry is a manual run: not tied to the schedule that may have started the original.
    args: [{ plan, runId: newId, requestedBy: whoAmI(opts.by), resumeFrom: runId, forceStages: forced }],
  });
  return { runId: newId, forced };
}
