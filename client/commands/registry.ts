/**
 * `promote`, `rollback` and `model aliases`: the model registry (storage/registry.ts) from the
 * command line. A promotion names a run and a stage; only a stage of a run that completed (every
 * gate passed, every approval given) and whose output is committed can be promoted.
 */
import { ObjectStore } from '../../storage/object-store.js';
import { approversFileFromEnv, loadApprovers, signingKeyFileFromEnv } from '../../config/approvers.js';
import { aliasStates, promote, readRegistryLog, RegistryError, rollback, verifyRegistry, type AliasState, type RegistryRecord, type RegistrySigner, type RegistryTarget } from '../../storage/registry.js';
import { registrySigner } from '../../storage/registry-signature.js';
import { CliError } from '../errors.js';
import { readRun } from '../run-records.js';
import { whoAmI } from './run.js';
import { readSigningKey } from './signing.js';
import { EXIT } from '../exit-codes.js';

export interface PromoteCommand {
  runId: string;
  stage: string;
  alias: string;
  /** The model name (default: the run's pipeline name). */
  name?: string;
  prefix: string;
  by?: string;
  reason: string;
  /** A private key file (`--key`, default $REFINERY_SIGNING_KEY): the change is signed with it. */
  keyFile?: string;
  store?: ObjectStore;
}

/** The signer of `--key FILE` (or $REFINERY_SIGNING_KEY), or none. */
async function signerOf(keyFile: string | undefined): Promise<RegistrySigner | undefined> {
  const file = keyFile ?? signingKeyFileFromEnv();
  return file ? registrySigner(await readSigningKey(file)) : undefined;
}

const asCliError = (err: unknown): never => {
  if (err instanceof RegistryError) throw new CliError(err.message, undefined, EXIT.badInput);
  throw err;
};

export async function promoteRun(o: PromoteCommand): Promise<{ model: string; alias: string; record: RegistryRecord }> {
  const store = o.store ?? new ObjectStore();
  const run = await readRun({ runId: o.runId, prefix: o.prefix, store });
  const state = run.status?.state;
  if (state !== 'completed') throw new CliError(`run ${o.runId} is ${state ?? 'not finished'}: only a completed run (its gates passed, its approvals given) can be promoted`, `see: refinery status ${o.runId}`, EXIT.badInput);
  const done = run.records.map((r) => r.event).find((e) => (e.type === 'stage-completed' || e.type === 'stage-reused') && e.stage === o.stage);
  const artifact = done?.artifact as { uri: string; prefix: string; manifestSha256: string } | undefined;
  if (!artifact) throw new CliError(`run ${o.runId} has no completed stage "${o.stage}"`, `its stages: ${(run.status?.stages ?? []).map((s) => s.id).join(', ')}`, EXIT.badInput);
  const model = o.name ?? run.status?.pipeline ?? run.manifest?.pipeline;
  if (!model) throw new CliError(`run ${o.runId}: no pipeline name to name the model by`, 'pass --name', EXIT.badInput);
  const target: RegistryTarget = { uri: artifact.uri, prefix: artifact.prefix, manifestSha256: artifact.manifestSha256, runId: o.runId, stage: o.stage };
  const record = await promote(store, o.prefix, { model, alias: o.alias, target, by: whoAmI(o.by), reason: o.reason, signer: await signerOf(o.keyFile) }).catch(asCliError);
  return { model, alias: o.alias, record };
}

export async function rollbackAlias(o: { name: string; alias: string; prefix: string; by?: string; reason: string; keyFile?: string; store?: ObjectStore }): Promise<{ model: string; alias: string; record: RegistryRecord }> {
  const store = o.store ?? new ObjectStore();
  const record = await rollback(store, o.prefix, { model: o.name, alias: o.alias, by: whoAmI(o.by), reason: o.reason, signer: await signerOf(o.keyFile) }).catch(asCliError);
  return { model: o.name, alias: o.alias, record };
}

export interface AliasesReport {
  model: string;
  aliases: AliasState[];
  history: RegistryRecord['event'][];
  problems: string[];
}

/** `approversFile`: default $REFINERY_APPROVERS; with one, every change must be signed by a listed approver. */
export async function listAliases(o: { name: string; prefix: string; approversFile?: string; store?: ObjectStore }): Promise<AliasesReport> {
  const store = o.store ?? new ObjectStore();
  const records = await readRegistryLog(store, o.prefix, o.name).catch(asCliError);
  const approversFile = o.approversFile ?? approversFileFromEnv();
  const approvers = approversFile ? loadApprovers(approversFile) : undefined;
  return { model: o.name, aliases: [...aliasStates(records).values()], history: records.map((r) => r.event), problems: await verifyRegistry(store, o.prefix, o.name, approvers) };
}

export function renderAliases(r: AliasesReport): string {
  const short = (t: RegistryTarget | null) => (t ? `${t.runId ?? '?'}/${t.stage ?? '?'} (${t.manifestSha256.slice(0, 12)})` : '-');
  if (r.history.length === 0) return `no aliases for ${r.model} yet (refinery promote RUN --stage S --alias production --reason TEXT)`;
  const lines = [`model ${r.model}`];
  for (const a of r.aliases) lines.push(`  ${a.alias.padEnd(12)} ${short(a.current)}   previous ${short(a.previous)}${a.since ? `   since ${a.since.at} by ${a.since.by}: ${a.since.reason}` : ''}`);
  lines.push('history');
  for (const e of r.history) lines.push(`  ${e.at}  ${e.type === 'alias-promoted' ? 'promote ' : 'rollback'} ${e.alias}: ${short(e.replaced)} -> ${short(e.target)}  by ${e.by}${e.signed ? ` (signed, key ${e.signed.keyFingerprint.slice(0, 16)})` : ' (unsigned)'}: ${e.reason}`);
  lines.push(r.problems.length === 0 ? 'registry log verifies; every alias points at a committed output' : `PROBLEMS:\n${r.problems.map((p) => `  ${p}`).join('\n')}`);
  return lines.join('\n');
}
