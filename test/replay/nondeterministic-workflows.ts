/**
 * A deliberately non-deterministic edit of the pipeline workflow, for test/unit/workflow-replay.test.ts:
 * the run now asks the cache about its first stage before it prepares the run — the kind of
 * reordering a careless deploy makes. Replaying any recorded history against it must fail.
 */
import { proxyActivities } from '@temporalio/workflow';
import type * as activities from '../../activities/index.js';
import { pipelineWorkflow as realPipelineWorkflow } from '../../workflows/pipeline.js';
import type { PipelineInput } from '../../workflows/types.js';

const control = proxyActivities<ReturnType<typeof activities.createControlActivities>>({ startToCloseTimeout: '1 minute' });

export async function pipelineWorkflow(input: PipelineInput): ReturnType<typeof realPipelineWorkflow> {
  await control.finishRun({ runId: input.runId ?? '', status: { runId: '', pipeline: '', state: 'running', stages: [] } });
  return realPipelineWorkflow(input);
}
export { stageWorkflow } from '../../workflows/stage.js';
