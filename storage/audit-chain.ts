/**
 * The audit trail: an append-only sequence of events in object storage, each carrying the hash of
 * the one before, so that a modified, deleted or reordered event is detectable offline from the
 * bucket alone (invariant 8). Pure hashing and checking here; writes in activities/audit.ts.
 *
 *   <prefix>/runs/<runId>/audit/000001.json  { seq, prevHash, event, hash }
 */
import { createHash } from 'node:crypto';
import { canonicalJson } from './canonical-json.js';

export interface AuditEvent {
  type: string;
  /** Workflow time (ISO 8601). */
  at: string;
  stage?: string;
  [field: string]: unknown;
}

export interface AuditRecord {
  seq: number;
  prevHash: string | null;
  event: AuditEvent;
  hash: string;
}

export function auditKey(runPrefix: string, seq: number): string {
  return `${runPrefix}/audit/${String(seq).padStart(6, '0')}.json`;
}

export function hashRecord(seq: number, prevHash: string | null, event: AuditEvent): string {
  return createHash('sha256').update(canonicalJson({ seq, prevHash, event })).digest('hex');
}

export function makeRecord(seq: number, prevHash: string | null, event: AuditEvent): AuditRecord {
  return { seq, prevHash, event, hash: hashRecord(seq, prevHash, event) };
}

/**
 * Checks a chain read from storage (in key order): numbering without gaps from 1, each hash
 * recomputed, each link to the previous record, and (when known) the head recorded at run end.
 */
export function verifyChain(records: AuditRecord[], head?: { seq: number; hash: string }): string[] {
  const problems: string[] = [];
  let prev: AuditRecord | undefined;
  records.forEach((r, i) => {
    if (r.seq !== i + 1) problems.push(`event ${i + 1}: found seq ${r.seq} (an event is missing or out of order)`);
    if (hashRecord(r.seq, r.prevHash, r.event) !== r.hash) problems.push(`event ${r.seq}: content does not match its hash (modified)`);
    const expectedPrev = prev ? prev.hash : null;
    if (r.prevHash !== expectedPrev) problems.push(`event ${r.seq}: does not link to the event before it (deleted, inserted or reordered)`);
    prev = r;
  });
  if (head) {
    const last = records[records.length - 1];
    if (!last || last.seq !== head.seq || last.hash !== head.hash) {
      problems.push(`chain head is ${last ? `event ${last.seq}` : 'empty'}, but the run recorded event ${head.seq} (${head.hash.slice(0, 12)}…) as its last: events were removed or replaced`);
    }
  }
  return problems;
}
