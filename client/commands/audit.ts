/**
 * `audit` and `audit verify`: a run's audit trail read from object storage alone (invariant 8).
 *
 *   showAudit   the run manifest (who, when, spec and dataset hashes, versions) and every event
 *   verifyRun   the hash chain against the head recorded at run end, each attempt's own records
 *               against their anchor in the chain, every artifact and input
 *               re-hashed, run.json and status.json checked against the chain, no secret stored
 *
 * Also the shared reader (`readRun`) that `report` and `logs` build on.
 */
import { auditKey, verifyChain, type AuditEvent, type AuditRecord } from '../../storage/audit-chain.js';
import { attemptRecordKey, readAttemptRecords, summarizeAttempt } from '../../storage/attempt-records.js';
import { readCommitted, verifyCommitted } from '../../storage/commit.js';
import { layout, segment } from '../../storage/layout.js';
import { ObjectStore } from '../../storage/object-store.js';
import type { PipelineStatus } from '../../workflows/types.js';
import { CliError } from '../errors.js';

export const DEFAULT_PREFIX = 'refinery';

/** `<prefix>/runs/<runId>/run.json`, written when the run has been prepared (activities/control.ts). */
export interface RunManifest {
  runId: string;
  pipeline: string;
  requestedBy: string;
  startedAt: string;
  specSha256: string;
  resumeFrom: string | null;
  baseModel?: { source: string; prefix: string; uri: string; manifestSha256: string };
  datasets?: Record<string, { source: string; prefix: string; uri: string; manifestSha256: string; sha256: string }>;
  versions?: Record<string, string>;
  controlHost?: string;
  plan?: { name?: string; stages?: { id: string; kind: string; deps?: string[] }[] };
}

/** `<prefix>/runs/<runId>/status.json`, written when the run ends. */
export type FinalStatus = PipelineStatus & { finishedAt?: string };

export interface RunRecords {
  runId: string;
  prefix: string;
  /** `<prefix>/runs/<runId>` */
  runKey: string;
  manifest?: RunManifest;
  status?: FinalStatus;
  /** Audit records in key order (readable ones only; see `readProblems`). */
  records: AuditRecord[];
  /** Objects that exist but cannot be read as JSON. */
  readProblems: string[];
  /** Raw bytes of run.json, status.json and every audit record, for the secret scan. */
  raw: { key: string; bytes: Buffer }[];
}

export interface RunRef {
  runId: string;
  /** Storage prefix (the spec's `storage.prefix`); default "refinery". */
  prefix?: string;
  store?: ObjectStore;
}

const PREFIX_RE = /^[a-z0-9][a-z0-9/_-]{0,200}$/;
const READ_CONCURRENCY = 16;

/** Checks the run id and prefix given on the command line; returns the normalised prefix. */
export function checkRunRef(runId: string, prefix: string = DEFAULT_PREFIX): string {
  const p = prefix.replace(/\/+$/, '');
  if (!PREFIX_RE.test(p) || p.includes('//')) {
    throw new CliError(`--prefix "${prefix}" is not a storage prefix`, 'use the spec\'s storage.prefix, e.g. "refinery" or "demo"', 2);
  }
  try {
    segment(runId);
  } catch {
    throw new CliError(`"${runId}" is not a run id`, 'run ids are letters, digits, ".", "_" and "-" (see "refinery list")', 2);
  }
  return p;
}

/** Everything a run left in the bucket besides artifacts and logs. Throws a CliError when there is no such run. */
export async function readRun(ref: RunRef): Promise<RunRecords> {
  const prefix = checkRunRef(ref.runId, ref.prefix);
  const store = ref.store ?? new ObjectStore();
  const runKey = layout.run(prefix, ref.runId);
  const readProblems: string[] = [];
  const raw: RunRecords['raw'] = [];

  const readJson = async <T>(key: string): Promise<T | undefined> => {
    const bytes = await store.getBytes(key);
    if (!bytes) return undefined;
    raw.push({ key, bytes });
    try {
      return JSON.parse(bytes.toString('utf8')) as T;
    } catch {
      readProblems.push(`${store.uri(key)}: not valid JSON`);
      return undefined;
    }
  };

  const [manifest, status, auditKeys] = await storeCall(store, () =>
    Promise.all([readJson<RunManifest>(`${runKey}/run.json`), readJson<FinalStatus>(`${runKey}/status.json`), store.list(`${runKey}/audit/`)]),
  );
  const keys = auditKeys
    .map((o) => o.key)
    .filter((k) => /\/audit\/\d+\.json$/.test(k))
    .sort();
  const records: (AuditRecord | undefined)[] = new Array(keys.length);
  for (let i = 0; i < keys.length; i += READ_CONCURRENCY) {
    await Promise.all(keys.slice(i, i + READ_CONCURRENCY).map(async (k, j) => (records[i + j] = await readJson<AuditRecord>(k))));
  }
  if (!manifest && !status && keys.length === 0 && !raw.length) {
    const elsewhere = await findRunElsewhere(store, ref.runId, prefix);
    throw new CliError(
      `no run "${ref.runId}" under ${store.uri(`${prefix}/runs/`)}`,
      elsewhere.length > 0 ? `it is under prefix "${elsewhere[0]}": pass --prefix ${elsewhere[0]}` : 'pass --prefix with the spec\'s storage.prefix (the demo uses "demo"); see "refinery list"',
      2,
    );
  }
  raw.sort((a, b) => (a.key < b.key ? -1 : 1));
  return { runId: ref.runId, prefix, runKey, manifest, status, records: records.filter((r): r is AuditRecord => r !== undefined), readProblems, raw };
}

/** Top-level prefixes that hold a run with this id (for a helpful hint only). */
async function findRunElsewhere(store: ObjectStore, runId: string, except: string): Promise<string[]> {
  try {
    const tops = (await store.list('', false)).map((o) => o.key.replace(/\/$/, '')).filter((p) => p && p !== except);
    const found: string[] = [];
    for (const p of tops) if ((await store.list(`${p}/runs/${runId}/`, false)).length > 0) found.push(p);
    return found;
  } catch {
    return [];
  }
}

/** Turns "cannot reach the store" into one line with a hint. */
export async function storeCall<T>(store: ObjectStore, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH') {
      throw new CliError(`cannot reach object storage at ${store.config.endPoint}:${store.config.port}`, 'start the local stack with "refinery stack start" or set REFINERY_S3_ENDPOINT');
    }
    if (code === 'NoSuchBucket') throw new CliError(`bucket "${store.bucket}" does not exist`, 'set REFINERY_BUCKET to the bucket your runs use');
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// refinery audit <runId>

export interface AuditShow {
  runId: string;
  prefix: string;
  manifest: Omit<RunManifest, 'plan'> | null;
  state: string | null;
  finishedAt: string | null;
  events: AuditRecord[];
  problems: string[];
}

export async function showAudit(ref: RunRef): Promise<AuditShow> {
  const run = await readRun(ref);
  let manifest: Omit<RunManifest, 'plan'> | null = null;
  if (run.manifest) {
    const { plan: _plan, ...rest } = run.manifest;
    manifest = rest;
  }
  return {
    runId: run.runId,
    prefix: run.prefix,
    manifest,
    state: run.status?.state ?? (run.records.length > 0 ? 'running (no status.json yet)' : null),
    finishedAt: run.status?.finishedAt ?? null,
    events: run.records,
    problems: run.readProblems,
  };
}

export function renderAudit(a: AuditShow): string {
  const lines: string[] = [];
  const m = a.manifest;
  lines.push(`run ${a.runId}${m ? ` (${m.pipeline})` : ''}: ${a.state ?? 'unknown state'}`);
  if (m) {
    const row = (k: string, v: string) => lines.push(`  ${k.padEnd(13)} ${v}`);
    row('requested by', m.requestedBy);
    row('started', `${m.startedAt}${a.finishedAt ? `   finished ${a.finishedAt}` : ''}`);
    row('spec sha256', m.specSha256);
    if (m.resumeFrom) row('resumes', m.resumeFrom);
    if (m.baseModel) row('base model', `${m.baseModel.source}  manifest ${m.baseModel.manifestSha256}`);
    const ds = Object.entries(m.datasets ?? {});
    ds.forEach(([name, d], i) => row(i === 0 ? 'datasets' : '', `${name}  sha256 ${d.sha256}  (${d.source})`));
    if (m.versions) row('versions', Object.entries(m.versions).map(([k, v]) => `${k} ${v}`).join(', '));
    if (m.controlHost) row('control host', m.controlHost);
  } else {
    lines.push('  (no run.json: the run was not prepared)');
  }
  lines.push('', `audit trail (${a.events.length} event${a.events.length === 1 ? '' : 's'}, ${auditKey(`${a.prefix}/runs/${a.runId}`, 1).replace(/\d+\.json$/, '')}):`);
  if (a.events.length === 0) lines.push('  (none)');
  const typeWidth = Math.max(12, ...a.events.map((r) => r.event.type.length));
  const stageWidth = Math.max(5, ...a.events.map((r) => (r.event.stage ?? '').length));
  for (const r of a.events) {
    const e = r.event;
    lines.push(`  ${String(r.seq).padStart(4)}  ${formatTime(e.at)}  ${e.type.padEnd(typeWidth)}  ${(e.stage ?? '').padEnd(stageWidth)}  ${describeEvent(e)}`.trimEnd());
  }
  for (const p of a.problems) lines.push(`problem: ${p}`);
  lines.push('', `verify: refinery audit verify ${a.runId}${a.prefix === DEFAULT_PREFIX ? '' : ` --prefix ${a.prefix}`}`);
  return lines.join('\n');
}

function formatTime(at: string): string {
  return typeof at === 'string' ? at.replace('T', ' ').replace(/Z$/, '') : String(at);
}

const short = (h: unknown) => (typeof h === 'string' ? h.slice(0, 12) : String(h));

/** The fields of an event a reader cares about, on one line. */
export function describeEvent(e: AuditEvent): string {
  const f = e as Record<string, unknown>;
  switch (e.type) {
    case 'run-started':
      return join([`pipeline ${f.pipeline}`, `by ${f.requestedBy}`, `spec ${short(f.specSha256)}`, f.resumeFrom ? `resumes ${f.resumeFrom}` : '', (f.forceStages as string[] | undefined)?.length ? `force ${(f.forceStages as string[]).join(',')}` : '']);
    case 'run-prepared': {
      const ds = Object.entries((f.datasets ?? {}) as Record<string, { sha256?: string }>).map(([k, d]) => `${k} ${short(d.sha256)}`);
      const base = f.baseModel as { manifestSha256?: string } | undefined;
      return join([base ? `base model ${short(base.manifestSha256)}` : '', ds.length ? `datasets ${ds.join(', ')}` : '', f.jobsVersion ? `jobs ${f.jobsVersion}` : '']);
    }
    case 'stage-started':
      return `kind ${f.kind}`;
    case 'attempt-started':
      return join([`attempt ${f.attempt}`, f.host ? `on ${f.host}` : '', f.resumedFromStep ? `resumed from step ${f.resumedFromStep}` : '']);
    case 'attempt-failed':
    case 'attempt-lost':
      return join([`attempt ${f.attempt}`, f.host ? `on ${f.host}` : '', oneLine(f.reason)]);
    case 'checkpoint-committed':
      return `step ${f.step} (attempt ${f.attempt})`;
    case 'attempt': {
      const cps = (f.checkpoints as number[] | undefined) ?? [];
      const skipped = (f.skippedCheckpoints as { step: number }[] | undefined) ?? [];
      return join([
        `attempt ${f.attempt} ${f.outcome}`,
        f.host ? `on ${f.host}` : '',
        f.resumedFromStep ? `resumed from step ${f.resumedFromStep}` : '',
        cps.length ? `checkpoints ${cps.length > 6 ? `${cps.slice(0, 3).join(', ')}, …, ${cps.slice(-2).join(', ')}` : cps.join(', ')}` : '',
        skipped.length ? `skipped corrupt ${skipped.map((c) => c.step).join(', ')}` : '',
        f.contractViolations ? `${f.contractViolations} contract violations` : '',
        f.reason ? oneLine(f.reason) : '',
      ]);
    }
    case 'stage-completed':
    case 'stage-reused': {
      const art = f.artifact as { uri?: string; manifestSha256?: string } | undefined;
      const metrics = keyMetrics((f.metrics ?? {}) as Record<string, number | null>, 4).map(([k, v]) => `${k}=${formatNumber(v)}`);
      return join([art ? `manifest ${short(art.manifestSha256)}` : '', f.attempt ? `attempt ${f.attempt}` : '', f.resumedFromStep ? `resumed@${f.resumedFromStep}` : '', metrics.join(' '), art?.uri ?? '']);
    }
    case 'stage-failed':
    case 'stage-cancelled':
      return oneLine(f.error);
    case 'gate':
      return /^(passed|failed)\b/i.test(oneLine(f.reason)) ? oneLine(f.reason) : `${f.passed ? 'passed' : 'FAILED'}: ${oneLine(f.reason)}`;
    case 'approval':
      return `${f.approved ? 'approved' : 'rejected'} by ${f.by}: ${oneLine(f.reason)}`;
    case 'run-unchanged':
      return `not run: inputs unchanged since run ${f.previousRunId}`;
    case 'run-finished':
      return join([String(f.state), f.error ? oneLine(f.error) : '']);
    default:
      return Object.entries(f)
        .filter(([k]) => !['type', 'at', 'stage'].includes(k))
        .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
        .join(' ');
  }
}

/** The metrics a reader looks at first (losses, rewards, accuracy), then the rest, `n` in all. */
export function keyMetrics(metrics: Record<string, number | null>, n: number): [string, number | null][] {
  const rank = (k: string) => {
    const i = [/^final_loss$/, /^train_loss$/, /^eval_loss$/, /reward_mean$/, /accuracy$/, /loss$/, /reward/, /kl$/, /match$/].findIndex((re) => re.test(k));
    return i < 0 ? 99 : i;
  };
  return Object.entries(metrics)
    .sort(([a], [b]) => rank(a) - rank(b))
    .slice(0, n);
}

const join = (parts: string[]) => parts.filter(Boolean).join('  ');
const oneLine = (v: unknown) => (v === undefined || v === null ? '' : String(v).split('\n')[0]!.slice(0, 200));

export function formatNumber(v: number | null | undefined): string {
  if (v === null || v === undefined) return '—';
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : String(Number(v.toPrecision(5)));
}

// ---------------------------------------------------------------------------------------------
// refinery audit verify <runId>

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
    const prefix = layout.attemptRecords(run.prefix, run.runId, stage, attempt);
    anchored.add(prefix);
    const records = await readAttemptRecords(store, prefix);
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
  for (const { key } of await store.list(`${run.runKey}/attempts/`, true)) {
    const m = /^(.*\/(attempts\/([^/]+)\/attempt-(\d+)))\/\d{6}\.json$/.exec(key);
    if (!m || anchored.has(m[1]!)) continue;
    anchored.add(m[1]!);
    const records = await readAttemptRecords(store, m[1]!);
    const summary = summarizeAttempt(Number(m[4]), records);
    const what = `attempt ${summary.attempt} of stage ${m[3]}`;
    for (const p of summary.problems) problems.push(`${what}: ${p}`);
    attempts.push({ stage: m[3]!, attempt: summary.attempt, outcome: summary.outcome, host: summary.host, checkpoints: summary.checkpoints });
    for (const r of records) pendingScans.push({ key: attemptRecordKey(m[1]!, r.seq), bytes: Buffer.from(JSON.stringify(r)) });
    if (!run.status) warnings.push(`${what}: still in progress (its records are anchored in the trail when its stage ends)`);
    else if (anchorsAttempts) problems.push(`${store.uri(m[1]!)}: attempt records the trail does not anchor`);
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
  const logKeys = (await store.list(`${run.runKey}/logs/`)).map((o) => o.key);
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
