/**
 * `refinery audit verify <runId>`, from object storage alone (invariant 8): the hash chain against
 * the head recorded at run end, each attempt's own records against their anchor in the chain,
 * every artifact and input re-hashed, run.json and status.json checked against the chain (a
 * run.json that is not JSON or not a run manifest is a problem, and so is a missing one once the
 * trail records run-prepared), no secret stored.
 */
import { verifyChain } from '../../storage/audit-chain.js';
import { attemptRecordKey, summarizeAttempt } from '../../storage/attempt-records.js';
import { readCommitted, verifyCommitted } from '../../storage/commit.js';
import { ObjectStore } from '../../storage/object-store.js';
import { shortHash as short } from '../format.js';
import { listRunLogKeys, readAttempt, readOtherAttempts, readRun, type RunRef } from '../run-records.js';

export interface VerifyResult {
  runId: string;
  prefix: string;
  ok: boolean;
  /** Each mismatch, missing object or leaked secret, one line each. */
  problems: string[];
  /** What could not be checked (a run still in progress), not failures. */
  warnings: string[];
  checked: { events: number; artifacts: number; inputs: number; files: number; secretScan: number; attemptRecords: number };
  /** Every attempt the trail anchors, with the checkpoints its own records say it committed. */
  attempts: { stage: string; attempt: number; outcome: string; host: string | null; checkpoints: number[] }[];
  verdict: string;
  exitCode: 0 | 1;
}

export interface VerifyOptions extends RunRef {
  /** Where the secrets to look for come from (default: process.env). */
  env?: NodeJS.ProcessEnv;
}

interface ArtifactRefLike {
  uri?: string;
  prefix?: string;
  manifestSha256?: string;
}

export async function verifyRun(opts: VerifyOptions): Promise<VerifyResult> {
  const store = opts.store ?? new ObjectStore();
  const run = await readRun({ ...opts, store });
  const problems: string[] = [...run.readProblems];
  const warnings: string[] = [];
  const checked = { events: run.records.length, artifacts: 0, inputs: 0, files: 0, secretScan: 0, attemptRecords: 0 };
  const attempts: VerifyResult['attempts'] = [];
  const events = run.records.map((r) => r.event);
  const first = (type: string) => events.find((e) => e.type === type);
  const secrets = secretsFrom(opts.env ?? process.env, store);
  const pendingScans: { key: string; bytes: Buffer }[] = [];

  // 1. The hash chain, and its end against the head recorded in status.json.
  if (run.records.length === 0) problems.push(`no audit trail: ${store.uri(`${run.runKey}/audit/`)} is empty`);
  const finished = first('run-finished');
  let head: { seq: number; hash: string } | undefined;
  if (run.status) {
    head = run.status.auditHead;
    if (!head) problems.push('status.json records no audit head: the end of the trail cannot be checked');
  } else if (finished) {
    problems.push('the trail records run-finished but status.json is missing');
  } else {
    warnings.push('the run has not finished (no status.json): events appended after the last one read cannot be ruled out');
  }
  if (run.records.length > 0) problems.push(...verifyChain(run.records, head));
  if (run.status && finished && finished.state !== run.status.state) {
    problems.push(`status.json says the run ${run.status.state}, the audit trail says ${String(finished.state)}`);
  }

  // 1b. Each attempt's own records (storage/attempt-records.ts) against the length and head the
  // trail anchored when the stage ended: a killed attempt's checkpoints are listed too.
  const anchored = new Set<string>();
  for (const e of events) {
    if (e.type !== 'attempt') continue;
    const stage = String(e.stage);
    const attempt = Number(e.attempt);
    const anchor = (e.records ?? {}) as { count?: number; head?: string | null };
    const { prefix, records } = await readAttempt(store, run, stage, attempt);
    anchored.add(prefix);
    checked.attemptRecords += records.length;
    const what = `attempt ${attempt} of stage ${stage}`;
    for (const p of verifyChain(records)) problems.push(`${what}: ${p}`);
    if (records.length !== anchor.count || (records.at(-1)?.hash ?? null) !== (anchor.head ?? null)) {
      problems.push(`${what}: ${records.length} records ending ${short(records.at(-1)?.hash ?? 'nowhere')}, but the trail anchored ${anchor.count} ending ${short(anchor.head ?? 'nowhere')} (records added, removed or replaced)`);
    }
    const summary = summarizeAttempt(attempt, records);
    attempts.push({ stage, attempt, outcome: summary.outcome, host: summary.host, checkpoints: summary.checkpoints });
    for (const r of records) pendingScans.push({ key: attemptRecordKey(prefix, r.seq), bytes: Buffer.from(JSON.stringify(r)) });
  }
  // Records the trail does not anchor: an attempt still running; or a run started on workflow code
  // from before attempts were anchored (the history-v2 patch) whose attempts ran on newer workers.
  const anchorsAttempts = events.some((e) => e.type === 'attempt');
  for (const { stage, attempt, prefix, records } of await readOtherAttempts(store, run.runKey, anchored)) {
    const summary = summarizeAttempt(attempt, records);
    const what = `attempt ${summary.attempt} of stage ${stage}`;
    for (const p of summary.problems) problems.push(`${what}: ${p}`);
    attempts.push({ stage, attempt: summary.attempt, outcome: summary.outcome, host: summary.host, checkpoints: summary.checkpoints });
    for (const r of records) pendingScans.push({ key: attemptRecordKey(prefix, r.seq), bytes: Buffer.from(JSON.stringify(r)) });
    if (!run.status) warnings.push(`${what}: still in progress (its records are anchored in the trail when its stage ends)`);
    else if (anchorsAttempts) problems.push(`${store.uri(prefix)}: attempt records the trail does not anchor`);
    else warnings.push(`${what}: the run's workflow code predates anchored attempts; its records were checked for consistency only`);
  }

  // 2. run.json against the chain (run.json itself is not hash-chained).
  const started = first('run-started');
  const prepared = first('run-prepared');
  const m = run.manifest;
  if (!m) {
    if (prepared) problems.push('run.json is missing, though the trail records run-prepared');
    else warnings.push('no run.json: the run failed or stopped before it was prepared');
  } else {
    if (!started) {
      if (run.records.length > 0) problems.push('the trail has no run-started event');
    } else {
      if (m.specSha256 !== started.specSha256) problems.push(`run.json spec sha256 ${m.specSha256} differs from the one recorded at run start (${String(started.specSha256)})`);
      if (m.requestedBy !== started.requestedBy) problems.push(`run.json says requested by "${m.requestedBy}", the trail says "${String(started.requestedBy)}"`);
      if (m.pipeline !== started.pipeline) problems.push(`run.json names pipeline "${m.pipeline}", the trail "${String(started.pipeline)}"`);
    }
    if (prepared) {
      const recorded = (prepared.datasets ?? {}) as Record<string, { sha256?: string; manifestSha256?: string }>;
      for (const [name, d] of Object.entries(recorded)) {
        const inManifest = m.datasets?.[name];
        if (!inManifest) problems.push(`run.json does not list dataset "${name}" recorded in the trail`);
        else if (inManifest.sha256 !== d.sha256 || inManifest.manifestSha256 !== d.manifestSha256) problems.push(`run.json dataset "${name}" hashes differ from the trail`);
      }
      for (const name of Object.keys(m.datasets ?? {})) if (!(name in recorded)) problems.push(`run.json lists dataset "${name}" that the trail does not record`);
      const base = prepared.baseModel as ArtifactRefLike | undefined;
      if (base && m.baseModel && base.manifestSha256 !== m.baseModel.manifestSha256) problems.push('run.json base model hash differs from the trail');
    }
  }

  // 3. Every artifact and input the trail names, re-hashed in the bucket.
  const seen = new Set<string>();
  const checkArtifact = async (what: string, ref: ArtifactRefLike | undefined, kind: 'artifacts' | 'inputs', datasetSha256?: string) => {
    const key = ref?.prefix ?? keyOfUri(store, ref?.uri, what, problems);
    if (!key) {
      if (ref?.prefix === undefined && ref?.uri === undefined) problems.push(`${what}: the trail records no artifact location`);
      return;
    }
    if (seen.has(`${key}@${ref?.manifestSha256}`)) return;
    seen.add(`${key}@${ref?.manifestSha256}`);
    checked[kind]++;
    let committed;
    try {
      committed = await readCommitted(store, key);
    } catch (err) {
      problems.push(`${what}: ${(err as Error).message}`);
      return;
    }
    if (!committed) {
      problems.push(`${what}: ${store.uri(key)} is missing or not committed`);
      return;
    }
    if (committed.manifestSha256 !== ref?.manifestSha256) {
      problems.push(`${what}: ${store.uri(key)} manifest sha256 ${committed.manifestSha256} is not the recorded ${String(ref?.manifestSha256)} (replaced)`);
    }
    if (datasetSha256 !== undefined) {
      const files = committed.manifest.files;
      if (files.length !== 1 || files[0]!.sha256 !== datasetSha256) problems.push(`${what}: the stored data does not hash to the recorded sha256 ${datasetSha256}`);
    }
    checked.files += committed.manifest.files.length;
    for (const p of await verifyCommitted(store, key)) problems.push(`${what}: ${p}`);
  };
  if (prepared) {
    await checkArtifact('base model', prepared.baseModel as ArtifactRefLike, 'inputs');
    for (const [name, d] of Object.entries((prepared.datasets ?? {}) as Record<string, ArtifactRefLike & { sha256?: string }>)) {
      await checkArtifact(`dataset ${name}`, d, 'inputs', d.sha256);
    }
  }
  const recordedOutputs = new Map<string, ArtifactRefLike | undefined>();
  for (const e of events) {
    if (e.type !== 'stage-completed' && e.type !== 'stage-reused') continue;
    recordedOutputs.set(String(e.stage), e.artifact as ArtifactRefLike | undefined);
    await checkArtifact(`stage ${e.stage} artifact`, e.artifact as ArtifactRefLike | undefined, 'artifacts');
  }
  // status.json and run.json are not chained: they must agree with the trail, and what only they
  // name (a run from before the trail existed) is still re-hashed.
  for (const st of run.status?.stages ?? []) {
    if (!st.artifact) continue;
    const recorded = recordedOutputs.get(st.id);
    if (recorded) {
      if (recorded.manifestSha256 !== st.artifact.manifestSha256) problems.push(`status.json artifact of stage ${st.id} (${st.artifact.manifestSha256}) differs from the trail (${String(recorded.manifestSha256)})`);
    } else {
      await checkArtifact(`stage ${st.id} artifact (named by status.json only)`, st.artifact, 'artifacts');
    }
  }
  if (!prepared && m) {
    if (m.baseModel) await checkArtifact('base model (named by run.json only)', m.baseModel, 'inputs');
    for (const [name, d] of Object.entries(m.datasets ?? {})) await checkArtifact(`dataset ${name} (named by run.json only)`, d, 'inputs', d.sha256);
  }

  // 4. No secret in anything the run wrote about itself (invariant 6).
  const logKeys = await listRunLogKeys(store, run.runKey);
  const scan = async (key: string, bytes: Buffer) => {
    checked.secretScan++;
    for (const s of secrets) if (bytes.includes(s.value)) problems.push(`${store.uri(key)} contains the ${s.name} (a secret must never be stored)`);
  };
  for (const { key, bytes } of run.raw) await scan(key, bytes);
  for (const { key, bytes } of pendingScans) await scan(key, bytes);
  for (const key of logKeys) {
    const bytes = await store.getBytes(key);
    if (bytes) await scan(key, bytes);
  }

  const ok = problems.length === 0;
  const verdict = ok
    ? `OK: run ${run.runId} — ${checked.events} events chained${head ? ' to the head recorded at run end' : ''}; ${attempts.length} attempts' records (${checked.attemptRecords}) match their anchors; ${checked.artifacts} artifacts and ${checked.inputs} inputs re-hashed (${checked.files} files); run.json matches the trail; no secrets in ${checked.secretScan} objects`
    : `FAILED: run ${run.runId} — ${problems.length} problem${problems.length === 1 ? '' : 's'}`;
  return { runId: run.runId, prefix: run.prefix, ok, problems, warnings, checked, attempts, verdict, exitCode: ok ? 0 : 1 };
}

export function renderVerify(v: VerifyResult): string {
  const attempts = v.attempts.map((a) => `attempt ${a.attempt} of ${a.stage}: ${a.outcome}${a.host ? ` on ${a.host}` : ''}; checkpoints committed: ${a.checkpoints.length ? a.checkpoints.join(', ') : 'none'}`);
  return [...attempts, ...v.problems.map((p) => `problem: ${p}`), ...v.warnings.map((w) => `warning: ${w}`), v.verdict].join('\n');
}

/** s3://bucket/key → key; a location in another bucket is a problem (one store, one bucket). */
function keyOfUri(store: ObjectStore, uri: string | undefined, what: string, problems: string[]): string | undefined {
  if (!uri) return undefined;
  const m = /^s3:\/\/([^/]+)\/(.+?)\/*$/.exec(uri);
  if (!m) {
    problems.push(`${what}: "${uri}" is not an s3:// location`);
    return undefined;
  }
  if (m[1] !== store.bucket) {
    problems.push(`${what}: recorded in bucket "${m[1]}", but checking bucket "${store.bucket}" (set REFINERY_BUCKET)`);
    return undefined;
  }
  return m[2];
}

/** Names of environment variables that hold secrets: FOO_TOKEN, FOO_SECRET(_KEY), FOO_PASSWORD, FOO_PRIVATE_KEY. */
const SECRET_NAME = /(^|_)(TOKEN|SECRET|SECRET_KEY|SECRET_ACCESS_KEY|PASSWORD|PRIVATE_KEY)$/i;

/** The S3 secret key in use, and any other secret-looking variables of the environment. */
function secretsFrom(env: NodeJS.ProcessEnv, store: ObjectStore): { name: string; value: string }[] {
  const out = new Map<string, string>();
  if (store.config.secretKey) out.set(store.config.secretKey, 'S3 secret key');
  for (const [name, value] of Object.entries(env)) {
    if (!value || value.length < 8) continue;
    if (SECRET_NAME.test(name) && !out.has(value)) out.set(value, `value of $${name}`);
  }
  return [...out].map(([value, name]) => ({ name, value }));
}
