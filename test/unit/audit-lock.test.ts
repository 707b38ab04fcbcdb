/**
 * The audit trail's write-once copies, without a store: their settings (config/audit-lock.ts) and
 * what `audit verify` concludes from one record's main copy and its versions in the locked bucket
 * (checkLockedCopy in storage/audit-chain.ts). The real bucket: test/integration/audit-tamper.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { auditLockSettings } from '../../config/audit-lock.js';
import { loadStackConfig } from '../../config/stack.js';
import { checkLockedCopy, makeRecord, type LockExpectation, type LockedCopyState } from '../../storage/audit-chain.js';
import { storageConfigFromEnv } from '../../storage/config.js';

describe('audit lock settings', () => {
  it('default to <bucket>-audit in compliance mode, retention from the bucket, no legal hold', () => {
    expect(auditLockSettings({}, 'refinery')).toEqual({ bucket: 'refinery-audit', mode: 'COMPLIANCE', legalHold: false });
    expect(storageConfigFromEnv({ REFINERY_BUCKET: 'b1' }).auditLock).toEqual({ bucket: 'b1-audit', mode: 'COMPLIANCE', legalHold: false });
    expect(loadStackConfig({}).audit).toEqual({ bucket: 'refinery-audit', retentionDays: 1, mode: 'COMPLIANCE' });
  });

  it('read the environment', () => {
    expect(
      auditLockSettings({ REFINERY_S3_AUDIT_BUCKET: 'trail', REFINERY_AUDIT_RETENTION_DAYS: '3650', REFINERY_AUDIT_LOCK_MODE: 'governance', REFINERY_AUDIT_LEGAL_HOLD: 'on' }, 'refinery'),
    ).toEqual({ bucket: 'trail', mode: 'GOVERNANCE', retentionDays: 3650, legalHold: true });
    expect(auditLockSettings({ REFINERY_S3_AUDIT_BUCKET: 'off' }, 'refinery').bucket).toBeNull();
    expect(loadStackConfig({ REFINERY_S3_AUDIT_BUCKET: 'off' }).audit.bucket).toBeNull();
    expect(loadStackConfig({ REFINERY_AUDIT_RETENTION_DAYS: '7' }).audit.retentionDays).toBe(7);
  });

  it('refuse bad values, naming the variable', () => {
    expect(() => auditLockSettings({ REFINERY_S3_AUDIT_BUCKET: 'Bad_Name' }, 'refinery')).toThrow(/^REFINERY_S3_AUDIT_BUCKET="Bad_Name" is not a valid S3 bucket name/);
    expect(() => auditLockSettings({ REFINERY_S3_AUDIT_BUCKET: 'refinery' }, 'refinery')).toThrow(/must not be the main bucket/);
    expect(() => auditLockSettings({}, 'b'.repeat(60))).toThrow(/default name .* is not a valid S3 bucket name: set REFINERY_S3_AUDIT_BUCKET/);
    expect(() => auditLockSettings({ REFINERY_AUDIT_RETENTION_DAYS: '0' }, 'refinery')).toThrow(/^REFINERY_AUDIT_RETENTION_DAYS="0"/);
    expect(() => auditLockSettings({ REFINERY_AUDIT_RETENTION_DAYS: '1.5' }, 'refinery')).toThrow(/REFINERY_AUDIT_RETENTION_DAYS/);
    expect(() => auditLockSettings({ REFINERY_AUDIT_LOCK_MODE: 'strict' }, 'refinery')).toThrow(/^REFINERY_AUDIT_LOCK_MODE="strict"/);
    expect(() => auditLockSettings({ REFINERY_AUDIT_LEGAL_HOLD: 'maybe' }, 'refinery')).toThrow(/^REFINERY_AUDIT_LEGAL_HOLD="maybe"/);
    expect(() => loadStackConfig({ REFINERY_AUDIT_LOCK_MODE: 'strict' })).toThrow(/REFINERY_AUDIT_LOCK_MODE/);
  });
});

describe('checkLockedCopy', () => {
  const record = makeRecord(1, null, { type: 'run-started', at: '2026-11-01T00:00:00.000Z', requestedBy: 'auditor' });
  const writtenAt = new Date('2026-11-01T00:00:01.000Z');
  const expect30: LockExpectation = { mode: 'COMPLIANCE', days: 30, legalHold: false };
  const now = new Date('2026-11-02T00:00:00.000Z');
  const version = (versionId: string, isLatest: boolean, isDeleteMarker = false) => ({ versionId, isLatest, isDeleteMarker });
  const copy = (over: Partial<NonNullable<LockedCopyState['original']>> = {}, versions = [version('v1', true)]): LockedCopyState => ({
    versions,
    original: { value: JSON.parse(JSON.stringify(record)), writtenAt, retention: { mode: 'COMPLIANCE', retainUntil: new Date(writtenAt.getTime() + 30 * 86_400_000) }, legalHold: false, ...over },
  });
  const kinds = (main: unknown, state: LockedCopyState, expectation = expect30) => checkLockedCopy(main, state, expectation, now).map((f) => f.kind);

  it('is silent on an intact record with one retained version', () => {
    expect(checkLockedCopy(record, copy(), expect30, now)).toEqual([]);
    // What the record says counts, not its key order or whitespace.
    expect(kinds({ hash: record.hash, event: record.event, prevHash: null, seq: 1 }, copy())).toEqual([]);
  });

  it('names a main copy that differs, a missing main or write-once copy', () => {
    expect(kinds({ ...record, event: { ...record.event, requestedBy: 'mallory' } }, copy())).toEqual(['differs']);
    expect(kinds(undefined, copy())).toEqual(['only-locked']);
    expect(kinds(record, { versions: [] })).toEqual(['missing']);
    expect(kinds(undefined, { versions: [] })).toEqual([]);
  });

  it('names an overwrite (a second version) and a delete marker, comparing with the first version', () => {
    expect(kinds(record, copy({}, [version('v1', false), version('v2', true)]))).toEqual(['overwritten']);
    const deleted = checkLockedCopy(record, copy({}, [version('v1', false), version('m1', true, true)]), expect30, now);
    expect(deleted.map((f) => f.message)).toEqual(['its write-once copy was deleted: a delete marker hides it (the version below it remains)']);
    expect(kinds(record, copy({}, [version('v1', false), version('v2', false), version('m1', true, true)]))).toEqual(['deleted', 'overwritten']);
  });

  it('names retention that is missing, weaker, shorter than expected or over, and a missing legal hold', () => {
    expect(kinds(record, copy({ retention: undefined }))).toEqual(['no-retention']);
    expect(kinds(record, copy({ retention: { mode: 'GOVERNANCE', retainUntil: new Date(writtenAt.getTime() + 30 * 86_400_000) } }))).toEqual(['weak-mode']);
    // Compliance satisfies an expected governance mode.
    expect(kinds(record, copy(), { ...expect30, mode: 'GOVERNANCE' })).toEqual([]);
    expect(kinds(record, copy({ retention: { mode: 'COMPLIANCE', retainUntil: new Date(writtenAt.getTime() + 5 * 86_400_000) } }))).toEqual(['short-retention']);
    expect(kinds(record, copy({ retention: { mode: 'COMPLIANCE', retainUntil: new Date(now.getTime() - 1000) } }), { ...expect30, days: 1 })).toEqual(['expired']);
    expect(kinds(record, copy(), { ...expect30, legalHold: true })).toEqual(['no-legal-hold']);
    expect(kinds(record, copy({ legalHold: true }), { ...expect30, legalHold: true })).toEqual([]);
  });
});
