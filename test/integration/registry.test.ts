/**
 * The model registry (storage/registry.ts) against real MinIO: promotions and rollbacks move an
 * alias along its history (`previous` is a rollback away, repeated rollbacks go further back);
 * only committed outputs can be promoted; racing writers both land, in one verifying chain; a
 * modified record is detected and nothing more is written onto it; an alias whose target is no
 * longer committed is reported; signed changes verify, and with an approvers file an unsigned, unlisted,
 * misattributed or edited change is a problem. Promotion of real runs' stages: test/integration/toolchain-keys.test.ts.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { commitDirectory } from '../../storage/commit.js';
import type { ObjectStore } from '../../storage/object-store.js';
import { parseApprovers } from '../../config/approvers.js';
import { makeRecord } from '../../storage/audit-chain.js';
import { generateSigningKeyPair, parsePrivateKey } from '../../storage/approval-signature.js';
import { registrySigner } from '../../storage/registry-signature.js';
import { aliasStates, promote, readRegistryLog, RegistryError, rollback, verifyRegistry, type RegistryRecord, type RegistryTarget } from '../../storage/registry.js';
import { testStore } from '../helpers/env.js';

let store: ObjectStore;
const prefix = `it-registry-${Date.now().toString(36)}`;

/** A committed stage output of its own content. */
async function output(name: string): Promise<RegistryTarget> {
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-registry-'));
  await writeFile(path.join(dir, 'model.safetensors'), `weights of ${name}`);
  const committed = await commitDirectory(store, dir, `${prefix}/artifacts/merge-${name}/output`);
  return { uri: committed.uri, prefix: committed.prefix, manifestSha256: committed.manifestSha256, runId: `run-${name}`, stage: 'merge' };
}

beforeAll(() => {
  store = testStore();
});

describe('model registry', () => {
  it('promote, promote, rollback, rollback: the alias walks its history; previous is a rollback away', async () => {
    const [a, b, c] = await Promise.all([output('a'), output('b'), output('c')]);
    const by = 'alice';
    await promote(store, prefix, { model: 'chat', alias: 'production', target: a, by, reason: 'first model' });
    await promote(store, prefix, { model: 'chat', alias: 'production', target: b, by, reason: 'night 2 wins 0.61' });
    await promote(store, prefix, { model: 'chat', alias: 'production', target: c, by, reason: 'night 3 wins 0.58' });
    let state = aliasStates(await readRegistryLog(store, prefix, 'chat')).get('production')!;
    expect([state.current?.runId, state.previous?.runId]).toEqual(['run-c', 'run-b']);
    await expect(promote(store, prefix, { model: 'chat', alias: 'production', target: c, by, reason: 'again' })).rejects.toThrow(/already points at/);

    const back = await rollback(store, prefix, { model: 'chat', alias: 'production', by: 'bob', reason: 'night 3 regresses on safety' });
    expect([back.event.target?.runId, back.event.replaced?.runId]).toEqual(['run-b', 'run-c']);
    await rollback(store, prefix, { model: 'chat', alias: 'production', by: 'bob', reason: 'b too' });
    state = aliasStates(await readRegistryLog(store, prefix, 'chat')).get('production')!;
    expect([state.current?.runId, state.previous, state.since?.by]).toEqual(['run-a', null, 'bob']);
    await expect(rollback(store, prefix, { model: 'chat', alias: 'production', by: 'bob', reason: 'and a?' })).rejects.toThrow(/no earlier target/);

    // Every change is a record: who, why, what it replaced.
    const log = await readRegistryLog(store, prefix, 'chat');
    expect(log.map((r) => [r.event.type, r.event.target?.runId, r.event.by])).toEqual([
      ['alias-promoted', 'run-a', 'alice'],
      ['alias-promoted', 'run-b', 'alice'],
      ['alias-promoted', 'run-c', 'alice'],
      ['alias-rolled-back', 'run-b', 'bob'],
      ['alias-rolled-back', 'run-a', 'bob'],
    ]);
    expect(await verifyRegistry(store, prefix, 'chat')).toEqual([]);
  });

  it('signed promotions and rollbacks: verified from the record alone; the approvers file makes unsigned, unlisted, misattributed and edited changes problems', async () => {
    const [a, b] = await Promise.all([output('sa'), output('sb')]);
    const alice = generateSigningKeyPair();
    const mallory = generateSigningKeyPair();
    const approvers = parseApprovers(JSON.stringify({ approvers: [{ name: 'alice', publicKey: alice.publicKeyPem, pipelines: ['signed-chat'], stages: ['*'] }] }), '/etc/refinery/approvers.json');
    const sign = registrySigner(parsePrivateKey(alice.privateKeyPem));
    const model = 'signed-chat';
    await promote(store, prefix, { model, alias: 'production', target: a, by: 'alice', reason: 'night 1', signer: sign });
    await promote(store, prefix, { model, alias: 'production', target: b, by: 'alice', reason: 'night 2', signer: sign });
    await rollback(store, prefix, { model, alias: 'production', by: 'alice', reason: 'night 2 regresses', signer: sign });
    const log = await readRegistryLog(store, prefix, model);
    expect(log.every((r) => r.event.signed?.signature)).toBe(true);
    expect(await verifyRegistry(store, prefix, model)).toEqual([]);
    expect(await verifyRegistry(store, prefix, model, approvers)).toEqual([]);

    // Unsigned, signed by an unlisted key, signed by alice's key in bob's name: each a problem under the approvers file.
    await promote(store, prefix, { model, alias: 'candidate', target: b, by: 'alice', reason: 'unsigned' });
    await promote(store, prefix, { model, alias: 'candidate', target: a, by: 'mallory', reason: 'not listed', signer: registrySigner(parsePrivateKey(mallory.privateKeyPem)) });
    await promote(store, prefix, { model, alias: 'candidate', target: b, by: 'bob', reason: 'in bob\'s name', signer: sign });
    expect(await verifyRegistry(store, prefix, model)).toEqual([]); // each signature holds on its own
    expect(await verifyRegistry(store, prefix, model, approvers)).toEqual([
      'record 4 (alias-promoted candidate by alice): not signed, and the approvers file requires signed changes',
      expect.stringMatching(/^record 5 \(alias-promoted candidate by mallory\): signed with key [0-9a-f]{16}, which the approvers file does not list$/),
      "record 6 (alias-promoted candidate by bob): signed by alice's key, but the record says by bob",
    ]);
    // Another model: outside alice's scope.
    await promote(store, prefix, { model: 'other-chat', alias: 'production', target: a, by: 'alice', reason: 'scope', signer: sign });
    expect(await verifyRegistry(store, prefix, 'other-chat', approvers)).toEqual(['record 1 (alias-promoted production by alice): alice may not approve changes of other-chat']);

    // A signed record edited (its reason), its hash chain rewritten to match: the signature still catches it.
    const key = `${prefix}/registry/${model}/log/000001.json`;
    const record = (await store.getJson<RegistryRecord>(key))!;
    const forged = makeRecord(record.seq, record.prevHash, { ...record.event, reason: 'edited later' });
    await store.putJson(key, forged);
    const problems = await verifyRegistry(store, prefix, model);
    expect(problems.some((p) => p.startsWith('record 1 (alias-promoted production by alice): the signature does not verify'))).toBe(true);
  });

  it('refuses what is not committed, a bad name, a missing reason', async () => {
    const a = await output('nc');
    await expect(promote(store, prefix, { model: 'chat-nc', alias: 'production', target: { ...a, manifestSha256: 'f'.repeat(64) }, by: 'x', reason: 'r' })).rejects.toThrow(/not committed/);
    await store.remove([`${a.prefix}/_COMMITTED`]);
    await expect(promote(store, prefix, { model: 'chat-nc', alias: 'production', target: a, by: 'x', reason: 'r' })).rejects.toThrow(/not committed/);
    await expect(promote(store, prefix, { model: 'chat-nc', alias: 'Prod!', target: a, by: 'x', reason: 'r' })).rejects.toBeInstanceOf(RegistryError);
    await expect(promote(store, prefix, { model: 'chat-nc', alias: 'production', target: a, by: 'x', reason: ' ' })).rejects.toThrow(/--reason/);
    expect(await readRegistryLog(store, prefix, 'chat-nc')).toEqual([]);
  });

  it('racing promotions both land in one chain', async () => {
    const targets = await Promise.all(['r1', 'r2', 'r3', 'r4'].map(output));
    await Promise.all(targets.map((t, i) => promote(store, prefix, { model: 'chat-race', alias: i % 2 ? 'candidate' : 'production', target: t, by: `w${i}`, reason: 'race' })));
    const log = await readRegistryLog(store, prefix, 'chat-race');
    expect(log.map((r) => r.seq)).toEqual([1, 2, 3, 4]);
    expect(new Set(log.map((r) => r.event.target?.runId))).toEqual(new Set(['run-r1', 'run-r2', 'run-r3', 'run-r4']));
    expect(await verifyRegistry(store, prefix, 'chat-race')).toEqual([]);
  });

  it('a modified record is detected and nothing is written onto it; a target no longer committed is reported', async () => {
    const [a, b] = await Promise.all([output('t1'), output('t2')]);
    await promote(store, prefix, { model: 'chat-tamper', alias: 'production', target: a, by: 'alice', reason: 'ok' });
    await promote(store, prefix, { model: 'chat-tamper', alias: 'production', target: b, by: 'alice', reason: 'ok' });
    const key = `${prefix}/registry/chat-tamper/log/000001.json`;
    const first = (await store.getJson<{ event: { by: string } }>(key))!;
    first.event.by = 'mallory';
    await store.putJson(key, first);
    expect((await verifyRegistry(store, prefix, 'chat-tamper')).join('\n')).toMatch(/event 1: content does not match its hash/);
    await expect(rollback(store, prefix, { model: 'chat-tamper', alias: 'production', by: 'x', reason: 'r' })).rejects.toThrow(/does not verify/);

    const c = await output('t3');
    await promote(store, prefix, { model: 'chat-gone', alias: 'production', target: c, by: 'alice', reason: 'ok' });
    await store.remove([`${c.prefix}/_COMMITTED`]);
    expect((await verifyRegistry(store, prefix, 'chat-gone')).join('\n')).toMatch(/chat-gone@production points at .* no longer committed/);
  });
});
