/**
 * The one reader of what a run left in object storage besides artifacts, shared by `audit`,
 * `audit verify`, `report` and `logs` (no Temporal):
 *
 *   readRun           run.json (parsed with storage/run-manifest.ts), status.json and the audit
 *                     trail, with the raw bytes of each and every object that could not be read
 *   readManifest      run.json alone (`logs` takes the stage order from it)
 *   runClosedAt       when status.json says the run closed
 *   readAttempts      the attempt records (storage/attempt-records.ts) the trail anchors, and those it does not
 *   readJobEvents     every attempt's contract events (storage/job-logs.ts), by stage and attempt,
 *                     streamed, with long runs' progress events thinned to a bounded sample
 *
 * Also what every such command checks first: the run id and prefix (`checkRunRef`), and "cannot
 * reach the store" as one line (`storeCall`).
 */
import { StringDecoder } from 'node:string_decoder';
import type { AuditRecord } from '../storage/audit-chain.js';
import { readAttemptRecords } from '../storage/attempt-records.js';
import { listJobLogs, streamJobLog } from '../storage/job-logs.js';
import { layout, segment } from '../storage/layout.js';
import { ObjectStore } from '../storage/object-store.js';
import { RunManifest, runManifestKey } from '../storage/run-manifest.js';
import type { PipelineStatus } from '../workflows/types.js';
import { CliError } from './errors.js';
import { EXIT } from './exit-codes.js';

export { RunManifest } from '../storage/run-manifest.js';

export const DEFAULT_PREFIX = 'refinery';

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
  /** Objects that exist but cannot be read: not JSON, or a run.json its schema rejects. */
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
    throw new CliError(`--prefix "${prefix}" is not a storage prefix`, 'use the spec\'s storage.prefix, e.g. "refinery" or "demo"', EXIT.badInput);
  }
  try {
    segment(runId);
  } catch {
    throw new CliError(`"${runId}" is not a run id`, 'run ids are letters, digits, ".", "_" and "-" (see "refinery list")', EXIT.badInput);
  }
  return p;
}

/**
 * A parsed run.json checked against its schema: the object as stored (key order, and fields newer
 * than this reader, kept for `audit --json`), or the problem that makes it unreadable.
 */
function checkManifest(value: unknown, uri: string): { manifest?: RunManifest; problem?: string } {
  const parsed = RunManifest.safeParse(value);
  if (parsed.success) return { manifest: value as RunManifest };
  const issue = parsed.error.issues[0]!;
  const more = parsed.error.issues.length > 1 ? ` (and ${parsed.error.issues.length - 1} more)` : '';
  return { problem: `${uri}: not a run manifest: ${issue.path.length ? `${issue.path.join('.')}: ` : ''}${issue.message}${more}` };
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
  const readManifestJson = async (key: string): Promise<RunManifest | undefined> => {
    const value = await readJson<unknown>(key);
    if (value === undefined) return undefined;
    const { manifest, problem } = checkManifest(value, store.uri(key));
    if (problem) readProblems.push(problem);
    return manifest;
  };

  const [manifest, status, auditKeys] = await storeCall(store, () =>
    Promise.all([readManifestJson(runManifestKey(runKey)), readJson<FinalStatus>(`${runKey}/status.json`), store.list(`${runKey}/audit/`)]),
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
      EXIT.notFound,
    );
  }
  raw.sort((a, b) => (a.key < b.key ? -1 : 1));
  return { runId: ref.runId, prefix, runKey, manifest, status, records: records.filter((r): r is AuditRecord => r !== undefined), readProblems, raw };
}

/**
 * run.json alone; undefined when it is missing or unreadable (not JSON, or not a run manifest:
 * `audit verify` reports that). Store errors propagate.
 */
export async function readManifest(store: ObjectStore, runKey: string): Promise<RunManifest | undefined> {
  const value = await store.getJson<unknown>(runManifestKey(runKey)).catch(ignoreBadJson);
  return value === undefined ? undefined : checkManifest(value, '').manifest;
}

/**
 * When the run closed (status.json's finishedAt; now when it has none); undefined while it
 * has no status.json. A status.json that is not JSON still means the run closed.
 */
export async function runClosedAt(store: ObjectStore, runKey: string): Promise<number | undefined> {
  try {
    const status = await store.getJson<{ finishedAt?: unknown }>(`${runKey}/status.json`);
    if (status === undefined) return undefined;
    const at = typeof status.finishedAt === 'string' ? Date.parse(status.finishedAt) : NaN;
    return Number.isFinite(at) ? at : Date.now();
  } catch (err) {
    if (err instanceof SyntaxError) return Date.now();
    throw err;
  }
}

function ignoreBadJson(err: unknown): undefined {
  if (err instanceof SyntaxError) return undefined;
  throw err;
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
      throw new CliError(`cannot reach object storage at ${store.config.endPoint}:${store.config.port}`, 'start the local stack with "refinery stack start" or set REFINERY_S3_ENDPOINT', EXIT.unreachable);
    }
    if (code === 'NoSuchBucket') throw new CliError(`bucket "${store.bucket}" does not exist`, 'set REFINERY_BUCKET to the bucket your runs use', EXIT.unreachable);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Attempt records

/** One attempt's own records, at `<runKey>/attempts/<stage>/attempt-N/`. */
export interface AttemptRecordSet {
  stage: string;
  attempt: number;
  /** Key prefix of the records. */
  prefix: string;
  records: AuditRecord[];
}

/** The records of one attempt of a stage (empty when it has none). */
export async function readAttempt(store: ObjectStore, run: Pick<RunRecords, 'prefix' | 'runId'>, stage: string, attempt: number): Promise<AttemptRecordSet> {
  const prefix = layout.attemptRecords(run.prefix, run.runId, stage, attempt);
  return { stage, attempt, prefix, records: await readAttemptRecords(store, prefix) };
}

/**
 * Every attempt that stored records under the run, except those whose prefix is in `except`
 * (e.g. the ones the trail anchors, read already), in key order.
 */
export async function readOtherAttempts(store: ObjectStore, runKey: string, except: ReadonlySet<string>): Promise<AttemptRecordSet[]> {
  const seen = new Set(except);
  const out: AttemptRecordSet[] = [];
  for (const { key } of await store.list(`${runKey}/attempts/`, true)) {
    const m = /^(.*\/(attempts\/([^/]+)\/attempt-(\d+)))\/\d{6}\.json$/.exec(key);
    if (!m || seen.has(m[1]!)) continue;
    seen.add(m[1]!);
    out.push({ stage: m[3]!, attempt: Number(m[4]), prefix: m[1]!, records: await readAttemptRecords(store, m[1]!) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Job logs

/** One line of `logs/<stage>/attempt-N.events.jsonl`: a job contract event plus `at` and `attempt`. */
export interface JobEventLine {
  at: string;
  attempt: number;
  event: string;
  step?: number;
  total_steps?: number | null;
  loss?: number | null;
  metrics?: Record<string, number | null>;
  resumed_from_step?: number | null;
  message?: string;
}

/** Progress events readJobEvents keeps per attempt by default: far more than a chart has pixels for. */
export const MAX_PROGRESS_EVENTS = 2000;
/** Events files read at a time (each streams: a chunk or two in memory). */
const EVENTS_READS = 8;
/** A line longer than this (characters) is no job event: it is skipped without being held whole. */
const MAX_EVENT_LINE = 8 * 1024 * 1024;

export interface ReadJobEventsOptions {
  /**
   * Progress events kept per attempt (default MAX_PROGRESS_EVENTS; Infinity: every one). Over it,
   * they are thinned evenly (ProgressSampler): the first and the last are always kept, and so is
   * every other event.
   */
  maxProgress?: number;
}

/**
 * Every `attempt-N.events.jsonl` of the run, by stage and attempt: the whole object, or for an
 * attempt still running or killed, the parts its worker flushed (its curve up to the last flush).
 * Each is streamed line by line, so memory grows with the events kept, not with the file: a
 * days-long attempt's progress lines are thinned to `maxProgress` (see ReadJobEventsOptions).
 */
export async function readJobEvents(store: ObjectStore, runKey: string, options: ReadJobEventsOptions = {}): Promise<Map<string, Map<number, JobEventLine[]>>> {
  const out = new Map<string, Map<number, JobEventLine[]>>();
  const refs = await listJobLogs(store, runKey, { kind: 'events' });
  const read: (JobEventLine[] | undefined)[] = new Array(refs.length);
  for (let i = 0; i < refs.length; i += EVENTS_READS) {
    await Promise.all(
      refs.slice(i, i + EVENTS_READS).map(async (ref, j) => {
        const log = streamJobLog(store, ref.key);
        const lines = await parseJobEventStream(log.chunks, options);
        read[i + j] = log.found ? lines : undefined;
      }),
    );
  }
  refs.forEach((ref, i) => {
    const lines = read[i];
    if (!lines) return;
    const byAttempt = out.get(ref.stage) ?? new Map<number, JobEventLine[]>();
    byAttempt.set(ref.attempt, lines);
    out.set(ref.stage, byAttempt);
  });
  return out;
}

/**
 * The job events of an events file read as a stream of chunks, as parseJobEventLines has them
 * (blank lines, lines that are not job events and a torn last line skipped), with the progress
 * events thinned to `maxProgress` as they come (ProgressSampler).
 */
export async function parseJobEventStream(chunks: AsyncIterable<Buffer | string> | Iterable<Buffer | string>, options: ReadJobEventsOptions = {}): Promise<JobEventLine[]> {
  const sampler = new ProgressSampler(options.maxProgress ?? MAX_PROGRESS_EVENTS);
  const decoder = new StringDecoder('utf8');
  let pending = '';
  /** The line being read is longer than MAX_EVENT_LINE: skipped up to its end. */
  let overlong = false;
  const take = (line: string) => {
    if (!line.trim()) return;
    try {
      const ev = JSON.parse(line) as JobEventLine;
      if (ev && typeof ev === 'object' && typeof ev.event === 'string') sampler.add(ev);
    } catch {
      // a torn last line of a killed attempt: skip it
    }
  };
  for await (const chunk of chunks) {
    const text = pending + (typeof chunk === 'string' ? chunk : decoder.write(chunk));
    let start = 0;
    for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', start)) {
      if (overlong) overlong = false;
      else take(text.slice(start, nl));
      start = nl + 1;
    }
    pending = text.slice(start);
    if (pending.length > MAX_EVENT_LINE) {
      overlong = true;
      pending = '';
    }
  }
  if (!overlong) take(pending + decoder.end());
  return sampler.events();
}

/**
 * Keeps a bounded, evenly spaced sample of an attempt's progress events as they come, and every
 * other event: progress event number i (from 0) is kept while i is a multiple of the stride, which
 * doubles (dropping every other one kept) whenever more than `max` are kept. The first and the
 * newest progress events are always kept, and so is the one right before each other event (the
 * step a `metrics` event without one belongs to); those add at most one per other event.
 */
export class ProgressSampler {
  private entries: { ev: JobEventLine; index: number; pinned: boolean }[] = [];
  /** Progress events seen. */
  private seen = 0;
  private stride = 1;
  /** Progress events held on the stride (pinned ones not counted), the newest included. */
  private held = 0;
  /** The newest progress event, while it is the last entry or only other events follow it. */
  private newest: { ev: JobEventLine; index: number; pinned: boolean } | undefined;

  constructor(readonly max: number = MAX_PROGRESS_EVENTS) {
    if (!(max >= 2)) throw new RangeError(`ProgressSampler: max must be at least 2 (got ${max})`);
  }

  /** Progress events seen so far. */
  get progressSeen(): number {
    return this.seen;
  }

  add(ev: JobEventLine): void {
    if (ev.event !== 'progress') {
      if (this.newest && !this.newest.pinned) {
        this.newest.pinned = true;
        this.held--;
      }
      this.entries.push({ ev, index: -1, pinned: false });
      return;
    }
    const prev = this.newest;
    // The newest one was kept only for being the newest: off the stride and not pinned, it goes.
    if (prev && !prev.pinned && prev.index % this.stride !== 0) {
      // It is the last entry (another event after it would have pinned it).
      this.entries.pop();
      this.held--;
    }
    this.newest = { ev, index: this.seen++, pinned: false };
    this.entries.push(this.newest);
    this.held++;
    if (this.held > this.max) {
      this.stride *= 2;
      const newest = this.newest;
      this.entries = this.entries.filter((e) => e.index < 0 || e.pinned || e === newest || e.index % this.stride === 0);
      this.held = this.entries.filter((e) => e.index >= 0 && !e.pinned).length;
    }
  }

  /** What is kept, in the order it came. */
  events(): JobEventLine[] {
    return this.entries.map((e) => e.ev);
  }
}

/** The lines of an events file that are job events; a torn last line (a killed attempt) is skipped. */
export function parseJobEventLines(text: string): JobEventLine[] {
  const lines: JobEventLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const ev = JSON.parse(line) as JobEventLine;
      if (ev && typeof ev === 'object' && typeof ev.event === 'string') lines.push(ev);
    } catch {
      // a torn last line of a killed attempt: skip it
    }
  }
  return lines;
}

/** Keys of every object under the run's `logs/` (job output, events and their flushed parts). */
export async function listRunLogKeys(store: ObjectStore, runKey: string): Promise<string[]> {
  return (await store.list(`${runKey}/logs/`)).map((o) => o.key);
}
