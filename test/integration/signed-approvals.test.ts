/**
 * Signed approvals on the real stack (docs/security.md, "Signed approvals"): the control worker
 * runs with an approvers file; a stage at its approval gate refuses an unsigned decision, one
 * signed by an unlisted key, one whose reason was changed after signing, and one from a key listed
 * for another pipeline — each with its reason, recording nothing — then accepts a valid signed one
 * (and of two racing, only one). The trail's `approval` event carries the signature, `audit
 * verify` checks it, and reports an edited event.
 */
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { showAudit, verifyRun } from '../../client/commands/audit.js';
import { decideApproval, runStatus } from '../../client/commands/manage.js';
import { startRun } from '../../client/commands/run.js';
import { generateKeyFiles, readSigningKey, signDecision, type GeneratedKey } from '../../client/commands/signing.js';
import { auditKey, makeRecord, type AuditRecord } from '../../storage/audit-chain.js';
import { signApproval } from '../../storage/approval-signature.js';
import type { ObjectStore } from '../../storage/object-store.js';
import type { PipelineResult } from '../../workflows/types.js';
import { startTestWorkers, testClient, testJobCommand, testStore, useTestStackEnv, workflowBundle, type TestWorkers } from '../helpers/env.js';
import { historyText } from '../helpers/history-text.js';
import { until } from '../helpers/processes.js';
import { writeTestSpec } from '../helpers/specs.js';

const PREFIX = 'it-signed-approvals';
const PIPELINE = 'signed-approvals-test';

let workers: TestWorkers;
let client: Client;
let closeClient: () => Promise<void>;
let store: ObjectStore;
let approversFile: string;
let alice: GeneratedKey;
let mallory: GeneratedKey;
let stranger: GeneratedKey;

beforeAll(async () => {
  useTestStackEnv();
  store = testStore();
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-approvers-'));
  const key = (name: string) => generateKeyFiles(path.join(dir, name), { comment: name });
  [alice, mallory, stranger] = await Promise.all([key('alice'), key('mallory'), key('stranger')]);
  approversFile = path.join(dir, 'approvers.json');
  const approvers = [
    { name: 'alice', publicKey: alice.sshLine, pipelines: [PIPELINE], stages: ['*'] },
    // A PEM key, listed for another pipeline only.
    { name: 'mallory', publicKey: await readFile(mallory.publicKeyFile, 'utf8'), pipelines: ['other-pipeline'], stages: ['*'] },
  ];
  await writeFile(approversFile, JSON.stringify({ approvers }, null, 2));
  workers = await startTestWorkers({ jobCommand: testJobCommand(), approversFile });
  ({ client, close: closeClient } = await testClient());
});
afterAll(async () => {
  await closeClient?.();
  await workers?.shutdown();
});

async function startGatedRun(id: string) {
  const { file } = await writeTestSpec({
    name: PIPELINE,
    storage: { prefix: PREFIX },
    stages: [
      { id: 'sft', kind: 'sft', dataset: 'chats', hyper: { max_steps: 2 }, job_params: { step_seconds: 0.01 }, gate: { approval: { timeout: '10m' } } },
      { id: 'merge', kind: 'merge', from: 'sft', job_params: { step_seconds: 0.01 } },
    ],
  });
  const started = await startRun(client, file, { id: `${id}-${Date.now()}`, by: 'tester' });
  await until('sft to await approval', async () => (await runStatus(client, started.runId)).stages[0]!.state === 'awaiting-approval', 120_000, 200);
  return started;
}

/** The run's history (refused updates, verification activities and all) replays on today's code. */
async function expectReplays(handle: WorkflowHandle): Promise<void> {
  await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, await handle.fetchHistory(), handle.workflowId);
}

const approvalEvents = async (runId: string): Promise<AuditRecord[]> => (await showAudit({ runId, prefix: PREFIX, store })).events.filter((r) => r.event.type === 'approval');

describe('signed approvals', () => {
  it('refuses unsigned, wrongly signed and out-of-scope decisions, accepts a signed one, and audit verify checks it', async () => {
    const { runId, handle } = await startGatedRun('signed');
    const decision = { stageId: 'sft', approved: true, by: 'alice', reason: 'eval looks good' };

    await expect(decideApproval(client, runId, decision)).rejects.toThrow(/^cannot approve: this run's workers accept signed approvals only/);
    await expect(decideApproval(client, runId, await signDecision(stranger.privateKeyFile, runId, { ...decision, by: 'stranger' }))).rejects.toThrow(
      new RegExp(`^cannot approve: key ${stranger.fingerprint.slice(0, 16)} is not an approver's`),
    );
    const tampered = { ...(await signDecision(alice.privateKeyFile, runId, decision)), reason: 'ship it, whatever the eval says' };
    await expect(decideApproval(client, runId, tampered)).rejects.toThrow(/^cannot approve: the signature does not verify with key/);
    await expect(decideApproval(client, runId, await signDecision(mallory.privateKeyFile, runId, { ...decision, by: 'mallory' }))).rejects.toThrow(
      /^cannot approve: approver "mallory" may not decide for pipeline "signed-approvals-test" \(listed for: other-pipeline\)/,
    );
    // A decision signed for another run does not carry over.
    await expect(decideApproval(client, runId, await signDecision(alice.privateKeyFile, 'another-run', decision))).rejects.toThrow(/does not verify/);
    const old = signApproval(await readSigningKey(alice.privateKeyFile), runId, decision, new Date(Date.now() - 11 * 60_000));
    await expect(decideApproval(client, runId, old)).rejects.toThrow(/an old decision is refused/);

    // Nothing of that counted: the stage still waits, and the trail has no approval.
    expect((await runStatus(client, runId)).stages[0]!.state).toBe('awaiting-approval');
    expect(await approvalEvents(runId)).toEqual([]);

    const signed = await signDecision(alice.privateKeyFile, runId, decision);
    expect(await decideApproval(client, runId, signed)).toBe(`approved sft (signed with key ${alice.fingerprint.slice(0, 16)}, approver alice)`);
    const result = (await handle.result()) as PipelineResult;
    expect(result.status.state).toBe('completed');
    expect(result.status.stages[0]!.gate).toBe('approved by alice: eval looks good');

    const [approval, ...more] = await approvalEvents(runId);
    expect(more).toEqual([]);
    expect(approval!.event).toMatchObject({
      stage: 'sft',
      approved: true,
      by: 'alice',
      reason: 'eval looks good',
      signed: true,
      approver: 'alice',
      keyFingerprint: alice.fingerprint,
      publicKey: signed.signed!.publicKey,
      signature: signed.signed!.signature,
      signedAt: signed.signed!.at,
      nonce: signed.signed!.nonce,
    });

    // Only public data went through Temporal: the private key is nowhere in the run's history.
    const privateKeyBody = (await readFile(alice.privateKeyFile, 'utf8')).split('\n')[1]!;
    const text = historyText(await handle.fetchHistory());
    expect(text).toContain(signed.signed!.signature); // the decoded history does hold the decision
    expect(text).not.toContain(privateKeyBody);
    await expectReplays(handle);

    const withApprovers = { ...process.env, REFINERY_APPROVERS: approversFile };
    const verified = await verifyRun({ runId, prefix: PREFIX, store, env: withApprovers });
    expect(verified.problems).toEqual([]);
    expect(verified.checked.signedApprovals).toBe(1);
    expect(verified.verdict).toMatch(/1 approval signature verified \(keys listed in /);

    // Verify with a list that lacks alice's key: reported.
    const othersOnly = path.join(path.dirname(approversFile), 'others.json');
    await writeFile(othersOnly, JSON.stringify({ approvers: [{ name: 'stranger', publicKey: stranger.sshLine, pipelines: ['*'], stages: ['*'] }] }));
    const unlisted = await verifyRun({ runId, prefix: PREFIX, store, env: { ...process.env, REFINERY_APPROVERS: othersOnly } });
    expect(unlisted.problems).toEqual([expect.stringMatching(new RegExp(`approval of stage sft by "alice"\\): key ${alice.fingerprint.slice(0, 16)} is not listed in .*others\\.json$`))]);

    // The stored event edited (its own hash recomputed, so only the signature can tell): verify reports it.
    const key = auditKey(`${PREFIX}/runs/${runId}`, approval!.seq);
    const original = await store.getBytes(key);
    const edited = makeRecord(approval!.seq, approval!.prevHash, { ...approval!.event, reason: 'edited afterwards', by: 'alice' });
    await store.putBytes(key, Buffer.from(JSON.stringify(edited)));
    try {
      const tamperedRun = await verifyRun({ runId, prefix: PREFIX, store, env: withApprovers });
      expect(tamperedRun.ok).toBe(false);
      expect(tamperedRun.problems).toContainEqual(expect.stringMatching(new RegExp(`^event ${approval!.seq} \\(approval of stage sft by "alice"\\): the signature does not verify`)));
    } finally {
      await store.putBytes(key, original!);
    }
    expect((await verifyRun({ runId, prefix: PREFIX, store, env: withApprovers })).problems).toEqual([]);
  });

  it('of two signed decisions racing, only the first verified counts', async () => {
    const { runId, handle } = await startGatedRun('race');
    const [a, b] = await Promise.all(['first', 'second'].map((reason) => signDecision(alice.privateKeyFile, runId, { stageId: 'sft', approved: true, by: 'alice', reason })));
    const outcomes = await Promise.allSettled([decideApproval(client, runId, a!), decideApproval(client, runId, b!)]);
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
    const refused = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    expect(String(refused?.reason)).toMatch(/already approved by alice|not awaiting approval/);
    expect(((await handle.result()) as PipelineResult).status.state).toBe('completed');
    expect(await approvalEvents(runId)).toHaveLength(1);
    await expectReplays(handle);
  });
});
