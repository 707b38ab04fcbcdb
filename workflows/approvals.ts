/**
 * The approval update's handler (`refinery approve|reject`), after its validator. Since the
 * `signed-approvals` patch the decision counts only once the control worker's verifyApproval
 * (activities/approvals.ts) has checked it — its signature against the workers' approvers file —
 * and a refusal fails the update with the reason, recording nothing, so the stage keeps waiting.
 * Updates handled before the patch replay as they ran: accepted at once.
 */
import { ApplicationFailure, patched } from '@temporalio/workflow';
import { approvals as approvalActivities } from './activities.js';
import type { AuditLog } from './audit-log.js';
import { SIGNED_APPROVALS } from './patches.js';
import type { ApprovalDecision, ApprovalVerdict, PipelineStatus } from './types.js';

export interface ApprovalContext {
  runId: string;
  pipeline: string;
  status: PipelineStatus;
  /** The decisions that counted, by stage: the gate waits for its stage's. */
  approvals: Map<string, ApprovalDecision>;
  audit: AuditLog;
}

export async function handleApproval(decision: ApprovalDecision, ctx: ApprovalContext): Promise<string> {
  if (!patched(SIGNED_APPROVALS)) {
    ctx.approvals.set(decision.stageId, decision);
    ctx.audit.append('approval', { stage: decision.stageId, approved: decision.approved, by: decision.by, reason: decision.reason });
    return `${decision.approved ? 'approved' : 'rejected'} ${decision.stageId}`;
  }
  let verdict: ApprovalVerdict;
  try {
    verdict = await approvalActivities.verifyApproval({ runId: ctx.runId, pipeline: ctx.pipeline, decision });
  } catch (err) {
    // The activity's own message (ActivityFailure wraps it), for the approver to read.
    const e = err as { cause?: { message?: string }; message?: string };
    throw ApplicationFailure.nonRetryable(e.cause?.message || e.message || String(err), 'ApprovalRefused');
  }
  // Two decisions can pass the validator together and be verified side by side: the first
  // verified counts, a later one is refused (as is one for a stage that stopped waiting meanwhile).
  const earlier = ctx.approvals.get(decision.stageId);
  if (earlier) throw ApplicationFailure.nonRetryable(`stage "${decision.stageId}" was already ${earlier.approved ? 'approved' : 'rejected'} by ${earlier.by}`, 'AlreadyDecided');
  const state = ctx.status.stages.find((s) => s.id === decision.stageId)?.state;
  if (state !== 'awaiting-approval') throw ApplicationFailure.nonRetryable(`stage "${decision.stageId}" is no longer awaiting approval (it is ${state})`, 'NotAwaitingApproval');

  ctx.approvals.set(decision.stageId, decision);
  ctx.audit.append('approval', { stage: decision.stageId, approved: decision.approved, by: decision.by, reason: decision.reason, ...verdict });
  const signer = verdict.signed ? ` (signed with key ${verdict.keyFingerprint.slice(0, 16)}${verdict.approver ? `, approver ${verdict.approver}` : ''})` : '';
  return `${decision.approved ? 'approved' : 'rejected'} ${decision.stageId}${signer}`;
}
