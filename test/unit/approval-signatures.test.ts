/**
 * Signed approvals without a stack: what is signed (canonical JSON), keys in PEM and OpenSSH form,
 * the approvers file (errors name the file and the field), the worker's checks (activities/approvals.ts)
 * and `audit verify`'s (client/audit/approvals.ts), and the key files `refinery keygen` writes.
 */
import { chmod, mkdtemp, readFile, stat } from 'node:fs/promises';
import { generateKeyPairSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkApproval, ApprovalRefused } from '../../activities/approvals.js';
import { checkApprovalEvents } from '../../client/audit/approvals.js';
import { generateKeyFiles, readSigningKey } from '../../client/commands/signing.js';
import { parseApprovers, type Approvers } from '../../config/approvers.js';
import { makeRecord, type AuditRecord } from '../../storage/audit-chain.js';
import {
  approvalPayload,
  generateSigningKeyPair,
  keyFingerprint,
  parsePrivateKey,
  parsePublicKey,
  publicKeyBytes,
  signApproval,
  signatureProblem,
  sshPublicKeyLine,
} from '../../storage/approval-signature.js';
import type { ApprovalDecision } from '../../workflows/types.js';

const RUN = 'run-1';
const NOW = Date.parse('2026-12-01T12:00:00.000Z');
const alice = generateSigningKeyPair();
const mallory = generateSigningKeyPair();
const alicePrivate = parsePrivateKey(alice.privateKeyPem);
const malloryPrivate = parsePrivateKey(mallory.privateKeyPem);

function approvers(entries: { name: string; publicKey: string; pipelines?: string[]; stages?: string[] }[], extra: Record<string, unknown> = {}): Approvers {
  const json = { approvers: entries.map((e) => ({ pipelines: ['*'], stages: ['*'], ...e })), ...extra };
  return parseApprovers(JSON.stringify(json), '/etc/refinery/approvers.json');
}

const base = { stageId: 'gguf', approved: true, by: 'alice', reason: 'eval looks good' };
const signedByAlice = (over: Partial<typeof base> = {}, at = new Date(NOW - 1000)) => signApproval(alicePrivate, RUN, { ...base, ...over }, at);
const check = (decision: ApprovalDecision, list: Approvers | undefined, pipeline = 'demo', now = NOW) => checkApproval({ runId: RUN, pipeline, decision }, list, now);
const refusal = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ApprovalRefused);
    return (err as Error).message;
  }
  throw new Error('not refused');
};

describe('what is signed', () => {
  it('is the canonical JSON of the decision, its run, time and nonce, with a purpose', () => {
    const bytes = approvalPayload({ runId: 'r', stageId: 's', approved: false, by: 'b', reason: 'why "not"', at: '2026-12-01T00:00:00.000Z', nonce: 'n' });
    expect(bytes.toString('utf8')).toBe('{"approved":false,"at":"2026-12-01T00:00:00.000Z","by":"b","nonce":"n","purpose":"refinery-approval-v1","reason":"why \\"not\\"","runId":"r","stageId":"s"}');
  });

  it('signs a decision that verifies, and carries only public data', () => {
    const d = signedByAlice();
    expect(d).toMatchObject(base);
    expect(d.signed).toMatchObject({ at: new Date(NOW - 1000).toISOString(), keyFingerprint: keyFingerprint(alice.publicKey), publicKey: publicKeyBytes(alice.publicKey).toString('base64') });
    expect(JSON.stringify(d)).not.toContain(alice.privateKeyPem.split('\n')[1]!);
    expect(signatureProblem({ runId: RUN, ...base, at: d.signed!.at, nonce: d.signed!.nonce }, d.signed!)).toBeUndefined();
    // Two signatures of the same decision differ (the nonce).
    expect(signedByAlice().signed!.nonce).not.toBe(d.signed!.nonce);
  });

  it('fails for any changed field, another run, another key, or a fingerprint of another key', () => {
    const d = signedByAlice();
    const fields = { runId: RUN, ...base, at: d.signed!.at, nonce: d.signed!.nonce };
    for (const changed of [{ reason: 'x' }, { by: 'bob' }, { approved: false }, { stageId: 'sft' }, { runId: 'run-2' }, { at: new Date(NOW).toISOString() }, { nonce: 'other' }]) {
      expect(signatureProblem({ ...fields, ...changed }, d.signed!)).toMatch(/does not verify/);
    }
    const otherKey = publicKeyBytes(mallory.publicKey);
    expect(signatureProblem(fields, { ...d.signed!, publicKey: otherKey.toString('base64'), keyFingerprint: keyFingerprint(otherKey) })).toMatch(/does not verify/);
    expect(signatureProblem(fields, { ...d.signed!, keyFingerprint: keyFingerprint(otherKey) })).toMatch(/not the fingerprint of its public key/);
    expect(signatureProblem(fields, { ...d.signed!, signature: 'AAAA' })).toMatch(/does not verify/);
    expect(signatureProblem(fields, { ...d.signed!, publicKey: 'AAAA' })).toMatch(/unusable: an Ed25519 public key is 32 bytes, not 3/);
  });
});

describe('keys', () => {
  it('reads PEM and OpenSSH public keys as the same key, fingerprinted by sha256 of the raw bytes', () => {
    // Made by ssh-keygen -t ed25519; the fingerprint is sha256 of the 32 key bytes (not OpenSSH's own).
    const line = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM1hEPya49a51J/R3nUaloUWe/OoB1NuIK+5umUXbpUp bob';
    const fromSsh = parsePublicKey(line);
    expect(keyFingerprint(fromSsh)).toBe('d3ad8986f2f1fba8c441c60d43f9518c75b4e1e986f6ac0284c2f374daa683d2');
    expect(sshPublicKeyLine(fromSsh, 'bob')).toBe(line);
    const pem = fromSsh.export({ type: 'spki', format: 'pem' }).toString();
    expect(keyFingerprint(parsePublicKey(pem))).toBe(keyFingerprint(fromSsh));
    expect(keyFingerprint(parsePublicKey(sshPublicKeyLine(alice.publicKey)))).toBe(keyFingerprint(parsePublicKey(alice.publicKeyPem)));
  });

  it('refuses other key types and malformed keys, saying what it expects', () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
    expect(() => parsePublicKey(rsa)).toThrow(/an rsa key, not ed25519/);
    expect(() => parsePublicKey('ssh-ed25519 AAAAB3NzaC1yc2E=')).toThrow(/not a well-formed OpenSSH ssh-ed25519 public key/);
    expect(() => parsePublicKey('hello')).toThrow(/expected a PEM public key .* or an OpenSSH "ssh-ed25519 AAAA…" line/);
    expect(() => parsePrivateKey(alice.publicKeyPem)).toThrow(/not a readable PEM private key/);
  });
});

describe('the approvers file', () => {
  const file = '/etc/refinery/approvers.json';
  const parse = (json: unknown) => () => parseApprovers(typeof json === 'string' ? json : JSON.stringify(json), file);
  const entry = { name: 'alice', publicKey: sshPublicKeyLine(alice.publicKey), pipelines: ['demo'], stages: ['*'] };

  it('lists each approver with the fingerprint of their key (PEM or OpenSSH) and a replay window', () => {
    const a = parseApprovers(JSON.stringify({ approvers: [entry, { name: 'mallory', publicKey: mallory.publicKeyPem, pipelines: ['*'], stages: ['gguf'] }], maxAge: '5m' }), file);
    expect(a.maxAgeMs).toBe(300_000);
    expect(a.approvers.map((x) => [x.name, x.fingerprint])).toEqual([
      ['alice', keyFingerprint(alice.publicKey)],
      ['mallory', keyFingerprint(mallory.publicKey)],
    ]);
    expect(parseApprovers(JSON.stringify({ approvers: [entry] }), file).maxAgeMs).toBe(600_000);
  });

  it('names the file and the field of what is wrong', () => {
    expect(parse('{')).toThrow(/^approvers file \/etc\/refinery\/approvers.json: not JSON/);
    expect(parse({})).toThrow(/approvers.json: approvers: /);
    expect(parse({ approvers: [] })).toThrow(/approvers.json: approvers: list at least one approver/);
    expect(parse({ approvers: [{ ...entry, name: ' ' }] })).toThrow(/approvers\[0\]\.name: an approver needs a name/);
    expect(parse({ approvers: [entry, { ...entry, name: 'bob', publicKey: 'ssh-rsa AAAA' }] })).toThrow(/approvers\[1\]\.publicKey: expected a PEM public key/);
    expect(parse({ approvers: [{ ...entry, pipelines: [] }] })).toThrow(/approvers\[0\]\.pipelines: list at least one name, or "\*" for all/);
    expect(parse({ approvers: [{ name: 'alice', publicKey: entry.publicKey, pipelines: ['*'] }] })).toThrow(/approvers\[0\]\.stages: /);
    expect(parse({ approvers: [{ ...entry, role: 'admin' }] })).toThrow(/approvers\[0\]: .*role/);
    expect(parse({ approvers: [entry], maxAge: 'ten minutes' })).toThrow(/maxAge: invalid duration "ten minutes"/);
    expect(parse({ approvers: [entry, { ...entry, name: 'bob' }] })).toThrow(/approvers\[1\]\.publicKey: the same key as alice's: one key per approver/);
  });
});

describe('the worker checks a decision before it counts (verifyApproval)', () => {
  const list = approvers([
    { name: 'alice', publicKey: sshPublicKeyLine(alice.publicKey), pipelines: ['demo'], stages: ['*'] },
    { name: 'mallory', publicKey: mallory.publicKeyPem, pipelines: ['other'], stages: ['*'] },
  ]);

  it('accepts anything unsigned without an approvers file, recording it as unsigned', () => {
    expect(check(base, undefined)).toEqual({ signed: false });
  });

  it('accepts a valid signature from a listed key, recording key, signature and approver', () => {
    const d = signedByAlice();
    expect(check(d, list)).toEqual({ signed: true, keyFingerprint: d.signed!.keyFingerprint, publicKey: d.signed!.publicKey, signature: d.signed!.signature, signedAt: d.signed!.at, nonce: d.signed!.nonce, approver: 'alice' });
    // Without a list the signature still has to hold; nobody vouches for the name.
    expect(check(d, undefined)).toMatchObject({ signed: true, approver: null });
    expect(refusal(() => check({ ...d, reason: 'changed' }, undefined))).toMatch(/does not verify/);
  });

  it('refuses unsigned, tampered, unlisted, misnamed, out-of-scope, old and future decisions', () => {
    expect(refusal(() => check(base, list))).toMatch(/accept signed approvals only .* --key FILE or REFINERY_SIGNING_KEY/);
    expect(refusal(() => check({ ...signedByAlice(), reason: 'something else' }, list))).toMatch(/the signature does not verify with key [0-9a-f]{16}/);
    const stranger = parsePrivateKey(generateSigningKeyPair().privateKeyPem);
    expect(refusal(() => check(signApproval(stranger, RUN, base, new Date(NOW)), list))).toMatch(/key [0-9a-f]{16} is not an approver's/);
    expect(refusal(() => check(signApproval(alicePrivate, RUN, { ...base, by: 'bob' }, new Date(NOW)), list))).toBe(`--by "bob", but key ${keyFingerprint(alice.publicKey).slice(0, 16)} is approver "alice"'s`);
    expect(refusal(() => check(signApproval(malloryPrivate, RUN, { ...base, by: 'mallory' }, new Date(NOW)), list))).toBe('approver "mallory" may not decide for pipeline "demo" (listed for: other)');
    const stagesOnly = approvers([{ name: 'alice', publicKey: alice.publicKeyPem, stages: ['merge'] }]);
    expect(refusal(() => check(signedByAlice(), stagesOnly))).toBe('approver "alice" may not decide stage "gguf" (listed for: merge)');
    expect(refusal(() => check(signedByAlice({}, new Date(NOW - 11 * 60_000)), list))).toMatch(/more than 600 s ago: an old decision is refused \(a replay\?\)/);
    expect(refusal(() => check(signedByAlice({}, new Date(NOW + 5 * 60_000)), list))).toMatch(/ahead of the worker's clock/);
    expect(refusal(() => check({ ...signedByAlice(), signed: { ...signedByAlice().signed!, nonce: '' } }, list))).toMatch(/lacks nonce/);
  });
});

describe('audit verify re-checks the approvals in the trail', () => {
  const trail = (approval: Record<string, unknown>): AuditRecord[] => [
    makeRecord(1, null, { type: 'run-started', at: '2026-12-01T11:00:00.000Z', pipeline: 'demo' }),
    makeRecord(2, 'x', { type: 'approval', at: '2026-12-01T12:00:00.000Z', ...approval }),
  ];
  const signedEvent = () => {
    const d = signedByAlice();
    return { stage: d.stageId, approved: d.approved, by: d.by, reason: d.reason, ...check(d, undefined) };
  };

  it('passes a signed event, with or without the approvers list', () => {
    const records = trail(signedEvent());
    expect(checkApprovalEvents(RUN, records, undefined)).toEqual({ problems: [], warnings: [], signed: 1 });
    expect(checkApprovalEvents(RUN, records, approvers([{ name: 'alice', publicKey: alice.publicKeyPem }]))).toEqual({ problems: [], warnings: [], signed: 1 });
  });

  it('reports an event whose reason, name or approver was changed, and a key the list does not have', () => {
    expect(checkApprovalEvents(RUN, trail({ ...signedEvent(), reason: 'edited' }), undefined).problems).toEqual([
      expect.stringMatching(/^event 2 \(approval of stage gguf by "alice"\): the signature does not verify/),
    ]);
    expect(checkApprovalEvents(RUN, trail({ ...signedEvent(), by: 'bob', approver: 'bob' }), undefined).problems).toEqual([expect.stringMatching(/by "bob"\): the signature does not verify/)]);
    expect(checkApprovalEvents(RUN, trail({ ...signedEvent(), approver: 'root' }), undefined).problems).toEqual([expect.stringMatching(/records approver "root", not the signed name/)]);
    expect(checkApprovalEvents('run-2', trail(signedEvent()), undefined).problems).toHaveLength(1);
    const others = approvers([{ name: 'mallory', publicKey: mallory.publicKeyPem }]);
    expect(checkApprovalEvents(RUN, trail(signedEvent()), others).problems).toEqual([expect.stringMatching(/key [0-9a-f]{16} is not listed in \/etc\/refinery\/approvers.json$/)]);
  });

  it('warns about unsigned approvals only when an approvers list is given', () => {
    const unsigned = trail({ stage: 'gguf', approved: true, by: 'alice', reason: 'ok', signed: false });
    expect(checkApprovalEvents(RUN, unsigned, undefined)).toEqual({ problems: [], warnings: [], signed: 0 });
    expect(checkApprovalEvents(RUN, unsigned, approvers([{ name: 'alice', publicKey: alice.publicKeyPem }])).warnings).toEqual([expect.stringMatching(/not signed \(its workers had no approvers file/)]);
  });
});

describe('refinery keygen', () => {
  it('writes the private key for its owner only, and refuses a key others can read', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'refinery-keygen-'));
    const out = path.join(dir, 'alice');
    const key = await generateKeyFiles(out, { comment: 'alice' });
    expect((await stat(out)).mode & 0o777).toBe(0o600);
    expect(key.sshLine).toMatch(/^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI\S+ alice$/);
    expect(keyFingerprint(await readSigningKey(out))).toBe(key.fingerprint);
    expect(keyFingerprint(parsePublicKey(await readFile(key.publicKeyFile, 'utf8')))).toBe(key.fingerprint);
    await expect(generateKeyFiles(out)).rejects.toThrow(/exists/);
    await chmod(out, 0o644);
    await expect(readSigningKey(out)).rejects.toThrow(/can be read by others \(mode 644\)/);
  });
});
