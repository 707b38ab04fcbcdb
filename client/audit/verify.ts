/**
 * `refinery audit verify <runId>`, from object storage (invariant 8): the hash chain against
 * the head recorded at run end, each attempt's own records against their anchor in the chain,
 * every artifact and input re-hashed, run.json and status.json checked against the chain (a
 * run.json that is not JSON or not a run manifest is a problem, and so is a missing one once the
 * trail records run-prepared), no secret stored.
 *
 * Against a holder of the main bucket's key, who could rewrite records, head and artifacts so that
 * all of the above still agrees (docs/security.md, "Audit trail"):
 *   - every record (trail, attempts) and status.json against its write-once copy in the
 *     object-locked audit bucket: present, equal to the first version written, one version, no
 *     delete marker, retained as configured;
 *   - the chain head against its anchors outside the main bucket: the write-once status.json, and
 *     the run's result in Temporal when Temporal can be reached.
 * Where neither is there (runs from before write-once copies), it says so as a warning.
 *
 * Signed approvals: each signature again, from the key its event records; with REFINERY_APPROVERS,
 * the key against that list too (client/audit/approvals.ts).
 */
import type { RunClaim } from '../../storage/run-claim.js';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { decodeFromPayloadsAtIndex } from '@temporalio/common/lib/internal-non-workflow/index.js';
import { dataConverterFromEnv } from '../../codec/data-converter.js';
import { approversFileFromEnv, loadApprovers, type Approvers } from '../../config/approvers.js';
import { connectionOptions, temporalSettings } from '../../config/temporal.js';
import { checkLockedCopy, hashRecord, verifyChain, type AuditRecord, type LockedCopyFinding, type LockedCopyFindingKind } from '../../storage/audit-chain.js';
import { attemptRecordKey, summarizeAttempt } from '../../storage/attempt-records.js';
import { readCommitted, verifyCommitted } from '../../storage/commit.js';
import { ObjectStore, type AuditBucketState, type AuditRetention, type LockedObject, type LockedVersion } from '../../storage/object-store.js';
import type { PipelineResult, PipelineStatus } from '../../workflows/types.js';
import { shortHash as short } from '../format.js';
import { statusFromFailure } from '../live-progress.js';
import { listRunLogKeys, readAttempt, readOtherAttempts, readRun, type RunRef } from '../run-records.js';
import { checkApprovalEvents } from './approvals.js';

export interface VerifyResult {
  runId: string;
  prefix: string;
  ok: boolean;
  /** Each mismatch, missing object or leaked secret, one line each. */
  problems: string[];
  /** What could not be checked (a run still in progress), not failures. */
  warnings: string[];
  checked: { events: number; artifacts: number; inputs: number; files: number; secretScan: number; attemptRecords: number; lockedCopies: number; signedApprovals: number };
  /** Every attempt the trail anchors, with the checkpoints its own records say it committed. */
  attempts: { stage: string; attempt: number; outcome: string; host: string | null; checkpoints: number[]; supersededCheckpoints: number[] }[];
  /**
   * The chain head's anchors outside the main bucket, one line each: what it records and whether
   * that matches, or why it was not available.
   */
  anchors: string[];
  /** The object-locked bucket the records were checked against (null: none was). */
  lockedBucket: string | null;
  verdict: string;
  exitCode: 0 | 1;
}

export interface VerifyOptions extends RunRef {
  /** Where the secrets to look for, the Temporal settings and REFINERY_APPROVERS come from (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /**
   * Where the run's result is read, to check the chain head against (an anchor outside the bucket):
   * a client; false for none. Default: connect as the CLI does (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
   * REFINERY_PAYLOAD_KEY of `env`), giving up after a few seconds.
   */
  temporal?: Client | false;
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
  const checked = { events: run.records.length, artifacts: 0, inputs: 0, files: 0, secretScan: 0, attemptRecords: 0, lockedCopies: 0, signedApprovals: 0 };
  const attempts: VerifyResult['attempts'] = [];
  const events = run.records.map((r) => r.event);
  const first = (type: string) => events.find((e) => e.type === type);
  const env = opts.env ?? process.env;
  const secrets = secretsFrom(env, store);
  const pendingScans: { key: string; bytes: Buffer }[] = [];
  const statusKey = `${run.runKey}/status.json`;
  const locked = await readLockedRun(store, run.runKey);
  const lockedChecks = new LockedChecks(store, locked);
  const lockedStatus = locked.originals.get(statusKey)?.value as Partial<PipelineStatus> | undefined;
  // The execution that owns the run id (storage/run-claim.ts): a later one of the same workflow id wrote nothing here.
  const claim = await store.getJson<RunClaim>(`${run.runKey}/claim.json`).catch(() => undefined);
  const temporal = await temporalAnchor(opts, run.runId, env, first('run-started')?.at, claim);

  // 1. The hash chain, and its end against the head recorded in status.json.
  if (run.records.length === 0) problems.push(`no audit trail: ${store.uri(`${run.runKey}/audit/`)} is empty`);
  const finished = first('run-finished');
  let head: { seq: number; hash: string } | undefined;
  if (run.status) {
    head = run.status.auditHead;
    if (!head) problems.push('status.json records no audit head: the end of the trail cannot be checked');
  } else if (finished) {
    problems.push('the trail records run-finished but status.json is missing');
  } else if (!lockedStatus?.auditHead && !('head' in temporal && temporal.head)) {
    warnings.push('the run has not finished (no status.json): events appended after the last one read cannot be ruled out');
  }
  // status.json gone from the main bucket: the trail's end is still checked against an anchor.
  const anchoredHead = head ?? (run.status ? undefined : (lockedStatus?.auditHead ?? ('head' in temporal ? temporal.head : undefined)));
  const chainProblems = run.records.length > 0 ? verifyChain(run.records, anchoredHead) : [];
  problems.push(...chainProblems);
  if (run.status && finished && finished.state !== run.status.state) {
    problems.push(`status.json says the run ${run.status.state}, the audit trail says ${String(finished.state)}`);
  }

  // 1a. The chain head against its anchors outside the main bucket: the write-once status.json and
  // the run's result in Temporal. What the main bucket says is status.json's head, else the chain's end.
  const anchors: string[] = [];
  const ownHead = run.status ? run.status.auditHead : run.records.length ? { seq: run.records.at(-1)!.seq, hash: run.records.at(-1)!.hash } : undefined;
  const ownWhat = run.status ? 'status.json records' : 'the trail ends at';
  const describeHead = (h: { seq: number; hash: string } | undefined) => (h ? `event ${h.seq} (${short(h.hash)})` : 'no head');
  const compareAnchor = (name: string, anchored: { seq: number; hash: string } | undefined, state: string | undefined) => {
    const same = !!anchored && !!ownHead && anchored.seq === ownHead.seq && anchored.hash === ownHead.hash;
    anchors.push(`${name}: ${describeHead(anchored)}${same ? ', as in the main bucket' : ''}`);
    if (!same) problems.push(`chain head: ${ownWhat} ${describeHead(ownHead)}, but ${name} records ${describeHead(anchored)}: the trail or status.json was rewritten`);
    if (run.status && state !== undefined && state !== run.status.state) problems.push(`status.json says the run ${run.status.state}, ${name} says ${state}`);
  };
  const lockedStatusName = `the write-once status.json (${store.auditUri(statusKey)})`;
  if (lockedStatus) compareAnchor(lockedStatusName, lockedStatus.auditHead, lockedStatus.state);
  else anchors.push(`write-once status.json: ${locked.state.state === 'locked' ? `none at ${store.auditUri(statusKey)}` : lockedBucketNote(locked.state)}`);
  if ('head' in temporal) compareAnchor(temporal.name, temporal.head, temporal.state);
  else {
    anchors.push(temporal.unavailable);
    if (temporal.problem) problems.push(temporal.problem);
    if (!lockedStatus && (run.status || finished)) {
      warnings.push(
        'the chain head was checked against status.json in the main bucket only (no write-once status.json; ' +
          `${temporal.unavailable}): a holder of the bucket's key could have rewritten the trail and status.json together`,
      );
    }
  }

  // 1b. Every audit record against its write-once copy.
  const mainLast = run.records.at(-1)?.seq ?? 0;
  const tailReported = chainProblems.some((p) => p.startsWith('chain head is'));
  // By the key each record was read from (a record moved to another key differs from that key's copy).
  const trailKeys = new RegExp(`^${escapeRegExp(run.runKey)}/audit/(\\d+)\\.json$`);
  lockedChecks.chain(
    'the trail',
    run.raw.flatMap(({ key, bytes }) => {
      const m = trailKeys.exec(key);
      return m ? [{ what: `event ${Number(m[1])}`, key, value: parseOr(bytes) }] : [];
    }),
  );
  lockedChecks.status(statusKey, run.status, lockedStatus);
  lockedChecks.extra(`${run.runKey}/audit/`, (key) => {
    const seq = Number(/\/(\d+)\.json$/.exec(key)?.[1]);
    // Events cut off the end are already named by the chain-head check.
    return tailReported && seq > mainLast ? undefined : `event ${seq}`;
  });

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
    attempts.push({ stage, attempt, outcome: summary.outcome, host: summary.host, checkpoints: summary.checkpoints, supersededCheckpoints: summary.supersededCheckpoints });
    for (const r of records) pendingScans.push({ key: attemptRecordKey(prefix, r.seq), bytes: Buffer.from(JSON.stringify(r)) });
    lockedChecks.attempt(what, prefix, records);
  }
  // Records the trail does not anchor: an attempt still running; or a run started on workflow code
  // from before attempts were anchored (the history-v2 patch) whose attempts ran on newer workers.
  const anchorsAttempts = events.some((e) => e.type === 'attempt');
  for (const { stage, attempt, prefix, records } of await readOtherAttempts(store, run.runKey, anchored)) {
    const summary = summarizeAttempt(attempt, records);
    const what = `attempt ${summary.attempt} of stage ${stage}`;
    for (const p of summary.problems) problems.push(`${what}: ${p}`);
    lockedChecks.attempt(what, prefix, records);
    attempts.push({ stage, attempt: summary.attempt, outcome: summary.outcome, host: summary.host, checkpoints: summary.checkpoints, supersededCheckpoints: summary.supersededCheckpoints });
    for (const r of records) pendingScans.push({ key: attemptRecordKey(prefix, r.seq), bytes: Buffer.from(JSON.stringify(r)) });
    if (!run.status) warnings.push(`${what}: still in progress (its records are anchored in the trail when its stage ends)`);
    else if (anchorsAttempts) problems.push(`${store.uri(prefix)}: attempt records the trail does not anchor`);
    else warnings.push(`${what}: the run's workflow code predates anchored attempts; its records were checked for consistency only`);
  }

  // Attempt records only in the audit bucket (deleted from the main one), then the verdicts.
  lockedChecks.extra(`${run.runKey}/attempts/`, (key) => {
    const m = /attempts\/([^/]+)\/attempt-(\d+)\/(\d+)\.json$/.exec(key);
    return m ? `attempt ${Number(m[2])} of stage ${m[1]}: record ${Number(m[3])}` : undefined;
  });
  lockedChecks.extra(`${run.runKey}/`, (key) => `object ${key}`);
  const lockedReport = lockedChecks.report();
  problems.push(...lockedReport.problems);
  warnings.push(...lockedReport.warnings);
  checked.lockedCopies = lockedReport.checked;

  // 1c. Signed approvals: each signature from the key its event records; with an approvers file, that list too.
  let approvers: Approvers | undefined;
  const approversFile = approversFileFromEnv(env);
  try {
    approvers = approversFile ? loadApprovers(approversFile) : undefined;
  } catch (err) {
    problems.push(`${(err as Error).message}: approvals were checked without it`);
  }
  const approvalCheck = checkApprovalEvents(run.runId, run.records, approvers);
  problems.push(...approvalCheck.problems);
  warnings.push(...approvalCheck.warnings);
  checked.signedApprovals = approvalCheck.signed;

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
  // Logs are streamed (a job's output can be large): each secret is looked for across chunk boundaries.
  const logKeys = await listRunLogKeys(store, run.runKey);
  const scan = (key: string, found: { name: string }[]) => {
    checked.secretScan++;
    for (const s of found) problems.push(`${store.uri(key)} contains the ${s.name} (a secret must never be stored)`);
  };
  for (const { key, bytes } of run.raw) scan(key, await findSecrets([bytes], secrets));
  for (const { key, bytes } of pendingScans) scan(key, await findSecrets([bytes], secrets));
  for (let i = 0; i < logKeys.length; i += SCAN_CONCURRENCY) {
    const batch = await Promise.all(
      logKeys.slice(i, i + SCAN_CONCURRENCY).map(async (key) => {
        const chunks = await store.readStream(key);
        return chunks ? { key, found: await findSecrets(chunks, secrets) } : undefined;
      }),
    );
    for (const b of batch) if (b) scan(b.key, b.found);
  }

  const ok = problems.length === 0;
  const anchoredIn = [lockedStatus ? 'the write-once status.json' : undefined, 'head' in temporal ? 'the Temporal result' : undefined].filter(Boolean);
  const verdict = ok
    ? `OK: run ${run.runId} — ${checked.events} events chained${head ? ' to the head recorded at run end' : ''}` +
      `${anchoredIn.length ? ` (anchored in ${anchoredIn.join(' and ')})` : ' (no anchor outside the bucket)'}; ` +
      `${checked.lockedCopies ? `${checked.lockedCopies} records match their write-once copies in s3://${locked.state.state === 'locked' ? locked.state.bucket : ''}` : 'no write-once copies checked'}; ` +
      `${attempts.length} attempts' records (${checked.attemptRecords}) match their anchors; ` +
      `${checked.signedApprovals ? `${checked.signedApprovals} approval signature${checked.signedApprovals === 1 ? '' : 's'} verified${approvers ? ` (keys listed in ${approvers.file})` : ''}; ` : ''}${checked.artifacts} artifacts and ${checked.inputs} inputs re-hashed (${checked.files} files); run.json matches the trail; no secrets in ${checked.secretScan} objects`
    : `FAILED: run ${run.runId} — ${problems.length} problem${problems.length === 1 ? '' : 's'}`;
  const lockedBucket = locked.state.state === 'locked' ? locked.state.bucket : null;
  return { runId: run.runId, prefix: run.prefix, ok, problems, warnings, checked, attempts, anchors, lockedBucket, verdict, exitCode: ok ? 0 : 1 };
}

export function renderVerify(v: VerifyResult): string {
  const attempts = v.attempts.map((a) => `attempt ${a.attempt} of ${a.stage}: ${a.outcome}${a.host ? ` on ${a.host}` : ''}; checkpoints committed: ${a.checkpoints.length ? a.checkpoints.join(', ') : 'none'}${a.supersededCheckpoints.length ? `; superseded in the upload queue: ${a.supersededCheckpoints.length}` : ''}`);
  const anchors = (v.anchors ?? []).map((a) => `anchor: ${a}`);
  return [...attempts, ...anchors, ...v.problems.map((p) => `problem: ${p}`), ...v.warnings.map((w) => `warning: ${w}`), v.verdict].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Write-once copies (the audit bucket)

interface LockedRun {
  state: AuditBucketState;
  /** What each copy must carry (the writers' settings); undefined unless the bucket is locked. */
  expect?: AuditRetention;
  /** Versions of each key under the run, oldest first. */
  versions: Map<string, LockedVersion[]>;
  /** The first version written of each key (not a delete marker), parsed. */
  originals: Map<string, LockedObject & { value: unknown }>;
}

const LOCKED_READS = 16;

/** Everything the audit bucket holds under the run: every version of every key, and each key's original. */
async function readLockedRun(store: ObjectStore, runKey: string): Promise<LockedRun> {
  const state = await store.auditBucketState();
  const run: LockedRun = { state, versions: new Map(), originals: new Map() };
  if (state.state !== 'locked') return run;
  run.expect = await store.auditRetention();
  for (const v of await store.listLockedVersions(`${runKey}/`)) {
    const list = run.versions.get(v.key) ?? [];
    list.push(v);
    run.versions.set(v.key, list);
  }
  const keys = [...run.versions.keys()];
  // S3 lists a key's versions newest first: reversed, a stable sort by time keeps that order on ties.
  for (const list of run.versions.values()) list.reverse().sort((a, b) => (a.lastModified?.getTime() ?? 0) - (b.lastModified?.getTime() ?? 0));
  for (let i = 0; i < keys.length; i += LOCKED_READS) {
    await Promise.all(
      keys.slice(i, i + LOCKED_READS).map(async (key) => {
        const original = run.versions.get(key)!.find((v) => !v.isDeleteMarker);
        if (!original) return;
        const obj = await store.getLocked(key, original.versionId);
        if (!obj) return;
        run.originals.set(key, { ...obj, value: parseOr(obj.body) });
      }),
    );
  }
  return run;
}

/** The parsed JSON, or a value no parsed JSON equals (bytes that are not JSON are compared as such). */
function parseOr(bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    return { notJson: bytes.toString('base64') };
  }
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

function lockedBucketNote(state: AuditBucketState): string {
  switch (state.state) {
    case 'off':
      return 'write-once copies are turned off (REFINERY_S3_AUDIT_BUCKET=off)';
    case 'missing':
      return `the audit bucket "${state.bucket}" does not exist (REFINERY_S3_AUDIT_BUCKET)`;
    case 'unlocked':
      return `the audit bucket "${state.bucket}" has no object locking`;
    default:
      return `s3://${state.bucket}`;
  }
}

/** Findings about the copies' retention: one line per kind, not one per record. */
const RETENTION_KINDS: LockedCopyFindingKind[] = ['no-retention', 'weak-mode', 'short-retention', 'no-legal-hold', 'expired'];

/** Collects what checkLockedCopy finds for each record and turns it into problems and warnings. */
class LockedChecks {
  private readonly problems: string[] = [];
  private readonly warnings: string[] = [];
  private readonly seen = new Set<string>();
  private readonly retention = new Map<LockedCopyFindingKind, { whats: string[]; first: LockedCopyFinding }>();
  /** Records of chains that have no write-once copy before the chain's first that has one. */
  private readonly predating: string[] = [];
  private checked = 0;

  constructor(
    private readonly store: ObjectStore,
    private readonly locked: LockedRun,
  ) {}

  private get active(): boolean {
    return this.locked.state.state === 'locked';
  }

  private one(what: string, key: string, main: unknown, project: (v: unknown) => unknown = (v) => v, ignore: LockedCopyFindingKind[] = [], count = true): LockedCopyFinding[] {
    this.seen.add(key);
    const versions = this.locked.versions.get(key) ?? [];
    const original = this.locked.originals.get(key);
    const findings = checkLockedCopy(main === undefined ? undefined : project(main), {
      versions,
      ...(original ? { original: { value: project(original.value), writtenAt: original.lastModified, retention: original.retention, legalHold: original.legalHold } } : {}),
    }, this.locked.expect!);
    if (original && count) this.checked++;
    for (const f of findings) {
      if (f.kind === 'missing' || ignore.includes(f.kind)) continue;
      if (RETENTION_KINDS.includes(f.kind)) {
        const agg = this.retention.get(f.kind) ?? { whats: [], first: f };
        agg.whats.push(what);
        this.retention.set(f.kind, agg);
      } else this.problems.push(`${what}: ${f.message.replace(/its write-once copy/, `its write-once copy ${this.store.auditUri(key)}`)}`);
    }
    return findings;
  }

  /** One hash chain (the trail, or one attempt's records), in order. */
  chain(name: string, records: { what: string; key: string; value: unknown }[]): void {
    if (!this.active) return;
    let anyCopy = false;
    for (const r of records) {
      const missing = this.one(r.what, r.key, r.value).some((f) => f.kind === 'missing');
      if (!missing) anyCopy = true;
      else if (anyCopy) this.problems.push(`${r.what}: has no write-once copy in ${this.store.auditUri(r.key)}, though the records before it have one (deleted before it was copied, or written around the workers)`);
      else this.predating.push(`${name}: ${r.what}`);
    }
  }

  /**
   * One attempt's records, each against the copy of the key its seq names: the attempt's chain and
   * its anchor in the trail already catch a record moved to another key (seq against position, count).
   */
  attempt(what: string, prefix: string, records: AuditRecord[]): void {
    this.chain(what, records.map((r) => ({ what: `${what}: record ${r.seq}`, key: attemptRecordKey(prefix, r.seq), value: r })));
    if (!this.active) return;
    // A worker killed between a record's two writes (the write-once copy goes first) leaves that
    // record only in the audit bucket, after the last one in the main bucket. It hides nothing (the
    // records before it are all checked, and the trail anchors only those); it is reported as what
    // it is when it continues the chain, and as a problem (by extra()) when it does not.
    let prev = records.at(-1);
    for (let seq = (prev?.seq ?? 0) + 1; ; seq++) {
      const key = attemptRecordKey(prefix, seq);
      const copy = this.locked.originals.get(key)?.value as AuditRecord | undefined;
      const versions = this.locked.versions.get(key) ?? [];
      if (!copy || versions.length !== 1 || copy.seq !== seq || copy.prevHash !== (prev?.hash ?? null) || hashRecord(copy.seq, copy.prevHash, copy.event) !== copy.hash) return;
      this.seen.add(key);
      this.checked++;
      this.warnings.push(`${what}: record ${seq} (${copy.event.type}) is only in the audit bucket, continuing the chain: its worker died between writing its write-once copy and the main one`);
      prev = copy;
    }
  }

  /** status.json: its copy anchors the head and the final state (the rest of status.json is a convenience copy). */
  status(key: string, main: PipelineStatus | undefined, lockedValue: unknown): void {
    if (!this.active) return;
    const project = (v: unknown) => {
      const s = (v ?? {}) as Partial<PipelineStatus>;
      return { runId: s.runId, state: s.state, auditHead: s.auditHead };
    };
    if (main === undefined && lockedValue === undefined && !this.locked.versions.has(key)) return;
    // A different head or state is reported as the anchor's (verifyRun), not twice.
    const missing = this.one('status.json', key, main, project, ['differs']).some((f) => f.kind === 'missing');
    if (missing) {
      if (this.checked > 0) this.problems.push(`status.json: has no write-once copy in ${this.store.auditUri(key)}, though the run's records have`);
      else this.predating.push('status.json');
    }
  }

  /** Keys under `prefix` in the audit bucket that no record read from the main bucket accounts for. */
  extra(prefix: string, name: (key: string) => string | undefined): void {
    if (!this.active) return;
    for (const key of this.locked.versions.keys()) {
      if (!key.startsWith(prefix) || this.seen.has(key)) continue;
      this.seen.add(key);
      const what = name(key);
      if (what === undefined) continue;
      this.one(what, key, undefined, undefined, [], false);
    }
  }

  report(): { problems: string[]; warnings: string[]; checked: number } {
    const problems = [...this.problems];
    const warnings: string[] = [...this.warnings];
    if (!this.active) {
      warnings.push(`${lockedBucketNote(this.locked.state)}: the run's records were checked against the main bucket only`);
    } else if (this.checked === 0) {
      warnings.push(
        `no write-once copies of this run's records in s3://${(this.locked.state as { bucket: string }).bucket}: a run from before they were written ` +
          '(or written with REFINERY_S3_AUDIT_BUCKET=off); its records were checked against the main bucket only',
      );
    } else if (this.predating.length > 0) {
      warnings.push(`${this.predating.length} records have no write-once copies, written before copies were (e.g. ${this.predating.slice(0, 3).join('; ')}): those were checked against the main bucket only`);
    }
    const expect = this.locked.expect;
    for (const [kind, { whats, first }] of this.retention) {
      const one = whats.length === 1;
      const verb = (singular: string, plural: string) => (one ? singular : plural);
      const subject = `the write-once cop${one ? 'y' : 'ies'} of ${whats.length} record${one ? '' : 's'} (${whats.slice(0, 3).join(', ')}${whats.length > 3 ? ', …' : ''})`;
      const e = `${whats[0]}: ${first.detail ?? ''}`;
      const text: Record<string, string> = {
        'no-retention': `${verb('carries', 'carry')} no retention (expected ${expect?.mode} for ${expect?.days} days)`,
        'weak-mode': `${verb('is', 'are')} retained in a weaker mode than ${expect?.mode} (${e})`,
        'short-retention': `${verb('is', 'are')} retained for less than ${expect?.days} days (${e})`,
        'no-legal-hold': `${verb('has', 'have')} no legal hold (REFINERY_AUDIT_LEGAL_HOLD=on)`,
        expired: `${verb('is', 'are')} no longer retained (${e}): since then ${verb('it', 'they')} could have been deleted and written again`,
      };
      const line = `${subject} ${text[kind]}`;
      if (kind === 'expired') warnings.push(line);
      else problems.push(line);
    }
    return { problems, warnings, checked: this.checked };
  }
}

// ---------------------------------------------------------------------------------------------
// The Temporal anchor: the head in the run's result (PipelineResult.status, or a failed run's
// failure details), or for a run without a result (cancelled) in finishRun's input in its history.

type TemporalAnchor = { name: string; head: { seq: number; hash: string }; state?: string } | { unavailable: string; problem?: string };

async function temporalAnchor(opts: VerifyOptions, runId: string, env: NodeJS.ProcessEnv, firstEventAt: unknown, claim?: RunClaim): Promise<TemporalAnchor> {
  if (opts.temporal === false) return { unavailable: 'Temporal: not consulted' };
  if (opts.temporal) return headFromTemporal(opts.temporal, runId, firstEventAt, claim);
  const settings = temporalSettings(env);
  const { address, namespace } = settings;
  let dataConverter;
  try {
    dataConverter = dataConverterFromEnv(env);
  } catch (err) {
    return { unavailable: `Temporal: not consulted (${(err as Error).message})` };
  }
  let connection: Connection;
  try {
    connection = await Connection.connect({ ...connectionOptions(settings), connectTimeout: '3s' });
  } catch {
    return { unavailable: `Temporal: not reachable at ${address}` };
  }
  try {
    return await headFromTemporal(new Client({ connection, namespace, dataConverter }), runId, firstEventAt, claim);
  } finally {
    await connection.close().catch(() => undefined);
  }
}

async function headFromTemporal(client: Client, runId: string, firstEventAt: unknown, claim?: RunClaim): Promise<TemporalAnchor> {
  const namespace = client.options.namespace;
  const handle = claim?.runId === runId ? client.workflow.getHandle(claim.workflowId, claim.workflowRunId) : client.workflow.getHandle(runId);
  let description;
  try {
    description = await handle.describe();
  } catch (err) {
    if ((err as Error).name === 'WorkflowNotFoundError') return { unavailable: `Temporal: no workflow ${runId} in namespace ${namespace} (past the namespace's retention, or another namespace)` };
    return { unavailable: `Temporal: cannot read workflow ${runId}: ${(err as Error).message}` };
  }
  if (description.type !== 'pipelineWorkflow') return { unavailable: `Temporal: workflow ${runId} is a ${description.type}, not a pipeline run`, problem: `Temporal: workflow ${runId} is a ${description.type}, not the pipeline run the trail records` };
  if (description.status.name === 'RUNNING') return { unavailable: `Temporal: workflow ${runId} is still running` };
  const at = typeof firstEventAt === 'string' ? Date.parse(firstEventAt) : NaN;
  if (Number.isFinite(at) && description.startTime.getTime() > at + 1000) {
    const msg = `Temporal: workflow ${runId} (run ${description.runId}) started ${description.startTime.toISOString()}, after the trail's first event (${String(firstEventAt)}): not the execution that wrote this trail (its id was reused, or the run reset)`;
    return { unavailable: msg, problem: msg };
  }
  const where = `the run's result in Temporal (workflow ${runId}, namespace ${namespace})`;
  let status: Partial<PipelineStatus> | undefined;
  try {
    if (description.status.name === 'COMPLETED') {
      const result = (await handle.result()) as PipelineResult | PipelineStatus;
      status = 'status' in result ? result.status : result;
    } else if (description.status.name === 'FAILED') {
      await handle.result().catch((err: unknown) => {
        if (err instanceof WorkflowFailedError) status = statusFromFailure(err);
      });
    }
  } catch (err) {
    return { unavailable: `Temporal: cannot read the result of workflow ${runId}: ${(err as Error).message}` };
  }
  if (status?.auditHead) return { name: where, head: status.auditHead, state: status.state };
  // No result to read (cancelled, terminated): the status closeRun handed finishRun, from the history.
  try {
    const history = await handle.fetchHistory();
    let input: { status?: Partial<PipelineStatus> } | undefined;
    for (const e of history.events ?? []) {
      const a = e.activityTaskScheduledEventAttributes;
      if (a?.activityType?.name !== 'finishRun' || !a.input?.payloads?.length) continue;
      input = await decodeFromPayloadsAtIndex<{ status?: Partial<PipelineStatus> }>(client.options.loadedDataConverter, 0, a.input.payloads);
    }
    if (input?.status?.auditHead) {
      return { name: `the status finishRun was given in the run's Temporal history (workflow ${runId}, namespace ${namespace})`, head: input.status.auditHead, state: input.status.state };
    }
  } catch (err) {
    return { unavailable: `Temporal: cannot read the history of workflow ${runId}: ${(err as Error).message}` };
  }
  return { unavailable: `Temporal: workflow ${runId} (${description.status.name.toLowerCase()}) records no audit head` };
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

/** Log objects scanned at a time (in key order as far as the problems are concerned). */
const SCAN_CONCURRENCY = 8;

/**
 * The secrets (in the order given) whose bytes occur in the concatenation of `chunks`, read as
 * they come: the last (longest secret − 1) bytes of each chunk are kept, so a secret that straddles
 * a chunk boundary is found, and memory stays one chunk plus that tail.
 */
export async function findSecrets<S extends { value: string }>(chunks: AsyncIterable<Buffer> | Iterable<Buffer>, secrets: readonly S[]): Promise<S[]> {
  const needles = secrets.map((s) => Buffer.from(s.value, 'utf8'));
  const keep = Math.max(0, ...needles.map((n) => n.length - 1));
  // An empty needle is in everything (as Buffer.includes has it).
  const found = new Set(needles.flatMap((n, i) => (n.length === 0 ? [i] : [])));
  let tail = Buffer.alloc(0);
  for await (const chunk of chunks) {
    if (found.size === needles.length) break; // nothing left to look for (leaving the loop ends a download)
    // Across the boundary: the previous chunks' tail and this chunk's head.
    const seam = tail.length > 0 ? Buffer.concat([tail, chunk.subarray(0, keep)]) : undefined;
    needles.forEach((n, i) => {
      if (found.has(i)) return;
      if ((seam && seam.includes(n)) || chunk.includes(n)) found.add(i);
    });
    // The new tail: the last `keep` bytes of everything read so far (a chunk may be shorter than that).
    const joined = chunk.length >= keep ? chunk : Buffer.concat([tail, chunk]);
    tail = Buffer.from(joined.subarray(Math.max(0, joined.length - keep)));
  }
  return secrets.filter((_, i) => found.has(i));
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
