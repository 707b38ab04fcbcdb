/**
 * The audit trail against a holder of the workers' S3 key (docs/security.md, "Audit trail"): with
 * that key one can rewrite every object of the main bucket, so a rewrite that recomputes the hashes
 * passes the plain chain checks. What stops it: the records' write-once copies in the object-locked
 * audit bucket (S3 Object Lock, compliance mode) and the chain head anchored outside the bucket (the
 * write-once status.json, the run's result in Temporal).
 *
 * On the test stack (test/global-setup.ts: infra/harness/stack.ts creates `<bucket>-audit` with
 * object locking, 1 day retention), one small run with the contract test job, then:
 *   (c) untouched, it verifies against its copies and both anchors;
 *   (a) events, attempt records, status.json and run.json rewritten consistently in the main bucket
 *       with the workers' key: the plain checks pass, `audit verify` names every rewritten record and
 *       both anchors (and each mechanism catches it alone);
 *   (b) the workers' key against the copies themselves: what S3 Object Lock refuses (asserted as
 *       refused, and the original is still there), and what it allows (a new version, a delete
 *       marker, a new key), which `audit verify` names; and a copy planted ahead of a run, which the
 *       workers never replace (that run's trail stops, visibly).
 * (b) cannot be undone (compliance mode: not even the root user can), so it runs last, on this run only.
 */
import type { Client as TemporalClient } from '@temporalio/client';
import type { Client as S3Client } from 'minio';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRun } from '../../client/commands/run.js';
import { showAudit } from '../../client/audit/show.js';
import { verifyRun } from '../../client/audit/verify.js';
import { minioClient } from '../../infra/stack/minio.js';
import { auditKey, makeRecord, verifyChain, type AuditEvent, type AuditRecord } from '../../storage/audit-chain.js';
import { attemptRecordKey, readAttemptRecords } from '../../storage/attempt-records.js';
import { layout } from '../../storage/layout.js';
import { jsonBytes, LockedCopyConflict, ObjectStore } from '../../storage/object-store.js';
import type { PipelineStatus } from '../../workflows/types.js';
import { stack, startTestWorkers, testClient, testJobCommand, testStackEnv, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { writeTestSpec } from '../helpers/specs.js';

const PREFIX = 'it-audit-tamper';
const short = (h: string) => h.slice(0, 12);

let workers: TestWorkers;
let client: TemporalClient;
let closeClient: () => Promise<void>;
let store: ObjectStore;
/** A raw S3 client with exactly the key the workers use (REFINERY_S3_ACCESS_KEY of their environment). */
let s3: S3Client;
let auditBucket: string;
let runId: string;
let runKey: string;
let records: AuditRecord[];
let status: PipelineStatus & { finishedAt: string };

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  const env = testStackEnv();
  const endpoint = new URL(env.REFINERY_S3_ENDPOINT!);
  s3 = minioClient({ host: endpoint.hostname, port: Number(endpoint.port), accessKey: env.REFINERY_S3_ACCESS_KEY!, secretKey: env.REFINERY_S3_SECRET_KEY! });
  auditBucket = store.auditBucket!;
  workers = await startTestWorkers({ jobCommand: testJobCommand() });
  ({ client, close: closeClient } = await testClient());
  const { file } = await writeTestSpec({
    name: 'audit-tamper-test',
    storage: { prefix: PREFIX },
    stages: [
      { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 4, save_steps: 2 }, job_params: { step_seconds: 0.02 } },
      { id: 'merge', kind: 'merge', from: 'sft', job_params: { step_seconds: 0.01 } },
    ],
  });
  const started = await startRun(client, file, { id: `tamper-${Date.now()}`, by: 'auditor' });
  runId = started.runId;
  await started.handle.result();
  runKey = layout.run(PREFIX, runId);
  records = (await showAudit({ runId, prefix: PREFIX, store })).events;
  status = (await store.getJson<PipelineStatus & { finishedAt: string }>(`${runKey}/status.json`))!;
});
afterAll(async () => {
  await closeClient?.();
  await workers?.shutdown();
});

const verify = (opts: { store?: ObjectStore; temporal?: false } = {}) => verifyRun({ runId, prefix: PREFIX, store, ...opts });

/** Keys of the run's records in the main bucket: audit trail, attempt records, status.json. */
async function recordKeys(): Promise<string[]> {
  const keys = (await store.list(`${runKey}/`, true)).map((o) => o.key);
  return keys.filter((k) => /\/audit\/\d{6}\.json$/.test(k) || /\/attempts\/[^/]+\/attempt-\d+\/\d{6}\.json$/.test(k) || k === `${runKey}/status.json`).sort();
}

async function lockedVersions(key: string) {
  return (await store.listLockedVersions(key)).filter((v) => v.key === key);
}

/** Recomputes every hash of a chain after `edit`: what someone with the bucket's key can do. */
function rechain(chain: AuditRecord[], edit: (event: AuditEvent, seq: number) => void): AuditRecord[] {
  let prev: string | null = null;
  return chain.map((r) => {
    const event = structuredClone(r.event);
    edit(event, r.seq);
    const forged = makeRecord(r.seq, prev, event);
    prev = forged.hash;
    return forged;
  });
}

/** Main-bucket objects a test rewrote, with their original bytes. */
const touched = new Map<string, Buffer>();
async function overwriteMain(key: string, value: unknown): Promise<void> {
  if (!touched.has(key)) touched.set(key, (await store.getBytes(key))!);
  await store.putJson(key, value);
}
async function restoreMain(): Promise<void> {
  for (const [key, bytes] of touched) await store.putBytes(key, bytes, 'application/json');
  touched.clear();
}

describe('the audit trail against the workers\' S3 key', () => {
  it('(c) an untouched run: every record has one write-once copy, retained in compliance mode; verify checks them and both anchors', async () => {
    const keys = await recordKeys();
    expect(keys.length).toBe(records.length + (await store.list(`${runKey}/attempts/`)).length + 1);
    const all = await store.listLockedVersions(`${runKey}/`);
    // Exactly the run's records, one version each, none deleted.
    expect([...new Set(all.map((v) => v.key))].sort()).toEqual(keys);
    expect(all.filter((v) => v.isDeleteMarker)).toEqual([]);
    expect(all).toHaveLength(keys.length);
    for (const key of [auditKey(runKey, 1), `${runKey}/status.json`]) {
      const copy = (await store.getLocked(key))!;
      expect(copy.body.equals((await store.getBytes(key))!)).toBe(true);
      expect(copy.retention?.mode).toBe('COMPLIANCE');
      const days = (copy.retention!.retainUntil.getTime() - copy.lastModified!.getTime()) / 86_400_000;
      expect(days).toBeGreaterThan(0.99);
      expect(days).toBeLessThan(1.01);
      expect(await s3.getObjectRetention(auditBucket, key)).toMatchObject({ mode: 'COMPLIANCE' });
    }
    // A retried write of the same bytes goes through; other bytes are refused.
    expect(await store.putLocked(auditKey(runKey, 1), (await store.getBytes(auditKey(runKey, 1)))!)).toBe('same');

    const v = await verify();
    expect(v.problems).toEqual([]);
    expect(v.warnings).toEqual([]);
    expect(v.lockedBucket).toBe(`${stack().bucket}-audit`);
    expect(v.checked.lockedCopies).toBe(keys.length);
    const head = status.auditHead!;
    expect(head.seq).toBe(records.length);
    expect(v.anchors).toEqual([
      `the write-once status.json (s3://${auditBucket}/${runKey}/status.json): event ${head.seq} (${short(head.hash)}), as in the main bucket`,
      `the run's result in Temporal (workflow ${runId}, namespace ${stack().namespace}): event ${head.seq} (${short(head.hash)}), as in the main bucket`,
    ]);
    expect(v.verdict).toMatch(/^OK: run .* chained to the head recorded at run end \(anchored in the write-once status\.json and the Temporal result\); \d+ records match their write-once copies/);
  });

  it('(c) a run without write-once copies or a Temporal workflow (as runs from before them) verifies with warnings, not silently', async () => {
    // The same records under another run id and prefix: nothing of it in the audit bucket or Temporal.
    const oldId = `old-${runId}`;
    const oldKey = layout.run(`${PREFIX}-old`, oldId);
    for (const { key } of await store.list(`${runKey}/`, true)) {
      await store.putBytes(`${oldKey}${key.slice(runKey.length)}`, (await store.getBytes(key))!);
    }
    const v = await verifyRun({ runId: oldId, prefix: `${PREFIX}-old`, store });
    expect(v.problems).toEqual([]);
    expect(v.ok).toBe(true);
    expect(v.anchors).toEqual([
      `write-once status.json: none at s3://${auditBucket}/${oldKey}/status.json`,
      `Temporal: no workflow ${oldId} in namespace ${stack().namespace} (past the namespace's retention, or another namespace)`,
    ]);
    expect(v.warnings).toEqual([
      expect.stringMatching(/^the chain head was checked against status\.json in the main bucket only \(no write-once status\.json; Temporal: no workflow .*\): a holder of the bucket's key could have rewritten the trail and status\.json together$/),
      `no write-once copies of this run's records in s3://${auditBucket}: a run from before they were written (or written with REFINERY_S3_AUDIT_BUCKET=off); its records were checked against the main bucket only`,
    ]);
    expect(v.verdict).toMatch(/\(no anchor outside the bucket\); no write-once copies checked;/);
    await store.remove((await store.list(`${oldKey}/`, true)).map((o) => o.key));
  });

  it('(a) events, attempt records, status.json and run.json rewritten consistently: the plain checks pass; the write-once copies and Temporal catch it', async () => {
    // The forgery: another requester, and attempt 1 of sft on another host, every hash recomputed.
    const attemptPrefix = layout.attemptRecords(PREFIX, runId, 'sft', 1);
    const attemptRecords = await readAttemptRecords(store, attemptPrefix);
    expect(attemptRecords.length).toBeGreaterThan(1);
    const forgedAttempt = rechain(attemptRecords, (e) => {
      if (e.type === 'attempt-started') e.host = 'elsewhere';
    });
    const forged = rechain(records, (e) => {
      if (e.type === 'run-started') e.requestedBy = 'mallory';
      if (e.type === 'attempt' && e.stage === 'sft' && e.attempt === 1) {
        e.host = 'elsewhere';
        e.records = { ...(e.records as object), count: forgedAttempt.length, head: forgedAttempt.at(-1)!.hash };
      }
    });
    const forgedHead = { seq: forged.at(-1)!.seq, hash: forged.at(-1)!.hash };
    for (const r of forgedAttempt) await overwriteMain(attemptRecordKey(attemptPrefix, r.seq), r);
    for (const r of forged) await overwriteMain(auditKey(runKey, r.seq), r);
    await overwriteMain(`${runKey}/status.json`, { ...status, auditHead: forgedHead });
    const manifest = (await store.getJson<Record<string, unknown>>(`${runKey}/run.json`))!;
    await overwriteMain(`${runKey}/run.json`, { ...manifest, requestedBy: 'mallory' });
    try {
      // The forgery is consistent: the chain and its head check out, and so did `audit verify` from
      // the main bucket alone (no write-once copies, no Temporal).
      expect(verifyChain(forged, forgedHead)).toEqual([]);
      expect(verifyChain(forgedAttempt)).toEqual([]);
      const bucketOnly = new ObjectStore({ ...store.config, auditLock: { ...store.auditLock, bucket: null } });
      const plain = await verify({ store: bucketOnly, temporal: false });
      expect(plain.problems).toEqual([]);
      expect(plain.warnings).toContainEqual(expect.stringMatching(/^the chain head was checked against status\.json in the main bucket only/));

      // With both: every rewritten record, and the head against both anchors.
      const orig = status.auditHead!;
      const lockedStatus = `the write-once status.json (s3://${auditBucket}/${runKey}/status.json)`;
      const inTemporal = `the run's result in Temporal (workflow ${runId}, namespace ${stack().namespace})`;
      const headProblem = (anchor: string) =>
        `chain head: status.json records event ${forgedHead.seq} (${short(forgedHead.hash)}), but ${anchor} records event ${orig.seq} (${short(orig.hash)}): the trail or status.json was rewritten`;
      const differs = (what: string, key: string) => `${what}: differs from its write-once copy s3://${auditBucket}/${key} (rewritten in the main bucket)`;
      const v = await verify();
      expect(v.exitCode).toBe(1);
      expect([...v.problems].sort()).toEqual(
        [
          headProblem(lockedStatus),
          headProblem(inTemporal),
          ...forged.map((r) => differs(`event ${r.seq}`, auditKey(runKey, r.seq))),
          ...forgedAttempt.map((r) => differs(`attempt 1 of stage sft: record ${r.seq}`, attemptRecordKey(attemptPrefix, r.seq))),
        ].sort(),
      );
      expect(v.anchors).toEqual([`${lockedStatus}: event ${orig.seq} (${short(orig.hash)})`, `${inTemporal}: event ${orig.seq} (${short(orig.hash)})`]);

      // Each mechanism alone: the Temporal result without the audit bucket; the copies without Temporal.
      const temporalOnly = await verify({ store: bucketOnly });
      expect(temporalOnly.problems).toEqual([headProblem(inTemporal)]);
      const copiesOnly = await verify({ temporal: false });
      expect(copiesOnly.problems).toContain(headProblem(lockedStatus));
      expect(copiesOnly.problems).toContain(differs('event 1', auditKey(runKey, 1)));
      expect(copiesOnly.problems.some((p) => p.includes('Temporal'))).toBe(false);
    } finally {
      await restoreMain();
    }
    expect((await verify()).problems).toEqual([]);
  });

  it('(a) a write-once copy retained for less than configured, or without the configured legal hold, is a problem', async () => {
    const demanding = new ObjectStore({ ...store.config, auditLock: { ...store.auditLock, retentionDays: 30, legalHold: true } });
    const v = await verify({ store: demanding, temporal: false });
    const n = (await recordKeys()).length;
    expect(v.problems).toEqual([
      expect.stringMatching(new RegExp(`^the write-once copies of ${n} records \\(event 1, event 2, event 3, …\\) are retained for less than 30 days \\(event 1: until \\S+, written \\S+\\)$`)),
      `the write-once copies of ${n} records (event 1, event 2, event 3, …) have no legal hold (REFINERY_AUDIT_LEGAL_HOLD=on)`,
    ]);
  });

  it('(b) a copy written ahead of the workers is never replaced: that run\'s trail stops, visibly, and verify names it', async () => {
    const { file } = await writeTestSpec({
      name: 'audit-tamper-ahead',
      storage: { prefix: PREFIX },
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 2, save_steps: 2 }, job_params: { step_seconds: 0.01 } }],
    });
    const id = `ahead-${Date.now()}`;
    const key = auditKey(layout.run(PREFIX, id), 1);
    const planted = jsonBytes(makeRecord(1, null, { type: 'run-started', at: new Date().toISOString(), requestedBy: 'mallory' }));
    await s3.putObject(auditBucket, key, planted);
    const started = await startRun(client, file, { id, by: 'auditor' });
    const result = await started.handle.result();
    expect(result.status.state).toBe('completed');
    expect(result.status.auditError).toMatch(/^audit trail incomplete after event 0: s3:\/\/\S+\/audit\/000001\.json: a different write-once copy is already there/);
    expect((await store.getLocked(key))!.body.equals(planted)).toBe(true);
    expect(await store.getBytes(key)).toBeUndefined();
    const v = await verifyRun({ runId: id, prefix: PREFIX, store });
    expect(v.exitCode).toBe(1);
    expect(v.problems).toContain(`no audit trail: ${store.uri(`${layout.run(PREFIX, id)}/audit/`)} is empty`);
    expect(v.problems).toContain(`event 1: is not in the main bucket, but its write-once copy s3://${auditBucket}/${key} is (deleted from the main bucket, or written around the workers)`);
  });

  it('(b) the workers\' key against the write-once copies: deleting, shortening and bypassing are refused; a new version or a delete marker is caught', async () => {
    const k2 = auditKey(runKey, 2);
    const k3 = auditKey(runKey, 3);
    const kStatus = `${runKey}/status.json`;
    const attemptPrefix = layout.attemptRecords(PREFIX, runId, 'sft', 1);
    const kAttempt = attemptRecordKey(attemptPrefix, 1);
    const [original2] = await lockedVersions(k2);
    const originalBytes = (await store.getLocked(k2))!.body;
    const retentionBefore = await s3.getObjectRetention(auditBucket, k2, { versionId: original2!.versionId });
    const forgedBytes = jsonBytes({ ...records[1], event: { ...records[1]!.event, forged: true } });
    const refusedCode = { code: expect.stringMatching(/^(InvalidRequest|AccessDenied)$/) };

    // Refused by S3 Object Lock (compliance mode), whoever asks:
    // a write-once PUT over it (the writers' own path),
    await expect(store.putLocked(k2, forgedBytes)).rejects.toBeInstanceOf(LockedCopyConflict);
    // deleting the version, with or without the governance bypass,
    await expect(s3.removeObject(auditBucket, k2, { versionId: original2!.versionId })).rejects.toMatchObject(refusedCode);
    await expect(s3.removeObject(auditBucket, k2, { versionId: original2!.versionId, governanceBypass: true })).rejects.toMatchObject(refusedCode);
    const batch = await s3.removeObjects(auditBucket, [{ name: k2, versionId: original2!.versionId }]);
    expect(batch).toEqual([expect.objectContaining({ Code: expect.stringMatching(/^(InvalidRequest|AccessDenied)$/), VersionId: original2!.versionId })]);
    // MinIO's force delete,
    await expect(s3.removeObject(auditBucket, k2, { forceDelete: true })).rejects.toHaveProperty('code');
    // shortening its retention, or turning it into governance mode (which a bypass could delete),
    const soon = new Date(Date.now() + 3_600_000).toISOString();
    await expect(s3.putObjectRetention(auditBucket, k2, { versionId: original2!.versionId, mode: 'COMPLIANCE', retainUntilDate: soon })).rejects.toMatchObject(refusedCode);
    await expect(s3.putObjectRetention(auditBucket, k2, { versionId: original2!.versionId, mode: 'GOVERNANCE', retainUntilDate: soon, governanceBypass: true })).rejects.toMatchObject(refusedCode);
    // suspending versioning (an overwrite would then replace the "null" version), removing the bucket.
    await expect(s3.setBucketVersioning(auditBucket, { Status: 'Suspended' })).rejects.toHaveProperty('code', 'InvalidBucketState');
    await expect(s3.removeBucket(auditBucket)).rejects.toHaveProperty('code', 'BucketNotEmpty');
    // The original is still there, bytes and retention unchanged.
    expect((await store.getLocked(k2, original2!.versionId))!.body.equals(originalBytes)).toBe(true);
    expect(await s3.getObjectRetention(auditBucket, k2, { versionId: original2!.versionId })).toEqual(retentionBefore);

    // Allowed by S3 on a locked bucket, and caught by `audit verify`: a plain PUT (a new version on
    // top) of an event, of status.json with a forged head, of an attempt record; a plain DELETE (a
    // delete marker on top); a new key (an event after the recorded head).
    await s3.putObject(auditBucket, k2, forgedBytes);
    await s3.putObject(auditBucket, kStatus, jsonBytes({ ...status, auditHead: { seq: 2, hash: 'f'.repeat(64) } }));
    await s3.putObject(auditBucket, kAttempt, jsonBytes({ forged: true }));
    await s3.removeObject(auditBucket, k3);
    const kExtra = auditKey(runKey, records.length + 1);
    await s3.putObject(auditBucket, kExtra, jsonBytes(makeRecord(records.length + 1, status.auditHead!.hash, { type: 'note', at: new Date().toISOString() })));
    expect(await store.getLocked(k3)).toBeUndefined();
    expect((await store.getLocked(k2))!.body.equals(forgedBytes)).toBe(true); // the latest version is the forgery
    expect(await lockedVersions(k2)).toHaveLength(2);

    const v = await verify();
    expect(v.exitCode).toBe(1);
    const uri = (key: string) => `s3://${auditBucket}/${key}`;
    expect([...v.problems].sort()).toEqual(
      [
        `event 2: its write-once copy ${uri(k2)} has 2 versions: it was overwritten after it was written`,
        `event 3: its write-once copy ${uri(k3)} was deleted: a delete marker hides it (the version below it remains)`,
        `status.json: its write-once copy ${uri(kStatus)} has 2 versions: it was overwritten after it was written`,
        `attempt 1 of stage sft: record 1: its write-once copy ${uri(kAttempt)} has 2 versions: it was overwritten after it was written`,
        `event ${records.length + 1}: is not in the main bucket, but its write-once copy ${uri(kExtra)} is (deleted from the main bucket, or written around the workers)`,
      ].sort(),
    );
    // The anchor is the first version written, not the forged one on top.
    expect(v.anchors[0]).toBe(`the write-once status.json (${uri(kStatus)}): event ${status.auditHead!.seq} (${short(status.auditHead!.hash)}), as in the main bucket`);
  });
});

describe('a worker killed between a record\'s two writes', () => {
  it('leaves a record only in the audit bucket: a continuation of the chain is a warning, anything else a problem', async () => {
    const { file } = await writeTestSpec({
      name: 'audit-crash-test',
      storage: { prefix: PREFIX },
      stages: [{ id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 4, save_steps: 2 }, job_params: { step_seconds: 0.02 } }],
    });
    const started = await startRun(client, file, { id: `tamper-crash-${Date.now()}`, by: 'auditor' });
    await started.handle.result();
    const check = () => verifyRun({ runId: started.runId, prefix: PREFIX, store });
    expect((await check()).problems).toEqual([]);

    // What the killed worker left: its next record written to the audit bucket (copies go first), not to the main one.
    const attemptPrefix = layout.attemptRecords(PREFIX, started.runId, 'sft', 1);
    const chain = await readAttemptRecords(store, attemptPrefix);
    const last = chain.at(-1)!;
    const next = makeRecord(last.seq + 1, last.hash, { type: 'checkpoint-committed', at: new Date().toISOString(), step: 99 });
    await store.putLocked(attemptRecordKey(attemptPrefix, next.seq), jsonBytes(next));
    const v = await check();
    expect(v.problems).toEqual([]);
    expect(v.warnings).toContainEqual(expect.stringMatching(new RegExp(`attempt 1 of stage sft: record ${next.seq} \\(checkpoint-committed\\) is only in the audit bucket, continuing the chain`)));

    // One that does not continue the chain (a record slipped in around the workers) stays a problem.
    const stray = makeRecord(next.seq + 1, 'f'.repeat(64), { type: 'attempt-ended', at: new Date().toISOString(), outcome: 'completed' });
    await store.putLocked(attemptRecordKey(attemptPrefix, stray.seq), jsonBytes(stray));
    const w = await check();
    expect(w.problems).toContainEqual(expect.stringMatching(new RegExp(`attempt 1 of stage sft: record ${stray.seq}: is not in the main bucket`)));
  });
});
