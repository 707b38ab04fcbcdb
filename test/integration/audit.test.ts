/**
 * `audit`, `audit verify` and `logs` against a real run on the real stack (contract test job):
 * an intact run verifies; each kind of tampering — an artifact's bytes changed, an event deleted,
 * two events swapped, the last event cut off, run.json edited, a secret stored — makes it fail,
 * naming the problem. Every test puts the bucket back as it found it.
 */
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Client } from '@temporalio/client';
import { startRun } from '../../client/commands/run.js';
import { renderAudit, showAudit } from '../../client/audit/show.js';
import { verifyRun } from '../../client/audit/verify.js';
import { streamLogs, type LogChunk } from '../../client/commands/logs.js';
import { CliError } from '../../client/errors.js';
import { auditKey, type AuditRecord } from '../../storage/audit-chain.js';
import { committedFileKey, readCommitted } from '../../storage/commit.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { REPO_ROOT } from '../../config/paths.js';
import { stack, startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, type TestWorkers } from '../helpers/env.js';
import { writeTestSpec } from '../helpers/specs.js';

const PREFIX = 'it-audit';

let workers: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
let store: ObjectStore;
let runId: string;
let runKey: string;
let records: AuditRecord[];

/** Objects a test changed, with their original bytes (undefined: did not exist). */
const touched = new Map<string, Buffer | undefined>();
async function tamper(key: string, bytes: Buffer | string | null): Promise<void> {
  if (!touched.has(key)) touched.set(key, await store.getBytes(key));
  if (bytes === null) await store.remove([key]);
  else await store.putBytes(key, bytes);
}

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  workers = await startTestWorkers({ jobCommand: testJobCommand() });
  ({ client, close: closeClient } = await testClient());
  const { file } = await writeTestSpec({
    name: 'audit-test',
    storage: { prefix: PREFIX },
    stages: [
      { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 4, save_steps: 2 }, job_params: { step_seconds: 0.02 } },
      { id: 'merge', kind: 'merge', from: 'sft', job_params: { step_seconds: 0.01 } },
    ],
  });
  const started = await startRun(client, file, { id: `audit-${Date.now()}`, by: 'auditor' });
  runId = started.runId;
  await started.handle.result();
  runKey = `${PREFIX}/runs/${runId}`;
  records = (await showAudit({ runId, prefix: PREFIX, store })).events;
});
afterAll(async () => {
  await closeClient?.();
  await workers?.shutdown();
});
afterEach(async () => {
  for (const [key, bytes] of touched) {
    if (bytes === undefined) await store.remove([key]);
    else await store.putBytes(key, bytes);
  }
  touched.clear();
  // The bucket is back as it was: the run verifies again.
  expect((await verifyRun({ runId, prefix: PREFIX, store })).problems).toEqual([]);
});

const verify = () => verifyRun({ runId, prefix: PREFIX, store });

describe('refinery audit', () => {
  it('shows the manifest and every event in order', async () => {
    const shown = await showAudit({ runId, prefix: PREFIX, store });
    expect(shown.manifest?.requestedBy).toBe('auditor');
    expect(shown.manifest?.specSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(shown.state).toBe('completed');
    const types = shown.events.map((r) => r.event.type);
    expect(types[0]).toBe('run-started');
    expect(types[1]).toBe('run-prepared');
    expect(types.at(-1)).toBe('run-finished');
    expect(types.filter((t) => t === 'stage-completed')).toHaveLength(2);
    expect(shown.events.map((r) => r.seq)).toEqual(shown.events.map((_, i) => i + 1));
    const text = renderAudit(shown);
    expect(text).toContain(`run ${runId} (audit-test): completed`);
    expect(text).toContain('requested by  auditor');
    expect(text).toMatch(/datasets\s+chats\s+sha256 [0-9a-f]{64}/);
    expect(text).toMatch(/\n\s+1\s+\S+ \S+\s+run-started\s+pipeline audit-test {2}by auditor/);
    expect(text).toMatch(/stage-completed\s+sft\s+manifest [0-9a-f]{12}/);
  });

  it('refuses a run that is not there, naming the prefix it is under', async () => {
    await expect(showAudit({ runId, prefix: 'no-such-prefix', store })).rejects.toThrow(CliError);
    await expect(showAudit({ runId, prefix: 'no-such-prefix', store })).rejects.toMatchObject({ hint: `it is under prefix "${PREFIX}": pass --prefix ${PREFIX}`, exitCode: 4 }); // not found (client/exit-codes.ts)
    await expect(showAudit({ runId: '../etc', prefix: PREFIX, store })).rejects.toThrow(/not a run id/);
    await expect(showAudit({ runId, prefix: '/abs', store })).rejects.toThrow(/not a storage prefix/);
  });
});

describe('refinery audit verify', () => {
  it('passes on an intact run: chain, head, artifacts, inputs, run.json, no secrets', async () => {
    const v = await verify();
    expect(v.problems).toEqual([]);
    expect(v.warnings).toEqual([]);
    expect(v.ok).toBe(true);
    expect(v.exitCode).toBe(0);
    expect(v.checked).toMatchObject({ events: records.length, artifacts: 2, inputs: 2 });
    expect(v.checked.files).toBeGreaterThanOrEqual(4);
    expect(v.verdict).toMatch(/^OK: run .* chained to the head recorded at run end/);
  });

  it('fails when an artifact object has been modified, naming the file', async () => {
    const sft = records.find((r) => r.event.type === 'stage-completed' && r.event.stage === 'sft')!.event.artifact as { prefix: string };
    const key = committedFileKey((await readCommitted(store, sft.prefix))!, 'result.json');
    const original = (await store.getBytes(key))!;
    await tamper(key, Buffer.concat([original, Buffer.from(' ')]));
    const v = await verify();
    expect(v.exitCode).toBe(1);
    expect(v.problems).toEqual([`stage sft artifact: ${store.uri(key)}: sha256 mismatch`]);
    expect(v.verdict).toMatch(/^FAILED: .* 1 problem$/);
  });

  it('fails when an artifact object or a stored dataset is missing', async () => {
    const merge = records.find((r) => r.event.type === 'stage-completed' && r.event.stage === 'merge')!.event.artifact as { prefix: string };
    const mergeFile = committedFileKey((await readCommitted(store, merge.prefix))!, 'result.json');
    await tamper(mergeFile, null);
    const prepared = records.find((r) => r.event.type === 'run-prepared')!.event.datasets as Record<string, { uri: string }>;
    const dataKey = `${prepared.chats!.uri.replace(/^s3:\/\/[^/]+\//, '')}/files/data.jsonl`;
    await tamper(dataKey, null);
    const v = await verify();
    expect(v.exitCode).toBe(1);
    expect(v.problems).toContain(`stage merge artifact: ${store.uri(mergeFile)}: missing`);
    expect(v.problems).toContain(`dataset chats: ${store.uri(dataKey)}: missing`);
  });

  it('fails when one audit event has been deleted', async () => {
    await tamper(auditKey(runKey, 3), null);
    const v = await verify();
    expect(v.exitCode).toBe(1);
    expect(v.problems).toContain('event 3: found seq 4 (an event is missing or out of order)');
    expect(v.problems).toContain('event 4: does not link to the event before it (deleted, inserted or reordered)');
  });

  it('fails when two audit events have been swapped (reordered)', async () => {
    const [a, b] = await Promise.all([store.getBytes(auditKey(runKey, 4)), store.getBytes(auditKey(runKey, 5))]);
    await tamper(auditKey(runKey, 4), b!);
    await tamper(auditKey(runKey, 5), a!);
    const v = await verify();
    expect(v.exitCode).toBe(1);
    expect(v.problems).toContain('event 4: found seq 5 (an event is missing or out of order)');
    expect(v.problems.some((p) => /does not link to the event before it/.test(p))).toBe(true);
  });

  it('fails when the last event has been cut off (truncation, caught by the recorded head)', async () => {
    const last = records.length;
    await tamper(auditKey(runKey, last), null);
    const v = await verify();
    expect(v.exitCode).toBe(1);
    // What is left is a valid chain: only the head recorded in status.json shows the cut.
    expect(v.problems).toEqual([expect.stringMatching(new RegExp(`^chain head is event ${last - 1}, but the run recorded event ${last} .* as its last: events were removed or replaced$`))]);
  });

  it('fails when an event has been edited in place, or run.json disagrees with the trail', async () => {
    const rec = records[0]!;
    await tamper(auditKey(runKey, 1), JSON.stringify({ ...rec, event: { ...rec.event, requestedBy: 'someone-else' } }));
    const manifest = (await store.getJson<Record<string, unknown>>(`${runKey}/run.json`))!;
    await tamper(`${runKey}/run.json`, JSON.stringify({ ...manifest, specSha256: '0'.repeat(64) }));
    const v = await verify();
    expect(v.exitCode).toBe(1);
    expect(v.problems).toContain('event 1: content does not match its hash (modified)');
    expect(v.problems).toContainEqual(expect.stringMatching(/^run\.json spec sha256 0{64} differs from the one recorded at run start/));
  });

  it('fails when run.json is not a run manifest (storage/run-manifest.ts), as when it is missing', async () => {
    const manifest = (await store.getJson<Record<string, unknown>>(`${runKey}/run.json`))!;
    await tamper(`${runKey}/run.json`, JSON.stringify({ ...manifest, requestedBy: 42 }));
    const v = await verify();
    expect(v.exitCode).toBe(1);
    expect(v.problems).toContainEqual(expect.stringMatching(new RegExp(`^${store.uri(`${runKey}/run.json`).replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: not a run manifest: requestedBy: `)));
    expect(v.problems).toContain('run.json is missing, though the trail records run-prepared');
  });

  it('fails when the S3 secret key appears in status.json or a job log', async () => {
    const status = (await store.getJson<Record<string, unknown>>(`${runKey}/status.json`))!;
    await tamper(`${runKey}/status.json`, JSON.stringify({ ...status, note: `leaked ${stack().secretKey}` }));
    await tamper(`${runKey}/logs/sft/attempt-1.log`, `token=${stack().secretKey}\n`);
    const v = await verify();
    expect(v.exitCode).toBe(1);
    expect(v.problems).toEqual([
      `${store.uri(`${runKey}/status.json`)} contains the S3 secret key (a secret must never be stored)`,
      `${store.uri(`${runKey}/logs/sft/attempt-1.log`)} contains the S3 secret key (a secret must never be stored)`,
    ]);
    expect(JSON.stringify(v)).not.toContain(stack().secretKey);
  });

  it('bin/refinery audit verify exits 0 on the intact run and 1 after tampering', async () => {
    const s = stack();
    const env = { REFINERY_S3_ENDPOINT: s.s3Endpoint, REFINERY_S3_ACCESS_KEY: s.accessKey, REFINERY_S3_SECRET_KEY: s.secretKey, REFINERY_BUCKET: s.bucket };
    const cli = path.join(REPO_ROOT, 'bin', 'refinery');
    const ok = await execa(cli, ['audit', 'verify', runId, '--prefix', PREFIX], { env, reject: false });
    expect(ok.exitCode).toBe(0);
    expect(ok.stdout).toMatch(/^OK: run /m);

    await tamper(auditKey(runKey, 2), null);
    const bad = await execa(cli, ['audit', 'verify', runId, '--prefix', PREFIX], { env, reject: false });
    expect(bad.exitCode).toBe(1);
    expect(bad.stdout).toContain('problem: event 2: found seq 3 (an event is missing or out of order)');
    expect(bad.stdout).toMatch(/^FAILED: run .* problems$/m);

    const missing = await execa(cli, ['audit', 'verify', 'no-such-run', '--prefix', PREFIX], { env, reject: false });
    expect(missing.exitCode).toBe(4); // not found
    expect(missing.stderr.split('\n')[0]).toBe(`error: no run "no-such-run" under s3://${s.bucket}/${PREFIX}/runs/`);
  });
});

describe('refinery logs', () => {
  it('prints the stored job output by stage and attempt, and filters', async () => {
    const chunks: LogChunk[] = [];
    const all = await streamLogs({ runId, prefix: PREFIX, store, onChunk: (c) => chunks.push(c) });
    expect(all.files.map((f) => `${f.stage}#${f.attempt}`)).toEqual(['sft#1', 'merge#1']);
    expect(chunks.every((c) => c.first)).toBe(true);
    const events: LogChunk[] = [];
    await streamLogs({ runId, prefix: PREFIX, store, stage: 'sft', events: true, onChunk: (c) => events.push(c) });
    expect(events).toHaveLength(1);
    const lines = events[0]!.text.trim().split('\n').map((l) => JSON.parse(l) as { event: string; attempt: number; at: string });
    expect(lines.map((l) => l.event)).toContain('progress');
    expect(lines.every((l) => l.attempt === 1 && typeof l.at === 'string')).toBe(true);
    await expect(streamLogs({ runId, prefix: PREFIX, store, stage: 'nope' })).rejects.toThrow(/has no stage "nope"/);
    await expect(streamLogs({ runId, prefix: PREFIX, store, attempt: 0 })).rejects.toThrow(/not an attempt number/);
  });

  it('follows a running run until its status.json appears', async () => {
    const { file } = await writeTestSpec({
      name: 'logs-follow-test',
      storage: { prefix: PREFIX },
      stages: [
        { id: 'a', kind: 'sft', dataset: 'chats', hyper: { max_steps: 10 }, job_params: { step_seconds: 0.1 } },
        { id: 'b', kind: 'merge', from: 'a', job_params: { step_seconds: 0.05 } },
      ],
    });
    const { runId: id, handle } = await startRun(client, file, { id: `logs-follow-${Date.now()}` });
    const chunks: LogChunk[] = [];
    const followed = await streamLogs({ runId: id, prefix: PREFIX, store, follow: true, pollMs: 200, onChunk: (c) => chunks.push(c) });
    await handle.result();
    expect(followed.finished).toBe(true);
    expect(chunks.filter((c) => c.first).map((c) => c.stage)).toEqual(['a', 'b']);
  });
});
