/**
 * The audit trail: an append-only sequence of events in object storage, each carrying the hash of
 * the one before, so that a modified, deleted or reordered event is detectable offline from the
 * bucket alone (invariant 8) — and, against a holder of the bucket's key, from the records' write-once
 * copies in an object-locked bucket and the head anchored outside the bucket (docs/security.md).
 * Pure hashing and checking here; writes in activities/audit.ts.
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

// ---------------------------------------------------------------------------------------------
// Write-once copies (docs/security.md): every audit record, attempt record and the final
// status.json is also written once into an object-locked bucket, under the same key. These are the
// checks `audit verify` makes of one record's main copy against its write-once copy.

/** What each write-once copy must carry (ObjectStore.auditRetention: the writers' settings). */
export interface LockExpectation {
  mode: 'COMPLIANCE' | 'GOVERNANCE';
  days: number;
  legalHold: boolean;
}

/** A key's versions in the locked bucket, and the first one written (the authority), as read. */
export interface LockedCopyState {
  /** Every version of the key, delete markers included, oldest first. */
  versions: { versionId: string; isLatest: boolean; isDeleteMarker: boolean }[];
  /** The oldest version that is not a delete marker, parsed: what the writer put there first. */
  original?: { value: unknown; writtenAt?: Date; retention?: { mode: string; retainUntil: Date }; legalHold: boolean };
}

export type LockedCopyFindingKind =
  | 'missing'
  | 'deleted'
  | 'overwritten'
  | 'differs'
  | 'only-locked'
  | 'no-retention'
  | 'weak-mode'
  | 'short-retention'
  | 'expired'
  | 'no-legal-hold';

export interface LockedCopyFinding {
  kind: LockedCopyFindingKind;
  /** A sentence about the record ("… differs from its write-once copy …"). */
  message: string;
  /** For the retention findings: the dates or mode behind them, for a summary over many records. */
  detail?: string;
}

/** Slack for clocks: a copy's retain-until date is computed by the writer, its write time by the store. */
const RETENTION_SLACK_MS = 10 * 60 * 1000;

/**
 * One record's main copy (`main`, parsed; undefined when the main bucket lacks it) against its
 * write-once copy. The main copy must equal the first version written; there must be exactly one
 * version and no delete marker over it (an overwrite is a new version, a plain DELETE a marker:
 * S3 allows both on a locked bucket, neither removes the original); and the original must carry
 * retention of the expected mode for the expected time (and a legal hold when expected).
 * Compared as canonical JSON: what the record says, not its whitespace.
 */
export function checkLockedCopy(main: unknown, copy: LockedCopyState, expect: LockExpectation, now: Date = new Date()): LockedCopyFinding[] {
  const out: LockedCopyFinding[] = [];
  if (copy.versions.length === 0) {
    if (main !== undefined) out.push({ kind: 'missing', message: 'has no write-once copy' });
    return out;
  }
  const objects = copy.versions.filter((v) => !v.isDeleteMarker);
  const latest = copy.versions.find((v) => v.isLatest) ?? copy.versions.at(-1)!;
  if (latest.isDeleteMarker) {
    out.push({ kind: 'deleted', message: `its write-once copy was deleted: a delete marker hides it${objects.length ? ` (${objects.length === 1 ? 'the version below it remains' : `the ${objects.length} versions below it remain`})` : ''}` });
  }
  if (objects.length > 1) out.push({ kind: 'overwritten', message: `its write-once copy has ${objects.length} versions: it was overwritten after it was written` });
  const original = copy.original;
  if (!original) return out;
  if (main === undefined) out.push({ kind: 'only-locked', message: 'is not in the main bucket, but its write-once copy is (deleted from the main bucket, or written around the workers)' });
  else if (canonicalJson(main) !== canonicalJson(original.value)) out.push({ kind: 'differs', message: 'differs from its write-once copy (rewritten in the main bucket)' });
  const r = original.retention;
  if (!r) out.push({ kind: 'no-retention', message: `its write-once copy carries no retention (expected ${expect.mode} for ${expect.days} days)` });
  else {
    if (r.mode !== expect.mode && !(r.mode === 'COMPLIANCE' && expect.mode === 'GOVERNANCE')) {
      out.push({ kind: 'weak-mode', message: `its write-once copy is retained in ${r.mode} mode, expected ${expect.mode}`, detail: `${r.mode} mode` });
    }
    if (original.writtenAt && r.retainUntil.getTime() + RETENTION_SLACK_MS < original.writtenAt.getTime() + expect.days * 24 * 3600 * 1000) {
      const detail = `until ${r.retainUntil.toISOString()}, written ${original.writtenAt.toISOString()}`;
      out.push({ kind: 'short-retention', message: `its write-once copy is retained for less than ${expect.days} days (${detail})`, detail });
    }
    if (r.retainUntil.getTime() < now.getTime()) {
      out.push({ kind: 'expired', message: `the retention of its write-once copy ended ${r.retainUntil.toISOString()}: since then it could have been deleted and written again`, detail: `ended ${r.retainUntil.toISOString()}` });
    }
  }
  if (expect.legalHold && !original.legalHold) out.push({ kind: 'no-legal-hold', message: 'its write-once copy has no legal hold (REFINERY_AUDIT_LEGAL_HOLD=on)' });
  return out;
}
