/** Queries, signals and updates of the pipeline workflow: one definition for workflow, activities and CLI. */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { ApprovalDecision, PipelineInput, PipelineStatus, StageProgress } from './types.js';

export const statusQuery = defineQuery<PipelineStatus>('status');

/** The run's input (plan, who): what `refinery retry` starts again from. */
export const inputQuery = defineQuery<PipelineInput>('input');

/** Sent by the training activity (throttled) so that `status` shows live step, loss and attempt. */
export const stageProgressSignal = defineSignal<[{ stageId: string; progress: StageProgress }]>('stageProgress');

/** Sent by the training activity (best effort) before an attempt fails, for the audit trail. */
export const stageAttemptFailedSignal = defineSignal<[{ stageId: string; attempt: number; host: string; reason: string }]>('stageAttemptFailed');

/** `refinery approve|reject`: rejected by the validator unless the stage is awaiting approval. */
export const approvalUpdate = defineUpdate<string, [ApprovalDecision]>('approveStage');
