/**
 * `audit verify`'s check of the trail's approvals (docs/security.md, "Signed approvals"): every
 * signed `approval` event's signature again, with the public key the event records (no
 * configuration needed), over the fields it records; with an approvers file given
 * (REFINERY_APPROVERS), whether its key is listed, under the name it claims, for this pipeline
 * and stage. An unsigned approval is a warning then: its workers did not ask for signatures.
 */
import { inScope, type Approvers } from '../../config/approvers.js';
import type { AuditRecord } from '../../storage/audit-chain.js';
import { shortFingerprint, signatureProblem } from '../../storage/approval-signature.js';

export interface ApprovalCheck {
  problems: string[];
  warnings: string[];
  /** Signed approvals whose signature was checked. */
  signed: number;
}

export function checkApprovalEvents(runId: string, records: readonly AuditRecord[], approvers: Approvers | undefined): ApprovalCheck {
  const out: ApprovalCheck = { problems: [], warnings: [], signed: 0 };
  const pipeline = records.find((r) => r.event.type === 'run-started')?.event.pipeline;
  for (const { seq, event: e } of records) {
    if (e.type !== 'approval') continue;
    const what = `event ${seq} (approval of stage ${String(e.stage)} by ${JSON.stringify(e.by)})`;
    if (e.signed !== true) {
      if (approvers) {
        const why = e.signed === false ? 'its workers had no approvers file (REFINERY_APPROVERS)' : 'recorded before approvals could be signed';
        out.warnings.push(`${what}: not signed (${why}): who approved is as typed`);
      }
      continue;
    }
    const text = (k: string) => (typeof e[k] === 'string' ? (e[k] as string) : '');
    const missing = ['signedAt', 'nonce', 'publicKey', 'keyFingerprint', 'signature'].filter((k) => !text(k));
    if (missing.length > 0) {
      out.problems.push(`${what}: recorded as signed but without ${missing.join(', ')}`);
      continue;
    }
    out.signed++;
    const fields = { runId, stageId: String(e.stage), approved: e.approved === true, by: String(e.by), reason: String(e.reason), at: text('signedAt'), nonce: text('nonce') };
    // A non-boolean `approved` would be signed as what it is not: report rather than coerce.
    if (typeof e.approved !== 'boolean') out.problems.push(`${what}: "approved" is not true or false`);
    const bad = signatureProblem(fields, { publicKey: text('publicKey'), keyFingerprint: text('keyFingerprint'), signature: text('signature') });
    if (bad) out.problems.push(`${what}: ${bad}`);
    // The worker accepted it only when the key's listed name was `by`: a different name is an edit.
    if (e.approver !== null && e.approver !== undefined && e.approver !== e.by) out.problems.push(`${what}: records approver "${String(e.approver)}", not the signed name`);
    if (!approvers) continue;
    const key = shortFingerprint(text('keyFingerprint'));
    const listed = approvers.approvers.find((a) => a.fingerprint === text('keyFingerprint'));
    if (!listed) out.problems.push(`${what}: key ${key} is not listed in ${approvers.file}`);
    else if (listed.name !== e.by) out.problems.push(`${what}: key ${key} is listed in ${approvers.file} as "${listed.name}"`);
    else if (typeof pipeline === 'string' && !inScope(listed.pipelines, pipeline)) out.problems.push(`${what}: ${approvers.file} does not list "${listed.name}" for pipeline "${pipeline}"`);
    else if (!inScope(listed.stages, String(e.stage))) out.problems.push(`${what}: ${approvers.file} does not list "${listed.name}" for stage "${String(e.stage)}"`);
  }
  return out;
}
