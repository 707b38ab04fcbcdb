/**
 * The model registry: per model name, aliases (`production`, `candidate`, any name of the same
 * shape) that point at committed stage outputs, kept as a hash-chained log in the bucket — every
 * promotion and rollback is a record of who, why, when, from which run and stage, and what it
 * replaced; a modified, removed or reordered record is detected (storage/audit-chain.ts), and with
 * an audit bucket each record has a write-once copy there too (docs/security.md).
 *
 *   <prefix>/registry/<name>/log/000001.json   { seq, prevHash, event: RegistryEvent, hash }
 *
 * An alias's state is its log replayed: a promotion pushes a target, a rollback pops one, so
 * `previous` is the target under the current one and repeated rollbacks go further back. Writers
 * race on the next record's key (If-None-Match): one wins, the other reads the log again.
 */
import { ALIAS_NAME, isModelName } from '../spec/model-name.js';
import { makeRecord, verifyChain, type AuditRecord } from './audit-chain.js';
import { readCommitted } from './commit.js';
import { segment } from './layout.js';
import { registrySignatureProblem, type SignedRegistryFields } from './registry-signature.js';
import type { ApprovalSignature } from '../workflows/types.js';
import { inScope, type Approvers } from '../config/approvers.js';
import { jsonBytes, type ObjectStore } from './object-store.js';

export { ALIAS_NAME } from '../spec/model-name.js';

export interface RegistryTarget {
  uri: string;
  prefix: string;
  manifestSha256: string;
  runId: string | null;
  stage: string | null;
}

export interface RegistryEvent {
  type: 'alias-promoted' | 'alias-rolled-back';
  at: string;
  model: string;
  alias: string;
  /** What the alias points at after this record (null: a rollback past its first promotion). */
  target: RegistryTarget | null;
  /** What it pointed at before. */
  replaced: RegistryTarget | null;
  by: string;
  reason: string;
  /** `promote|rollback --key`: the approver's signature over what the change does (storage/registry-signature.ts). */
  signed?: ApprovalSignature;
  [field: string]: unknown;
}

/** Signs a change while its record is built (the CLI's key); absent: the change is unsigned. */
export type RegistrySigner = (fields: SignedRegistryFields) => ApprovalSignature;

/** The signed fields of a record's event. */
export function signedFieldsOf(e: RegistryEvent): SignedRegistryFields {
  return { type: e.type, model: e.model, alias: e.alias, target: e.target?.manifestSha256 ?? null, replaced: e.replaced?.manifestSha256 ?? null, by: e.by, reason: e.reason, at: e.at };
}

const withSignature = (event: RegistryEvent, signer?: RegistrySigner): RegistryEvent => (signer ? { ...event, signed: signer(signedFieldsOf(event)) } : event);

export type RegistryRecord = AuditRecord & { event: RegistryEvent };

export interface AliasState {
  alias: string;
  current: RegistryTarget | null;
  /** The target a rollback would return to. */
  previous: RegistryTarget | null;
  /** The record that set `current`. */
  since: { seq: number; at: string; by: string; reason: string } | null;
}

export class RegistryError extends Error {
  override name = 'RegistryError';
}

const logPrefix = (prefix: string, model: string) => `${prefix}/registry/${segment(model)}/log`;
const recordKey = (prefix: string, model: string, seq: number) => `${logPrefix(prefix, model)}/${String(seq).padStart(6, '0')}.json`;

function checkNames(model: string, alias?: string): void {
  if (!isModelName(model)) throw new RegistryError(`model name "${model}": expected letters, digits, ".", "_" and "-", starting with a letter or digit`);
  if (alias !== undefined && !ALIAS_NAME.test(alias)) throw new RegistryError(`alias "${alias}": expected lowercase letters, digits and "-", starting with a letter (e.g. production, candidate)`);
}

/** The model's log, in order (empty when it has none). */
export async function readRegistryLog(store: ObjectStore, prefix: string, model: string): Promise<RegistryRecord[]> {
  checkNames(model);
  const keys = (await store.list(`${logPrefix(prefix, model)}/`, true)).map((o) => o.key).filter((k) => /\/\d{6}\.json$/.test(k)).sort();
  const out: RegistryRecord[] = [];
  for (const key of keys) {
    const r = await store.getJson<RegistryRecord>(key);
    if (r) out.push(r);
  }
  return out;
}

/** Every alias's state, from the log replayed. */
export function aliasStates(records: RegistryRecord[]): Map<string, AliasState> {
  const stacks = new Map<string, { targets: RegistryTarget[]; since: AliasState['since'] }>();
  for (const { seq, event } of records) {
    const s = stacks.get(event.alias) ?? { targets: [], since: null };
    if (event.type === 'alias-promoted' && event.target) s.targets.push(event.target);
    else if (event.type === 'alias-rolled-back') s.targets.pop();
    s.since = { seq, at: event.at, by: event.by, reason: event.reason };
    stacks.set(event.alias, s);
  }
  const out = new Map<string, AliasState>();
  for (const [alias, s] of stacks) out.set(alias, { alias, current: s.targets.at(-1) ?? null, previous: s.targets.at(-2) ?? null, since: s.since });
  return out;
}

/** Appends one record built from the current log (retried when another writer took its number). */
async function appendRecord(store: ObjectStore, prefix: string, model: string, build: (records: RegistryRecord[]) => RegistryEvent): Promise<RegistryRecord> {
  for (let tries = 0; tries < 10; tries++) {
    const records = await readRegistryLog(store, prefix, model);
    const problems = verifyChain(records);
    // Nothing is written onto a log that does not verify: the problem is shown, not buried.
    if (problems.length > 0) throw new RegistryError(`the registry log of ${model} does not verify: ${problems.join('; ')}`);
    const record = makeRecord(records.length + 1, records.at(-1)?.hash ?? null, build(records)) as RegistryRecord;
    const key = recordKey(prefix, model, record.seq);
    const bytes = jsonBytes(record);
    if ((await store.putIfAbsent(key, bytes)) === 'exists') continue;
    if (store.auditBucket) await store.putLocked(key, bytes);
    return record;
  }
  throw new RegistryError(`the registry log of ${model} kept changing while this record was written; try again`);
}

export interface PromoteOptions {
  model: string;
  alias: string;
  target: RegistryTarget;
  by: string;
  reason: string;
  signer?: RegistrySigner;
}

/** Points `alias` of `model` at a committed output (checked to be committed first). */
export async function promote(store: ObjectStore, prefix: string, o: PromoteOptions): Promise<RegistryRecord> {
  checkNames(o.model, o.alias);
  if (!o.by.trim()) throw new RegistryError('say who promotes (--by)');
  if (!o.reason.trim()) throw new RegistryError('say why (--reason)');
  const committed = await readCommitted(store, o.target.prefix);
  if (!committed || committed.manifestSha256 !== o.target.manifestSha256) throw new RegistryError(`${o.target.uri} is not committed with manifest ${o.target.manifestSha256.slice(0, 12)}…: only a committed output can be promoted`);
  return appendRecord(store, prefix, o.model, (records) => {
    const state = aliasStates(records).get(o.alias);
    if (state?.current?.manifestSha256 === o.target.manifestSha256) throw new RegistryError(`${o.model}@${o.alias} already points at ${o.target.uri}`);
    return withSignature({ type: 'alias-promoted', at: new Date().toISOString(), model: o.model, alias: o.alias, target: o.target, replaced: state?.current ?? null, by: o.by, reason: o.reason }, o.signer);
  });
}

/** Points `alias` of `model` back at what it pointed at before its current target. */
export async function rollback(store: ObjectStore, prefix: string, o: { model: string; alias: string; by: string; reason: string; signer?: RegistrySigner }): Promise<RegistryRecord> {
  checkNames(o.model, o.alias);
  if (!o.by.trim()) throw new RegistryError('say who rolls back (--by)');
  if (!o.reason.trim()) throw new RegistryError('say why (--reason)');
  return appendRecord(store, prefix, o.model, (records) => {
    const state = aliasStates(records).get(o.alias);
    if (!state?.current) throw new RegistryError(`${o.model}@${o.alias} points at nothing: nothing to roll back`);
    if (!state.previous) throw new RegistryError(`${o.model}@${o.alias} has no earlier target to roll back to (it was promoted once)`);
    return withSignature({ type: 'alias-rolled-back', at: new Date().toISOString(), model: o.model, alias: o.alias, target: state.previous, replaced: state.current, by: o.by, reason: o.reason }, o.signer);
  });
}

/**
 * The log's own problems, every signed change's signature, and the targets aliases point at now
 * (committed, same manifest). With `approvers` (REFINERY_APPROVERS), every change must be signed
 * by a listed key whose approver is its `by` and whose scope covers the model.
 */
export async function verifyRegistry(store: ObjectStore, prefix: string, model: string, approvers?: Approvers): Promise<string[]> {
  const records = await readRegistryLog(store, prefix, model);
  const problems = verifyChain(records);
  for (const { seq, event } of records) {
    const what = `record ${seq} (${event.type} ${event.alias} by ${event.by})`;
    if (event.signed) {
      const problem = registrySignatureProblem(signedFieldsOf(event), event.signed);
      if (problem) problems.push(`${what}: ${problem}`);
    }
    if (!approvers) continue;
    if (!event.signed) {
      problems.push(`${what}: not signed, and the approvers file requires signed changes`);
      continue;
    }
    const listed = approvers.approvers.find((a) => a.fingerprint === event.signed!.keyFingerprint);
    if (!listed) problems.push(`${what}: signed with key ${event.signed.keyFingerprint.slice(0, 16)}, which the approvers file does not list`);
    else if (listed.name !== event.by) problems.push(`${what}: signed by ${listed.name}'s key, but the record says by ${event.by}`);
    else if (!inScope(listed.pipelines, model)) problems.push(`${what}: ${listed.name} may not approve changes of ${model}`);
  }
  for (const state of aliasStates(records).values()) {
    if (!state.current) continue;
    const committed = await readCommitted(store, state.current.prefix).catch(() => undefined);
    if (!committed || committed.manifestSha256 !== state.current.manifestSha256) problems.push(`${model}@${state.alias} points at ${state.current.uri}, which is no longer committed with manifest ${state.current.manifestSha256.slice(0, 12)}…`);
  }
  return problems;
}
