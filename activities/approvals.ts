/**
 * verifyApproval, on the control worker: before the pipeline workflow accepts an approval, the
 * decision's signature is checked against the approvers file the worker was configured with
 * (REFINERY_APPROVERS, config/approvers.ts). A refusal fails the activity for good with a message
 * the workflow hands back to `refinery approve|reject`; what it returns is what the trail records.
 * The file is read again on every call, so a key removed from it is refused at once.
 */
import { ApplicationFailure } from '@temporalio/common';
import { inScope, loadApprovers, type Approvers } from '../config/approvers.js';
import { shortFingerprint, signatureProblem } from '../storage/approval-signature.js';
import type { ApprovalDecision, ApprovalVerdict } from '../workflows/types.js';

export interface VerifyApprovalInput {
  runId: string;
  pipeline: string;
  decision: ApprovalDecision;
}

/** How far in the future a signature's time may be (the signer's clock ahead of the worker's). */
export const CLOCK_SKEW_MS = 60_000;

/** Without an approvers file, signed decisions are still checked, with this replay window. */
export const DEFAULT_MAX_AGE_MS = 10 * 60_000;

/** Thrown by checkApproval: the reason a decision is refused, one line. */
export class ApprovalRefused extends Error {
  override readonly name = 'ApprovalRefused';
}

/**
 * What the trail records of a decision, or ApprovalRefused. Without approvers (undefined) unsigned
 * decisions pass; a signed one must verify either way.
 */
export function checkApproval(input: VerifyApprovalInput, approvers: Approvers | undefined, now: number = Date.now()): ApprovalVerdict {
  const { decision, runId, pipeline } = input;
  const signed = decision.signed;
  if (!signed) {
    if (!approvers) return { signed: false };
    throw new ApprovalRefused('this run\'s workers accept signed approvals only (REFINERY_APPROVERS lists the approvers): sign it with --key FILE or REFINERY_SIGNING_KEY');
  }
  const fields = ['at', 'nonce', 'publicKey', 'keyFingerprint', 'signature'] as const;
  const missing = fields.filter((f) => typeof signed[f] !== 'string' || signed[f] === '');
  if (missing.length > 0) throw new ApprovalRefused(`the signed decision lacks ${missing.join(', ')}`);
  const bad = signatureProblem({ runId, stageId: decision.stageId, approved: decision.approved, by: decision.by, reason: decision.reason, at: signed.at, nonce: signed.nonce }, signed);
  if (bad) throw new ApprovalRefused(bad);

  // A valid signature from the right key may still be an old decision sent again.
  const at = Date.parse(signed.at);
  const maxAgeMs = approvers?.maxAgeMs ?? DEFAULT_MAX_AGE_MS;
  if (!Number.isFinite(at)) throw new ApprovalRefused(`the signed time "${signed.at}" is not a time`);
  if (now - at > maxAgeMs) throw new ApprovalRefused(`signed at ${signed.at}, more than ${Math.round(maxAgeMs / 1000)} s ago: an old decision is refused (a replay?); sign it again`);
  if (at - now > CLOCK_SKEW_MS) throw new ApprovalRefused(`signed at ${signed.at}, ahead of the worker's clock (${new Date(now).toISOString()}): check the signer's clock`);

  const key = shortFingerprint(signed.keyFingerprint);
  let approver: string | null = null;
  if (approvers) {
    const listed = approvers.approvers.find((a) => a.fingerprint === signed.keyFingerprint);
    if (!listed) throw new ApprovalRefused(`key ${key} is not an approver's (not in the workers' approvers file)`);
    if (listed.name !== decision.by) throw new ApprovalRefused(`--by "${decision.by}", but key ${key} is approver "${listed.name}"'s`);
    if (!inScope(listed.pipelines, pipeline)) throw new ApprovalRefused(`approver "${listed.name}" may not decide for pipeline "${pipeline}" (listed for: ${listed.pipelines.join(', ')})`);
    if (!inScope(listed.stages, decision.stageId)) throw new ApprovalRefused(`approver "${listed.name}" may not decide stage "${decision.stageId}" (listed for: ${listed.stages.join(', ')})`);
    approver = listed.name;
  }
  return { signed: true, keyFingerprint: signed.keyFingerprint, publicKey: signed.publicKey, signature: signed.signature, signedAt: signed.at, nonce: signed.nonce, approver };
}

export function createApprovalActivities(deps: { approversFile: string | undefined }) {
  return {
    async verifyApproval(input: VerifyApprovalInput): Promise<ApprovalVerdict> {
      let approvers: Approvers | undefined;
      try {
        approvers = deps.approversFile ? loadApprovers(deps.approversFile) : undefined;
      } catch (err) {
        // A broken file refuses every approval until it is fixed; the message names the file and field.
        throw ApplicationFailure.nonRetryable((err as Error).message, 'ApproversFileError');
      }
      try {
        return checkApproval(input, approvers);
      } catch (err) {
        if (err instanceof ApprovalRefused) throw ApplicationFailure.nonRetryable(err.message, err.name);
        throw err;
      }
    },
  };
}
