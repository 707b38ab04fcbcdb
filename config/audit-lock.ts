/**
 * Where the audit trail's write-once copies go (docs/security.md, "Audit trail"): a second bucket,
 * created with S3 Object Lock, that receives a copy of every audit record, every attempt record and
 * the final status.json, each written once (`If-None-Match: *`) with its own retention.
 *
 * | Variable                       | Default             | Meaning                                            |
 * | ------------------------------ | ------------------- | -------------------------------------------------- |
 * | REFINERY_S3_AUDIT_BUCKET       | `<bucket>-audit`    | the object-locked bucket; `off` turns copies off    |
 * | REFINERY_AUDIT_RETENTION_DAYS  | bucket default, 365 | retention of each copy, in days                    |
 * | REFINERY_AUDIT_LOCK_MODE       | compliance          | `compliance` or `governance` (S3 Object Lock mode) |
 * | REFINERY_AUDIT_LEGAL_HOLD      | off                 | `on`: also put a legal hold on each copy           |
 *
 * Retention unset: the bucket's default retention when it has one (the local and test stacks
 * create theirs with 1 day), else 365 days. `audit verify` reads the same variables: they are
 * what it expects each copy to carry.
 */

export type AuditLockMode = 'COMPLIANCE' | 'GOVERNANCE';

export interface AuditLockSettings {
  /** The object-locked bucket of the write-once copies; null when turned off. */
  bucket: string | null;
  mode: AuditLockMode;
  /** Days each copy is retained; undefined: the bucket's default retention, else DEFAULT_AUDIT_RETENTION_DAYS. */
  retentionDays?: number;
  /** Also set a legal hold (ON) on each copy. */
  legalHold: boolean;
}

/** Retention when neither REFINERY_AUDIT_RETENTION_DAYS nor the bucket's default retention says. */
export const DEFAULT_AUDIT_RETENTION_DAYS = 365;
/** The default retention the local stack and the test stacks give the audit bucket they create. */
export const LOCAL_AUDIT_RETENTION_DAYS = 1;
/** S3 allows at most 100 years of retention; more is surely a typo. */
const MAX_RETENTION_DAYS = 36_500;

const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const OFF = new Set(['off', 'none', 'false', '0']);

/** The audit bucket's default name for a main bucket. */
export function defaultAuditBucket(bucket: string): string {
  return `${bucket}-audit`;
}

/** Reads the settings above; throws one line naming the variable on a bad value. */
export function auditLockSettings(env: NodeJS.ProcessEnv, bucket: string): AuditLockSettings {
  const rawBucket = env.REFINERY_S3_AUDIT_BUCKET?.trim() ?? '';
  let auditBucket: string | null;
  if (OFF.has(rawBucket.toLowerCase())) auditBucket = null;
  else {
    auditBucket = rawBucket || defaultAuditBucket(bucket);
    if (!BUCKET_NAME.test(auditBucket)) {
      throw new Error(
        rawBucket
          ? `REFINERY_S3_AUDIT_BUCKET="${rawBucket}" is not a valid S3 bucket name (3-63 lowercase letters, digits, "." or "-"), nor "off"`
          : `the audit bucket's default name "${auditBucket}" is not a valid S3 bucket name: set REFINERY_S3_AUDIT_BUCKET`,
      );
    }
    if (auditBucket === bucket) throw new Error(`REFINERY_S3_AUDIT_BUCKET must not be the main bucket "${bucket}" (it holds checkpoints that are pruned and overwritten)`);
  }
  const rawDays = env.REFINERY_AUDIT_RETENTION_DAYS?.trim();
  let retentionDays: number | undefined;
  if (rawDays) {
    retentionDays = Number(rawDays);
    if (!/^\d+$/.test(rawDays) || retentionDays < 1 || retentionDays > MAX_RETENTION_DAYS) {
      throw new Error(`REFINERY_AUDIT_RETENTION_DAYS="${rawDays}" is not a number of days between 1 and ${MAX_RETENTION_DAYS}`);
    }
  }
  const rawMode = env.REFINERY_AUDIT_LOCK_MODE?.trim().toUpperCase() || 'COMPLIANCE';
  if (rawMode !== 'COMPLIANCE' && rawMode !== 'GOVERNANCE') {
    throw new Error(`REFINERY_AUDIT_LOCK_MODE="${env.REFINERY_AUDIT_LOCK_MODE}" is neither "compliance" nor "governance"`);
  }
  const rawHold = env.REFINERY_AUDIT_LEGAL_HOLD?.trim().toLowerCase() || 'off';
  if (!['on', 'off', 'true', 'false', '1', '0'].includes(rawHold)) {
    throw new Error(`REFINERY_AUDIT_LEGAL_HOLD="${env.REFINERY_AUDIT_LEGAL_HOLD}" is neither "on" nor "off"`);
  }
  return { bucket: auditBucket, mode: rawMode, ...(retentionDays !== undefined ? { retentionDays } : {}), legalHold: ['on', 'true', '1'].includes(rawHold) };
}
