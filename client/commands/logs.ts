/**
 * `logs`: the job output a run stored in the bucket, `logs/<stage>/attempt-N.log` (or with
 * `events`, the contract events beside it), in stage order then attempt order. With `follow`,
 * polls for new attempts and grown objects until the run's status.json appears.
 */
import type { Readable } from 'node:stream';
import { layout, segment } from '../../storage/layout.js';
import { ObjectStore } from '../../storage/object-store.js';
import { CliError } from '../errors.js';
import { checkRunRef, storeCall, type RunManifest, type RunRef } from './audit.js';

export interface LogsOptions extends RunRef {
  stage?: string;
  /** Only this attempt (1-based). */
  attempt?: number;
  /** Keep polling until the run has finished. */
  follow?: boolean;
  /** The JSON-lines contract events instead of the job's output. */
  events?: boolean;
  /** Poll interval with `follow` (default 2 s). */
  pollMs?: number;
  /** With `follow`, how long to wait for a run that has not appeared yet (default 60 s). */
  appearTimeoutMs?: number;
  /** Stops following. */
  signal?: AbortSignal;
  /** Receives each new piece of a log, in order. */
  onChunk?: (chunk: LogChunk) => void;
}

export interface LogChunk {
  stage: string;
  attempt: number;
  uri: string;
  /** The first piece of this object (print a header). */
  first: boolean;
  text: string;
}

export interface LogFile {
  stage: string;
  attempt: number;
  uri: string;
  bytes: number;
}

export interface LogsResult {
  runId: string;
  files: LogFile[];
  /** True when the run had finished (status.json present) at the last look. */
  finished: boolean;
  exitCode: 0;
}

const LOG_RE = /\/logs\/([^/]+)\/attempt-(\d+)\.(log|events\.jsonl)$/;

export async function streamLogs(opts: LogsOptions): Promise<LogsResult> {
  const prefix = checkRunRef(opts.runId, opts.prefix);
  if (opts.stage !== undefined) {
    try {
      segment(opts.stage);
    } catch {
      throw new CliError(`--stage "${opts.stage}" is not a stage id`, undefined, 2);
    }
  }
  if (opts.attempt !== undefined && !(Number.isInteger(opts.attempt) && opts.attempt >= 1)) {
    throw new CliError(`--attempt "${String(opts.attempt)}" is not an attempt number`, 'attempts count from 1', 2);
  }
  const store = opts.store ?? new ObjectStore();
  const runKey = layout.run(prefix, opts.runId);
  const pollMs = opts.pollMs ?? 2000;
  const suffix = opts.events ? 'events.jsonl' : 'log';

  // The run must exist (or, when following, appear soon): a mistyped id is an error, not silence.
  const appearDeadline = Date.now() + (opts.appearTimeoutMs ?? 60_000);
  let manifest: RunManifest | undefined;
  for (;;) {
    manifest = await storeCall(store, () => store.getJson<RunManifest>(`${runKey}/run.json`).catch(ignoreBadJson));
    if (manifest || (await store.list(`${runKey}/`, false)).length > 0) break;
    if (!opts.follow || Date.now() > appearDeadline || opts.signal?.aborted) {
      throw new CliError(`no run "${opts.runId}" under ${store.uri(`${prefix}/runs/`)}`, 'pass --prefix with the spec\'s storage.prefix (the demo uses "demo")', 2);
    }
    await sleep(pollMs, opts.signal);
  }
  let order = (manifest?.plan?.stages ?? []).map((s) => s.id);
  if (opts.stage !== undefined && order.length > 0 && !order.includes(opts.stage)) {
    throw new CliError(`run ${opts.runId} has no stage "${opts.stage}"`, `its stages: ${order.join(', ')}`, 2);
  }
  const rank = (stage: string) => {
    const i = order.indexOf(stage);
    return i < 0 ? order.length : i;
  };

  const printed = new Map<string, number>();
  const files = new Map<string, LogFile>();
  let finished = false;
  for (;;) {
    // Look for status.json before listing: a final listing after the run ends misses nothing.
    finished = await store.exists(`${runKey}/status.json`);
    // A run followed from its very start is prepared (run.json, with the stage order) a moment later.
    if (order.length === 0) order = ((await store.getJson<RunManifest>(`${runKey}/run.json`).catch(ignoreBadJson))?.plan?.stages ?? []).map((s) => s.id);
    const objects = (await store.list(`${runKey}/logs/`))
      .map((o) => ({ ...o, m: LOG_RE.exec(o.key) }))
      .filter((o) => o.m && o.m[3] === suffix)
      .map((o) => ({ key: o.key, size: o.size, stage: o.m![1]!, attempt: Number(o.m![2]) }))
      .filter((o) => (opts.stage === undefined || o.stage === opts.stage) && (opts.attempt === undefined || o.attempt === opts.attempt))
      .sort((a, b) => rank(a.stage) - rank(b.stage) || a.stage.localeCompare(b.stage) || a.attempt - b.attempt);
    for (const o of objects) {
      const uri = store.uri(o.key);
      files.set(o.key, { stage: o.stage, attempt: o.attempt, uri, bytes: o.size });
      const done = printed.get(o.key);
      if (done !== undefined && o.size <= done) continue;
      const from = done ?? 0;
      const text = from === 0 ? ((await store.getBytes(o.key)) ?? Buffer.alloc(0)) : await readFrom(store, o.key, from);
      printed.set(o.key, from + text.length);
      opts.onChunk?.({ stage: o.stage, attempt: o.attempt, uri, first: done === undefined, text: text.toString('utf8') });
    }
    if (!opts.follow || finished || opts.signal?.aborted) break;
    await sleep(pollMs, opts.signal);
  }
  return { runId: opts.runId, files: [...files.values()], finished, exitCode: 0 };
}

/** A run.json that is not JSON only costs the stage order; `audit verify` reports it. */
function ignoreBadJson(err: unknown): undefined {
  if (err instanceof SyntaxError) return undefined;
  throw err;
}

/** The bytes of an object from `offset` on (an object that grew since the last look). */
async function readFrom(store: ObjectStore, key: string, offset: number): Promise<Buffer> {
  const stream = (await store.client.getPartialObject(store.bucket, key, offset)) as Readable;
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
